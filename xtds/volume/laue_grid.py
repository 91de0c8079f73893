"""Laue-group operations as index arithmetic on H, K, L grids, and whether a grid maps onto itself.

The group itself (integer matrices R on h = (H, K, L)) is :class:`xtds.laue.LaueGroup`. On a
rectangular grid (one 1-D coordinate per axis) an operation can be applied
without interpolation only when R is a signed permutation (each axis goes to ± another axis) and
the permuted/flipped coordinates coincide with the grid's own. That holds for the Laue classes
m-3m, m-3, 4/mmm, 4/m, mmm, 2/m and -1 in their standard settings; the trigonal and hexagonal
classes (R mixes H and K) would need interpolation and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xtds.laue import GRID_TOL

__all__ = ["GridOp", "grid_operations"]

@dataclass(frozen=True)
class GridOp:
    """One operation as index arithmetic on an (nH, nK, nL) grid.

    ``J = transpose(flip(I, flip_axes), axes)`` gives J(h) = I(R h) on the grid, where R maps the
    coordinate of axis a to ``sign[a]`` × the coordinate of axis ``perm[a]``.
    """

    matrix: tuple
    perm: tuple[int, int, int]
    sign: tuple[int, int, int]

    @property
    def flip_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(3) if self.sign[a] < 0)

    @property
    def axes(self) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.argsort(self.perm))

    def source_block(self, index, nblocks):
        """The block of I that output block ``index`` reads (symmetric, equal chunks)."""
        return tuple(
            nblocks[a] - 1 - index[self.perm[a]] if self.sign[a] < 0 else index[self.perm[a]] for a in range(3)
        )


def grid_operations(matrices: np.ndarray, coords) -> list[GridOp]:
    """The operations as :class:`GridOp` on a grid with 1-D ``coords`` (H, K, L), r.l.u.

    Raises ``ValueError`` naming the fix when an operation would need interpolation or the grid
    does not map onto itself (axes not symmetric about 0, or permuted axes that differ).
    """
    coords = [np.asarray(c, dtype=float) for c in coords]
    step = min(float(np.min(np.abs(np.diff(c)))) if len(c) > 1 else 1.0 for c in coords)
    tol = GRID_TOL * max(step, 1e-12)
    ops = []
    for R in np.asarray(matrices):
        nz = [np.flatnonzero(R[a]) for a in range(3)]
        if any(len(z) != 1 for z in nz) or sorted(int(z[0]) for z in nz) != [0, 1, 2]:
            raise ValueError(
                f"the Laue operation {R.tolist()} mixes H, K and L: symmetrizing on this grid would need "
                "interpolation (trigonal/hexagonal classes). Symmetrize with a subgroup that has only "
                "axis permutations and sign changes (e.g. laue='2/m' or '-1') or resample the volume first"
            )
        perm = tuple(int(z[0]) for z in nz)
        sign = tuple(int(R[a, perm[a]]) for a in range(3))
        for a in range(3):
            src = coords[perm[a]] * sign[a]
            src = src[::-1] if sign[a] < 0 else src
            if len(src) != len(coords[a]) or np.max(np.abs(src - coords[a]), initial=0.0) > tol:
                names = "HKL"
                why = (
                    f"axis {names[a]} is not symmetric about 0" if perm[a] == a
                    else f"axes {names[a]} and {names[perm[a]]} differ"
                )
                raise ValueError(
                    f"the grid does not map onto itself under {R.tolist()}: {why}. Crop the volume to a "
                    "range symmetric about 0 with equal H, K, L coordinates (e.g. ds.sel(H=slice(-x, x), ...)), "
                    "or symmetrize with a smaller Laue class"
                )
        ops.append(GridOp(tuple(map(tuple, R.tolist())), perm, sign))
    return ops
