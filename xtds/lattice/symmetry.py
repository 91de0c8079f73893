"""Space-group operations of a crystal and how they move its atoms.

An operation g acts on fractional coordinates as f' = W f + w (W integer). In Cartesian
coordinates (lattice rows a_i, x = Aᵀ f) the rotation is R = Aᵀ W A⁻ᵀ. A force-constant block
transforms as Φ(g·pair) = R Φ(pair) Rᵀ; in the lattice basis X = A⁻ᵀ Φ A⁻¹ the same law reads
X' = W X Wᵀ with integer W, which is what lets :mod:`xtds.lattice.ifc` derive the free constants exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xtds.lattice.crystal import SYMPREC, Crystal, spglib_call

__all__ = ["SpaceGroupOperations", "space_group_operations"]


@dataclass(frozen=True)
class SpaceGroupOperations:
    """The operations of a crystal's space group, modulo lattice translations.

    Attributes
    ----------
    rotations
        Shape (n_ops, 3, 3) int: W in fractional coordinates.
    translations
        Shape (n_ops, 3) float: w in fractional coordinates.
    cartesian
        Shape (n_ops, 3, 3) float: R = Aᵀ W A⁻ᵀ, orthogonal.
    site_map
        Shape (n_ops, n_atoms) int: g sends atom s of the home cell to atom ``site_map[g, s]``
    cell_shift
        Shape (n_ops, n_atoms, 3) int: ... of the cell ``cell_shift[g, s]``.
    """

    rotations: np.ndarray
    translations: np.ndarray
    cartesian: np.ndarray
    site_map: np.ndarray
    cell_shift: np.ndarray

    def __len__(self) -> int:
        return len(self.rotations)

    def apply(self, g: int, site: int, cell: np.ndarray) -> tuple[int, np.ndarray]:
        """Image of atom (site, cell) under operation g: its (site, cell)."""
        return int(self.site_map[g, site]), self.rotations[g] @ cell + self.cell_shift[g, site]


def space_group_operations(crystal: Crystal) -> SpaceGroupOperations:
    """The space-group operations of ``crystal`` (spglib) with their action on its atoms.

    For a non-primitive cell the list includes the centring translations (W = 1).
    """
    sym = spglib_call("get_symmetry", crystal.spglib_cell, symprec=SYMPREC)
    W = np.asarray(sym["rotations"], dtype=int)
    w = np.asarray(sym["translations"], dtype=float)
    A = crystal.lattice
    R = np.einsum("ji,gjk,kl->gil", A, W, np.linalg.inv(A).T)
    # snap to exact orthogonal matrices where entries are 0, ±1/2, ±√3/2, ±1 within tolerance
    assert np.allclose(np.einsum("gij,gkj->gik", R, R), np.eye(3), atol=1e-6), "non-orthogonal op"
    pos = crystal.positions
    n = len(pos)
    site_map = np.empty((len(W), n), dtype=int)
    shift = np.empty((len(W), n, 3), dtype=int)
    for g in range(len(W)):
        img = pos @ W[g].T + w[g]  # (n, 3)
        d = img[:, None, :] - pos[None, :, :]  # (n, n, 3)
        cell = np.round(d)
        err = np.linalg.norm((d - cell) @ A, axis=-1)
        match = err < 10 * SYMPREC + 1e-6
        if not np.all(match.sum(axis=1) == 1):
            raise RuntimeError("a space-group operation does not map the basis onto itself")
        t = match.argmax(axis=1)
        site_map[g] = t
        shift[g] = cell[np.arange(n), t].astype(int)
        if np.any(crystal.numbers[t] != crystal.numbers):
            raise RuntimeError("a space-group operation maps an atom onto another species")
    return SpaceGroupOperations(W, w, R, site_map, shift)
