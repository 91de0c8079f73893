"""Censored points (data clipped at a limit by their reduction): the Tobit likelihood of
Problem(censored=...) against scipy, and a fit of clipped data that recovers the truth where
taking the limits as values does not."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

import xtds
from xtds.fitting.fit import fit_problems
from xtds.fitting.losses import residuals
from xtds.fitting.problem import Problem


def test_censored_residuals_are_the_gaussian_tail():
    """ρ² = −2 ln Φ((d − m)/σ) for a datum that bounds the truth from above (−1), −2 ln Φ((m − d)/σ)
    from below (+1), (d − m)/σ for measured points; finite gradients far on the allowed side."""
    m = torch.tensor([0.0, 1.0, -3.0, 2.0, 0.5, -400.0], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.1, 0.0], dtype=torch.float64)
    s = torch.full((6,), 0.5, dtype=torch.float64)
    c = torch.tensor([-1, -1, -1, 1, 0, -1])
    r = residuals(m, d, torch.ones(6), "chi2", True, s, c)
    u = (d - m).detach().numpy() / 0.5
    expect = np.array([-2 * norm.logcdf(u[0]), -2 * norm.logcdf(u[1]), -2 * norm.logcdf(u[2]),
                       -2 * norm.logcdf(-u[3]), u[4] ** 2, 0.0])
    np.testing.assert_allclose(r.detach().numpy() ** 2, expect, rtol=1e-12, atol=1e-300)
    (r**2).sum().backward()
    assert torch.isfinite(m.grad).all() and m.grad[-1] == 0


def test_censored_flags_are_checked(tiny_al_powder):
    obs = tiny_al_powder
    n = len(obs)
    with pytest.raises(ValueError, match="not booleans"):
        Problem(obs, np.ones(n), sigma=np.ones(n), loss="chi2", censored=np.zeros(n, bool))
    with pytest.raises(ValueError, match="−1, 0, \\+1"):
        Problem(obs, np.ones(n), sigma=np.ones(n), loss="chi2", censored=np.full(n, 2))
    with pytest.raises(ValueError, match="loss='chi2'"):
        Problem(obs, np.ones(n), loss="poisson", censored=-np.ones(n, int))


def test_a_fit_of_clipped_data_recovers_the_truth(al_powder_sqe):
    """A powder S(|Q|, E) with 2 % noise, a background, and every value below a floor set to the
    floor (about a quarter of the points, as a reduction that sets negative intensities to zero):
    with the clipped points censored the constants, scale and background come back within 3σ; taken
    as values they pull the background up by more than 5σ."""
    model, true, obs, clean = al_powder_sqe
    top = clean.max()
    sigma = 0.02 * top * np.ones_like(clean)
    truth = clean - 0.05 * top  # a negative constant: background over-subtracted
    noisy = truth + sigma * np.random.default_rng(7).standard_normal(len(clean))
    floor = 0.0
    clipped = noisy < floor
    assert 0.15 < clipped.mean() < 0.45, clipped.mean()
    data = np.where(clipped, floor, noisy)
    out = {}
    for label, cens in (("censored", -clipped.astype(int)), ("as values", None)):
        prob = Problem(obs, data, sigma=sigma, loss="chi2", censored=cens)
        out[label] = fit_problems([prob], true, optimizer=xtds.LM(progress=False))
    r = out["censored"]
    for n in model.names:
        assert abs(float(r["ifc"].sel(constant=n)) - true[n]) < 3 * float(r["ifc_stderr"].sel(constant=n)), n
    assert abs(float(r["background"]) + 0.05 * top) < 3 * float(r["background_stderr"])
    assert abs(float(r["scale"]) - 1) < 3 * float(r["scale_stderr"])
    bad = out["as values"]
    assert float(bad["background"]) + 0.05 * top > 5 * float(bad["background_stderr"])
