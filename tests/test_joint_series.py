"""Joint series fits (xtds.fitting.fit_joint_series): force constants polynomial in the series
variable, fitted to all members at once."""

import numpy as np
import pytest
import torch

import xtds
from xtds.fitting import LM, Problem, fit_joint_series, fit_problems
from xtds.observables import DispersionPoints, PowderSpectrum

AL = xtds.Crystal.preset("Al")
A0 = {"b0": -0.61, "b1": 0.10, "b2": -0.71, "c0": -0.155, "c1": 0.032}
#: softening per K, eV/Å²/K (about the ARCS aluminium rate of b0)
A1 = {"b0": 3e-4, "b1": -2e-5, "b2": 1e-4, "c0": 2e-5, "c1": -1e-5}
TEMPS = [100.0, 300.0, 500.0]


def constants_at(T, T0=300.0):
    return {k: A0[k] + A1[k] * (T - T0) for k in A0}


def dispersion_members(model, noise=0.0, seed=0):
    q = AL.rlu_to_cartesian(np.array([[0.5, 0, 0], [1.0, 0, 0], [0.5, 0.5, 0.5], [0.3, 0.3, 0], [0.7, 0.2, 0.1]]))
    obs = DispersionPoints(model, np.repeat(q, 3, axis=0), np.tile([0, 1, 2], 5))
    rng = np.random.default_rng(seed)
    out = []
    for T in TEMPS:
        with torch.no_grad():
            nu = obs(model.vector(constants_at(T))).numpy()
        out.append(Problem(obs, nu + noise * rng.standard_normal(nu.shape), sigma=np.full(len(nu), max(noise, 0.01)),
                           loss="chi2", background=False, name=f"T{T:.0f}"))
    return out


def test_a_linear_law_is_recovered():
    """Noise-free phonon frequencies of three temperatures with constants linear in T: the joint
    linear fit gives back a0 and the rates a1 to 1e-7 (relative), and φ(T) at each member."""
    model = xtds.IFCModel(AL, shells=2)
    res = fit_joint_series(dispersion_members(model), TEMPS, {k: 0.95 * v for k, v in A0.items()}, degree=1,
                           optimizer=xtds.LM(progress=False))
    np.testing.assert_allclose(res["coefficient"].sel(power=0).values, list(A0.values()), rtol=1e-7)
    np.testing.assert_allclose(res["coefficient"].sel(power=1).values, list(A1.values()), rtol=1e-6, atol=1e-12)
    for T in TEMPS:
        np.testing.assert_allclose(res["ifc"].sel(temperature=T).values, list(constants_at(T).values()), rtol=1e-7)
    assert res.attrs["center"] == 300.0 and "exact Jacobians" in res.attrs["message"]


def test_full_degree_equals_separate_fits():
    """With as many coefficients as members (degree 2 for three), the joint fit is the separate
    fits: the same constants (to 1e-4 of their errors: both fits stop where the loss changes by
    less than 1e-12) and the same errors at each temperature (noisy data)."""
    model = xtds.IFCModel(AL, shells=2)
    members = dispersion_members(model, noise=0.02, seed=3)
    start = {k: 0.95 * v for k, v in A0.items()}
    joint = fit_joint_series(members, TEMPS, start, degree=2, optimizer=xtds.LM(progress=False))
    for T, p in zip(TEMPS, members, strict=True):
        alone = fit_problems([p], start, optimizer=LM(progress=False))
        sel = alone.sel(constant=list(model.names))
        diff = np.abs(joint["ifc"].sel(temperature=T).values - sel["ifc"].values)
        assert np.all(diff < 1e-4 * sel["ifc_stderr"].values), diff / sel["ifc_stderr"].values
        np.testing.assert_allclose(joint["ifc_stderr"].sel(temperature=T).values, sel["ifc_stderr"].values, rtol=1e-5)


@pytest.mark.heavy
def test_powder_spectra_with_their_own_scales():
    """Powder spectra at three temperatures (each with its own free scale and constant) fitted with
    a linear law: the rates come back to 1e-6."""
    model = xtds.IFCModel(AL, shells=2)
    Q = np.arange(1.5, 5.01, 0.5)
    E = np.arange(6.0, 40.1, 3.0)
    members = []
    for i, T in enumerate(TEMPS):
        obs = PowderSpectrum(model, Q, E, T, resolution=2.0, mesh=6, normalize=False, multiphonon=(), dw_mesh=8,
                             reference=A0)
        with torch.no_grad():
            clean = obs(model.vector(constants_at(T))).numpy()
        data = (1.5 + 0.2 * i) * clean + 0.05 * clean.mean()
        members.append(Problem(obs, data, sigma=np.full(len(data), 0.01 * clean.std()), loss="chi2",
                               background="constant", name=f"T{T:.0f}"))
    res = fit_joint_series(members, TEMPS, A0, degree=1, optimizer=xtds.LM(progress=False))
    np.testing.assert_allclose(res["coefficient"].sel(power=1).values, list(A1.values()), rtol=1e-5, atol=1e-10)
    assert np.all(res["member_loss"].values < 1e-12)


def test_shared_parameters_take_one_value_for_every_member():
    """Truth with c1 the same at every temperature: ``shared=("c1",)`` fits one c1 (its a₁ zero
    with zero error, one coefficient fewer) and gives back a0, the other rates (to 1e-6) and φ(T);
    a shared parameter that does change with T leaves a misfit the free fit does not."""
    model = xtds.IFCModel(AL, shells=2)
    rates = {**A1, "c1": 0.0}

    def members(law):
        obs = dispersion_members(model)[0].observable
        out = []
        for T in TEMPS:
            with torch.no_grad():
                nu = obs(model.vector({k: A0[k] + law[k] * (T - 300.0) for k in A0})).numpy()
            out.append(Problem(obs, nu, sigma=np.full(len(nu), 0.01), loss="chi2", background=False, name=f"T{T:.0f}"))
        return out

    start = {k: 0.95 * v for k, v in A0.items()}
    res = fit_joint_series(members(rates), TEMPS, start, degree=1, shared=("c1",), optimizer=xtds.LM(progress=False))
    np.testing.assert_allclose(res["coefficient"].sel(power=0).values, list(A0.values()), rtol=1e-7)
    np.testing.assert_allclose(res["coefficient"].sel(power=1).values, list(rates.values()), rtol=1e-6, atol=1e-12)
    assert float(res["coefficient"].sel(constant="c1", power=1)) == 0.0
    assert float(res["coefficient_stderr"].sel(constant="c1", power=1)) == 0.0
    assert res.attrs["shared"] == "c1"
    # c1 moving with T (the A1 rate) cannot be followed by a shared c1
    bad = fit_joint_series(members(A1), TEMPS, start, degree=1, shared=("c1",), optimizer=xtds.LM(progress=False))
    free = fit_joint_series(members(A1), TEMPS, start, degree=1, optimizer=xtds.LM(progress=False))
    assert float(bad["member_loss"].sum()) > 1e3 * max(float(free["member_loss"].sum()), 1e-12)
    with pytest.raises(ValueError, match="not free parameters"):
        fit_joint_series(members(rates), TEMPS, start, shared=("gamma1",), optimizer=xtds.LM(progress=False))


def test_bad_input_is_named():
    model = xtds.IFCModel(AL, shells=2)
    members = dispersion_members(model)
    with pytest.raises(ValueError, match="3 coordinates for 2 members"):
        fit_joint_series(members[:2], TEMPS, A0, optimizer=xtds.LM(progress=False))
    with pytest.raises(ValueError, match="degree 3 needs at least 4 distinct coordinates"):
        fit_joint_series(members, TEMPS, A0, degree=3, optimizer=xtds.LM(progress=False))
