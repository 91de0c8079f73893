"""The Laue group of a crystal: its operations on (H, K, L) and on Cartesian q, and its orbits.

The harmonic TDS is invariant under the crystal's point group and, for real form factors, under
q → −q (Friedel): together the Laue group (m-3m, 48 operations, for cubic crystals). One object,
:class:`LaueGroup`, holds it for every layer: the data reduction (symmetrization, irreducible
points of a volume), the forward models (evaluate the irreducible q only: ``laue_reduce``) and the
sampled estimator (average each configuration over an orbit: ``orbit_average``).

An operation acts on reciprocal-lattice coordinates h = (H, K, L) as an integer 3×3 matrix R; on
Cartesian q = Bᵀh (B the reciprocal matrix, rows b_i) it is R_q = Bᵀ R B⁻ᵀ. The operations come
from spglib's space-group database (a representative space group per Laue class) or from a
crystal's own symmetry: nothing is typed in by hand.

Orbits are found on integer coordinates n (grid indices, supercell modes, or h quantized to a
resolution): each point is keyed by its integer images, an orbit is named by its largest key, and
the orbits are returned in the order of those keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from xtds.lattice.crystal import spglib_call

__all__ = ["LAUE_CLASSES", "GRID_TOL", "laue_class_of", "LaueGroup", "Orbits"]

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

#: How far a coordinate may lie from a lattice of points (a volume's grid, a supercell's q-grid)
#: and still count as on it, as a fraction of the lattice's step. The one grid tolerance of xtds:
#: symmetrization, the supercell geometry and its automatic choice all use it.
GRID_TOL = 1e-3

#: Resolution (r.l.u.) at which :meth:`LaueGroup.reduce_q` quantizes arbitrary q: points closer
#: than this are the same point.
Q_RESOLUTION_RLU = 1e-4


@functools.cache
def _hall_numbers_of(number: int) -> list[int]:
    return [h for h in range(1, 531) if spglib_call("get_spacegroup_type", h).number == number]


def _symbol_key(text: str) -> str:
    return str(text).replace(" ", "").replace("_", "")


@functools.lru_cache(maxsize=1)
def _space_group_table() -> tuple[dict, dict]:
    """(symbol key → number, number → point group) over spglib's 530 Hall settings: the short and full
    international symbols, spaces and underscores removed ('P6_3/mmc', 'P 63/m m c' → 'P63/mmc')."""
    numbers, points = {}, {}
    for h in range(1, 531):
        t = spglib_call("get_spacegroup_type", h)
        for s in (t.international_short, t.international_full, t.international):
            numbers.setdefault(_symbol_key(s), t.number)
        points.setdefault(t.number, t.pointgroup_international)
    return numbers, points


def space_group_number(space_group) -> int:
    """The number (1–230) of a space group given as 'Fm-3m (225)' (as :class:`~xtds.Crystal` writes
    it), a number ('225', 225), or an international symbol, short or full, with or without spaces
    and underscores ('Fm-3m', 'P6_3/mmc', 'P 63/m m c'). Raises ``ValueError`` for anything else."""
    text = str(space_group).strip()
    if "(" in text and text.endswith(")"):
        inner = text.rsplit("(", 1)[1].rstrip(") ").strip()
        if inner.isdigit():
            number = int(inner)
            symbol = _symbol_key(text.rsplit("(", 1)[0])
            known = _space_group_table()[0].get(symbol)
            if symbol and known is not None and known != number:
                raise ValueError(f"the space group {space_group!r} names two groups ({symbol} is {known})")
            if 1 <= number <= 230:
                return number
    if text.isdigit() and 1 <= int(text) <= 230:
        return int(text)
    number = _space_group_table()[0].get(_symbol_key(text))
    if number is None:
        raise ValueError(
            f"unknown space group {space_group!r}: give an international symbol such as 'Fm-3m' or 'P6_3/mmc', "
            "or a number 1–230"
        )
    return number


def laue_class_of(space_group: str) -> str:
    """The Laue class of a space group given by symbol ('Fm-3m', 'P 4/m m m') or number ('225').

    Raises ``ValueError`` for a symbol spglib's database does not know.
    """
    try:
        number = space_group_number(space_group)
    except ValueError as err:
        raise ValueError(f"{err}; or name the Laue class directly (laue='m-3m')") from None
    return _POINT_TO_LAUE[_space_group_table()[1][number]]


def _with_inversion(W: np.ndarray) -> np.ndarray:
    """{Wᵀ} ∪ {−Wᵀ} as unique integer matrices: real-space rotations W act on h as W⁻ᵀ, and the set
    {Wᵀ} is the same group; adding −1 makes it a Laue group."""
    R = np.concatenate([np.transpose(W, (0, 2, 1)), -np.transpose(W, (0, 2, 1))]).astype(np.int64)
    return np.unique(R.reshape(len(R), 9), axis=0).reshape(-1, 3, 3)


@dataclass(frozen=True)
class Orbits:
    """Points of a set grouped into Laue orbits.

    Attributes
    ----------
    index
        Shape (n_orbits,) int: the position in the input of each orbit's representative (its
        first point in input order).
    inverse
        Shape (N,) int: the orbit of each input point, so that ``full = per_orbit[inverse]``.
    counts
        Shape (n_orbits,) int: input points in each orbit (a volume's multiplicity).
    size
        Shape (n_orbits,) int: distinct members of each orbit (images of its representative).
    duplicates
        True when the input holds a point twice.
    """

    index: np.ndarray
    inverse: np.ndarray
    counts: np.ndarray
    size: np.ndarray
    duplicates: bool

    @property
    def closed(self) -> bool:
        """Every member of every orbit is in the input, once."""
        return not self.duplicates and bool(np.array_equal(self.counts, self.size))

    @property
    def reduction(self) -> float:
        """Input points per orbit, on average."""
        return len(self.inverse) / max(1, len(self.index))


@dataclass(frozen=True, eq=False)
class LaueGroup:
    """A Laue group as integer matrices acting on (H, K, L).

    Build it with :meth:`of` (from a crystal, a Laue class or a space group).

    Attributes
    ----------
    name
        The Laue class ('m-3m', '6/mmm', …).
    matrices
        Shape (n_ops, 3, 3) int: R with h' = R h.
    """

    name: str
    matrices: np.ndarray

    @classmethod
    def of(cls, crystal=None, laue: str | None = None, space_group: str | None = None) -> LaueGroup:
        """The Laue group from exactly one source: ``crystal`` (its own space group in its own
        setting, with inversion), ``laue`` (a class in :data:`LAUE_CLASSES`, standard setting) or
        ``space_group`` (a symbol or number)."""
        if sum(x is not None for x in (laue, crystal, space_group)) != 1:
            raise ValueError("give exactly one of laue='m-3m', crystal=... or space_group='Fm-3m'")
        if crystal is not None:
            W = np.asarray(crystal.symmetry_dataset.rotations)
            return cls(laue_class_of(crystal.space_group), _with_inversion(W))
        if laue is None:
            laue = laue_class_of(space_group)
        if laue not in LAUE_CLASSES:
            raise ValueError(f"unknown Laue class {laue!r}; choose one of {sorted(LAUE_CLASSES)}")
        W = spglib_call("get_symmetry_from_database", _hall_numbers_of(LAUE_CLASSES[laue])[0])["rotations"]
        return cls(laue, _with_inversion(np.asarray(W)))

    def __len__(self) -> int:
        return len(self.matrices)

    def __repr__(self) -> str:
        return f"LaueGroup({self.name!r}, {len(self)} operations)"

    def cartesian(self, crystal) -> np.ndarray:
        """The operations on Cartesian q of ``crystal``: shape (n_ops, 3, 3), R_q = Bᵀ R B⁻ᵀ."""
        B = np.asarray(crystal.reciprocal)
        return np.einsum("ji,gjk,kl->gil", B, self.matrices, np.linalg.inv(B).T)

    # ------------------------------------------------------------------ orbits
    def _integer_action(self, scale) -> np.ndarray:
        """The operations on integer coordinates n with h = n·scale (per axis): diag(1/s) R diag(s),
        which must be integer (e.g. a supercell with equal repeats along axes the group mixes)."""
        if scale is None:
            return self.matrices
        s = np.broadcast_to(np.asarray(scale, dtype=float), (3,))
        M = self.matrices * s[None, None, :] / s[None, :, None]
        Mi = np.round(M)
        if np.abs(M - Mi).max(initial=0.0) > 1e-9:
            raise ValueError(
                f"the Laue group {self.name} does not map this lattice of points onto itself (steps {s.tolist()} "
                "r.l.u. differ along axes the group exchanges): use equal steps (supercell repeats) on those axes"
            )
        return Mi.astype(np.int64)

    def orbit_keys(self, n: np.ndarray, scale=None, chunk: int = 1 << 20):
        """Per point (N,): its scalar key, the largest key among its images (the orbit's canonical
        key) and the number of distinct images (|G| / the order of its stabilizer); None if the keys
        would overflow. Operation by operation over blocks of points, with the keys in float64 (exact
        below 2⁵³): O(N) memory, so that a volume of 10⁸ voxels never holds its (N, G, 3) images."""
        M = self._integer_action(scale)
        n = np.asarray(n, dtype=np.int64).reshape(-1, 3)
        span = int(np.abs(M).sum(axis=2).max(initial=1) * np.abs(n).max(initial=0)) + 1  # bounds every image
        base = 2 * span + 1
        if base**3 >= 2**53:
            return None
        # key(v) = ((v0 + span)·base + v1 + span)·base + v2 + span = v·(base², base, 1) + offset
        weights = np.array([base * base, base, 1.0])
        offset = float(span * (base * base + base + 1))
        # a Laue group holds the inversion: the images of g and −g have opposite keys (before the
        # offset), so half the operations give every key up to sign
        half = []
        for g in range(len(M)):
            if not any(np.array_equal(M[g], -M[h]) for h in half):
                half.append(g)
        centro = 2 * len(half) == len(M)
        ops = M[half] if centro else M
        kmat = np.einsum("gij,i->jg", ops.astype(float), weights)  # (3, G'): key of image g = n·kmat[:, g]
        own = np.empty(len(n), dtype=np.int64)
        canon = np.empty(len(n), dtype=np.int64)
        size = np.empty(len(n), dtype=np.int64)
        for lo in range(0, len(n), chunk):
            nb = n[lo : lo + chunk].astype(float)
            k_own = nb @ weights
            best = np.full(len(nb), -np.inf)
            stab = np.zeros(len(nb), dtype=np.int64)
            for g in range(kmat.shape[1]):
                kg = nb @ kmat[:, g]
                if centro:
                    stab += kg == k_own
                    stab += kg == -k_own  # (bools added separately: their sum would be their "or")
                    np.abs(kg, out=kg)
                else:
                    stab += kg == k_own
                np.maximum(best, kg, out=best)
            own[lo : lo + chunk] = (k_own + offset).astype(np.int64)
            canon[lo : lo + chunk] = (best + offset).astype(np.int64)
            size[lo : lo + chunk] = len(M) // stab
        return own, canon, size

    def keeps(self, shape) -> bool:
        """True when the group maps an L1×L2×L3 supercell (or k-mesh) ``shape`` onto itself."""
        try:
            self._integer_action(1.0 / np.broadcast_to(np.asarray(shape, dtype=float), (3,)))
        except ValueError:
            return False
        return True

    def images(self, n, scale=None) -> tuple[np.ndarray, np.ndarray]:
        """The distinct images of each point: (members (M, 3) int, owner (M,) int), grouped by
        owner and, within an owner, in increasing order.

        ``n``: shape (N, 3) int, with h = n·scale (``scale`` None: the matrices act on n itself).
        """
        M = self._integer_action(scale)
        n = np.asarray(n, dtype=np.int64).reshape(-1, 3)
        img = np.einsum("gij,qj->qgi", M, n).reshape(-1, 3)
        owner = np.repeat(np.arange(len(n)), len(M))
        span = int(np.abs(img).max(initial=0)) + 1
        base = 2 * span + 1
        key = ((owner * base + img[:, 0] + span) * base + img[:, 1] + span) * base + img[:, 2] + span
        _, first = np.unique(key, return_index=True)  # sorted by key, so grouped by owner
        return img[first], owner[first]

    def orbits(self, n, scale=None) -> Orbits | None:
        """Group the points ``n`` (shape (N, 3) int, h = n·scale) into orbits; None when the keys
        would overflow (coordinates beyond ~10⁶)."""
        keys = self.orbit_keys(n, scale)
        if keys is None:
            return None
        own, canon, size = keys
        # grouping by one stable sort (np.unique's hashing is slow on 10⁷–10⁸ keys)
        order = np.argsort(canon, kind="stable")
        sc = canon[order]
        start = np.ones(len(sc), dtype=bool)
        start[1:] = sc[1:] != sc[:-1]
        first = np.flatnonzero(start)
        inverse = np.empty(len(sc), dtype=np.int64)
        inverse[order] = np.cumsum(start) - 1
        counts = np.diff(np.append(first, len(sc)))
        index = order[first]  # the first point of each orbit (the sort is stable)
        own = np.sort(own)
        duplicates = bool(np.any(own[1:] == own[:-1]))
        return Orbits(index=index, inverse=inverse, counts=counts, size=size[index], duplicates=duplicates)

    def reduce_q(self, crystal, q, resolution: float = Q_RESOLUTION_RLU) -> Orbits | None:
        """Orbits of arbitrary Cartesian q (shape (Q, 3), Å⁻¹), quantized to ``resolution`` r.l.u.;
        None when the set is not closed under the group (then evaluate every point)."""
        h = crystal.cartesian_to_rlu(np.asarray(q, dtype=float))
        orb = self.orbits(np.round(h / resolution).astype(np.int64))
        return orb if orb is not None and orb.closed else None
