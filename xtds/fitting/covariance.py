"""The uncertainties of a fit: the Gauss–Newton covariance, its robust (cluster-sandwich) twin and
the temperature's share.

cov = J⁺ Σ J⁺ᵀ, with J the Jacobian of the stacked residuals at the optimum and Σ the residual
covariance: σ̂_p² per problem p from its residuals (for ``var_log``: Σρ² / dof, the irreducible
points counting as independent observations; for ``chi2``: 1, the residuals being in units of σ, or the
reduced χ² where that is larger, ``Errors(chi2_scale=...)``),
or, for data that are a mean over N sampled configurations, the covariance of single-configuration
draws through the linearized fit, divided by N. For one problem J⁺ σ̂² J⁺ᵀ = σ̂² (JᵀJ)⁻¹.
A Gaussian prior on a constant is one more residual (φ_i − mean)/σ of unit variance (it pins what the
data leave free). A problem's temperature uncertainty σ_T adds σ_T² g gᵀ, g = ∂x̂/∂T = −J⁺ ∂ρ/∂T (the shift of the
optimum when the temperature moves; in classical statistics every force constant scales with T).
"""

from __future__ import annotations

import numpy as np

from xtds.fitting.objective import Objective

__all__ = ["covariances", "ROBUST_BLOCKS"]

#: Blocks (|q| shells) per problem of the robust (cluster-sandwich) covariance.
ROBUST_BLOCKS = 12


def covariances(objective: Objective, res, noise_draws: int, chi2_scale: str = "auto"):
    """(cov, robust covariance, per-problem statistics) at the optimum ``res.x`` (module docstring).

    Robust: the cluster sandwich J⁺ Ω J⁺ᵀ with Ω block-diagonal, Ω_b = ρ_b ρ_bᵀ over
    :data:`ROBUST_BLOCKS` shells of |q| per problem, times G/(G − 1) for G blocks. It takes the
    residuals as they are, correlations within a shell included, so a model that cannot fit the
    data (missing shells, a wrong background) widens it where the Gauss–Newton covariance, which
    assumes independent residuals of the model's own form, stays narrow.
    """
    J = res.jacobian
    rho = objective.residuals(res.x)
    Jp = np.linalg.pinv(J)
    phi, nuisances = objective.split(res.x)
    n_total = len(rho)
    cov = np.zeros((J.shape[1], J.shape[1]))
    robust = np.zeros_like(cov)
    stats = []
    for p, rows, eta in zip(objective.problems, objective.rows(), nuisances, strict=True):
        dof, unit = p.dof_and_variance(rho[rows], objective.n_fit * len(p) / n_total, chi2_scale)
        Jr = Jp[:, rows]
        if p.noise_configurations:
            seed = int(p.observable.seed or 0) + 7919
            shifts = -p.noise_residuals(phi, eta, noise_draws, seed) @ Jr.T
            cov += np.cov(shifts, rowvar=False) / float(p.noise_configurations)
            robust += np.cov(shifts, rowvar=False) / float(p.noise_configurations)
            s2, dof = float("nan"), len(p)
        else:
            cov += unit * (Jr @ Jr.T)
            blocks = p.blocks(ROBUST_BLOCKS)
            shifts = np.stack([Jr[:, b] @ rho[rows][b] for b in blocks])
            robust += shifts.T @ shifts * (len(blocks) / max(len(blocks) - 1, 1))
            s2 = unit * float(p.weight.sum()) if p.loss == "var_log" else unit  # var_log: Var of one log I
        if p.temperature_stderr:
            g = -Jr @ p.temperature_derivative(phi, eta)
            cov += p.temperature_stderr**2 * np.outer(g, g)
            robust += p.temperature_stderr**2 * np.outer(g, g)
        stat = {"name": p.name, "n_points": len(p), "dof": int(dof), "sigma2_hat": s2,
                "temperature_stderr_K": float(p.temperature_stderr)}
        if p.loss in ("chi2", "poisson"):  # the reduced χ² (deviance), and the factor the variances took from it
            stat.update(chi2_reduced=float(rho[rows] @ rho[rows]) / int(dof), error_scale=float(np.sqrt(unit)))
        stats.append(stat)
    if objective.n_prior:  # the priors' rows: residuals in units of their σ
        Jr = Jp[:, n_total - objective.n_prior:]
        cov += Jr @ Jr.T
        robust += Jr @ Jr.T
    return cov, robust, stats
