"""Laue-group reduction of q-point sets: evaluate the irreducible points, then expand.

The harmonic TDS is invariant under the crystal's point group and, for real form factors, under
q → −q (Friedel): together the Laue group (m-3m, 48 operations, for cubic crystals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xtds.crystal import Crystal

__all__ = ["laue_rotations", "IrreducibleQ", "irreducible"]

#: q-points closer than this (Å⁻¹) are the same point.
Q_TOL = 1e-6


def laue_rotations(crystal: Crystal) -> np.ndarray:
    """The Laue group of ``crystal`` as Cartesian rotations, shape (n_ops, 3, 3).

    The same group as :func:`xtds.volume.laue_grid.laue_matrices` (integer matrices on H, K, L),
    carried to Cartesian q: q = Bᵀh with B the reciprocal matrix (rows b_i), so R_q = Bᵀ R_h B⁻ᵀ.
    """
    from xtds.volume.laue_grid import laue_matrices

    B = crystal.reciprocal
    return np.einsum("ji,gjk,kl->gil", B, laue_matrices(crystal=crystal), np.linalg.inv(B).T)


@dataclass(frozen=True)
class IrreducibleQ:
    """An irreducible subset of a q-set.

    Attributes
    ----------
    q
        Shape (Q_irr, 3), Å⁻¹: one point per orbit (a member of the original set).
    index
        Shape (Q_irr,) int: position of each irreducible point in the original set.
    inverse
        Shape (Q,) int: for each original point, its irreducible point, so that
        ``values_full = values_irr[inverse]``.
    """

    q: np.ndarray
    index: np.ndarray
    inverse: np.ndarray

    @property
    def reduction(self) -> float:
        return len(self.inverse) / max(1, len(self.q))


def _scalar_keys(q: np.ndarray, step: float, half: int) -> np.ndarray:
    k = np.round(q / step).astype(np.int64) + half
    base = 2 * half + 1
    return (k[..., 0] * base + k[..., 1]) * base + k[..., 2]


def irreducible(q, rotations, chunk: int = 50000) -> IrreducibleQ | None:
    """The irreducible points of ``q`` (shape (Q, 3), Å⁻¹) under ``rotations``.

    Each point is keyed by its rounded coordinates (resolution 1e-4 Å⁻¹); an orbit is represented
    by its largest key. Returns ``None`` when the set is not closed under the group or has
    repeated points (then evaluate every point).
    """
    q = np.asarray(q, dtype=float)
    step = 1e-4
    half = int(np.ceil(np.abs(q).max() / step)) + 2 if len(q) else 2
    if (2 * half + 1) ** 3 >= 2**62:
        return None  # |q| too large for the integer keys; evaluate every point
    own = _scalar_keys(q, step, half)
    canon = np.empty(len(q), dtype=np.int64)
    orbit = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk):
        img = np.einsum("gij,qj->gqi", rotations, q[start : start + chunk])
        keys = np.sort(_scalar_keys(img, step, half), axis=0)  # (G, Qc)
        canon[start : start + chunk] = keys[-1]
        orbit[start : start + chunk] = 1 + np.count_nonzero(np.diff(keys, axis=0), axis=0)
    uniq, inverse, counts = np.unique(canon, return_inverse=True, return_counts=True)
    if len(np.unique(own)) != len(own) or not np.array_equal(counts[inverse], orbit):
        return None
    # the representative is the member whose own key is the orbit's canonical key
    is_rep = own == canon
    index = np.empty(len(uniq), dtype=np.int64)
    index[inverse[is_rep]] = np.nonzero(is_rep)[0]
    return IrreducibleQ(q=q[index], index=index, inverse=inverse)
