"""Laue-group operations as index arithmetic on H, K, L grids, and whether a grid maps onto itself.

The group itself (integer matrices R on h = (H, K, L)) is :class:`xtds.lattice.laue.LaueGroup`. On a
rectangular grid (one 1-D coordinate per axis) a signed permutation R (each axis goes to ± another
axis; m-3m, m-3, 4/mmm, 4/m, mmm, 2/m, -1 in their standard settings) is a flip and a transpose of
the array (:class:`GridOp`). An operation that mixes axes (the trigonal and hexagonal classes:
(H, K) → (−K, H − K), …) maps the points of a uniform grid centred on 0 onto points of the same
lattice when the steps allow it (equal H and K steps); some images then fall outside the measured
box, and those members of an orbit are simply not observed. Such an operation is an index gather
(:class:`GatherOp`), out-of-box members with weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xtds.lattice.laue import GRID_TOL

__all__ = ["GridOp", "GatherOp", "grid_operations"]

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


@dataclass(frozen=True)
class GatherOp:
    """An operation that mixes axes, as a gather on a uniform grid centred on 0: J(i) = I(M (i − c) + c)
    for integer index vectors i, with M = diag(1/s) R diag(s) (integer), c the index of 0 on each
    axis; sources outside the grid read 0 (an unobserved member of the orbit)."""

    matrix: tuple
    index_matrix: tuple
    centre: tuple[int, int, int]

    def apply(self, arr, xp=np):
        """J = I(M(i − c) + c), 0 outside; ``arr`` of shape (nH, nK, nL), in slabs along H."""
        shape = arr.shape
        M = np.asarray(self.index_matrix, dtype=np.int64)
        c = np.asarray(self.centre, dtype=np.int64)
        out = xp.zeros_like(arr)
        j = xp.arange(shape[1])[:, None] - int(c[1])
        k = xp.arange(shape[2])[None, :] - int(c[2])
        for i0 in range(shape[0]):
            i = i0 - int(c[0])
            src = [M[a, 0] * i + M[a, 1] * j + M[a, 2] * k + int(c[a]) for a in range(3)]
            ok = (src[0] >= 0) & (src[0] < shape[0]) & (src[1] >= 0) & (src[1] < shape[1]) & (src[2] >= 0) & (
                src[2] < shape[2])
            vals = arr[xp.where(ok, src[0], 0), xp.where(ok, src[1], 0), xp.where(ok, src[2], 0)]
            out[i0] = xp.where(ok, vals, 0)
        return out


def _gather_op(R: np.ndarray, coords) -> GatherOp:
    """The :class:`GatherOp` of an axis-mixing R, or a ``ValueError`` saying why the grid cannot take it."""
    steps, centre = [], []
    for a, c in enumerate(coords):
        d = np.diff(c)
        step = float(np.median(d)) if len(d) else 1.0
        i0 = int(np.argmin(np.abs(c)))
        if len(d) and (np.abs(d - step).max() > GRID_TOL * abs(step) or abs(c[i0]) > GRID_TOL * abs(step)):
            raise ValueError(
                f"the Laue operation {R.tolist()} mixes H, K and L: it needs a uniform grid through 0 on every axis, "
                f"and axis {'HKL'[a]} is not (crop or rebin the volume, or symmetrize with a subgroup that only "
                "flips and permutes axes, e.g. laue='2/m' or '-1')")
        steps.append(step)
        centre.append(i0)
    s = np.asarray(steps)
    M = R * s[None, :] / s[:, None]
    if np.abs(M - np.round(M)).max() > 1e-6:
        raise ValueError(f"the Laue operation {R.tolist()} maps the grid's points between the grid's points (steps "
                         f"{s.tolist()}): H and K need the same step for the hexagonal and trigonal classes")
    return GatherOp(tuple(map(tuple, R.tolist())), tuple(map(tuple, np.round(M).astype(int).tolist())),
                    tuple(centre))


def grid_operations(matrices: np.ndarray, coords) -> list[GridOp | GatherOp]:
    """The operations on a grid with 1-D ``coords`` (H, K, L), r.l.u.: :class:`GridOp` (flips and
    transposes) for signed permutations, :class:`GatherOp` for operations that mix axes.

    Raises ``ValueError`` naming the fix when an operation would need interpolation or the grid
    does not map onto itself (axes not symmetric about 0, or permuted axes that differ).
    """
    coords = [np.asarray(c, dtype=float) for c in coords]
    for name, c in zip("HKL", coords, strict=True):
        if len(c) > 1 and not np.all(np.diff(c) > 0):
            raise ValueError(f"axis {name} is not in increasing order (descending, shuffled or repeated values): "
                             "sort the volume first, ds.sortby(['H', 'K', 'L'])")
    step = min(float(np.min(np.abs(np.diff(c)))) if len(c) > 1 else 1.0 for c in coords)
    tol = GRID_TOL * max(step, 1e-12)
    ops = []
    for R in np.asarray(matrices):
        nz = [np.flatnonzero(R[a]) for a in range(3)]
        if any(len(z) != 1 for z in nz) or sorted(int(z[0]) for z in nz) != [0, 1, 2]:
            ops.append(_gather_op(np.asarray(R), coords))
            continue
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
