"""The Levenberg–Marquardt loop's rules: stopping within a fraction of the standard errors, the
damping after a rejected step, and NL2SOL's choice between the Gauss–Newton and augmented models."""

import numpy as np
import pytest

from xtds.fitting.lm import LM, _prefer_augmented, _shrink, levenberg_marquardt_exact

T = np.linspace(0.0, 4.0, 200)
TRUE = np.array([2.0, 1.3, 0.4, 0.7])


def model(x):
    """A damped oscillation plus a constant: nonlinear in three of its four parameters."""
    a, b, w, c = x
    return a * np.exp(-b * T) * np.cos(w * T * 3) + c


def jac(x):
    a, b, w, c = x
    e, co, si = np.exp(-b * T), np.cos(w * T * 3), np.sin(w * T * 3)
    return np.stack([e * co, -a * T * e * co, -a * e * si * 3 * T, np.ones_like(T)], 1)


def fit(data, stop_sigma, x0=(1.5, 1.0, 0.45, 0.5)):
    return levenberg_marquardt_exact(lambda x: (model(x) - data, jac(x)), np.array(x0, float), progress=False,
                                     stop_sigma=stop_sigma, max_iter=200)


def test_stops_within_the_standard_errors_on_noisy_data():
    """With noise (σ = 0.05), the fit that stops once the next step is below 1e-3 standard errors
    ends within 1e-3 standard errors of the fully converged one (tolerances alone), with a loss
    within 1e-6 f/(m − n) of it, in no more iterations; the rule is what stopped it."""
    data = model(TRUE) + np.random.default_rng(0).normal(0, 0.05, T.shape)
    (res, J), (full, _) = fit(data, 1e-3), fit(data, None)
    assert "standard errors" in res.message and "standard errors" not in full.message
    s2 = full.loss / (len(T) - len(TRUE))
    stderr = np.sqrt(np.diag(np.linalg.inv(J.T @ J)) * s2)
    assert np.all(np.abs(res.x - full.x) <= 1e-3 * stderr)
    assert abs(res.loss - full.loss) <= 1e-6 * s2
    assert res.iterations <= full.iterations


def test_never_stops_early_on_noise_free_data():
    """Without noise the step and the standard errors shrink together: the rule never fires, and
    the fit reaches the true parameters to 1e-9."""
    res, _ = fit(model(TRUE), 1e-3)
    assert "standard errors" not in res.message
    np.testing.assert_allclose(res.x, TRUE, rtol=1e-9)


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_lm_settings_check_stop_sigma(bad):
    assert LM().stop_sigma == 1e-3
    with pytest.raises(ValueError, match="stop_sigma"):
        LM(stop_sigma=bad)


def test_a_rejected_step_at_tiny_damping_halves_at_once():
    """After many accepted steps λ sits at its floor (1e-12): one rejection raises it far enough
    that the next step is at most half as long (in the metric D), instead of a dozen ×4 raises
    each costing an evaluation."""
    rng = np.random.default_rng(1)
    B = rng.normal(size=(6, 6))
    M = B @ B.T + np.diag([1e-6, 1e-3, 1, 1, 10, 100])
    D = np.diag(np.diag(M))
    g = rng.normal(size=6)
    step = np.linalg.solve(M + 1e-12 * D, -g)
    lam = _shrink(M, D, g, step, 1e-12)
    new = np.linalg.solve(M + lam * D, -g)
    assert np.sqrt(new @ D @ new) <= 0.5 * np.sqrt(step @ D @ step)
    assert lam >= 4e-12
    less = np.linalg.solve(M + lam / 4 * D, -g)  # the smallest ×4 level that does it
    assert lam / 4 < 1e-10 or np.sqrt(less @ D @ less) > 0.5 * np.sqrt(step @ D @ step)


def test_the_model_that_foresaw_the_change_is_kept():
    """Along a step where the loss fell by what Gauss–Newton predicted, a secant S that predicted
    much less is set aside, and kept where it predicted better."""
    A, g, step = np.eye(2), np.array([-1.0, 0.0]), np.array([0.5, 0.0])
    gauss_newton = -2 * float(g @ step) - float(step @ A @ step)  # 0.75
    stiff = np.diag([8.0, 0.0])  # predicts 0.75 − 2 = −1.25
    assert not _prefer_augmented(g, step, A, stiff, actual=gauss_newton)
    assert _prefer_augmented(g, step, A, stiff, actual=-1.2)
