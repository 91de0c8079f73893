"""A new kind of data needs no change to the package: an observable defined here, in the test file
alone, implementing :class:`xtds.Observable`, is fitted jointly with a TDS volume (with a
temperature uncertainty, a checkpoint and a resume after a kill) and in a joint temperature
series, and its description is the same in another process.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.fitting import Problem, fit_joint_series, fit_problems, points_problem
from xtds.lattice import dynamics
from xtds.observables import PeriodicSupercell, describe, supercell_q_grid, tds_intensity
from xtds.units import KB_EV_PER_K

NI = xtds.datasets.paper_ni_crystal()
TRUTH = {"b0": -1.0, "b1": 0.06, "b2": -1.04, "c0": 0.14, "c1": -0.01}
START = {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}
HKL = np.array([[0.2, 0.1, 0.0], [0.5, 0.0, 0.1], [0.3, 0.3, 0.3], [0.1, 0.6, 0.2], [0.7, 0.2, 0.4],
                [0.4, 0.4, 0.0], [0.25, 0.0, 0.0], [0.6, 0.5, 0.1]])


class LongWaveTDS(xtds.Observable):
    """A toy kind of data: the classical one-phonon TDS of a Bravais crystal without the
    Debye–Waller factor, I(q) = k_B T qᵀ H(q)⁻¹ q (Å²·(1/Å)² → 1), at points near Γ."""

    def __init__(self, model, hkl, temperature):
        self.model, self.temperature = model, float(temperature)
        self.hkl = np.asarray(hkl, dtype=float)
        self.q = model.crystal.rlu_to_cartesian(self.hkl)  # the points' q: backgrounds could use it

    def __len__(self):
        return len(self.q)

    def __call__(self, phi, epoch=0):
        q = torch.as_tensor(self.q, dtype=phi.dtype)
        H = dynamics.force_constant_matrix(self.model, phi, q, cell=self.model.primitive).real  # (P, 3, 3)
        return KB_EV_PER_K * self.temperature * torch.einsum("pa,pa->p", q, torch.linalg.solve(H, q))

    def stability_k(self):
        return self.q


@pytest.fixture(scope="module")
def setting():
    model = xtds.IFCModel(NI, shells=2)
    truth = model.vector(TRUTH)
    q = supercell_q_grid(NI, 2, 4)
    with torch.no_grad():
        I = tds_intensity(model, truth, q, 300.0, geometry=PeriodicSupercell(2), quantum=False).numpy()
    c = np.arange(-4, 5) / 2.0
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.reshape(9, 9, 9))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={"temperature": 300.0, "geometry": repr(PeriodicSupercell(2)), "quantum": 0})
    pts = ds.tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    volume = points_problem(pts, model, 300.0, name="volume")
    toy = LongWaveTDS(model, HKL, 300.0)
    with torch.no_grad():
        data = toy(truth).numpy()
    return model, volume, toy, data


def test_the_toy_is_an_observable_with_the_defaults(setting):
    model, _, toy, data = setting
    assert isinstance(toy, xtds.Observable) and not toy.stochastic and toy.point_energy is None
    hot = toy.at_temperature(600.0)
    assert hot is not toy and toy.temperature == 300.0 and hot.temperature == 600.0
    phi = model.vector(TRUTH)
    with torch.no_grad():
        np.testing.assert_allclose(hot(phi).numpy(), 2 * data, rtol=1e-12)
        np.testing.assert_allclose(toy.temperature_derivative(phi).numpy(), data / 300.0, rtol=1e-8)
    d = describe(Problem(toy, data, name="toy"))
    assert "0x" not in json.dumps(d) and d["observable"]["temperature"] == 300.0


@pytest.mark.heavy
def test_the_description_is_the_same_in_another_process(setting):
    """The checkpoint fingerprint rests on ``describe``: a rerun in a new process must find its own
    checkpoint, so nothing in it may depend on the process (no memory addresses)."""
    model, _, _, _ = setting
    here = json.dumps(describe(LongWaveTDS(model, HKL, 300.0)), sort_keys=True)
    code = ("import json, sys, xtds; sys.path.insert(0, sys.argv[1]); import test_protocol as t; "
            "m = xtds.IFCModel(t.NI, shells=2); "
            "print(json.dumps(xtds.observables.describe(t.LongWaveTDS(m, t.HKL, 300.0)), sort_keys=True))")
    tests = str(pathlib.Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", code, tests], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    there = out.stdout.strip().splitlines()[-1]
    assert there == here


def test_joint_fit_with_temperature_uncertainty_checkpoint_and_resume(setting, tmp_path):
    model, volume, toy, data = setting
    toy_problem = Problem(toy, data, sigma=1e-3 * data, loss="chi2", background=False, temperature_stderr=3.0,
                          name="toy", data_name="toy_intensity")
    full = fit_problems([volume, toy_problem], START, optimizer=xtds.LM(progress=False))
    got = full["ifc"].sel(constant=list(TRUTH)).values
    np.testing.assert_allclose(got, list(TRUTH.values()), atol=1e-7)  # noise-free data: the truth
    assert "toy_toy_intensity" in full and "volume_intensity" in full
    # σ_T of the toy only: every classical constant scales with T, so its errors grow
    exact = fit_problems([volume, Problem(toy, data, sigma=1e-3 * data, loss="chi2", background=False, name="toy",
                                          data_name="toy_intensity")], START, optimizer=xtds.LM(progress=False))
    assert (full["ifc_stderr"].values[1:] > exact["ifc_stderr"].values[1:]).all()
    stats = {p["name"]: p for p in json.loads(full.attrs["problems"])}
    assert stats["toy"]["temperature_stderr_K"] == 3.0

    def kill(it, x, loss):
        if it == 2:
            raise KeyboardInterrupt

    ck = tmp_path / "joint.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit_problems([volume, toy_problem], START, optimizer=xtds.LM(progress=False, checkpoint=ck, callback=kill))
    resumed = fit_problems([volume, toy_problem], START, optimizer=xtds.LM(progress=False, checkpoint=ck))
    assert resumed.attrs["resumed_from"] == 1
    np.testing.assert_allclose(resumed["ifc"].values, full["ifc"].values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(resumed["ifc_stderr"].values, full["ifc_stderr"].values, rtol=1e-9)


def test_joint_temperature_series_of_the_new_kind(setting):
    """Constants linear in T (softening), the toy measured at three temperatures: the joint series
    recovers the constants at 300 K and the softening rate exactly (noise-free data)."""
    model, _, toy, _ = setting
    base = model.vector(TRUTH)
    rate = 1e-5 * torch.ones_like(base)  # eV/Å² per K: every constant softens alike
    temps = (200.0, 400.0, 600.0)
    problems = []
    for T in temps:
        member = toy.at_temperature(T)
        with torch.no_grad():
            data = member(base + rate * (T - 400.0)).numpy()
        problems.append(Problem(member, data, sigma=1e-3 * data, loss="chi2", background=False, name=f"T{T:.0f}"))
    res = fit_joint_series(problems, temps, START, degree=1, center=400.0, optimizer=xtds.LM(progress=False))
    np.testing.assert_allclose(res["coefficient"].sel(power=0).values, base.numpy(), atol=1e-9)
    np.testing.assert_allclose(res["coefficient"].sel(power=1).values, rate.numpy(), atol=1e-12)


def test_every_shipped_observable_describes_itself_and_moves_in_temperature():
    """The shipped kinds of data go through the same protocol: a description without memory
    addresses, a copy at another temperature (or a clear refusal), the same description for the
    same settings."""
    from xtds.observables import DispersionPoints, PowderIntensity, SQEPoints, TDSIntensity
    from xtds.observables.neutron.powder import PowderSpectrum

    model = xtds.IFCModel(NI, shells=1)
    q = NI.rlu_to_cartesian(HKL[:3])
    made = [SQEPoints(model, q, [5.0, 10.0, 15.0], 300.0), DispersionPoints(model, q, [0, 1, 2]),
            TDSIntensity(model, q, 300.0, method="one_phonon"), PowderIntensity(model, [2.0, 3.1], 300.0, order=4),
            PowderSpectrum(model, np.linspace(1.0, 4.0, 8), np.linspace(5.0, 30.0, 6), 300.0, mesh=4, multiphonon=())]
    for obs in made:
        d = json.dumps(describe(obs))
        assert "0x" not in d and d == json.dumps(describe(obs)), type(obs).__name__
        if obs.temperature is None:
            with pytest.raises(TypeError, match="does not depend on temperature"):
                obs.at_temperature(400.0)
            continue
        hot = obs.at_temperature(400.0)
        assert type(hot) is type(obs) and hot.temperature == 400.0 and obs.temperature == 300.0
        assert json.dumps(describe(hot)) != d


def test_a_fit_needs_a_degree_of_freedom_for_its_errors(setting):
    """As many χ² points as constants fit exactly (loss 0) and leave the errors undefined: refused;
    one more point is a fit."""
    model, _, _, _ = setting
    for n, ok in ((model.n_free, False), (model.n_free + 1, True)):
        toy = LongWaveTDS(model, HKL[:n], 300.0)
        with torch.no_grad():
            data = toy(model.vector(TRUTH)).numpy()
        prob = Problem(toy, data, sigma=1e-3 * data, loss="chi2", background=False)
        if ok:
            fit_problems(prob, START, optimizer=xtds.LM(progress=False))
        else:
            with pytest.raises(ValueError, match="leave a degree of freedom"):
                fit_problems(prob, START, optimizer=xtds.LM(progress=False))
