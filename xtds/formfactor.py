"""Atomic X-ray form factors f(|q|) from the Cromer–Mann tabulation (periodictable)."""

from __future__ import annotations

import numpy as np

__all__ = ["form_factors"]


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
