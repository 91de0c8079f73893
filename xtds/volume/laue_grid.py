"""Laue groups acting on H, K, L grids: which operations, and whether a grid maps onto itself.

An operation of a Laue group acts on reciprocal-lattice coordinates h = (H, K, L) as an integer
3×3 matrix R. On a rectangular grid (one 1-D coordinate per axis) an operation can be applied
without interpolation only when R is a signed permutation (each axis goes to ± another axis) and
the permuted/flipped coordinates coincide with the grid's own. That holds for the Laue classes
m-3m, m-3, 4/mmm, 4/m, mmm, 2/m and -1 in their standard settings; the trigonal and hexagonal
classes (R mixes H and K) would need interpolation and are refused.

The operations come from spglib's space-group database (a representative space group per Laue
class) or from a crystal's own symmetry: nothing is typed in by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GridOp", "laue_matrices", "grid_operations", "LAUE_CLASSES", "laue_class_of"]

#: A representative space-group number for each Laue class (its point group's holohedral setting).
LAUE_CLASSES = {
    "-1": 2, "2/m": 10, "mmm": 47, "4/m": 83, "4/mmm": 123, "-3": 147, "-3m": 164,
    "6/m": 175, "6/mmm": 191, "m-3": 200, "m-3m": 221,
}

#: Point group (Hermann–Mauguin, as spglib writes it) → Laue class.
_POINT_TO_LAUE = {
    "1": "-1", "-1": "-1",
    "2": "2/m", "m": "2/m", "2/m": "2/m",
    "222": "mmm", "mm2": "mmm", "mmm": "mmm",
    "4": "4/m", "-4": "4/m", "4/m": "4/m",
    "422": "4/mmm", "4mm": "4/mmm", "-42m": "4/mmm", "-4m2": "4/mmm", "4/mmm": "4/mmm",
    "3": "-3", "-3": "-3",
    "32": "-3m", "3m": "-3m", "-3m": "-3m", "312": "-3m", "321": "-3m", "31m": "-3m", "3m1": "-3m",
    "-31m": "-3m", "-3m1": "-3m",
    "6": "6/m", "-6": "6/m", "6/m": "6/m",
    "622": "6/mmm", "6mm": "6/mmm", "-6m2": "6/mmm", "-62m": "6/mmm", "6/mmm": "6/mmm",
    "23": "m-3", "m-3": "m-3",
    "432": "m-3m", "-43m": "m-3m", "m-3m": "m-3m",
}


def _hall_numbers_of(number: int) -> list[int]:
    import spglib

    return [h for h in range(1, 531) if spglib.get_spacegroup_type(h).number == number]


def laue_class_of(space_group: str) -> str:
    """The Laue class of a space group given by symbol ('Fm-3m', 'P 4/m m m') or number ('225').

    Raises ``ValueError`` for a symbol spglib's database does not know.
    """
    import spglib

    text = str(space_group).strip()
    key = text.split("(")[0].replace(" ", "").replace("_", "")
    number = None
    if "(" in text:  # 'Fm-3m (225)', as Crystal.space_group writes it
        number = int(text.split("(")[1].rstrip(") "))
    elif key.isdigit():
        number = int(key)
    for h in range(1, 531):
        t = spglib.get_spacegroup_type(h)
        if (number is not None and t.number == number) or (
            number is None and key in (t.international_short.replace(" ", ""), t.international_full.replace(" ", ""))
        ):
            return _POINT_TO_LAUE[t.pointgroup_international]
    raise ValueError(
        f"unknown space group {space_group!r}: give an international symbol such as 'Fm-3m' or a "
        "number 1–230, or name the Laue class directly (laue='m-3m')"
    )


def laue_matrices(laue: str | None = None, crystal=None, space_group: str | None = None) -> np.ndarray:
    """The Laue group as integer matrices acting on (H, K, L): shape (n_ops, 3, 3).

    Exactly one source: ``laue`` (a class in :data:`LAUE_CLASSES`), ``crystal`` (its own space
    group, including inversion), or ``space_group`` (a symbol or number).
    """
    import spglib

    if sum(x is not None for x in (laue, crystal, space_group)) != 1:
        raise ValueError("give exactly one of laue='m-3m', crystal=... or space_group='Fm-3m'")
    if crystal is not None:
        W = np.asarray(crystal.symmetry_dataset.rotations)
    else:
        if laue is None:
            laue = laue_class_of(space_group)
        if laue not in LAUE_CLASSES:
            raise ValueError(f"unknown Laue class {laue!r}; choose one of {sorted(LAUE_CLASSES)}")
        W = spglib.get_symmetry_from_database(_hall_numbers_of(LAUE_CLASSES[laue])[0])["rotations"]
    # real-space fractional rotations W act on h as W^-T; the set {W^T} is the same group
    R = np.concatenate([np.transpose(W, (0, 2, 1)), -np.transpose(W, (0, 2, 1))]).astype(int)
    return np.unique(R.reshape(len(R), 9), axis=0).reshape(-1, 3, 3)


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


def grid_operations(matrices: np.ndarray, coords, rtol: float = 1e-6) -> list[GridOp]:
    """The operations as :class:`GridOp` on a grid with 1-D ``coords`` (H, K, L), r.l.u.

    Raises ``ValueError`` naming the fix when an operation would need interpolation or the grid
    does not map onto itself (axes not symmetric about 0, or permuted axes that differ).
    """
    coords = [np.asarray(c, dtype=float) for c in coords]
    step = min(float(np.min(np.abs(np.diff(c)))) if len(c) > 1 else 1.0 for c in coords)
    tol = rtol * max(step, 1e-12) * 1e3
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
