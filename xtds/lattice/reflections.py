"""Which Bragg reflections a structure has: the reciprocal-lattice points whose structure factor does
not vanish (the extinction rules), for Bragg masks and for the points an infinite crystal's
diffuse model is undefined at."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["allowed_reflections", "is_allowed"]


def allowed_reflections(crystal, hkl_max: int) -> np.ndarray:
    """Integer (h, k, l) with |h|,|k|,|l| ≤ ``hkl_max`` whose structure factor does not vanish.

    F(hkl) = Σ_s Z_s exp(2πi hkl·x_s) with the atomic numbers Z_s as the forward form factors (the
    extinction rules of the structure: FCC h, k, l unmixed; diamond also h+k+l ≠ 4n+2 for all-even).
    Shape (n, 3) int.
    """
    r = np.arange(-hkl_max, hkl_max + 1)
    hkl = np.array(list(itertools.product(r, r, r)))
    return hkl[is_allowed(crystal, hkl)]


def is_allowed(crystal, hkl) -> np.ndarray:
    """True where integer (h, k, l) (shape (n, 3)) has a non-vanishing structure factor
    F = Σ_s Z_s exp(2πi hkl·x_s) (atomic numbers as forward form factors): shape (n,)."""
    z = np.asarray(crystal.numbers, dtype=float)
    F = np.exp(2j * np.pi * np.asarray(hkl, dtype=float) @ np.asarray(crystal.positions).T) @ z
    return np.abs(F) > 1e-6 * z.sum()
