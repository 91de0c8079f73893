"""Fitting losses as residual vectors (for Gauss–Newton / Levenberg–Marquardt) and scalars (Adam).

- ``"var_log"`` (the paper's Eq. 11): L = Var_q[log I_target − log I_fit], weighted by the
  points' multiplicities; invariant to an overall scale. As residuals:
  ρ_i = √(m_i/M) (r_i − r̄), r_i = log I_target,i − log I_fit,i, r̄ = Σ m_i r_i / M, so Σ ρ_i² = L.
  With a background (:mod:`xtds.fitting.background`) the model is s·I_fit + b (+ Compton and
  smooth terms) with a fitted scale s, and the residual is the plain log difference (no centring).
- ``"chi2"``: (I_target − s·I_fit − b)/σ with per-point σ (from the data's ``sigma``), s and the
  background fitted jointly: the noise-weighted alternative when the noise is known.
- ``"poisson"``: the Poisson likelihood of raw counts d with mean μ = s·I_fit + b, as deviance
  residuals ρ = sign(d − μ) √(2[μ − d + d ln(d/μ)]) (Σρ² = −2 ln L + const, the deviance; ρ → (d − μ)/√μ
  near d = μ): right where counts are few (a pixel of one count is not a Gaussian of σ = 1), and
  the χ² of Gaussian errors √μ where they are many. No σ is needed.
- The eigenvalue penalty (Eq. 12–13): P = α Σ max(0, −λ_i) over the eigenvalues of H(k) on the
  model's k-grid (rigid translations excluded; :func:`xtds.lattice.stability.min_eigenvalues`); the
  paper switches the variance term off while P > 0. The Adam loop uses it; Levenberg–Marquardt
  instead rejects any step with P > 0.
"""

from __future__ import annotations

import torch

from xtds.lattice.stability import min_eigenvalues

__all__ = ["LOSSES", "residuals", "eigen_penalty"]

LOSSES = ("var_log", "chi2", "poisson")


def residuals(I_model, I_target, weight, loss: str = "var_log", scaled: bool = False, sigma=None, censored=None):
    """The residual vector ρ (shape (P,)) whose squared norm is the loss.

    ``I_model``: the model at the points; ``scaled``: whether it already holds the problem's scale
    and background (:class:`~xtds.fitting.background.Background`). An unscaled ``var_log`` model is
    compared up to the free scale (centring); an unscaled ``chi2`` model as it is. ``censored``
    (``chi2`` only; (P,) of −1, 0, +1): points whose datum is a limit set by the data's reduction,
    the true value at or below it (−1) or at or above it (+1); their ρ² is the censored Gaussian
    −2 ln Φ(±(d − m)/σ) (the Tobit likelihood), 0 where the model lies far on the allowed side.
    """
    if loss == "var_log":
        if not scaled:
            r = torch.log(I_target) - torch.log(I_model)
            M = weight.sum()
            rbar = (weight * r).sum() / M
            return torch.sqrt(weight / M) * (r - rbar)
        r = torch.log(I_target) - torch.log(I_model.clamp(min=1e-300))
        return torch.sqrt(weight / weight.sum()) * r
    if loss == "chi2":
        if sigma is None:
            raise ValueError("loss='chi2' needs per-voxel uncertainties: a 'sigma' variable in the data")
        r = (I_target - I_model) / sigma
        if censored is None:
            return r
        return torch.where(censored == 0, r, _censored_root(censored * r))
    if loss == "poisson":
        mu = I_model.clamp(min=1e-12)
        d = I_target
        dev = 2 * (mu - d + torch.xlogy(d, d) - torch.xlogy(d, mu))
        near = (d - mu).abs() <= 1e-6 * torch.sqrt(mu)  # where √dev has no derivative: its limit (d − μ)/√μ
        root = torch.sqrt(torch.where(near, torch.ones_like(dev), dev.clamp(min=0)))
        return torch.where(near, (d - mu) / torch.sqrt(mu), torch.sign(d - mu) * root)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _censored_root(u: torch.Tensor) -> torch.Tensor:
    """√(−2 ln Φ(−u)) for u = ∓(d − m)/σ, signed so that u < 0 is a model on the side of the limit
    where the truth may lie. Smooth; 0 for u < −30 (Φ = 1 in double precision), where its
    derivative is 0 too rather than NaN."""
    far = u < -30
    safe = torch.where(far, torch.zeros_like(u), u)
    root = torch.sqrt((-2 * torch.special.log_ndtr(-safe)).clamp(min=1e-300))
    return torch.where(far, torch.zeros_like(u), root)


def eigen_penalty(model, phi, k, alpha: float = 1.0) -> torch.Tensor:
    """α Σ max(0, −λ) over the Hessian's eigenvalues on the k-points (eV/Å²; 0 when stable)."""
    lam = min_eigenvalues(model, phi, k)
    return alpha * torch.clamp(-lam[torch.isfinite(lam)], min=0).sum()
