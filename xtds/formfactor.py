"""Atomic X-ray form factors f(|q|) from the Cromer–Mann tabulation (periodictable)."""

from __future__ import annotations

import numpy as np

__all__ = ["FORM_FACTORS", "form_factors", "form_factor_table"]

#: The accepted ``form_factor`` settings: a tabulation, or None for the bare lattice sum (f = 1).
FORM_FACTORS = ("cromer-mann", None)


def form_factors(species, qnorm) -> np.ndarray:
    """f_s(|q|) in electrons for each species.

    Parameters
    ----------
    species
        Element (or ion) symbols, length S.
    qnorm
        Shape (Q,), |q| in Å⁻¹ (2π included: |q| = 4π sin θ / λ).

    Returns
    -------
    Shape (S, Q) float. The Cromer–Mann fit is valid for sin θ/λ ≤ 2 Å⁻¹ (|q| ≲ 25 Å⁻¹).
    """
    from periodictable.cromermann import fxrayatq

    q = np.asarray(qnorm, dtype=float)
    return np.stack([np.asarray(fxrayatq(s, q), dtype=float) for s in species])


def check_form_factor(form_factor) -> None:
    """A ``ValueError`` naming the choices unless ``form_factor`` is one of :data:`FORM_FACTORS`."""
    if form_factor not in FORM_FACTORS:
        raise ValueError(f"form_factor must be one of {FORM_FACTORS}, got {form_factor!r}")


def form_factor_table(species, qnorm, form_factor="cromer-mann", like=None):
    """The form factor of each listed atom at each |q|: shape (len(species), Q), electrons.

    Each distinct species is evaluated once; ``form_factor=None`` gives ones (the bare lattice
    sum). ``qnorm`` may be a numpy array or a torch tensor; with a tensor (or a tensor ``like``)
    the table is a tensor of its dtype and device, without gradient (f depends on |q| only).
    """
    check_form_factor(form_factor)
    species = list(species)
    like = qnorm if like is None else like
    q = qnorm.detach().cpu().numpy() if hasattr(qnorm, "detach") else np.asarray(qnorm, dtype=float)
    if form_factor is None:
        table = np.ones((len(species), len(q)))
    else:
        uniq = sorted(set(species))
        f = form_factors(uniq, q)
        table = f[[uniq.index(s) for s in species]]
    if hasattr(like, "detach"):
        import torch

        return torch.as_tensor(table, dtype=like.dtype, device=like.device)
    return table
