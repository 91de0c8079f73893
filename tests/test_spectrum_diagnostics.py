"""Residual diagnostics of (E, |Q|) spectra: noise alone looks like noise, a missing smooth term
shows in the smooth share and the binned means."""

import numpy as np
import pytest

import xtds
from xtds.fitting.diagnostics import smooth_share, spectrum_diagnostics
from xtds.fitting.fit import fit_problems
from xtds.fitting.problem import Problem


def test_pixel_noise_of_a_smooth_signal():
    """White noise of σ = 0.02 on a signal smooth over a few pixels: both axes' estimates within
    10 % (the second differences leave the signal's curvature, not the noise)."""
    from xtds.observables.neutron.screen import pixel_noise

    E, Q = np.meshgrid(np.linspace(0, 1, 70), np.linspace(0, 1, 90), indexing="ij")
    x = np.sin(3 * E) * np.cos(2 * Q) + 0.02 * np.random.default_rng(3).standard_normal(E.shape)
    est = pixel_noise(x)
    assert abs(est["energy"] / 0.02 - 1) < 0.1 and abs(est["q"] / 0.02 - 1) < 0.1


def test_smooth_share_of_noise_and_of_a_smooth_field():
    rng = np.random.default_rng(0)
    mask = rng.random((60, 80)) < 0.8
    noise = rng.standard_normal(mask.shape)
    share = smooth_share(noise, mask, 6)
    assert share < 3 * 36 / mask.sum()  # about modes²/N for independent noise
    E, Q = np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 80), indexing="ij")
    assert smooth_share(noise + 8 * np.cos(2 * E) * Q, mask, 6) > 0.8  # its variance is about 8.5× the noise


@pytest.fixture(scope="module")
def fitted(al_powder_sqe):
    """Al powder S(|Q|, E) with 1 % noise and an E-dependent background the model lacks."""
    model, true, obs, clean = al_powder_sqe
    sigma = 0.01 * clean.max() * np.ones_like(clean)
    noise = sigma * np.random.default_rng(4).standard_normal(len(clean))
    out = {}
    for label, extra in (("clean", 0.0), ("slope", 0.004 * clean.max() * (obs.point_energy - 23.0))):
        prob = Problem(obs, clean + noise + extra, sigma=sigma, loss="chi2")
        res = fit_problems([prob], true, optimizer=xtds.LM(progress=False))
        out[label] = spectrum_diagnostics(res, prob)
    return out


def test_noise_only_fit_has_no_structure(fitted):
    d = fitted["clean"]
    assert 0.85 < d.attrs["rms"] < 1.15
    # the noise the data show pixel to pixel is an upper bound where the signal is sharp on the pixel
    # scale (this coarse, k-mesh-6 spectrum: 0.56 measured), so the ratio is at most about 1 here
    assert d.attrs["residual_over_noise"] < 1.1, d.attrs["residual_over_noise"]
    assert d.attrs["smooth_share"] < 4 * d.attrs["smooth_share_noise"]
    assert d["residual_map"].shape == (35, 21)


def test_a_missing_energy_slope_is_seen(fitted):
    d = fitted["slope"]
    z = d["residual_mean_by_energy"].values / d["residual_stderr_by_energy"].values
    assert d.attrs["smooth_share"] > 10 * d.attrs["smooth_share_noise"]
    assert np.nanmax(np.abs(z)) > 5 and d.attrs["eta2_energy"] > 5 * fitted["clean"].attrs["eta2_energy"]
    assert d.attrs["residual_over_noise"] > 1.5 * fitted["clean"].attrs["residual_over_noise"]
    pytest.importorskip("matplotlib")
    from xtds.plot import plot_spectrum_residuals

    fig = plot_spectrum_residuals(d)
    assert len(fig.axes) == 4  # three panels and the colour bar


def test_noise_map_follows_noise_that_varies_across_the_map():
    """σ rising 6× across the map (as counts and the Bose factor make it on measured spectra): the
    map's rms is the true rms σ within 5 % (the residual rms of a perfect model), its pixels follow
    the true σ (correlation > 0.9), while one pooled robust spread is the typical σ, > 10 % lower.
    One bad pixel (100 σ) moves the map near it by < 30 % (medians, not means)."""
    from xtds.observables.neutron.screen import noise_map, pixel_noise

    E, Q = np.meshgrid(np.linspace(0, 1, 70), np.linspace(0, 1, 101), indexing="ij")
    sigma = 0.01 + 0.05 * E * Q
    x = np.sin(3 * E) * np.cos(2 * Q) + sigma * np.random.default_rng(1).standard_normal(E.shape)
    est = noise_map(x)
    rms = np.sqrt(np.mean(sigma**2))
    assert abs(np.sqrt(np.mean(est**2)) / rms - 1) < 0.05
    assert np.corrcoef(est.ravel(), sigma.ravel())[0, 1] > 0.9
    assert pixel_noise(x)["sigma"] < 0.9 * rms
    bad = x.copy()
    bad[35, 50] += 100 * sigma[35, 50]
    assert np.max(np.abs(noise_map(bad)[31:40, 46:55] / est[31:40, 46:55] - 1)) < 0.3
    mask = np.ones(x.shape, bool)
    mask[:, :30] = False
    assert np.isnan(noise_map(x, mask)[:, :30]).all() and np.isfinite(noise_map(x, mask)[:, 30:]).all()
    with pytest.raises(ValueError, match="odd"):
        noise_map(x, window=4)
