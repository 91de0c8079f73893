"""Supercell force constants interpolated with the minimum-image convention (as phonopy and euphonic).

A DFT (or machine-learned) calculation gives the force constants Φ(i, j) of a periodic supercell:
atom i of one primitive cell and every atom j of the supercell. Off the supercell's commensurate
wave vectors they define a crystal only with a rule for where atom j sits relative to i. The
minimum-image convention, which phonopy and euphonic use, places j at its periodic image(s)
nearest to i; when m images are equally near (j on the Wigner–Seitz boundary of the supercell
centred on i), each gets Φ(i, j)/m. Then

    H(k)_{s s'} = Σ_j Φ(i_s, j) (1/m_ij) Σ_{images r} exp(i k·r),   r = x_j + L − x_i,

which equals the supercell's own H(k) at every commensurate k and interpolates smoothly between
them. :class:`MinimumImageIFC` holds these pairs with fixed blocks, in the same interface as
:class:`~xtds.lattice.ifc.IFCModel`, so that every observable (frequencies, S(Q, E), the
Debye–Waller factor, TDS) uses it unchanged. It has no free constants: to fit, project the same
force constants onto a symmetry-reduced model (:func:`xtds.io.phonopy.from_force_constants`).

Memory: one row per primitive site ("compact" force constants, n_prim × N × 9 numbers), never the
full (N, N) matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.lattice.crystal import Crystal, spglib_call
from xtds.lattice.ifc import DIST_TOL, IFCModel, distinct_distances
from xtds.lattice.nac import COULOMB_EV_A, NAC_LAMBDA
from xtds.lattice.supercell import supercell_sites

__all__ = ["MinimumImageIFC", "IMAGE_TOL"]

#: Two periodic images of a pair count as equally near when their lengths differ by less than
#: this, Å (phonopy's default symprec is 1e-5 Å as well).
IMAGE_TOL = 1e-5


class MinimumImageIFC(IFCModel):
    """Fixed force constants of a supercell, interpolated with the minimum-image convention.

    Parameters
    ----------
    crystal
        The crystal (any cell; its primitive cell indexes the dynamical matrix). Masses are its own:
        pass the masses the force-constant code used for an exact comparison.
    supercell_lattice
        Shape (3, 3), Å: rows are the supercell vectors (lattice translations of ``crystal``).
    supercell_positions
        Shape (N, 3), Å: Cartesian positions of the supercell's atoms, in the order of the force
        constants' second index.
    force_constants
        Shape (n_rows, N, 3, 3), eV/Å²: Φ(row atom, j). ``rows`` names the supercell index of each
        row; it must hold at least one atom of every primitive site (full (N, N, 3, 3) constants:
        ``rows = range(N)``, and only one row per site is kept).
    rows
        Shape (n_rows,) int: the supercell index of each row of ``force_constants``.
    image_tol
        Å: images whose distances differ by less than this share the block equally.
    nac_lambda, nac_factor
        For a polar crystal: Λ (Å⁻¹) and e²/(4πε₀) (eV·Å) of the dipole–dipole term that was
        subtracted from the constants and is added back at every k (:mod:`xtds.lattice.nac`).
    asr
        Restore the acoustic sum rule Σ_j Φ(i, j) = 0 on the self blocks (a DFT calculation keeps it
        only to its precision; then the acoustic modes near Γ are imaginary and the Debye–Waller
        factor and TDS undefined). False (default): the constants as given, as phonopy and euphonic
        use them with ``asr=None``.

    Attributes
    ----------
    asr_violation
        eV/Å²: the largest element of the row sums Σ_j Φ(i, j) as given (before ``asr``).
    weight
        Shape (n_pairs,): 1/m, the share of the supercell block each image carries.
    pair_atom
        Shape (n_pairs,) int: the supercell atom j of each image pair.
    rows
        Shape (n_prim,) int: the supercell atom whose row each primitive site takes.
    n_free
        0: the blocks are fixed; ``model.vector(None)`` is the (empty) φ every function takes.

    Examples
    --------
    A model's own supercell Hessian comes back exactly when the supercell holds each pair once:

    >>> import numpy as np, torch, xtds
    >>> from xtds.lattice.supercell import Supercell, supercell_hessian
    >>> m = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=2)
    >>> phi = torch.as_tensor(m.central_force({1: 1.6, 2: 0.3}))
    >>> sc = Supercell.from_crystal(m, 3)
    >>> H = supercell_hessian(m, phi, sc).numpy().reshape(sc.n_atoms, 3, sc.n_atoms, 3).transpose(0, 2, 1, 3)
    >>> mi = MinimumImageIFC(m.crystal, sc.lattice, sc.positions, H, rows=np.arange(sc.n_atoms))
    >>> k = np.array([[0.3, -0.7, 1.1]])
    >>> nu = xtds.lattice.dynamics.frequencies
    >>> bool(torch.allclose(nu(mi, mi.vector(None), k), nu(m, phi, k), rtol=1e-12))
    True
    """

    def __init__(self, crystal: Crystal, supercell_lattice, supercell_positions, force_constants, rows,
                 image_tol: float = IMAGE_TOL, nac_lambda: float = NAC_LAMBDA, nac_factor: float = COULOMB_EV_A,
                 asr: bool = False):
        lattice = np.asarray(supercell_lattice, dtype=float)
        positions = np.asarray(supercell_positions, dtype=float)
        rows = np.asarray(rows, dtype=int).reshape(-1)
        if lattice.shape != (3, 3):
            raise ValueError(f"supercell_lattice must have shape (3, 3) (rows, Å), got {lattice.shape}")
        N = len(positions)
        if positions.shape != (N, 3):
            raise ValueError(f"supercell_positions must have shape (N, 3) in Å, got {positions.shape}")
        fc = force_constants
        if getattr(fc, "ndim", None) != 4 or fc.shape[1:] != (N, 3, 3) or fc.shape[0] != len(rows):
            raise ValueError(f"force_constants must have shape ({len(rows)}, {N}, 3, 3) (one row per entry of "
                             f"rows, the supercell's {N} atoms), got {getattr(fc, 'shape', None)}")
        if len(rows) and (rows.min() < 0 or rows.max() >= N):
            raise ValueError(f"rows must be supercell atom indices in 0..{N - 1}")
        self.crystal = crystal
        self.primitive = crystal.primitive()
        self.image_tol = float(image_tol)
        self.nac_lambda, self.nac_factor = float(nac_lambda), float(nac_factor)
        site = supercell_sites(self.primitive, lattice, positions)
        self.supercell_lattice = lattice
        self.supercell_site = site
        chosen = []
        for s in range(self.primitive.n_atoms):
            hit = np.nonzero(site[rows] == s)[0]
            if not len(hit):
                raise ValueError(f"the force constants have no row for an atom of primitive site {s} "
                                 f"({self.primitive.species[s]}); give at least one row per site")
            chosen.append(int(hit[0]))
        self.rows = rows[chosen]
        blocks = np.array(fc[chosen], dtype=float)  # (n_prim, N, 3, 3): one copy, the compact rows
        row_sums = blocks.sum(axis=1)  # (n_prim, 3, 3): zero for constants that keep the sum rule
        self.asr_violation = float(np.abs(row_sums).max())
        if asr:
            blocks[np.arange(len(chosen)), self.rows] -= row_sums
        self._set_pairs(lattice, positions, site, blocks)
        self.names, self.info, self.derived_names, self.derived_info = (), (), (), ()
        self.derived_matrix = np.zeros((0, 0))
        self.basis = np.zeros((self.n_pairs, 3, 3, 0))
        self._orbits = []
        self._torch_cache: dict = {}
        self._tables: dict = {}

    def _set_pairs(self, lattice, positions, site, blocks):
        prim = self.primitive
        reduced = np.asarray(spglib_call("delaunay_reduce", lattice, eps=1e-5))
        span = np.arange(-2, 3)
        shifts = np.stack(np.meshgrid(span, span, span, indexing="ij"), -1).reshape(-1, 3) @ reduced  # (125, 3)
        inv = np.linalg.inv(lattice)
        inv_prim = np.linalg.inv(prim.lattice)
        tau = prim.positions @ prim.lattice
        src, dst, vec, blk, wt, atom = [], [], [], [], [], []
        for s, r in enumerate(self.rows):
            d = positions - positions[r]
            d -= np.round(d @ inv) @ lattice  # nearest image in the fractional sense, then all near it
            cand = d[:, None, :] + shifts[None]  # (N, 125, 3)
            dist = np.linalg.norm(cand, axis=-1)
            near = dist <= dist.min(axis=1, keepdims=True) + self.image_tol
            j, i = np.nonzero(near)
            m = near.sum(axis=1)
            keep = np.abs(blocks[s, j]).max(axis=(1, 2)) > 0  # pairs with a zero block carry nothing
            j, i = j[keep], i[keep]
            src.append(np.full(len(j), s))
            dst.append(site[j])
            vec.append(cand[j, i])
            blk.append(blocks[s, j] / m[j, None, None])
            wt.append(1.0 / m[j])
            atom.append(j)
        self.pair_src = np.concatenate(src)
        self.pair_dst = np.concatenate(dst)
        self.pair_vector = np.concatenate(vec)
        self.weight = np.concatenate(wt)
        self.pair_atom = np.concatenate(atom)
        self._blocks = np.concatenate(blk)
        cell = (self.pair_vector + tau[self.pair_src] - tau[self.pair_dst]) @ inv_prim
        self.pair_cell = np.round(cell).astype(int)
        if np.abs(cell - self.pair_cell).max() > 1e-4:
            raise RuntimeError("a minimum-image vector is not a lattice vector between two sites; please report this")
        dist = np.linalg.norm(self.pair_vector, axis=1)
        levels = np.concatenate([[0.0], distinct_distances(dist[dist > DIST_TOL])])
        self.pair_shell = np.abs(dist[:, None] - levels[None, :]).argmin(axis=1)
        self.pair_orbit = -np.ones(len(dist), dtype=int)
        self.shell_distances = levels
        self.cutoff = float(dist.max())
        self.n_shells = len(levels) - 1
        for a in (self.pair_src, self.pair_dst, self.pair_vector, self.weight, self._blocks, self.pair_cell,
                  self.pair_atom):
            a.setflags(write=False)

    def __repr__(self) -> str:
        n = len(self.supercell_site)
        return (f"MinimumImageIFC({self.crystal.name or self.crystal.formula}, supercell of {n} atoms, "
                f"{self.n_pairs} image pairs up to {self.cutoff:.3f} Å; fixed constants)")

    def vector(self, ifc=None, dtype=torch.float64, device=None) -> torch.Tensor:
        """The (empty) φ of this model: shape (0,). ``ifc`` must be None, empty or of length 0."""
        if ifc is not None and not (hasattr(ifc, "__len__") and len(ifc) == 0):
            raise ValueError("a MinimumImageIFC has no free constants (its blocks are the imported ones); pass "
                             "model.vector(None), or project the constants onto an IFCModel to fit them")
        return torch.zeros(0, dtype=dtype, device=device)

    def blocks(self, phi: torch.Tensor) -> torch.Tensor:
        """Φ of every image pair, shape (n_pairs, 3, 3), eV/Å² (fixed: independent of ``phi``)."""
        key = (phi.dtype, str(phi.device))
        if key not in self._torch_cache:
            self._torch_cache[key] = torch.tensor(np.array(self._blocks), dtype=phi.dtype, device=phi.device)
        return self._torch_cache[key]

    def supercell_blocks(self) -> np.ndarray:
        """The compact force constants the model holds, shape (n_prim, N, 3, 3), eV/Å² (images summed):
        the imported rows of the primitive sites."""
        out = np.zeros((self.primitive.n_atoms, len(self.supercell_site), 3, 3))
        np.add.at(out, (self.pair_src, self.pair_atom), self._blocks)
        return out
