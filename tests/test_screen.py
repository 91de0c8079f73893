"""Screening measured spectra (xtds.observables.neutron.screen) on a simulated ARCS spectrum with
known faults: a partial bad row, single spikes, a row scaled as a whole, pixels of tiny σ."""

import numpy as np
import pytest

from xtds.datasets import al_arcs
from xtds.observables.neutron.screen import screen_spectrum


@pytest.fixture(scope="module")
def spectrum():
    ds = al_arcs()
    valid = ds["valid"].values & np.isfinite(ds["sim_example"].values)
    clean = np.where(valid, ds["sim_example"].values, np.nan)
    noisy = clean + 0.02 * np.nanmax(np.abs(clean)) * np.random.default_rng(0).standard_normal(clean.shape)
    return ds["E"].values, ds["Q"].values, valid, noisy


def test_clean_noisy_spectrum_passes(spectrum):
    E, Q, valid, x = spectrum
    s = screen_spectrum(x, E, Q, mask=valid)
    assert s.clean and np.array_equal(s.mask, valid), s.report()


def test_partial_bad_row_and_spikes_are_named_exactly(spectrum):
    """13 pixels of one row 100× (the fault of the issue) and two spikes of 30 noise σ: exactly
    these 15 are flagged, the report names the row's energy, the mask leaves out exactly them."""
    E, Q, valid, x = spectrum
    bad = x.copy()
    row = 30
    cols = np.flatnonzero(valid[row])[:13]
    bad[row, cols] *= 100
    spikes = [(10, np.flatnonzero(valid[10])[20]), (50, np.flatnonzero(valid[50])[5])]
    for i, j in spikes:
        bad[i, j] += 30 * 0.02 * np.nanmax(np.abs(x))
    s = screen_spectrum(bad, E, Q, mask=valid)
    expect = {(float(E[row]), float(Q[j])) for j in cols} | {(float(E[i]), float(Q[j])) for i, j in spikes}
    assert {(e, q) for e, q, _, _ in s.pixels} == expect
    assert f"E = {E[row]:g} meV: 13 outlying pixels" in s.report()
    assert int((valid & ~s.mask).sum()) == 15


def test_row_scaled_as_a_whole_and_weights(spectrum):
    E, Q, valid, x = spectrum
    bad = x.copy()
    bad[40] *= 3.0
    s = screen_spectrum(bad, E, Q, mask=valid)
    assert [r[0] for r in s.rows] == [float(E[40])] and abs(s.rows[0][1] - 3.0) < 0.3
    assert not any(p[0] == float(E[40]) for p in s.pixels) and not s.mask[40].any()
    sigma = np.full(x.shape, 0.02)
    idx = np.flatnonzero(valid.ravel())[::90]  # about 1 % of the pixels with σ 100× smaller
    sigma.ravel()[idx] = 2e-4
    s = screen_spectrum(x, E, Q, mask=valid, sigma=sigma)
    assert s.weight_share > 0.5 and "poisson" in s.report()  # measured 0.89
    with pytest.raises(ValueError, match="shape"):
        screen_spectrum(x[:, :5], E, Q)


def test_clipped_pixels_are_named_and_left_out(spectrum):
    """A reduction that sets every value below a floor to the floor (as the source of the shipped
    ARCS spectra did to negative intensities): exactly the clipped pixels are named, with their
    value, and left out of the mask; no other pixel is flagged for it."""
    E, Q, valid, x = spectrum
    floor = np.nanpercentile(x[valid], 4)
    clipped = valid & (x <= floor)
    s = screen_spectrum(np.where(clipped, floor, x), E, Q, mask=valid)
    expect = {(float(E[i]), float(Q[j])) for i, j in zip(*np.nonzero(clipped), strict=True)}
    assert {(e, q) for e, q, _ in s.clipped} == expect
    assert f"{int(clipped.sum())} pixel(s) hold exactly the value(s) {floor:.6g}" in s.report()
    assert np.array_equal(s.clipped_mask, clipped) and not (s.mask & clipped).any()
    assert not s.rows and int((valid & ~clipped & ~s.mask).sum()) == len(s.pixels)
    assert screen_spectrum(np.where(clipped, floor, x), E, Q, mask=valid, clip_count=0).clipped == []
    # the measured spectra: 200-238 clipped pixels per temperature (counted here: 238, 228, 206, 200, 214)
    ds = al_arcs()
    n = [len(screen_spectrum(ds["chi"].sel(temperature=T).values, E, Q, mask=ds["valid"].values).clipped)
         for T in ds["temperature"].values]
    assert all(190 <= k <= 250 for k in n), n
