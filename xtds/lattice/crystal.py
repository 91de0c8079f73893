"""The crystal: lattice, basis, species, masses, space group and reciprocal lattice.

Conventions (``docs/conventions.md``): lengths in Å, masses in amu from :mod:`periodictable`,
reciprocal vectors with 2π included (b_i · a_j = 2π δ_ij), q = H b1 + K b2 + L b3 in Å⁻¹.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import periodictable

from xtds.errors import triple

__all__ = ["Crystal", "PRESETS", "SYMPREC", "spglib_call", "as_crystal", "measured_cell", "element_of"]

#: Symmetry tolerance (Å) used for every spglib call.
SYMPREC = 1e-5


def spglib_call(name: str, *args, **kwargs):
    """Call the spglib function ``name`` (imported here, where it is used), silencing its
    deprecation notice about error handling."""
    import spglib

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*OLD_ERROR_HANDLING.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="spglib")
        return getattr(spglib, name)(*args, **kwargs)


def _polar(born, epsilon, n: int):
    """Validated (Born charges (n, 3, 3), ε∞ (3, 3)), or (None, None)."""
    if born is None and epsilon is None:
        return None, None
    if born is None or epsilon is None:
        raise ValueError("a polar crystal needs both born= (Born effective charges, (n, 3, 3) in e) and epsilon= "
                         "(the electronic dielectric tensor ε∞, (3, 3))")
    born = np.array(born, dtype=float)
    if born.shape != (n, 3, 3) or not np.all(np.isfinite(born)):
        raise ValueError(f"born must hold a finite 3×3 tensor (e) per atom: shape ({n}, 3, 3), got {born.shape}")
    epsilon = np.array(epsilon, dtype=float)
    if epsilon.shape == ():
        epsilon = np.eye(3) * float(epsilon)
    if epsilon.shape != (3, 3) or not np.allclose(epsilon, epsilon.T, atol=1e-6):
        raise ValueError(f"epsilon must be a symmetric 3×3 tensor (or a number), got {epsilon}")
    if np.linalg.eigvalsh(epsilon).min() < 1:
        raise ValueError(f"epsilon (ε∞) must have eigenvalues ≥ 1, got {np.linalg.eigvalsh(epsilon)}")
    total = born.sum(axis=0)
    if np.abs(total).max() > 0.1 * n:
        raise ValueError(f"the Born charges are far from charge neutrality (Σ_s Z_s = {total.round(3).tolist()} e, "
                         "should be 0): are they in e, one 3×3 tensor per atom in the order of the positions?")
    return born, epsilon


#: Born charges (e) or ε∞ that symmetrization and neutrality change by more than this are reported
#: with a warning (phonopy warns above 0.1 e, "symmetry largely broken").
BORN_WARN = 1e-2


def _symmetric_born(lattice, positions, numbers, born, epsilon):
    """Born charges and ε∞ averaged over the space group and made neutral, as phonopy does before its
    NAC: Z_{g(s)} ← mean_g R_g Z_s R_gᵀ, ε ← mean_g R_g ε R_gᵀ, then Z_s ← Z_s − mean_s Z_s.
    Returns (born, epsilon, the largest change of either)."""
    sym = spglib_call("get_symmetry", (lattice, positions, numbers), symprec=SYMPREC)
    A = lattice
    new_born = np.zeros_like(born)
    new_eps = np.zeros_like(epsilon)
    for W, w in zip(sym["rotations"], sym["translations"], strict=True):
        R = A.T @ W @ np.linalg.inv(A.T)
        d = (positions @ W.T + w)[:, None, :] - positions[None, :, :]
        target = np.argmin(np.linalg.norm((d - np.round(d)) @ A, axis=-1), axis=1)
        new_born[target] += np.einsum("ij,sjk,lk->sil", R, born, R)
        new_eps += R @ epsilon @ R.T
    new_born /= len(sym["rotations"])
    new_eps /= len(sym["rotations"])
    new_born -= new_born.mean(axis=0)
    change = max(float(np.abs(new_born - born).max()), float(np.abs(new_eps - epsilon).max()))
    for arr in (new_born, new_eps):
        arr.setflags(write=False)
    return new_born, new_eps, change


def _type_numbers(species, masses) -> np.ndarray:
    """A type number per atom for spglib: the atomic number, isotopes (other masses) kept distinct."""
    z = np.array([_element(s).number for s in species])
    keys = {(zz, m) for zz, m in zip(z, masses, strict=True)}
    if len(keys) != len(set(z)):
        lookup = {k: i + 1 for i, k in enumerate(sorted(keys))}
        z = np.array([lookup[(zz, m)] for zz, m in zip(z, masses, strict=True)])
    return z


#: An ion symbol: element, optional charge number, sign ('O2-', 'Na1+', 'Na+').
_ION = re.compile(r"^([A-Z][a-z]?)(\d*)([+-])$")


def element_of(symbol: str):
    """The periodictable element of a species symbol: an element ('Ni') or an ion ('O2-', 'Na1+',
    'Na+'), whose mass and atomic number are the element's. A ``ValueError`` names bad symbols."""
    match = _ION.match(symbol)
    name = match.group(1) if match else symbol
    try:
        element = periodictable.elements.symbol(name)
    except ValueError:
        raise ValueError(
            f"unknown species {symbol!r}: give element symbols such as 'Ni' or 'Si', or ions such as 'O2-' or "
            "'Na1+' (periodictable names them); pass masses=... for isotopes"
        ) from None
    if match:
        charge = int(match.group(2) or 1) * (1 if match.group(3) == "+" else -1)
        if abs(charge) > element.number:
            raise ValueError(f"the ion {symbol!r} has more charge than {element.symbol} has electrons")
        from periodictable.cromermann import getCMformula

        try:
            getCMformula(f"{element.symbol}{abs(charge)}{match.group(3)}")
        except Exception:
            raise ValueError(f"no X-ray form factor is tabulated for the ion {symbol!r} (Cromer–Mann, "
                             "periodictable); use the neutral element's symbol") from None
    return element


_element = element_of


@dataclass(frozen=True, eq=False)
class Crystal:
    """An immutable crystal structure.

    Parameters
    ----------
    lattice
        Shape (3, 3) float, Å. Rows are the lattice vectors a1, a2, a3 in Cartesian coordinates.
    positions
        Shape (n, 3) float: the basis in fractional coordinates of ``lattice``.
    species
        n element or ion symbols ('Ni', 'O2-', 'Na1+'), one per basis atom; ions scatter X-rays
        with their own form factor and have their element's mass.
    masses
        Optional shape (n,) float, amu. Default: standard atomic weights from periodictable.
    name
        A label used in outputs and plots.
    born, epsilon
        A polar crystal's Born effective charges, shape (n, 3, 3) in e, Z[s, i, j] = ∂P_i/∂u_sj
        (phonopy's convention), and its electronic dielectric tensor ε∞, shape (3, 3). Given
        together, they add the long-range dipole–dipole interaction (:mod:`xtds.lattice.nac`, LO–TO
        splitting) to every force-constant matrix of the crystal. Both are averaged over the space
        group and the charges made neutral (Σ_s Z_s = 0), as phonopy does before its NAC; the
        largest change (e) is ``born_change``, and a change above :data:`BORN_WARN` is warned of.

    Examples
    --------
    >>> ni = Crystal.fcc("Ni", a=3.52)
    >>> ni.n_atoms, ni.space_group
    (4, 'Fm-3m (225)')
    >>> ni.rlu_to_cartesian([2, 0, 0]).round(4)
    array([3.57  , 0.    , 0.    ])
    """

    lattice: np.ndarray
    positions: np.ndarray
    species: tuple[str, ...]
    masses: np.ndarray | None = None
    name: str = ""
    born: np.ndarray | None = None
    epsilon: np.ndarray | None = None
    born_change: float = field(init=False, repr=False, compare=False, default=0.0)
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        lattice = np.array(self.lattice, dtype=float)
        if lattice.shape != (3, 3):
            raise ValueError(f"lattice must have shape (3, 3) (rows a1, a2, a3 in Å), got {lattice.shape}")
        det = np.linalg.det(lattice)
        if abs(det) < 1e-8:
            raise ValueError("lattice vectors are linearly dependent (zero cell volume)")
        if det < 0:
            raise ValueError(
                "lattice vectors form a left-handed set (negative volume); swap two of them "
                "(and the matching fractional coordinates) to make it right-handed"
            )
        positions = np.array(self.positions, dtype=float)
        if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) == 0:
            raise ValueError(
                f"positions must have shape (n, 3) in fractional coordinates, got {positions.shape}"
            )
        species = tuple(str(s) for s in self.species)
        if len(species) != len(positions):
            raise ValueError(f"{len(species)} species given for {len(positions)} positions")
        for s in set(species):
            _element(s)
        # distinct sites modulo lattice translations
        diff = positions[:, None, :] - positions[None, :, :]
        diff -= np.round(diff)
        cart = np.linalg.norm(diff @ lattice, axis=-1) + np.eye(len(positions)) * 1e9
        if cart.min() < 1e-3:
            i, j = np.argwhere(cart < 1e-3)[0]
            raise ValueError(f"atoms {i} and {j} sit on the same position (modulo the lattice)")
        if self.masses is None:
            masses = np.array([_element(s).mass for s in species], dtype=float)
        else:
            masses = np.array(self.masses, dtype=float)
            if masses.shape != (len(species),) or np.any(masses <= 0):
                raise ValueError(f"masses must be {len(species)} positive numbers in amu")
        born, epsilon = _polar(self.born, self.epsilon, len(species))
        born_change = 0.0
        if born is not None:
            numbers = _type_numbers(species, masses)
            born, epsilon, born_change = _symmetric_born(lattice, positions, numbers, born, epsilon)
            if born_change > BORN_WARN:
                warnings.warn(f"the Born charges or ε∞ break the crystal's symmetry or charge neutrality: symmetrized "
                              f"and made neutral as phonopy does (largest change {born_change:.3g} e); "
                              "crystal.born_change holds it", UserWarning, stacklevel=3)
        object.__setattr__(self, "born_change", born_change)
        object.__setattr__(self, "born", born)
        object.__setattr__(self, "epsilon", epsilon)
        for arr in (lattice, positions, masses):
            arr.setflags(write=False)
        object.__setattr__(self, "lattice", lattice)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "masses", masses)
        object.__setattr__(
            self, "_hash", hash((lattice.tobytes(), positions.tobytes(), species, masses.tobytes(),
                                 None if born is None else born.tobytes()))
        )

    # ------------------------------------------------------------------ identity
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Crystal):
            return NotImplemented
        return (
            self.species == other.species
            and np.array_equal(self.lattice, other.lattice)
            and np.array_equal(self.positions, other.positions)
            and np.array_equal(self.masses, other.masses)
            and self.polar == other.polar
            and (not self.polar or (np.array_equal(self.born, other.born)
                                    and np.array_equal(self.epsilon, other.epsilon)))
        )

    def with_born(self, born, epsilon) -> Crystal:
        """This crystal with Born effective charges and ε∞ (a polar crystal, :mod:`xtds.lattice.nac`).

        ``born``: (n, 3, 3) per atom, or a mapping species → a number (isotropic) or a 3×3 tensor,
        in e; ``epsilon``: 3×3 or a number."""
        if isinstance(born, dict):
            missing = sorted(set(self.species) - set(born))
            if missing:
                raise ValueError(f"born gives no charge for {missing}")
            born = np.stack([np.eye(3) * born[s] if np.ndim(born[s]) == 0 else np.asarray(born[s], dtype=float)
                             for s in self.species])
        return Crystal(self.lattice, self.positions, self.species, masses=self.masses, name=self.name, born=born,
                       epsilon=epsilon)

    @property
    def polar(self) -> bool:
        """Whether Born charges and ε∞ are set (the dipole–dipole term applies)."""
        return self.born is not None

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        a, b, c, al, be, ga = self.parameters
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"Crystal({label}{self.formula}, {self.space_group}, a={a:.4f} b={b:.4f} c={c:.4f} Å, "
            f"α={al:.2f} β={be:.2f} γ={ga:.2f}°, {self.n_atoms} atoms)"
        )

    # ------------------------------------------------------------------ geometry
    @property
    def n_atoms(self) -> int:
        """Number of atoms in the cell."""
        return len(self.species)

    @property
    def formula(self) -> str:
        counts: dict[str, int] = {}
        for s in self.species:
            counts[s] = counts.get(s, 0) + 1
        return "".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items())

    @cached_property
    def volume(self) -> float:
        """Cell volume, Å³."""
        return float(np.linalg.det(self.lattice))

    @cached_property
    def parameters(self) -> tuple[float, float, float, float, float, float]:
        """(a, b, c) in Å and (α, β, γ) in degrees."""
        a1, a2, a3 = self.lattice
        la, lb, lc = (float(np.linalg.norm(v)) for v in (a1, a2, a3))

        def ang(u, v):
            return math.degrees(math.acos(float(np.dot(u, v)) / np.linalg.norm(u) / np.linalg.norm(v)))

        return la, lb, lc, ang(a2, a3), ang(a1, a3), ang(a1, a2)

    @cached_property
    def reciprocal(self) -> np.ndarray:
        """Shape (3, 3), Å⁻¹: rows b1, b2, b3 with b_i · a_j = 2π δ_ij."""
        rec = 2.0 * np.pi * np.linalg.inv(self.lattice).T
        rec.setflags(write=False)
        return rec

    @cached_property
    def cartesian_positions(self) -> np.ndarray:
        """Shape (n, 3), Å: basis positions in Cartesian coordinates."""
        out = self.positions @ self.lattice
        out.setflags(write=False)
        return out

    @cached_property
    def density(self) -> float:
        """Mass density in amu/Å³."""
        return float(np.sum(self.masses)) / self.volume

    def rlu_to_cartesian(self, hkl) -> np.ndarray:
        """Convert reciprocal lattice units to Cartesian momentum transfer.

        Parameters
        ----------
        hkl
            Shape (..., 3), r.l.u. of this cell.

        Returns
        -------
        Shape (..., 3) float, Å⁻¹ (2π included): q = H b1 + K b2 + L b3.
        """
        hkl = np.asarray(hkl, dtype=float)
        if hkl.shape[-1] != 3:
            raise ValueError(f"last axis of hkl must have length 3 (H, K, L), got shape {hkl.shape}")
        return hkl @ self.reciprocal

    def k_grid(self, shape, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
        """The k-points k = Σ ((m_i + shift_i) / L_i) b_i, m_i = 0 … L_i − 1, of this cell: shape
        (L1, L2, L3, 3), Å⁻¹ (the k-grid of an L1×L2×L3 supercell, or a Monkhorst–Pack-style mesh
        with ``shift`` in units of the step). The one k-grid builder of xtds."""
        L = triple(shape, "k-grid sizes")
        axes = [(np.arange(n) + float(s)) / n for n, s in zip(L, np.broadcast_to(shift, (3,)), strict=True)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1) @ self.reciprocal

    def cartesian_to_rlu(self, q) -> np.ndarray:
        """Inverse of :meth:`rlu_to_cartesian`: shape (..., 3) Å⁻¹ → shape (..., 3) r.l.u."""
        q = np.asarray(q, dtype=float)
        if q.shape[-1] != 3:
            raise ValueError(f"last axis of q must have length 3 (qx, qy, qz), got shape {q.shape}")
        return q @ self.lattice.T / (2.0 * np.pi)

    # ------------------------------------------------------------------ symmetry
    @property
    def spglib_cell(self):
        """The (lattice, positions, numbers) tuple spglib takes."""
        return (self.lattice, self.positions, self.numbers)

    @cached_property
    def numbers(self) -> np.ndarray:
        """Shape (n,) int: a type number per atom (atomic number; isotopes kept distinct)."""
        return _type_numbers(self.species, self.masses)

    @cached_property
    def symmetry_dataset(self):
        """spglib's symmetry dataset of this cell."""
        ds = spglib_call("get_symmetry_dataset", self.spglib_cell, symprec=SYMPREC)
        if ds is None:
            raise RuntimeError("spglib could not determine the space group of this crystal")
        return ds

    @property
    def space_group(self) -> str:
        """International symbol and number, e.g. ``'Fm-3m (225)'``."""
        ds = self.symmetry_dataset
        return f"{ds.international} ({ds.number})"

    @property
    def space_group_number(self) -> int:
        return int(self.symmetry_dataset.number)

    @cached_property
    def point_group(self) -> str:
        """Hermann–Mauguin symbol of the point group, e.g. ``'m-3m'``."""
        return str(self.symmetry_dataset.pointgroup)

    def primitive(self) -> Crystal:
        """The primitive cell, in the same Cartesian orientation (spglib, not idealized).

        The primitive lattice vectors are lattice translations of this crystal, and the basis
        positions are wrapped into [0, 1).
        """
        lat, pos, num = spglib_call(
            "standardize_cell",
            self.spglib_cell,
            to_primitive=True,
            no_idealize=True,
            symprec=SYMPREC,
        )
        # spglib returns a (possibly) differently oriented copy when no_idealize fails; check that
        # the primitive vectors are translations of this crystal in this frame.
        frac = lat @ np.linalg.inv(self.lattice)
        home = self.positions[0]
        for v in frac:
            shifted = (home + v - self.positions) % 1.0
            shifted = np.minimum(shifted, 1.0 - shifted)
            if not np.any(np.linalg.norm(shifted @ self.lattice, axis=1) < 1e-4):
                raise RuntimeError("spglib returned a rotated primitive cell; please report this crystal")
        type_to_index = {}
        for i, n in enumerate(self.numbers):
            type_to_index.setdefault(int(n), i)
        idx = [type_to_index[int(n)] for n in num]
        species = tuple(self.species[i] for i in idx)
        masses = np.array([self.masses[i] for i in idx])
        born = None
        if self.polar:  # by position: equivalent atoms' tensors differ by the operation relating them
            frac = (np.mod(pos, 1.0) @ lat) @ np.linalg.inv(self.lattice)
            d = frac[:, None, :] - self.positions[None, :, :]
            d -= np.round(d)
            born = self.born[np.argmin(np.linalg.norm(d @ self.lattice, axis=-1), axis=1)]
        return Crystal(lat, np.mod(pos, 1.0), species, masses=masses, name=self.name, born=born,
                       epsilon=self.epsilon)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def _lattice_constant(element: str, a: float | None, structure: str) -> float:
        if a is not None:
            if not a > 0:
                raise ValueError(f"lattice constant must be positive (Å), got {a}")
            return float(a)
        cs = _element(element).crystal_structure or {}
        if "a" not in cs:
            raise ValueError(f"periodictable has no lattice constant for {element}; pass a=... in Å")
        listed = str(cs.get("symmetry", "")).lower()
        aliases = {"fcc": ("fcc", "face"), "bcc": ("bcc", "body"), "diamond": ("diamond",)}
        if not any(word in listed for word in aliases[structure]):
            warnings.warn(
                f"periodictable lists {element} as {cs.get('symmetry')!r}, not {structure}; using its "
                f"a = {cs['a']} Å anyway. Pass a=... to choose the lattice constant.",
                UserWarning,
                stacklevel=3,
            )
        return float(cs["a"])

    @classmethod
    def cubic(cls, a: float, positions: Sequence[Sequence[float]], species: Sequence[str], name: str = ""):
        """A cubic cell of edge ``a`` (Å) with the given fractional basis."""
        return cls(np.eye(3) * a, np.asarray(positions, float), tuple(species), name=name)

    @classmethod
    def fcc(cls, element: str, a: float | None = None) -> Crystal:
        """Face-centred cubic element in its conventional cubic cell (4 atoms).

        ``a`` in Å; default: periodictable's lattice constant.
        """
        a = cls._lattice_constant(element, a, "fcc")
        pos = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
        return cls.cubic(a, pos, [element] * 4, name=element)

    @classmethod
    def bcc(cls, element: str, a: float | None = None) -> Crystal:
        """Body-centred cubic element in its conventional cubic cell (2 atoms)."""
        a = cls._lattice_constant(element, a, "bcc")
        return cls.cubic(a, [[0, 0, 0], [0.5, 0.5, 0.5]], [element] * 2, name=element)

    @classmethod
    def diamond(cls, element: str, a: float | None = None) -> Crystal:
        """Diamond structure (Fd-3m, 2 atoms per primitive cell) in its cubic cell (8 atoms)."""
        a = cls._lattice_constant(element, a, "diamond")
        fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        pos = np.vstack([fcc, fcc + 0.25])
        return cls.cubic(a, pos, [element] * 8, name=element)

    @classmethod
    def rocksalt(cls, cation: str, anion: str, a: float) -> Crystal:
        """Rocksalt (B1, Fm-3m) compound in its cubic cell (8 atoms); ``a`` in Å."""
        if not a > 0:
            raise ValueError(f"lattice constant must be positive (Å), got {a}")
        fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        pos = np.vstack([fcc, fcc + [0.5, 0, 0]]) % 1.0
        return cls.cubic(a, pos, [cation] * 4 + [anion] * 4, name=cation + anion)

    @classmethod
    def from_parameters(
        cls,
        a: float,
        b: float,
        c: float,
        alpha: float,
        beta: float,
        gamma: float,
        positions: Sequence[Sequence[float]],
        species: Sequence[str],
        name: str = "",
    ) -> Crystal:
        """A crystal from lattice parameters (Å, degrees): a along x, b in the xy plane."""
        al, be, ga = (math.radians(x) for x in (alpha, beta, gamma))
        a1 = [a, 0.0, 0.0]
        a2 = [b * math.cos(ga), b * math.sin(ga), 0.0]
        cx = c * math.cos(be)
        cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
        cz2 = c * c - cx * cx - cy * cy
        if cz2 <= 0:
            raise ValueError("these lattice angles do not describe a cell with positive volume")
        return cls(np.array([a1, a2, [cx, cy, math.sqrt(cz2)]]), positions, tuple(species), name=name)

    @classmethod
    def hcp(cls, element: str, a: float | None = None, c: float | None = None) -> Crystal:
        """Hexagonal close packed (P6₃/mmc, atoms at 2c: (1/3, 2/3, 1/4), (2/3, 1/3, 3/4)); a and c
        in Å, default periodictable's a and c/a for the element."""
        cs = _element(element).crystal_structure or {}
        if a is None or c is None:
            if cs.get("symmetry") != "hcp" or "a" not in cs:
                raise ValueError(f"periodictable has no hcp structure for {element}: pass a=... and c=... (Å)")
            a = float(cs["a"]) if a is None else a
            c = float(cs["c/a"]) * float(cs["a"]) if c is None else c
        if not (a > 0 and c > 0):
            raise ValueError(f"lattice constants must be positive (Å), got a={a}, c={c}")
        return cls.from_parameters(a, a, c, 90, 90, 120, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
                                   [element] * 2, name=element)

    @classmethod
    def from_cif(cls, path, block: str | None = None) -> Crystal:
        """A crystal from a CIF file (gemmi's small-structure reader, the ``cif`` extra): the cell,
        the space group's full set of sites, species from ``_atom_site_type_symbol`` (ions such as
        'O2-' kept). Partially occupied or mixed sites are refused: xtds models ordered crystals.
        The cell is set up as :meth:`from_parameters` (a along x, b in the xy plane)."""
        import os

        try:
            import gemmi
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("reading CIF needs gemmi: pip install 'xtds[cif]'") from exc
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such CIF file: {path}")
        try:
            doc = gemmi.cif.read_file(path)
            blk = doc.sole_block() if block is None else doc.find_block(block)
            if blk is None:
                raise ValueError(f"no data block {block!r} in {path}")
            st = gemmi.make_small_structure_from_block(blk)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{path}: not a readable CIF ({err})") from None
        cell = st.cell
        if cell.a <= 0 or cell.volume <= 0:
            raise ValueError(f"{path}: the CIF gives no unit cell (_cell_length_a … _cell_angle_gamma)")
        sites = st.get_all_unit_cell_sites()
        if not sites:
            raise ValueError(f"{path}: the CIF lists no atom sites (_atom_site_fract_x …)")
        partial = sorted({s.label for s in sites if abs(s.occ - 1.0) > 1e-3})
        if partial:
            raise ValueError(f"{path}: sites {partial} are partially occupied; xtds models ordered crystals "
                             "(give the ordered structure, or the majority species at occupancy 1)")
        species = []
        for s in sites:
            sym = s.type_symbol.strip() or s.element.name
            try:
                element_of(sym)
            except ValueError:
                sym = s.element.name
            species.append(sym)
        positions = np.mod([[s.fract.x, s.fract.y, s.fract.z] for s in sites], 1.0)
        return cls.from_parameters(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma, positions, species,
                                   name=str(blk.name))

    @classmethod
    def preset(cls, name: str) -> Crystal:
        """A ready-made crystal: one of :data:`PRESETS` (case-insensitive).

        Examples
        --------
        >>> Crystal.preset("Si").space_group
        'Fd-3m (227)'
        """
        key = name.strip().lower()
        table = {k.lower(): v for k, v in PRESETS.items()}
        if key not in table:
            raise ValueError(f"no preset named {name!r}; choose one of {sorted(PRESETS)}")
        return table[key]()


#: The preset elements' room-temperature cells, each with its source: symbol → (a, c or None, Å;
#: temperature, K; source). The measured X-ray lattice parameters tabulated by R. W. G. Wyckoff,
#: Crystal Structures, vol. 1, 2nd ed. (Interscience, 1963), ch. II, rounded to 0.1 mÅ (Ti: Pearson);
#: Si: CODATA 2018 (a = 5.431020511 Å at 22.5 °C). Periodictable's table, the default of
#: :meth:`Crystal.fcc` and its siblings, rounds to 0.01 Å (Cu 3.61).
ELEMENT_CELLS = {
    "Ni": (3.5239, None, 291, "Wyckoff (1963), ch. II"),
    "Al": (4.0496, None, 298, "Wyckoff (1963), ch. II"),
    "Cu": (3.6150, None, 291, "Wyckoff (1963), ch. II"),
    "Fe": (2.8665, None, 293, "Wyckoff (1963), ch. II (α-Fe)"),
    "Nb": (3.3004, None, 293, "Wyckoff (1963), ch. II"),
    "Si": (5.4310, None, 296, "CODATA 2018, a(Si) = 5.431020511 Å at 22.5 °C"),
    "Mg": (3.2093, 5.2103, 298, "Wyckoff (1963), ch. II"),
    "Ti": (2.9508, 4.6855, 298, "W. B. Pearson, Handbook of Lattice Spacings and Structures (1958) (α-Ti)"),
    "Zn": (2.6649, 4.9468, 298, "Wyckoff (1963), ch. II"),
    "Co": (2.5071, 4.0695, 293, "Wyckoff (1963), ch. II (α-Co, hcp)"),
}


def _element_preset(symbol: str, structure: str):
    a, c, _, _ = ELEMENT_CELLS[symbol]
    return lambda: (Crystal.hcp(symbol, a=a, c=c) if structure == "hcp" else getattr(Crystal, structure)(symbol, a=a))


#: Preset crystals, all at room temperature: the elements' cells from :data:`ELEMENT_CELLS`, the
#: compounds' from the sources named beside them. (The paper's synthetic Ni benchmark uses a = 3.52 Å:
#: ``xtds.datasets.paper_ni_crystal()``.)
PRESETS = {
    "Ni": _element_preset("Ni", "fcc"),
    "Al": _element_preset("Al", "fcc"),
    "Cu": _element_preset("Cu", "fcc"),
    "Fe": _element_preset("Fe", "bcc"),
    "Nb": _element_preset("Nb", "bcc"),
    "Si": _element_preset("Si", "diamond"),
    # Wyckoff, Crystal Structures vol. 1 (1963): MgO 4.212 Å, NaCl 5.640 Å at room temperature
    "MgO": lambda: Crystal.rocksalt("Mg", "O", a=4.212),
    "NaCl": lambda: Crystal.rocksalt("Na", "Cl", a=5.640),
    "Mg": _element_preset("Mg", "hcp"),
    "Ti": _element_preset("Ti", "hcp"),
    "Zn": _element_preset("Zn", "hcp"),
    "Co": _element_preset("Co", "hcp"),
    # rutile TiO2 (P4₂/mnm): a = 4.5937, c = 2.9587 Å, O at (x, x, 0), x = 0.30478 (Baur & Khan,
    # Acta Cryst. B27, 2133 (1971))
    "TiO2": lambda: Crystal.from_parameters(
        4.5937, 4.5937, 2.9587, 90, 90, 90,
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.30478, 0.30478, 0], [0.69522, 0.69522, 0], [0.80478, 0.19522, 0.5],
         [0.19522, 0.80478, 0.5]], ["Ti", "Ti", "O", "O", "O", "O"], name="TiO2"),
    # wurtzite ZnO (P6₃mc): a = 3.2495, c = 5.2069 Å, u = 0.3819 (Kisi & Elcombe, Acta Cryst. C45,
    # 1867 (1989))
    "ZnO": lambda: Crystal.from_parameters(
        3.2495, 3.2495, 5.2069, 90, 90, 120,
        [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.3819], [2 / 3, 1 / 3, 0.8819]],
        ["Zn", "Zn", "O", "O"], name="ZnO"),
}


def measured_cell(attrs) -> np.ndarray | None:
    """``attrs['unit_cell']`` (a list or a text of six numbers) as shape (6,) floats, or None when it
    is absent or not six finite numbers (the volume's own checks name a bad one)."""
    value = attrs.get("unit_cell") if hasattr(attrs, "get") else None
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        value = (value.decode() if isinstance(value, bytes) else value).replace(",", " ").strip("[]() ").split()
    try:
        cell = np.asarray(value, dtype=float).reshape(6)
    except (TypeError, ValueError):
        return None
    return cell if np.all(np.isfinite(cell)) else None


#: A preset name takes a volume's measured cell when it is within this relative difference of the
#: preset's room-temperature cell (further off, it is another setting or another crystal).
PRESET_CELL_RTOL = 0.02


def as_crystal(crystal, cell=None) -> Crystal:
    """A :class:`Crystal` from itself, a preset's name ('Ni') or a CIF file's path ('Mg.cif'); a
    ``TypeError`` otherwise.

    ``cell``: the measured (a, b, c in Å, α, β, γ in degrees) of the data, e.g. a volume's
    ``attrs['unit_cell']``. A preset *name* then gives the preset's structure with that cell (a
    preset is a room-temperature cell; a measurement has its own temperature) when the two agree
    within :data:`PRESET_CELL_RTOL`. A Crystal or a CIF file is always taken as it is."""
    import os

    if isinstance(crystal, Crystal):
        return crystal
    if isinstance(crystal, os.PathLike) or (isinstance(crystal, str) and crystal.lower().endswith(".cif")):
        return Crystal.from_cif(crystal)
    if isinstance(crystal, str):
        preset = Crystal.preset(crystal)
        if cell is None:
            return preset
        try:
            measured = np.asarray(cell, dtype=float).reshape(6)
        except (TypeError, ValueError):
            return preset  # not six numbers: the volume's own checks name it
        mine = np.asarray(preset.parameters)
        if not np.all(np.isfinite(measured)) or np.array_equal(measured, mine) or not np.allclose(
                measured, mine, rtol=PRESET_CELL_RTOL):
            return preset
        if np.allclose(measured[3:], mine[3:], rtol=0, atol=1e-6):  # the same angles: each axis scaled,
            lattice = preset.lattice * (measured[:3] / mine[:3])[:, None]  # orientation and zeros kept
            return Crystal(lattice, preset.positions, preset.species, name=preset.name)
        return Crystal.from_parameters(*measured, preset.positions, preset.species, name=preset.name)
    raise TypeError(f"crystal must be an xtds.Crystal, a preset name such as 'Ni' or a CIF file, got {crystal!r}")
