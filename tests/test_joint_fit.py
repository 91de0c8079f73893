"""A second kind of data plugs into the fit without touching the fit loop.

:class:`xtds.observables.DispersionPoints` is the classic Born–von Kármán data: phonon frequencies
measured at wave vectors (triple-axis or IXS), an observable of the
:class:`xtds.observables.Observable` protocol. It is fitted alone, and jointly with a TDS volume as a sum
of :class:`xtds.Problem` objects sharing one vector of force constants.
"""

import numpy as np
import pytest
import torch

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.fitting import LM, Problem, fit_problems, points_problem
from xtds.observables import DispersionPoints, Observable, PeriodicSupercell, supercell_q_grid, tds_intensity

NI = xtds.datasets.paper_ni_crystal()
TRUTH = {"b0": -1.0, "b1": 0.06, "b2": -1.04, "c0": 0.14, "c1": -0.01}
START = {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}


@pytest.fixture(scope="module")
def problems():
    model = xtds.IFCModel(NI, shells=2)
    truth = model.vector(TRUTH)
    # a TDS volume on the 2×2×2 supercell grid, noise-free, reduced to its irreducible points
    q = supercell_q_grid(NI, 2, 4)
    with torch.no_grad():
        I = tds_intensity(model, truth, q, 300.0, geometry=PeriodicSupercell(2)).numpy()
    c = np.arange(-4, 5) / 2.0
    import xarray as xr

    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.reshape(9, 9, 9))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={"temperature": 300.0, "geometry": repr(PeriodicSupercell(2))})
    pts = ds.tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    # 2% noise per voxel, averaged over each point's voxels; fitted by χ² (with scale and background)
    rel = 0.02 / np.sqrt(pts["multiplicity"].values)
    pts["sigma"] = ("point", rel * pts["intensity"].values)
    pts["intensity"] = pts["intensity"] * (1 + rel * np.random.default_rng(4).standard_normal(pts.sizes["point"]))
    volume = points_problem(pts, model, 300.0, loss="chi2", name="volume")
    # frequencies along Γ–X and Γ–L with 0.05 THz noise (seeded)
    hkl = np.concatenate([np.outer(np.linspace(0.2, 1.0, 5), [1, 0, 0]), np.outer(np.linspace(0.1, 0.5, 4), [1, 1, 1])])
    k = NI.rlu_to_cartesian(hkl)
    disp_obs = DispersionPoints(model, np.repeat(k, 3, axis=0), np.tile([0, 1, 2], len(k)))
    with torch.no_grad():
        nu = disp_obs(truth).numpy()
    sigma = np.full(len(nu), 0.05)
    nu_meas = nu + sigma * np.random.default_rng(5).standard_normal(len(nu))
    points = Problem(disp_obs, nu_meas, sigma=sigma, loss="chi2", background=False, name="phonons",
                     data_name="frequency", data_attrs={"units": "THz"})
    return model, volume, points


def test_the_new_kind_follows_the_protocol(problems):
    _, _, points = problems
    assert isinstance(points.observable, Observable) and points.n_nuisance == 0


def test_dispersion_points_alone_give_honest_errors(problems):
    _, _, points = problems
    res = fit_problems(points, START, optimizer=xtds.LM(progress=False))
    z = np.array([(float(res["ifc"].sel(constant=n)) - v) / float(res["ifc_stderr"].sel(constant=n))
                  for n, v in TRUTH.items()])
    assert np.all(np.abs(z) < 3), z  # 5 constants from 27 noisy frequencies, within 3σ
    assert res["phonons_frequency"].attrs["units"] == "THz"
    chi2_dof = float(res.attrs["final_loss"]) / json_problems(res)[0]["dof"]
    assert 0.3 < chi2_dof < 2.5  # χ²/dof of 22 degrees of freedom: 1 ± 0.3 (1σ)


def json_problems(res):
    import json

    return json.loads(res.attrs["problems"])


def test_joint_fit_of_a_volume_and_dispersion_points(problems):
    model, volume, points = problems
    alone = fit_problems(points, START, optimizer=xtds.LM(progress=False))
    joint = fit_problems([volume, points], START, optimizer=LM(max_iter=30, progress=False))
    vol_alone = fit_problems(volume, START, optimizer=xtds.LM(progress=False))
    z = np.array([(float(joint["ifc"].sel(constant=n)) - v) / float(joint["ifc_stderr"].sel(constant=n))
                  for n, v in TRUTH.items()])
    assert np.all(np.abs(z) < 3), z
    # both kinds of data are χ² in units of their σ: the joint errors are below each one's alone
    for single in (alone, vol_alone):
        assert np.all(joint["ifc_stderr"].values[1:] < single["ifc_stderr"].values[1:])
    # each problem's data and model in the result, under its name and its own point dimension
    assert joint["volume_intensity"].dims == ("volume_point",) and joint["phonons_model_frequency"].size == 27
    # the loss is the sum of the problems' losses
    phi = model.vector({n: float(joint["ifc"].sel(constant=n)) for n in TRUTH})
    nu = torch.tensor([np.log(float(joint["volume_scale"])), float(joint["volume_background"])], dtype=torch.float64)
    with torch.no_grad():
        total = sum(float((p.residuals(phi, n) ** 2).sum()) for p, n in ((volume, nu), (points, None)))
    assert float(joint.attrs["final_loss"]) == pytest.approx(total, rel=1e-10)
    stats = json_problems(joint)
    assert [s["name"] for s in stats] == ["volume", "phonons"]


def test_joint_fit_needs_named_problems(problems):
    _, volume, points = problems
    unnamed = Problem(points.observable, points.data, sigma=points.sigma, loss="chi2", background=False)
    with pytest.raises(ValueError, match="distinct, non-empty names"):
        fit_problems([volume, unnamed], START, optimizer=xtds.LM(progress=False))


def test_problems_must_share_the_model(problems):
    _, volume, points = problems
    obs = points.observable
    other = Problem(DispersionPoints(xtds.IFCModel(xtds.Crystal.preset("Cu"), shells=2), obs.q, obs.branch),
                    points.data, sigma=points.sigma, loss="chi2", background=False, name="cu")
    with pytest.raises(ValueError, match="share one IFCModel"):
        fit_problems([volume, other], START, optimizer=xtds.LM(progress=False))


def test_paper_constants_are_unchanged_by_the_joint_machinery():
    """fit_points is fit_problems with one problem: the paper's Target is reached from Starting."""
    from xtds.datasets import paper_ni_volume

    pts = paper_ni_volume(n_max=6).tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    res = xtds.fit_points(pts, NI, 300.0, shells=5, initial=paper_ni_ifcs("starting"),
                          optimizer=xtds.LM(progress=False))
    target = paper_ni_ifcs("target")
    assert max(abs(float(res["ifc"].sel(constant=n)) - v) for n, v in target.items() if n != "a0") < 1e-8
