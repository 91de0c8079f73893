"""End-to-end fits: the paper's Ni benchmark on reduced grids, honest errors, checkpoints, CLI."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.datasets import paper_ni_ifcs, paper_ni_volume, small_ni_nexus
from xtds.errors import UnstableError
from xtds.fitting import Adam, fit, fit_points
from xtds.observables import PeriodicSupercell, tds_intensity

NI = xtds.datasets.paper_ni_crystal()
TARGET = paper_ni_ifcs("target")
START = paper_ni_ifcs("starting")
NAMES = [n for n in TARGET if n != "a0"]


def errors(res, ref=TARGET):
    return np.array([float(res["ifc"].sel(constant=n)) - ref[n] for n in NAMES])


@pytest.fixture(scope="module")
def volume16():
    return paper_ni_volume(n_max=16)  # 33³ voxels of the paper's 5×5×5 supercell grid


@pytest.mark.heavy
def test_full_3d_converges_to_target(volume16):
    res = volume16.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    # noise-free data from the same model: the optimum is the Target itself (issue goal 2e-4)
    assert np.abs(errors(res)).max() < 1e-8
    assert res.attrs["converged"] == 1
    assert res["ifc"].attrs["units"] == "eV/Å^2" and res["ifc_stderr"].dims == ("constant",)
    a0 = float(res["ifc"].sel(constant="a0"))
    sum_rule = -(8 * TARGET["b0"] + 4 * TARGET["b1"] + 2 * TARGET["c0"] + 4 * TARGET["c1"] + 8 * TARGET["d0"]
                 + 16 * TARGET["d1"] + 8 * TARGET["e0"] + 4 * TARGET["e1"] + 8 * TARGET["f0"] + 8 * TARGET["f1"]
                 + 8 * TARGET["f2"])
    assert a0 == pytest.approx(sum_rule, abs=1e-8)  # paper Eq. 3
    for name in ("dispersion", "dos", "elastic_constants", "loss", "model_intensity", "residual"):
        assert name in res
    assert res["loss"].values[-1] < 1e-20 < res["loss"].values[0]
    assert np.abs(res["residual"]).max() < 1e-8
    assert res.attrs["xtds_version"] == xtds.__version__ and "exact" in res.attrs["settings"]


@pytest.mark.heavy
def test_wedge_converges(volume16):
    wedge = volume16.tds.wedge(normal=(0, 1, 0), half_angle=10, crystal=NI)
    res = fit(wedge, NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    assert np.abs(errors(res)).max() < 5e-4
    assert "wedge" in res.attrs["preparation"]


@pytest.mark.heavy
def test_stderr_is_honest_for_sampled_noise():
    """A target with the Monte-Carlo noise of 10⁵ configurations: the fitted constants scatter
    about the Target as the reported errors say (|z| < 3 for ≥ 15 of 16), and the errors are
    not inflated either (RMS z above 0.3)."""
    ds = paper_ni_volume(n_max=16, noise_configurations=100_000, emulate_with=60, seed=3)
    res = ds.tds.fit(NI, shells=5, initial=START, errors=xtds.Errors(noise_configurations=100_000, noise_draws=120),
                     optimizer=xtds.LM(progress=False))
    se = np.array([float(res["ifc_stderr"].sel(constant=n)) for n in NAMES])
    z = errors(res) / se
    assert (np.abs(z) < 3).sum() >= 15, z
    assert np.sqrt(np.mean(z**2)) > 0.3, z
    assert np.abs(errors(res)).max() > 1e-7  # the noise does move the optimum


@pytest.mark.heavy
def test_chi2_with_scale_and_background(volume16):
    sub = volume16.isel(H=slice(8, 25), K=slice(8, 25), L=slice(8, 25))
    data = 3.0 * sub["intensity"] + 5.0
    ds = sub.assign(intensity=data, sigma=0.01 * data)
    pts = ds.tds.symmetrize().tds.to_points()
    pts["sigma"] = 0.01 * pts["intensity"] / np.sqrt(pts["multiplicity"])
    res = fit_points(pts, NI, 300.0, shells=5, initial=START, loss="chi2", optimizer=xtds.LM(progress=False))
    assert np.abs(errors(res)).max() < 1e-6
    assert float(res["scale"]) == pytest.approx(3.0, rel=1e-7)
    assert float(res["background"]) == pytest.approx(5.0, abs=1e-4)


@pytest.mark.heavy
def test_checkpoint_resume_after_a_kill(volume16, tmp_path):
    pts = volume16.isel(H=slice(8, 25), K=slice(8, 25), L=slice(8, 25)).tds.symmetrize().tds.to_points()
    full = fit_points(pts, NI, 300.0, shells=5, initial=START, optimizer=xtds.LM(progress=False))

    def kill(it, x, loss):
        if it == 3:
            raise KeyboardInterrupt  # the fit dies in its third iteration

    ck = tmp_path / "fit.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit_points(pts, NI, 300.0, shells=5, initial=START,
                   optimizer=xtds.LM(progress=False, checkpoint=ck, callback=kill))
    assert ck.exists()
    resumed = fit_points(pts, NI, 300.0, shells=5, initial=START, optimizer=xtds.LM(progress=False, checkpoint=ck))
    assert resumed.attrs["resumed_from"] == 2
    np.testing.assert_allclose(resumed["ifc"].values, full["ifc"].values, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="other settings"):
        fit_points(pts, NI, 250.0, shells=5, initial=START, optimizer=xtds.LM(progress=False, checkpoint=ck))


@pytest.mark.heavy
def test_adam_sampled_resume_is_exact(tmp_path):
    model = xtds.IFCModel(NI, shells=2)
    start = {"b0": -0.9, "b1": 0.05, "b2": -0.9, "c0": 0.1, "c1": 0.0}
    c = np.arange(-4, 5) / 2.0
    hkl = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    q = NI.rlu_to_cartesian(hkl)
    with torch.no_grad():
        I = tds_intensity(model, model.vector({**start, "b0": -1.0}), q, 300.0, geometry=PeriodicSupercell(2),
                          quantum=False)
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(9, 9, 9))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    pts = ds.tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    kw = dict(shells=2, initial=start, model=xtds.TDSModel(method="sampled", quantum=False, n_samples=4))
    full = fit_points(pts, NI, 300.0, optimizer=Adam(epochs=8, lr=0.01, progress=False), **kw)
    assert full["loss"].sizes["iteration"] == 8

    def kill(it, x, loss):
        if it == 5:
            raise KeyboardInterrupt

    ck = tmp_path / "adam.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit_points(pts, NI, 300.0,
                   optimizer=Adam(epochs=8, lr=0.01, checkpoint_every=2, checkpoint=ck, callback=kill, progress=False),
                   **kw)
    res = fit_points(pts, NI, 300.0, optimizer=Adam(epochs=8, lr=0.01, checkpoint_every=2, checkpoint=ck,
                                                    progress=False), **kw)
    assert res.attrs["resumed_from"] == 4  # the last checkpoint before the kill in epoch 5
    np.testing.assert_allclose(res["ifc"].values, full["ifc"].values, rtol=0, atol=1e-12)


@pytest.mark.heavy
def test_preconditioned_adam_reaches_the_target():
    """The sampled model and Adam from a distant start: in coordinates whitened by the Gauss–Newton
    metric, 100 epochs get within the Monte-Carlo noise of the target (measured: 0.016–0.021
    eV/Å² over six seeds); in raw coordinates Adam zig-zags in the narrow valley (0.093–0.103)."""
    model = xtds.IFCModel(NI, shells=2)
    truth = {"b0": -1.0, "b1": 0.06, "b2": -1.04, "c0": 0.14, "c1": -0.01}
    start = {"b0": -0.9, "b1": -0.1, "b2": -0.8, "c0": 0.08, "c1": -0.07}
    c = np.arange(-8, 9) / 2.0
    q = NI.rlu_to_cartesian(np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3))
    with torch.no_grad():
        I = tds_intensity(model, model.vector(truth), q, 300.0, geometry=PeriodicSupercell(2), quantum=False)
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(17, 17, 17))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    pts = ds.tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    err = {}
    for pre in (True, False):
        res = fit_points(pts, NI, 300.0, shells=2, initial=start,
                         model=xtds.TDSModel(method="sampled", quantum=False, seed=2),
                         optimizer=Adam(epochs=100, precondition=pre, progress=False))
        err[pre] = max(abs(float(res["ifc"].sel(constant=k)) - v) for k, v in truth.items())
        assert (res["ifc_stderr"] >= res["ifc_optimizer_stderr"]).all() and (res["ifc_optimizer_stderr"] > 0).all()
    assert err[True] < 0.04 and err[True] < 0.5 * err[False]


def test_bad_inputs(volume16):
    with pytest.raises(ValueError, match="temperature"):
        volume16.drop_attrs().assign_coords().tds.fit(NI, shells=5, initial=START)
    unstable = {k: v for k, v in START.items() if k != "a0"} | {"b0": 0.5, "b2": 0.0}
    with pytest.raises(UnstableError, match="starting force constants are dynamically unstable"):
        volume16.tds.fit(NI, shells=5, initial=unstable, optimizer=xtds.LM(progress=False))
    with pytest.raises(ValueError, match="give starting force constants"):
        volume16.tds.fit(NI, shells=5, optimizer=xtds.LM(progress=False))


def test_simulate_matches_the_model(volume16):
    sim = volume16.tds.simulate(NI, TARGET, shells=5)
    np.testing.assert_allclose(sim["intensity"].values, volume16["intensity"].values, rtol=1e-12)


@pytest.mark.heavy
def test_cli_fit_on_an_nxrefine_file(tmp_path):
    pytest.importorskip("matplotlib")
    path = small_ni_nexus(tmp_path / "ni.nxs", n_max=8)
    cmd = [sys.executable, "-m", "xtds.cli", "fit", str(path), "--crystal", "Ni", "--shells", "5", "--initial",
           "starting", "--out", str(tmp_path / "fit.nc"), "--plots", str(tmp_path / "plots"), "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "b2" in res.stdout and "-1.041000" in res.stdout
    back = xr.open_dataset(tmp_path / "fit.nc", engine="h5netcdf")
    assert float(back["ifc"].sel(constant="b0")) == pytest.approx(TARGET["b0"], abs=1e-8)
    for png in ("dispersion.png", "convergence.png", "slice_HK0.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    info = subprocess.run([sys.executable, "-m", "xtds.cli", "info", str(path)], capture_output=True, text=True)
    assert "masked_transform" in info.stdout and "temperature: 300.0" in info.stdout


ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_initial_from_phonopy(volume16):
    pytest.importorskip("phonopy")
    from xtds.io import phonopy as phonopy_io

    model = xtds.IFCModel(NI, shells=5)
    ph = phonopy_io.to_phonopy(model, {k: v for k, v in START.items() if k != "a0"}, 4)  # e.g. from DFT
    sub = volume16.isel(H=slice(8, 25), K=slice(8, 25), L=slice(8, 25))
    res = sub.tds.fit(NI, shells=5, initial=ph, optimizer=xtds.LM(progress=False))
    start = json.loads(res.attrs["initial_ifc"])
    assert start["b2"] == pytest.approx(START["b2"], abs=1e-12)
    assert np.abs(errors(res)).max() < 1e-8


@pytest.mark.heavy
def test_one_phonon_on_an_arbitrary_grid():
    """Data off any supercell grid: geometry 'auto' picks the infinite crystal; the one-phonon
    model (Debye–Waller included, which fixes the IFC scale) recovers the constants."""
    model = xtds.IFCModel(NI, shells=2)
    true = {"b0": -1.0, "b1": 0.06, "b2": -1.05, "c0": 0.13, "c1": -0.01}
    start = {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}
    c = np.linspace(-2.63, 2.63, 9)  # 0.6575 r.l.u. steps: no Bragg point, no supercell grid
    hkl = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    from xtds.observables import InfiniteCrystal, auto_geometry

    assert isinstance(auto_geometry(hkl)[0], InfiniteCrystal)
    with torch.no_grad():
        I = tds_intensity(model, model.vector(true), NI.rlu_to_cartesian(hkl), 300.0, method="one_phonon",
                          geometry=InfiniteCrystal())
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(9, 9, 9))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    with pytest.raises(ValueError, match=r"records no unit cell .* ds.attrs\['unit_cell'\]"):
        ds.tds.fit(xtds.Crystal.preset("Al"), shells=2, initial=start)  # nothing would show Al is wrong
    ds.attrs["unit_cell"] = list(NI.parameters)
    res = ds.tds.fit(NI, shells=2, initial=start, model=xtds.TDSModel(method="one_phonon"),
                     optimizer=xtds.LM(progress=False))
    got = np.array([float(res["ifc"].sel(constant=n)) for n in true])
    np.testing.assert_allclose(got, list(true.values()), atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize(("wedge", "tolerance"), [(None, 2e-4), (10.0, 5e-4)])
def test_paper_benchmark_full_grid(wedge, tolerance):
    """The paper's set-up itself (81³ grid, 500 atoms, 300 K): within the issue's tolerances in
    under 2 minutes on the 2-core machine."""
    import time

    ds = paper_ni_volume(n_max=40)
    t = time.perf_counter()
    if wedge:
        ds = ds.tds.wedge(normal=(0, 1, 0), half_angle=wedge, crystal=NI)
    res = ds.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    assert time.perf_counter() - t < 120
    assert np.abs(errors(res)).max() < tolerance


@pytest.mark.heavy
def test_max_points_fits_a_reproducible_random_subset(volume16):
    """``max_points``: a random subset of the irreducible points (drawn with ``seed``), recorded in
    the preparation attrs; noise-free data still give the target (the subset loses no truth)."""
    res = volume16.tds.fit(NI, shells=5, initial=START, prepare=xtds.Preparation(max_points=300),
                           optimizer=xtds.LM(progress=False))
    prep = json.loads(res.attrs["preparation"])
    assert prep["n_points_fitted"] == res.attrs["n_points"] == 300 and prep["n_points_available"] is None  # sampled
    assert prep["subset"]["seed"] == 0 and prep["subset"]["max_points"] == 300
    assert np.abs(errors(res)).max() < 1e-7
    again = volume16.tds.fit(NI, shells=5, initial=START, prepare=xtds.Preparation(max_points=300),
                             optimizer=xtds.LM(max_iter=1, progress=False))
    np.testing.assert_array_equal(again["H"].values, res["H"].values)  # the same points for the same seed
    with pytest.raises(ValueError, match="max_points"):
        volume16.tds.fit(NI, shells=5, initial=START, prepare=xtds.Preparation(max_points=0),
                         optimizer=xtds.LM(progress=False))


def test_the_fit_takes_objects_and_says_what_it_takes():
    """ds.tds.fit takes the crystal, its range, the start and the temperature, and grouped settings
    (at most 12 parameters); a misplaced argument or a misspelled setting is a clear error."""
    import inspect

    assert len(inspect.signature(xr.Dataset().tds.fit).parameters) <= 12
    ds = paper_ni_volume(n_max=3)
    with pytest.raises(ValueError, match="temperature is a keyword"):
        ds.tds.fit(NI, 300.0, START)  # the old order (crystal, temperature, shells)
    with pytest.raises(TypeError, match=r"Preparation has no setting \['brag'\]"):
        ds.tds.fit(NI, shells=5, initial=START, prepare={"brag": 0.1})
    with pytest.raises(TypeError, match="model must be a TDSModel"):
        ds.tds.fit(NI, shells=5, initial=START, model="exact")
    with pytest.raises(ValueError, match="no optimizer named"):
        xtds.Optimizer.named("bfgs")
    with pytest.raises(ValueError, match="has no setting"):
        xtds.Optimizer.named("lm", epochs=3)
    assert isinstance(xtds.Optimizer.default_for(True, epochs=3), Adam)


@pytest.mark.parametrize("jitter", [0.0, 1e-5, 1e-3, -4e-3])
def test_points_at_reciprocal_lattice_points_are_refused_even_jittered(jitter):
    """An infinite crystal has no diffuse intensity at an allowed Bragg reflection; a point a
    written coordinate's jitter away from one is the Bragg peak all the same (b0 −1.83 instead of
    −1.36 in the hostile run): refused, with the fix."""
    model = xtds.IFCModel(NI, shells=1)
    hkl = np.array([[0.5, 0.25, 0.0], [2.0 + jitter, 0.0 + jitter, 0.0 - jitter]])
    with pytest.raises(ValueError, match=r"within 0.005 r.l.u. of\) reciprocal-lattice points .*bragg=0.1"):
        xtds.TDSModel().observable(model, NI.rlu_to_cartesian(hkl), 300.0, hkl=hkl)
    fine = np.array([[0.5, 0.25, 0.0], [2.01, 0.0, 0.0], [1.0, 0.0, 0.0]])  # 100 is forbidden for fcc: fine
    xtds.TDSModel().observable(model, NI.rlu_to_cartesian(fine), 300.0, hkl=fine)


@pytest.mark.parametrize("bad", [True, False, "300 K", float("nan"), -300.0, 0.0])
def test_a_temperature_is_a_positive_number_of_kelvin(bad):
    from xtds.errors import check_temperature

    with pytest.raises(ValueError, match="temperature must be"):
        check_temperature(bad)


@pytest.mark.parametrize("bad", [1e-300, 1e-4, 2e5, 1e300])
def test_a_temperature_outside_a_solid_s_range_is_refused_by_name(bad):
    """T = 1e-300 K gave constants of order 1e-8 (the displacements underflow) and was blamed on the
    q-points: now the temperature is named, with the range and the units to give."""
    from xtds.errors import T_MAX_K, T_MIN_K, check_temperature

    with pytest.raises(ValueError, match=r"temperature .* K is outside 0.001–100000 K.*kelvin"):
        check_temperature(bad)
    assert check_temperature(T_MIN_K) == T_MIN_K and check_temperature(T_MAX_K) == T_MAX_K
    model = xtds.IFCModel(NI, shells=1)
    hkl = np.array([[0.5, 0.25, 0.0], [0.3, 0.1, 0.0]])
    with pytest.raises(ValueError, match="is outside"):
        xtds.TDSModel().observable(model, NI.rlu_to_cartesian(hkl), bad, hkl=hkl)
