"""Symmetry-reduced interatomic force constants (IFCs).

:class:`IFCModel` derives, once, the independent force constants of a crystal for a given cutoff
(a number of neighbour shells or a radius), and stores the result as a plain linear map
φ → Φ(s, R+s') for every pair within the cutoff, self blocks included.

Derivation (``docs/conventions.md``, "Force constants"):

1. The pairs (s, s', R) of the primitive cell within the cutoff are grouped into orbits under the
   space group together with index permutation Φ(s, R+s') = Φ(s', −R+s)ᵀ.
2. For each orbit's representative pair, the operations that leave it fixed (possibly swapping its
   two atoms) give linear constraints X = W X Wᵀ (or its transpose) in the lattice basis
   X = A⁻ᵀ Φ A⁻¹, where W is integer. The free subspace is the image of the exact rational
   Reynolds projector, computed with sympy.
3. Each free direction is named by a Cartesian element of the representative block, chosen in the
   preference order :data:`ELEMENT_ORDER` (xx, yy, zz, yz, xy, xz, then the lower triangle);
   every other pair of the orbit follows from Φ(g·pair) = R Φ(pair) Rᵀ.
4. Self blocks come from the acoustic sum rule, Φ(s, s) = −Σ_{(s',R)≠(s,0)} Φ(s, R+s'), and are
   never free; their named elements (``a0`` …) are reported as derived constants.

Names: the shell letter (``a`` = self, ``b`` = first neighbours, …) and an index in element order.
For FCC with 5 shells this reproduces the paper's b0 … f3 exactly. When one shell holds several
pair orbits (e.g. Na–Na and Cl–Cl in rocksalt), the species pair is appended: ``c0_Na-Na``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import sympy
import torch

from xtds.lattice.crystal import Crystal
from xtds.lattice.nac import COULOMB_EV_A, NAC_LAMBDA
from xtds.lattice.symmetry import SpaceGroupOperations, space_group_operations

__all__ = ["IFCModel", "ExtendedIFCModel", "IFCInfo", "ELEMENT_ORDER", "shell_letter"]

#: Preference order of the Cartesian elements that name free constants.
ELEMENT_ORDER = ("xx", "yy", "zz", "yz", "xy", "xz", "zy", "yx", "zx")
_AXIS = {"x": 0, "y": 1, "z": 2}
#: Relative tolerance for distances (grouping pairs into shells), Å.
DIST_TOL = 1e-4
#: Tolerance with which (a0 …) given by a user must equal the sum-rule value, eV/Å² (tables round).
DERIVED_TOL = 2e-3


def shell_letter(shell: int) -> str:
    """Letter of a neighbour shell: ``a`` for the self term, ``b`` for the first shell, …"""
    return chr(ord("a") + shell) if shell < 26 else f"s{shell}_"


def _element_index(el: str) -> int:
    return 3 * _AXIS[el[0]] + _AXIS[el[1]]


_TRANSPOSE = np.array([3 * (k % 3) + k // 3 for k in range(9)])  # vec(Xᵀ) = vec(X)[_TRANSPOSE]


@dataclass(frozen=True)
class IFCInfo:
    """Metadata of one named force constant.

    Attributes
    ----------
    name
        e.g. ``"b2"``.
    shell
        Neighbour shell (0 = self, 1 = nearest neighbours, …), by distinct distance.
    distance
        Pair distance, Å.
    sites
        (s, s'): basis sites of the primitive cell for the representative pair.
    species
        Element symbols of the two sites.
    neighbour
        Cartesian vector from atom s to the representative neighbour, Å.
    element
        Which element of the 3×3 block Φ(s, R+s') the constant is, e.g. ``"xy"``.
    count
        Number of neighbours of site s in this pair orbit.
    derived
        True for the self terms, which follow from the acoustic sum rule.
    """

    name: str
    shell: int
    distance: float
    sites: tuple[int, int]
    species: tuple[str, str]
    neighbour: tuple[float, float, float]
    element: str
    count: int
    derived: bool


@dataclass(frozen=True)
class PairTable:
    """Pairs as seen from the atoms of one cell (see :meth:`IFCModel.pair_table`).

    Attributes
    ----------
    cell
        The cell (a Crystal).
    site
        Shape (n,) int: primitive site of each atom of the cell.
    src, dst
        Shape (P,) int: atoms of the cell (dst modulo cell translations).
    shift
        Shape (P, 3) int: cell translation of the neighbour, in units of the cell's lattice.
    pair
        Shape (P,) int: index of the pair in the model (its block is ``model.blocks(phi)[pair]``).
    vector
        Shape (P, 3), Å: x_neighbour − x_src.
    """

    cell: Crystal
    site: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    shift: np.ndarray
    pair: np.ndarray
    vector: np.ndarray

    @property
    def n_atoms(self) -> int:
        return self.cell.n_atoms


def _pair_table(model: IFCModel, cell: Crystal) -> PairTable:
    prim = model.primitive
    frac_vs_prim = cell.lattice @ np.linalg.inv(prim.lattice)
    if np.abs(frac_vs_prim - np.round(frac_vs_prim)).max() > 1e-4:
        raise ValueError("the cell's lattice vectors are not translations of the model's crystal")
    x = cell.cartesian_positions
    d = (x @ np.linalg.inv(prim.lattice))[:, None, :] - prim.positions[None]
    err = np.linalg.norm((d - np.round(d)) @ prim.lattice, axis=-1)
    if err.min(axis=1).max() > 1e-3:
        raise ValueError("an atom of the cell does not sit on a site of the model's crystal")
    site = err.argmin(axis=1)
    inv = np.linalg.inv(cell.lattice)
    src, dst, shift, pair = [], [], [], []
    for c in range(cell.n_atoms):
        ps = np.nonzero(model.pair_src == site[c])[0]
        f = (x[c] + model.pair_vector[ps]) @ inv
        diff = f[:, None, :] - cell.positions[None]
        cells = np.round(diff)
        e = np.linalg.norm((diff - cells) @ cell.lattice, axis=-1)
        t = e.argmin(axis=1)
        if e.min(axis=1).max() > 1e-3:
            raise RuntimeError("a neighbour was not found among the cell's atoms")
        src.append(np.full(len(ps), c))
        dst.append(t)
        shift.append(cells[np.arange(len(ps)), t].astype(int))
        pair.append(ps)
    src, dst, shift, pair = map(np.concatenate, (src, dst, shift, pair))
    return PairTable(cell, site, src, dst, shift, pair, model.pair_vector[pair])


@dataclass(frozen=True)
class _Orbit:
    shell: int
    rep: int  # index of the representative pair
    members: np.ndarray  # pair indices
    op: np.ndarray  # for each member: operation index g
    transpose: np.ndarray  # for each member: whether the rep is transposed first
    elements: tuple[str, ...]  # names' elements (pivots)
    rep_map: np.ndarray  # (9, m): vec Φ_rep = rep_map @ φ_orbit


class IFCModel:
    """The symmetry-reduced force constants of a crystal within a cutoff.

    Parameters
    ----------
    crystal
        Any :class:`~xtds.Crystal`; the derivation works on its primitive cell.
    shells
        Include every pair up to the ``shells``-th distinct neighbour distance.
    cutoff
        Or: include every pair with a distance ≤ ``cutoff`` (Å). Give exactly one of the two.

    Attributes
    ----------
    names
        The free constants, in order (for FCC with 5 shells: b0 … f3).
    nac_lambda, nac_factor
        For a polar crystal: the Ewald parameter Λ (Å⁻¹) and e²/(4πε₀) (eV·Å) of the dipole–dipole
        term (:mod:`xtds.lattice.nac`); an import sets those of the code it reproduces.
    derived_names
        The constants the acoustic sum rule fixes (a0 …).
    basis
        Shape (n_pairs, 3, 3, n_free) float64: Φ_p = basis[p] @ φ (eV/Å²) for every pair p.

    Examples
    --------
    >>> from xtds import Crystal, IFCModel
    >>> m = IFCModel(Crystal.fcc("Ni", a=3.52), shells=5)
    >>> m.names[:4], len(m.names), m.derived_names
    (('b0', 'b1', 'b2', 'c0'), 16, ('a0',))
    """

    nac_lambda: float = NAC_LAMBDA
    nac_factor: float = COULOMB_EV_A

    def __init__(self, crystal: Crystal, shells: int | None = None, cutoff: float | None = None):
        if (shells is None) == (cutoff is None):
            raise ValueError("give exactly one of shells=N (neighbour shells) or cutoff=r (Å)")
        if shells is not None and (isinstance(shells, bool) or not isinstance(shells, (int, np.integer))
                                   or shells < 1):
            raise ValueError(f"shells must be a positive integer (a count of neighbour shells), got {shells!r}")
        if cutoff is not None and not cutoff > 0:
            raise ValueError(f"cutoff must be a positive distance in Å, got {cutoff!r}")
        self.crystal = crystal
        self.primitive = crystal.primitive()
        self._ops = space_group_operations(self.primitive)
        self._enumerate_pairs(shells, cutoff)
        if not np.any(self.pair_shell > 0):
            raise ValueError(f"cutoff={cutoff!r} Å holds no pair of atoms: the nearest neighbours are "
                             f"{self._nearest():.4f} Å apart; give a larger cutoff or shells=N")
        self._build_orbits()
        self._build_basis()
        self._torch_cache: dict = {}
        self._tables: dict = {}

    # ------------------------------------------------------------------ construction
    def _nearest(self) -> float:
        """The nearest-neighbour distance, Å."""
        _, _, _, vecs = self._pairs_within(float(np.max(np.linalg.norm(self.primitive.lattice, axis=1))))
        d = np.linalg.norm(vecs, axis=1)
        return float(d[d > DIST_TOL].min())

    def _pairs_within(self, radius: float):
        prim = self.primitive
        A = prim.lattice
        rec_len = np.linalg.norm(prim.reciprocal, axis=1) / (2 * np.pi)
        m = np.ceil(radius * rec_len).astype(int) + 1
        grid = np.stack(
            np.meshgrid(*(np.arange(-k, k + 1) for k in m), indexing="ij"), axis=-1
        ).reshape(-1, 3)
        src, dst, cells, vecs = [], [], [], []
        tau = prim.positions
        for s in range(prim.n_atoms):
            for t in range(prim.n_atoms):
                d = (grid + tau[t] - tau[s]) @ A
                keep = np.linalg.norm(d, axis=1) <= radius + 10 * DIST_TOL
                k = int(keep.sum())
                src += [s] * k
                dst += [t] * k
                cells.append(grid[keep])
                vecs.append(d[keep])
        return (np.array(src), np.array(dst), np.concatenate(cells), np.concatenate(vecs))

    def _enumerate_pairs(self, shells, cutoff):
        prim = self.primitive
        if cutoff is None:
            radius = float(np.max(np.linalg.norm(prim.lattice, axis=1)))
            while True:
                src, dst, cells, vecs = self._pairs_within(radius)
                dist = np.linalg.norm(vecs, axis=1)
                levels = distinct_distances(dist[dist > DIST_TOL])
                if len(levels) > shells:
                    cutoff = float(levels[shells - 1])
                    break
                radius *= 1.5
        src, dst, cells, vecs = self._pairs_within(cutoff)
        dist = np.linalg.norm(vecs, axis=1)
        keep = dist <= cutoff + DIST_TOL
        src, dst, cells, vecs, dist = src[keep], dst[keep], cells[keep], vecs[keep], dist[keep]
        levels = np.concatenate([[0.0], distinct_distances(dist[dist > DIST_TOL])])
        shell = np.abs(dist[:, None] - levels[None, :]).argmin(axis=1)
        order = np.lexsort((-vecs[:, 2], -vecs[:, 1], -vecs[:, 0], dst, src, shell))
        self.pair_src = src[order]
        self.pair_dst = dst[order]
        self.pair_cell = cells[order]
        self.pair_vector = vecs[order]
        self.pair_shell = shell[order]
        self.shell_distances = levels
        self.cutoff = float(cutoff)
        self.n_shells = len(levels) - 1
        self._key = {
            (int(s), int(t), *map(int, c)): i
            for i, (s, t, c) in enumerate(zip(self.pair_src, self.pair_dst, self.pair_cell, strict=True))
        }

    def _image(self, g: int, p: int) -> int:
        ops: SpaceGroupOperations = self._ops
        s, t, c = self.pair_src[p], self.pair_dst[p], self.pair_cell[p]
        s2 = ops.site_map[g, s]
        t2 = ops.site_map[g, t]
        c2 = ops.rotations[g] @ c + ops.cell_shift[g, t] - ops.cell_shift[g, s]
        return self._key[(int(s2), int(t2), *map(int, c2))]

    def _transposed(self, p: int) -> int:
        s, t, c = self.pair_src[p], self.pair_dst[p], self.pair_cell[p]
        return self._key[(int(t), int(s), *map(int, -c))]

    def _build_orbits(self):
        n_pairs = len(self.pair_src)
        n_ops = len(self._ops)
        orbit_of = -np.ones(n_pairs, dtype=int)
        orbits: list[_Orbit] = []
        for p in range(n_pairs):
            if orbit_of[p] >= 0:
                continue
            images = {self._image(g, p) for g in range(n_ops)}
            members = images | {self._transposed(q) for q in images}
            # representative: lowest first site, then the largest neighbour vector (lexicographic)
            rep = min(
                members,
                key=lambda q: (self.pair_src[q], *(-np.round(self.pair_vector[q], 6))),
            )
            op_of: dict[int, tuple[int, bool]] = {}
            stabilizer = []
            for g in range(n_ops):
                q = self._image(g, rep)
                for tflag, r in ((False, q), (True, self._transposed(q))):
                    op_of.setdefault(r, (g, tflag))
                    if r == rep:
                        stabilizer.append((g, tflag))
            mem = np.array(sorted(members))
            orbit_of[mem] = len(orbits)
            elements, rep_map = self._free_elements(stabilizer)
            orbits.append(
                _Orbit(
                    shell=int(self.pair_shell[rep]),
                    rep=int(rep),
                    members=mem,
                    op=np.array([op_of[q][0] for q in mem]),
                    transpose=np.array([op_of[q][1] for q in mem]),
                    elements=elements,
                    rep_map=rep_map,
                )
            )
        self._orbits = orbits
        self.pair_orbit = orbit_of

    def _free_elements(self, stabilizer):
        """Free subspace of a representative block and the elements that name it."""
        W = self._ops.rotations
        reynolds = sympy.zeros(9, 9)
        for g, tflag in stabilizer:
            K = np.kron(W[g], W[g])
            if tflag:
                K = K[:, _TRANSPOSE]
            reynolds += sympy.Matrix(K.astype(int).tolist())
        reynolds /= len(stabilizer)
        cols = reynolds.columnspace()
        if not cols:
            return (), np.zeros((9, 0))
        X = np.array([[float(v) for v in c] for c in cols]).T  # (9, m), lattice basis
        At = self.primitive.lattice.T
        N = np.kron(At, At) @ X  # Cartesian basis, (9, m)
        pivots: list[int] = []
        scale = np.abs(N).max()
        for el in ELEMENT_ORDER:
            trial = pivots + [_element_index(el)]
            if np.linalg.matrix_rank(N[trial], tol=1e-9 * scale) == len(trial):
                pivots = trial
            if len(pivots) == N.shape[1]:
                break
        rep_map = N @ np.linalg.inv(N[pivots])
        rep_map[np.abs(rep_map) < 1e-12] = 0.0
        inverse = {_element_index(e): e for e in ELEMENT_ORDER}
        return tuple(inverse[k] for k in pivots), rep_map

    def _build_basis(self):
        n_pairs = len(self.pair_src)
        R = self._ops.cartesian
        free = [o for o in self._orbits if o.shell > 0]
        selfs = [o for o in self._orbits if o.shell == 0]
        n_free = sum(len(o.elements) for o in free)
        basis = np.zeros((n_pairs, 9, n_free))
        # names
        names: list[str] = []
        infos: list[IFCInfo] = []
        col = 0
        species = self.primitive.species
        by_shell: dict[int, list[_Orbit]] = {}
        for o in self._orbits:
            by_shell.setdefault(o.shell, []).append(o)
        suffix: dict[int, str] = {}
        for shell, group in by_shell.items():
            if len(group) == 1:
                suffix[id(group[0])] = ""
                continue
            seen: dict[str, int] = {}
            for o in group:
                s, t = self.pair_src[o.rep], self.pair_dst[o.rep]
                lab = f"_{species[s]}" if shell == 0 else f"_{species[s]}-{species[t]}"
                seen[lab] = seen.get(lab, 0) + 1
                suffix[id(o)] = lab if seen[lab] == 1 else f"{lab}#{seen[lab]}"
        for o in free:
            m = len(o.elements)
            for q, g, tflag in zip(o.members, o.op, o.transpose, strict=True):
                K = np.kron(R[g], R[g])
                if tflag:
                    K = K[:, _TRANSPOSE]
                basis[q, :, col : col + m] = K @ o.rep_map
            infos += self._infos(o, suffix[id(o)], derived=False)
            col += m
        names = [i.name for i in infos]
        # self blocks from the acoustic sum rule
        offsite = self.pair_shell > 0
        derived_rows = []
        derived_info: list[IFCInfo] = []
        for o in selfs:
            for q in o.members:
                s = self.pair_src[q]
                basis[q] = -basis[offsite & (self.pair_src == s)].sum(axis=0)
            # the derived block must lie in the site-symmetric subspace
            N = o.rep_map
            T = basis[o.rep]
            if N.shape[1]:
                resid = T - N @ np.linalg.lstsq(N, T, rcond=None)[0]
            else:
                resid = T
            if np.abs(resid).max() > 1e-9 * max(1.0, np.abs(basis).max()):
                raise NotImplementedError(
                    "for this crystal and cutoff the acoustic sum rule gives self blocks that break "
                    "the site symmetry or Φ(s,s) = Φ(s,s)ᵀ; xtds does not yet add the extra "
                    "constraints this needs. Use a larger or smaller cutoff."
                )
            for el in o.elements:
                derived_rows.append(T[_element_index(el)])
            derived_info += self._infos(o, suffix[id(o)], derived=True)
        basis[np.abs(basis) < 1e-13] = 0.0
        self.basis = basis.reshape(n_pairs, 3, 3, n_free)
        self.basis.setflags(write=False)
        self.names = tuple(names)
        self.info = tuple(infos)
        self.derived_names = tuple(i.name for i in derived_info)
        self.derived_info = tuple(derived_info)
        self.derived_matrix = np.array(derived_rows).reshape(len(derived_info), n_free)
        if len(set(self.names + self.derived_names)) != len(self.names) + len(self.derived_names):
            raise RuntimeError("IFC names are not unique; please report this crystal")

    def _infos(self, o: _Orbit, suffix: str, derived: bool) -> list[IFCInfo]:
        s, t = int(self.pair_src[o.rep]), int(self.pair_dst[o.rep])
        count = int(np.sum(self.pair_src[o.members] == s))
        sp = self.primitive.species
        return [
            IFCInfo(
                name=f"{shell_letter(o.shell)}{i}{suffix}",
                shell=o.shell,
                distance=float(self.shell_distances[o.shell]),
                sites=(s, t),
                species=(sp[s], sp[t]),
                neighbour=tuple(float(x) for x in self.pair_vector[o.rep]),
                element=el,
                count=count,
                derived=derived,
            )
            for i, el in enumerate(o.elements)
        ]

    # ------------------------------------------------------------------ description
    @property
    def n_free(self) -> int:
        """Number of free constants."""
        return len(self.names)

    @property
    def n_sites(self) -> int:
        """Atoms in the primitive cell."""
        return self.primitive.n_atoms

    @property
    def n_pairs(self) -> int:
        return len(self.pair_src)

    @cached_property
    def orbit_sizes(self) -> list[tuple[int, tuple[int, int], int, int]]:
        """(shell, sites of the representative, number of pairs, number of free constants) per
        pair orbit, self orbits included (their constants are derived)."""
        return [
            (o.shell, (int(self.pair_src[o.rep]), int(self.pair_dst[o.rep])), len(o.members), len(o.elements))
            for o in self._orbits
        ]

    @property
    def orbits(self):
        """The pair orbits (internal records: representative pair, members, free elements)."""
        return tuple(self._orbits)

    def __repr__(self) -> str:
        return (
            f"IFCModel({self.crystal.name or self.crystal.formula}, {self.n_shells} shells, "
            f"cutoff {self.cutoff:.4f} Å, {self.n_free} free constants {', '.join(self.names)}; "
            f"derived {', '.join(self.derived_names)})"
        )

    def pair_table(self, cell: Crystal | None = None) -> PairTable:
        """The pairs seen from the atoms of another cell of the same crystal (cached).

        ``cell`` (default: the primitive cell) must be the model's structure in the same
        orientation, e.g. the conventional cubic cell. Every atom c of the cell gets every pair of
        its primitive site; the neighbour is atom c' of the cell translated by an integer cell
        vector.
        """
        cell = self.primitive if cell is None else cell
        key = hash(cell)
        if key not in self._tables:
            self._tables[key] = _pair_table(self, cell)
        return self._tables[key]

    # ------------------------------------------------------------------ IFC values
    def vector(self, ifc, dtype=torch.float64, device=None) -> torch.Tensor:
        """The free constants φ as a tensor of shape (n_free,), eV/Å².

        ``ifc`` may be a mapping name → value, an ``xr.DataArray`` on dim ``constant`` (as returned by
        :meth:`to_dataarray`), an array of length n_free, or a tensor (returned as is, cast).
        Derived constants (a0 …) may be included in a mapping; they must then agree with the
        acoustic sum rule (within :data:`DERIVED_TOL`), else a ``ValueError`` says so.
        """
        if isinstance(ifc, torch.Tensor):
            if ifc.shape != (self.n_free,):
                raise ValueError(f"expected {self.n_free} free constants {self.names}, got shape {tuple(ifc.shape)}")
            return ifc.to(dtype=dtype, device=device)
        if hasattr(ifc, "dims") and hasattr(ifc, "coords"):  # xarray DataArray
            if ifc.dims != ("constant",):
                raise ValueError(
                    f"an IFC DataArray must be 1-D on the dimension 'constant' with the names as coordinate "
                    f"(as IFCModel.to_dataarray and fit results give), got dims {ifc.dims}"
                )
            units = ifc.attrs.get("units")
            if units is not None and units.replace(" ", "") not in ("eV/Å^2", "eV/Å²", "eV/A^2", "eV/Angstrom^2"):
                raise ValueError(f"IFC DataArray has units {units!r}; xtds expects eV/Å^2")
            ifc = dict(zip([str(n) for n in ifc["constant"].values], np.asarray(ifc.values, dtype=float), strict=True))
        if isinstance(ifc, Mapping):
            unknown = set(ifc) - set(self.names) - set(self.derived_names)
            if unknown:
                raise ValueError(f"unknown IFC names {sorted(unknown)}; this model has {self.names}")
            missing = [n for n in self.names if n not in ifc]
            if missing:
                raise ValueError(f"missing IFC values for {missing} (all of {self.names} are needed)")
            bad = {n: ifc[n] for n in self.names
                   if isinstance(ifc[n], (bool, np.bool_, str, bytes)) or np.ndim(ifc[n]) != 0}
            if bad:
                raise ValueError(f"the force constants {sorted(bad)} are not single numbers ({bad}): give each "
                                 "as a number in eV/Å²")
            phi = np.array([float(ifc[n]) for n in self.names])
            derived = self.derived_matrix @ phi
            for name, value in zip(self.derived_names, derived, strict=True):
                if name in ifc and abs(float(ifc[name]) - value) > DERIVED_TOL * max(1.0, abs(value)):
                    raise ValueError(
                        f"{name} = {float(ifc[name])} given, but the acoustic sum rule gives {value:.6g} "
                        f"from the other constants; {name} is derived: leave it out or correct it"
                    )
            return torch.as_tensor(phi, dtype=dtype, device=device)
        arr = np.asarray(ifc, dtype=float)
        if arr.shape != (self.n_free,):
            raise ValueError(f"expected {self.n_free} free constants {self.names}, got shape {arr.shape}")
        return torch.as_tensor(arr, dtype=dtype, device=device)

    def torch_basis(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """The basis as a tensor (cached per dtype and device), shape (n_pairs, 3, 3, n_free)."""
        key = (dtype, str(device))
        if key not in self._torch_cache:
            self._torch_cache[key] = torch.tensor(np.array(self.basis), dtype=dtype, device=device)
        return self._torch_cache[key]

    def blocks(self, phi: torch.Tensor) -> torch.Tensor:
        """Φ for every pair: shape (n_pairs, 3, 3), eV/Å²; differentiable in ``phi``."""
        B = self.torch_basis(phi.dtype, phi.device)
        return torch.einsum("pijf,f->pij", B, phi)

    def derived(self, phi: torch.Tensor) -> torch.Tensor:
        """The derived constants (a0 …) from the sum rule, shape (n_derived,), eV/Å²."""
        D = torch.as_tensor(self.derived_matrix, dtype=phi.dtype, device=phi.device)
        return D @ phi

    def to_dataarray(self, ifc, include_derived: bool = True):
        """The constants as an ``xr.DataArray`` named ``ifc`` on dim ``constant``, with their metadata
        as coordinates.

        Coordinates: ``shell``, ``element``, ``pair`` (species), ``pair_distance`` (Å), ``rx, ry, rz``
        (representative neighbour, Å), ``derived`` (bool). ``attrs["units"] = "eV/Å^2"``.
        """
        import xarray as xr

        phi = self.vector(ifc).detach().cpu().numpy()
        infos = list(self.info)
        values = list(phi)
        if include_derived:
            infos = list(self.derived_info) + infos
            values = list(self.derived_matrix @ phi) + values
        coords = {
            "constant": [i.name for i in infos],
            "shell": ("constant", [i.shell for i in infos]),
            "element": ("constant", [i.element for i in infos]),
            "pair": ("constant", ["-".join(i.species) for i in infos]),
            "pair_distance": ("constant", [i.distance for i in infos], {"units": "Å"}),
            "rx": ("constant", [i.neighbour[0] for i in infos], {"units": "Å"}),
            "ry": ("constant", [i.neighbour[1] for i in infos], {"units": "Å"}),
            "rz": ("constant", [i.neighbour[2] for i in infos], {"units": "Å"}),
            "derived": ("constant", [i.derived for i in infos]),
        }
        da = xr.DataArray(
            np.array(values),
            dims=("constant",),
            coords=coords,
            name="ifc",
            attrs={
                "units": "eV/Å^2",
                "long_name": "interatomic force constant",
                "crystal": repr(self.crystal),
                "cutoff_A": self.cutoff,
                "convention": "element of the Hessian block Φ(s, R+s') for the representative pair",
            },
        )
        return da

    def table(self, ifc, title: str | None = None) -> str:
        """A plain-text table of the constants, derived ones first (for printing)."""
        phi = self.vector(ifc).detach().cpu().numpy()
        rows = list(zip(self.derived_info, self.derived_matrix @ phi, strict=True))
        rows += list(zip(self.info, phi, strict=True))
        a = self.crystal.parameters[0]
        lines = [title] if title else []
        lines.append(f"{'name':<10}{'shell':>5}  {'pair':<8}{'R (Å)':>26}  {'R (a/2)':>16}  {'el':<3}{'eV/Å²':>13}")
        for info, v in rows:
            r = np.array(info.neighbour)
            half = r / (a / 2)
            rs = "(" + ", ".join(f"{x:7.4f}" for x in r) + ")"
            hs = "(" + ", ".join(f"{x:g}" for x in np.round(half, 3)) + ")"
            mark = " *" if info.derived else ""
            lines.append(
                f"{info.name:<10}{info.shell:>5}  {'-'.join(info.species):<8}{rs:>26}  {hs:>16}  "
                f"{info.element:<3}{v:>13.6g}{mark}"
            )
        lines.append("* derived from the acoustic sum rule")
        return "\n".join(lines)

    # ------------------------------------------------------------------ projections
    def project(self, blocks) -> tuple[np.ndarray, float]:
        """Least-squares φ whose off-site blocks best match ``blocks``.

        Parameters
        ----------
        blocks
            Shape (n_pairs, 3, 3), eV/Å², ordered as :attr:`pair_vector`; self blocks are ignored
            (they follow from the sum rule).

        Returns
        -------
        phi
            Shape (n_free,), eV/Å².
        residual
            ‖Φ − Φ(phi)‖ / ‖Φ‖ over the off-site blocks: the part the basis cannot hold.
        """
        blocks = np.asarray(blocks, dtype=float)
        if blocks.shape != (self.n_pairs, 3, 3):
            raise ValueError(f"blocks must have shape ({self.n_pairs}, 3, 3), got {blocks.shape}")
        off = self.pair_shell > 0
        M = self.basis[off].reshape(-1, self.n_free)
        y = blocks[off].reshape(-1)
        phi = np.linalg.lstsq(M, y, rcond=None)[0]
        norm = np.linalg.norm(y)
        return phi, float(np.linalg.norm(M @ phi - y) / norm) if norm > 0 else 0.0

    def central_force(self, springs: Mapping[int, float]) -> np.ndarray:
        """φ of central (bond-stretching) springs: Φ(R) = −k R̂R̂ᵀ for each shell given.

        ``springs`` maps shell number (1 = nearest neighbours) to a spring constant k (eV/Å²,
        positive = stiff). Shells not named get no spring.
        """
        d = self.pair_vector
        norm = np.linalg.norm(d, axis=1)
        blocks = np.zeros((self.n_pairs, 3, 3))
        for shell, k in springs.items():
            if not 1 <= shell <= self.n_shells:
                raise ValueError(f"shell {shell} is not within this model's 1..{self.n_shells}")
            sel = self.pair_shell == shell
            u = d[sel] / norm[sel, None]
            blocks[sel] = -float(k) * u[:, :, None] * u[:, None, :]
        phi, resid = self.project(blocks)
        if resid > 1e-10:
            raise RuntimeError(f"central springs do not lie in the basis (residual {resid:.2e})")
        return phi


def distinct_distances(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values, merging those closer than DIST_TOL."""
    v = np.sort(values)
    if len(v) == 0:
        return v
    keep = np.concatenate([[True], np.diff(v) > DIST_TOL])
    return v[keep]


class ExtendedIFCModel(IFCModel):
    """An :class:`IFCModel` whose parameter vector goes on past the force constants: ``names`` are
    the constants (eV/Å²), then further parameters that do not enter the dynamical matrix (zero
    columns of the basis) but that observables read from φ[``n_harmonic``:] (TDS cumulants,
    phonon linewidths). ``units`` gives each name's unit. Subclasses call :meth:`_append` once."""

    #: what the ``units`` attribute of :meth:`to_dataarray` says of the extra parameters
    extra_units_note = ""
    #: the attribute that describes the extra parameters' settings (written to the DataArray's attrs)
    settings_attr = ""

    def _append(self, infos: list[IFCInfo], units: list[str]) -> None:
        """Append the parameters ``infos`` (their names and metadata) with their ``units``."""
        n_h, n_par = len(self.names), len(infos)
        names = [i.name for i in infos]
        if len(set(names)) != len(names) or set(names) & set(self.names):
            raise RuntimeError(f"parameter names {names} are not unique; please report this crystal")
        self.n_harmonic = n_h
        self.names = tuple(self.names) + tuple(names)
        self.info = tuple(self.info) + tuple(infos)
        self.units = ("eV/Å^2",) * n_h + tuple(units)
        basis = np.concatenate([self.basis, np.zeros(self.basis.shape[:3] + (n_par,))], axis=3)
        basis.setflags(write=False)
        self.basis = basis
        self.derived_matrix = np.concatenate([self.derived_matrix, np.zeros((len(self.derived_matrix), n_par))], 1)

    def vector(self, ifc, dtype=torch.float64, device=None) -> torch.Tensor:
        """As :meth:`IFCModel.vector`; extra parameters left out of a mapping are 0 (the plain
        harmonic model), so a harmonic fit's constants start a fit of the extended model."""
        if hasattr(ifc, "dims") and hasattr(ifc, "coords"):
            ifc = dict(zip([str(n) for n in ifc["constant"].values], np.asarray(ifc.values, dtype=float),
                           strict=True))
        if isinstance(ifc, Mapping):
            ifc = dict(ifc)
            for n in self.names[self.n_harmonic :]:
                ifc.setdefault(n, 0.0)
        return super().vector(ifc, dtype=dtype, device=device)

    def to_dataarray(self, ifc, include_derived: bool = True):
        """As :meth:`IFCModel.to_dataarray`, with a coordinate ``units`` per constant."""
        da = super().to_dataarray(ifc, include_derived)
        units = ["eV/Å^2"] * (len(da) - len(self.names)) + list(self.units)
        da = da.assign_coords(units=("constant", units))
        da.attrs["units"] = f"per constant (coordinate 'units'): eV/Å^2 force constants, {self.extra_units_note}"
        if self.settings_attr:
            da.attrs[self.settings_attr] = repr(getattr(self, self.settings_attr))
        return da

    def harmonic(self, phi) -> dict[str, float]:
        """The harmonic constants of a parameter vector, as a mapping."""
        phi = self.vector(phi).detach().cpu().numpy()
        return dict(zip(self.names[: self.n_harmonic], map(float, phi[: self.n_harmonic]), strict=True))
