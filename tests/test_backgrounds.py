"""Backgrounds, diagnostics, statistics and the temperature's uncertainty on the paper's Ni grid."""

import math

import numpy as np
import pytest
import xarray as xr

import xtds
from xtds.datasets import paper_ni_ifcs, paper_ni_volume
from xtds.fitting import Background, diagnostics
from xtds.observables.scattering import compton

NI = xtds.datasets.paper_ni_crystal()
TARGET = paper_ni_ifcs("target")
START = paper_ni_ifcs("starting")
ALL = [n for n in TARGET if n != "a0"]  # the 16 free constants (a0, from the sum rule, is rounded in the table)


@pytest.fixture(scope="module")
def volume():
    return paper_ni_volume(n_max=12)  # 25³ voxels, |q| up to 7.4 Å⁻¹


def grid_q(ds):
    hkl = np.stack(np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij"), -1)
    return np.linalg.norm(NI.rlu_to_cartesian(hkl.reshape(-1, 3)), axis=1).reshape(hkl.shape[:3])


def rel_errors(res, ref=TARGET):
    return np.array([float(res["ifc"].sel(constant=n)) / ref[n] - 1 for n in ALL])


def test_compton_is_xraylib_per_atom_with_the_breit_dirac_factor():
    import xraylib

    q = np.array([0.5, 3.0, 8.0, 14.0])
    got = compton(["Mg2+", "O2-", "O"], q)
    want = [xraylib.SF_Compt(12, x) + 2 * xraylib.SF_Compt(8, x) for x in q / (4 * math.pi)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # recoil: λ' − λ = λ_C (1 − cos 2θ), λ_C = h/(m_e c) = 0.0242631 Å; factor (λ/λ')²
    E = 20.0
    lam = 12.398419843 / E
    two_theta = 2 * np.arcsin(q * lam / (4 * math.pi))
    factor = (lam / (lam + 0.02426310238 * (1 - np.cos(two_theta)))) ** 2
    np.testing.assert_allclose(compton(["Ni"], q, energy_keV=E) / compton(["Ni"], q), factor, rtol=1e-7)
    with pytest.raises(ValueError, match="Ewald sphere"):
        compton(["Ni"], [25.0], energy_keV=E)
    with pytest.raises(ValueError, match="unknown species"):
        compton(["Qq"], q)


@pytest.mark.heavy
def test_compton_background_recovers_every_constant_and_shows_when_missing(volume):
    C = compton(["Ni"], grid_q(volume).ravel()).reshape(volume["intensity"].shape)
    scale, amplitude, constant = 37.2, 0.8, 40.0
    data = volume.copy()
    data["intensity"] = scale * (volume["intensity"] + amplitude * C) + constant
    res = data.tds.fit(NI, shells=5, initial=START, background="compton", optimizer=xtds.LM(progress=False))
    # noise-free data of the model: measured max |relative error| 2e-10 (issue goal 1e-3)
    assert np.abs(rel_errors(res)).max() < 1e-6
    assert float(res["scale"]) == pytest.approx(scale, rel=1e-6)
    assert float(res["compton_amplitude"]) == pytest.approx(amplitude, rel=1e-6)
    assert float(res["background"]) == pytest.approx(constant, rel=1e-5)
    c11 = float(res["elastic_constants"].values[0, 0])
    assert c11 == pytest.approx(154.530, rel=1e-3)  # the Target's C11 (GPa), from the noise-free fit
    good = diagnostics(res)
    assert np.nanmax(np.abs(good["residual_mean_by_q"])) < 1e-7
    # the same data with a constant only: the fit goes wrong (C11 181 GPa measured) and the
    # diagnostics show a smooth |q| trend that carries most of the residual variance
    wrong = data.tds.fit(NI, shells=5, initial=START, background="constant",
                         optimizer=xtds.LM(max_iter=10, progress=False))
    bad = diagnostics(wrong)
    assert np.abs(rel_errors(wrong)).max() > 0.1
    assert bad.attrs["eta2_q"] > 0.5 and np.nanmax(np.abs(bad["residual_mean_by_q"])) > 0.02
    assert bad.attrs["max_abs_z_q"] > 10
    assert bad["count_by_q"].sum() == bad.attrs["n_points"] == res.sizes["point"]


@pytest.mark.heavy
def test_measured_data_are_fitted_with_quantum_statistics(volume):
    quantum = volume.tds.simulate(NI, TARGET, shells=5, model=xtds.TDSModel(quantum=True))
    del quantum.attrs["quantum"]  # a "measured" volume: no record of how it was made
    res = quantum.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    assert np.abs(rel_errors(res)).max() < 1e-8
    assert '"quantum": true' in res.attrs["settings"]
    classical = quantum.tds.fit(NI, shells=5, initial=START, model=xtds.TDSModel(quantum=False),
                                optimizer=xtds.LM(max_iter=4, progress=False))
    assert np.abs(rel_errors(classical)).max() > 0.05  # the statistics matter (issue: 12 % in b0)


@pytest.mark.heavy
def test_temperature_uncertainty_widens_the_errors_as_expected(volume):
    pts = volume.tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    sig = xtds.fit_points(pts, NI, 300.0, shells=5, initial=START, errors=xtds.Errors(temperature_stderr=5.0),
                          optimizer=xtds.LM(progress=False))
    base = sig.copy()  # the same fit without σ_T: noise-free data, Gauss–Newton errors ~10⁻¹² of σ_T's
    base["ifc_stderr"] = base["ifc_stderr"] * 0
    # expected: the shift of the optimum when T moves by 5 K, by refitting (classical data and
    # model: the constants scale as T exactly, so the shift is also 5/300 of each constant)
    hi = xtds.fit_points(pts, NI, 305.0, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    expected = np.abs(hi["ifc"].values - base["ifc"].values)
    widened = np.sqrt(sig["ifc_stderr"].values ** 2 - base["ifc_stderr"].values ** 2)
    np.testing.assert_allclose(widened, expected, rtol=1e-3)
    np.testing.assert_allclose(expected, np.abs(base["ifc"].values) * 5 / 300, rtol=1e-6)
    assert xr.DataArray(sig.attrs["problems"]).size == 1 and "temperature_stderr_K" in sig.attrs["problems"]
    with pytest.raises(ValueError, match="temperature_stderr"):
        xtds.fit_points(pts, NI, 300.0, shells=5, initial=START, errors=xtds.Errors(temperature_stderr=-1.0),
                        optimizer=xtds.LM(progress=False))


@pytest.mark.heavy
def test_corrections_and_a_smooth_background(volume):
    """Polarization and absorption multiply the model; a quadratic in |q| is added to the data."""
    from xtds.observables.tds.corrections import Corrections

    corr = Corrections(wavelength=0.5, sample_radius=0.05)  # 24.8 keV, a 100 µm sphere of Ni (μR ≈ 1)
    hkl = np.stack(np.meshgrid(*(volume[d].values for d in "HKL"), indexing="ij"), -1).reshape(-1, 3)
    factor = corr.factor(NI, NI.rlu_to_cartesian(hkl)).reshape(volume["intensity"].shape)
    assert 0.2 < factor.min() < factor.max() < 1
    x = grid_q(volume)
    data = volume.copy()
    data["intensity"] = 10.0 * volume["intensity"] * factor + 30.0 + 4.0 * x - 0.2 * x**2
    res = data.tds.fit(NI, shells=5, initial=START, corrections=corr, background=Background(polynomial=2),
                       optimizer=xtds.LM(progress=False))
    assert np.abs(rel_errors(res)).max() < 1e-6
    assert "Corrections" in res.attrs["settings"]
    qn = np.linalg.norm(NI.rlu_to_cartesian(np.stack([res[c].values for c in "HKL"], 1)), axis=1)
    np.testing.assert_allclose(res["model_background"].values, 30.0 + 4.0 * qn - 0.2 * qn**2, rtol=1e-6)
    with pytest.raises(ValueError, match="background must be"):
        volume.tds.fit(NI, shells=5, initial=START, background="spline", optimizer=xtds.LM(progress=False))
