"""Nested-model comparison of two fits of the same data: do the extra terms earn their place?

:func:`compare_fits` takes the results of a simpler and an extended fit (e.g. harmonic and
anharmonic TDS models of one volume) and reports the change of the fit statistic, the Akaike and
Bayesian information criteria and the likelihood-ratio test. With ``loss="chi2"`` the statistic is
χ² (−2 ln L up to a constant, σ known); with ``var_log`` the residual scale is estimated, and
−2 ln L = n ln(RSS/n). Where even the extended model leaves a reduced χ² above 1, the ratio test
is made on Δχ²/χ²ᵣ (a quasi-likelihood): a short model does not make every extra term look
significant.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import stats

__all__ = ["compare_fits"]


def _loss(res) -> str:
    """The fit's loss, from the settings it stored (each problem's; a joint fit of mixed losses has
    no single likelihood to compare)."""
    settings = json.loads(res.attrs.get("settings", "{}"))
    losses = {p.get("loss") for p in settings.get("problems", []) if isinstance(p, dict)} - {None}
    if len(losses) > 1:
        raise ValueError(f"compare_fits needs one loss for all the problems of a fit, got {sorted(losses)}")
    return losses.pop() if losses else settings.get("loss", "var_log")


def _stat(res) -> tuple[float, int, int, str]:
    loss = _loss(res)
    n, k = int(res.attrs["n_points"]), int(res.attrs["n_parameters"])
    rss = float(res.attrs["final_loss"])
    m2lnl = rss if loss in ("chi2", "poisson") else n * np.log(max(rss, 1e-300) / n)
    return m2lnl, n, k, loss


def compare_fits(simple, extended, alpha: float = 1e-3) -> dict:
    """Compare two fit results (``ds.tds.fit`` datasets) of the same points, ``extended`` holding
    ``simple``'s parameters and more.

    Returns a dict: ``delta_chi2`` (−2Δln L, positive when the extended model fits better),
    ``delta_parameters``, ``aic`` and ``bic`` of both (lower is better), ``delta_aic``, ``delta_bic``
    (extended − simple), ``p_value`` of the likelihood-ratio test (on Δχ²/χ²ᵣ where the extended
    model's χ²ᵣ exceeds 1), ``supported`` (p < ``alpha`` and a lower BIC) and a one-line ``verdict``.
    Where the simple fit's loss is at round-off (noise-free data it describes exactly), nothing is
    supported whatever the round-off of the extended fit.
    """
    a, n_a, k_a, loss_a = _stat(simple)
    b, n_b, k_b, loss_b = _stat(extended)
    if n_a != n_b or loss_a != loss_b:
        raise ValueError(f"the two fits must be of the same points with the same loss: {n_a} points ({loss_a}) and "
                         f"{n_b} points ({loss_b})")
    dk = k_b - k_a
    if dk <= 0:
        raise ValueError(f"the extended fit has {k_b} parameters, the simple one {k_a}: pass (simple, extended)")
    d = a - b
    rss_simple = float(simple.attrs["final_loss"])
    if rss_simple <= 1e-20 * n_a:  # the simple model fits to round-off: nothing is left to explain
        return {"delta_chi2": 0.0, "delta_parameters": dk, "quasi_scale": 1.0, "p_value": 1.0,
                "aic": (np.nan, np.nan), "bic": (np.nan, np.nan), "delta_aic": 0.0, "delta_bic": 0.0,
                "supported": False, "loss": loss_b,
                "verdict": f"the simple model already fits the data to round-off (loss {rss_simple:.3g}): the {dk} "
                           "extra parameters have nothing to explain"}
    scale = 1.0
    if loss_b == "chi2":
        scale = max(1.0, float(extended.attrs["final_loss"]) / max(1, n_b - k_b))
    p = float(stats.chi2.sf(max(d, 0.0) / scale, dk))
    aic = (a + 2 * k_a, b + 2 * k_b)
    bic = (a + k_a * np.log(n_a), b + k_b * np.log(n_b))
    supported = bool(p < alpha and bic[1] < bic[0])
    verdict = (f"the {dk} extra parameters are supported (Δχ² = {d:.4g}, p = {p:.2g}, ΔBIC = {bic[1] - bic[0]:.4g})"
               if supported else
               f"the data do not support the {dk} extra parameters (Δχ² = {d:.4g}, p = {p:.2g}, "
               f"ΔBIC = {bic[1] - bic[0]:.4g})")
    return {"delta_chi2": float(d), "delta_parameters": dk, "quasi_scale": scale, "p_value": p,
            "aic": aic, "bic": bic, "delta_aic": aic[1] - aic[0], "delta_bic": bic[1] - bic[0],
            "supported": supported, "verdict": verdict, "loss": loss_b}
