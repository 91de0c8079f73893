"""Where the intensity is computed: a finite periodic supercell, or an effectively infinite crystal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xtds.crystal import Crystal

__all__ = ["PeriodicSupercell", "InfiniteCrystal", "supercell_q_grid"]


def _triple(x, what) -> tuple[int, int, int]:
    t = tuple(int(v) for v in np.broadcast_to(np.asarray(x, dtype=int), (3,)))
    if min(t) < 1 or not np.allclose(np.broadcast_to(np.asarray(x, dtype=float), (3,)), t):
        raise ValueError(f"{what} must be positive integers, got {x!r}")
    return t


@dataclass(frozen=True)
class PeriodicSupercell:
    """An L1×L2×L3 periodic supercell of the crystal's own cell (the paper's set-up: 5×5×5 cubic
    cells of Ni, 500 atoms). q must lie on its reciprocal grid q = Σ n_i b_i / L_i (integers n_i);
    Bragg peaks are included."""

    repeats: tuple[int, int, int]

    def __init__(self, repeats):
        object.__setattr__(self, "repeats", _triple(repeats, "supercell repeats"))

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.repeats))

    def grid_indices(self, crystal: Crystal, q: np.ndarray) -> np.ndarray:
        """Integer n with q = Σ n_i b_i / L_i; a ``ValueError`` if q is off the grid."""
        n = crystal.cartesian_to_rlu(q) * np.asarray(self.repeats)
        rn = np.round(n)
        if len(n) and np.abs(n - rn).max() > 1e-6:
            bad = int(np.abs(n - rn).max(axis=1).argmax())
            raise ValueError(
                f"q = {np.asarray(q)[bad].round(5)} Å⁻¹ is not on the reciprocal grid of the {self.repeats} "
                "supercell (H, K, L must be multiples of 1/L); use InfiniteCrystal for arbitrary q"
            )
        return rn.astype(np.int64)


@dataclass(frozen=True)
class InfiniteCrystal:
    """An effectively infinite crystal: covariances from an M1×M2×M3 k-mesh of the crystal's cell
    (a convergence parameter); the diffuse intensity at any q, Bragg peaks excluded."""

    mesh: tuple[int, int, int]

    def __init__(self, mesh=16):
        object.__setattr__(self, "mesh", _triple(mesh, "k-mesh sizes"))


def supercell_q_grid(crystal: Crystal, repeats, n_max) -> np.ndarray:
    """The centred grid n ∈ [−n_max, n_max]³ of a supercell: shape ((2n_max+1)³, 3), Å⁻¹.

    For the paper: ``supercell_q_grid(Crystal.preset("Ni"), 5, 40)`` is its 81³ grid.
    """
    L = np.asarray(_triple(repeats, "supercell repeats"))
    nm = np.broadcast_to(np.asarray(n_max, dtype=int), (3,))
    axes = [np.arange(-m, m + 1) for m in nm]
    n = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return crystal.rlu_to_cartesian(n / L)
