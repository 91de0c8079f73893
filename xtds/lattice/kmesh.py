"""Γ-centred k-meshes reduced by the crystal's symmetry, for mesh sums of per-atom quantities.

A sum over a full Γ-centred mesh of a quantity that transforms with the crystal's operations,

    Σ_k F_s(k),   F_{g(s)}(R_g k) = R_g F_s(k) R_gᵀ   (a 3×3 block per atom s, e.g. ⟨u_s u_sᵀ⟩(k))
                  F_{g(s)}(R_g k) = F_s(k)            (a scalar per atom, e.g. |e_s|² of a mode),

needs F only at one k of each orbit: with w_i the size of the orbit of k_i,

    Σ_k F_s(k) = (1/|G|) Σ_g R_g [Σ_i w_i F_{g⁻¹(s)}(k_i)] R_gᵀ,

because every g ∈ G maps k_i onto each point of its orbit |G|/w_i times. The orbits and weights
are spglib's (``get_ir_reciprocal_mesh``, with time reversal, which holds for the real parts
summed here); the operations and the atoms they exchange come from the space group of the cell.
For aluminium's 16³ mesh that is 165 points instead of 4,096.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch

__all__ = ["IrreducibleMesh", "irreducible_mesh", "commensurate_k"]


@dataclass(frozen=True, eq=False)
class IrreducibleMesh:
    """One k of each orbit of a Γ-centred mesh (:func:`irreducible_mesh`).

    Attributes: ``k`` (I, 3) Cartesian Å⁻¹; ``weight`` (I,) orbit sizes, summing to ``n_total``
    (the mesh's points); ``rotations`` (G, 3, 3) the Cartesian rotations of the cell's point group;
    ``perm`` (G, n) the atom each atom goes to under each operation; ``shape`` the mesh."""

    k: np.ndarray
    weight: np.ndarray
    rotations: np.ndarray
    perm: np.ndarray
    shape: tuple[int, int, int]
    n_total: int

    def symmetrize(self, M: torch.Tensor) -> torch.Tensor:
        """(1/|G|) Σ_g R_g M_{g⁻¹(s)} R_gᵀ for per-atom blocks M (n, 3, 3), or the mean of
        M_{g⁻¹(s)} for per-atom scalars M (n, ...) not shaped (n, 3, 3): the sum over the orbits'
        images (module docstring), from Σ_i w_i F(k_i) / n_total."""
        if M.dim() == 3 and M.shape[1:] == (3, 3):
            return self.symmetrize_tensor(M)
        G, n = self.perm.shape
        # one[g, t, s] = 1 where operation g takes atom s to atom t: the sum over the group is one
        # einsum instead of a loop of |G| index_add calls
        one = torch.as_tensor(self._exchange(), dtype=M.dtype, device=M.device)
        return (one.sum(0) @ M.reshape(n, -1)).reshape(M.shape) / G

    def symmetrize_tensor(self, M: torch.Tensor) -> torch.Tensor:
        """(1/|G|) Σ_g R_g M_{g⁻¹(s)} R_gᵀ for per-atom blocks with trailing axes, M (n, 3, 3, ...)
        (e.g. a tensor per energy): one product with the (9n, 9n) matrix of this linear map."""
        n = self.perm.shape[1]
        op = torch.as_tensor(self._tensor_map, dtype=M.dtype, device=M.device)
        return (op @ M.reshape(9 * n, -1)).reshape(M.shape)

    @cached_property
    def _tensor_map(self) -> np.ndarray:
        """(9n, 9n): [t i j, s a b] = (1/|G|) Σ_g [g takes s to t] R_g,ia R_g,jb."""
        G, n = self.perm.shape
        R = np.asarray(self.rotations, dtype=float)
        return (np.einsum("gts,gia,gjb->tijsab", self._exchange(), R, R) / G).reshape(9 * n, 9 * n)

    def _exchange(self) -> np.ndarray:
        """(G, n, n): 1 at [g, perm[g, s], s]."""
        G, n = self.perm.shape
        one = np.zeros((G, n, n))
        one[np.arange(G)[:, None], self.perm, np.arange(n)[None, :]] = 1.0
        return one


def _atom_permutations(cell, rotations, translations, tol: float = 1e-5) -> np.ndarray:
    """perm (G, n): the atom at W x_s + t (mod lattice) for each operation (W, t) and atom s."""
    x = np.asarray(cell.positions, dtype=float)
    out = np.empty((len(rotations), len(x)), dtype=np.int64)
    for g, (W, t) in enumerate(zip(rotations, translations, strict=True)):
        y = x @ np.asarray(W).T + t
        d = y[:, None, :] - x[None, :, :]
        d -= np.round(d)
        hit = np.all(np.abs(d) < tol, axis=-1)  # (s, s')
        if not np.all(hit.sum(1) == 1):
            raise RuntimeError("an operation of the space group does not map the atoms onto each other")
        out[g] = hit.argmax(1)
    return out


@lru_cache(maxsize=64)
def _cached(cell, shape):
    return _irreducible(cell, shape)


def irreducible_mesh(cell, shape) -> IrreducibleMesh:
    """The orbits of the Γ-centred ``shape`` mesh of ``cell`` (a :class:`xtds.Crystal`, usually the
    primitive cell) under its space group with time reversal: one Cartesian k (Å⁻¹) per orbit and
    its weight, with the operations needed by :meth:`IrreducibleMesh.symmetrize` (cached per cell
    and mesh)."""
    return _cached(cell, tuple(int(x) for x in np.broadcast_to(np.asarray(shape, dtype=int), (3,))))


def _irreducible(cell, shape) -> IrreducibleMesh:
    import spglib

    L = tuple(int(x) for x in np.broadcast_to(np.asarray(shape, dtype=int), (3,)))
    mapping, grid = spglib.get_ir_reciprocal_mesh(L, cell.spglib_cell, is_shift=[0, 0, 0], is_time_reversal=True)
    reps, counts = np.unique(mapping, return_counts=True)
    frac = np.asarray(grid)[reps] / np.asarray(L, dtype=float)
    sym = spglib.get_symmetry(cell.spglib_cell, symprec=1e-5)
    W = np.asarray(sym["rotations"], dtype=float)
    lat = np.asarray(cell.lattice, dtype=float)  # rows a_i: x_cart = latᵀ x_frac
    R = np.einsum("ij,gjk,kl->gil", lat.T, W, np.linalg.inv(lat.T))
    perm = _atom_permutations(cell, sym["rotations"], sym["translations"])
    # every operation is kept (a cell with centring translations lists a rotation once per translation,
    # with its own exchange of atoms: the sum over the whole group is still the orbit sum)
    return IrreducibleMesh(k=frac @ np.asarray(cell.reciprocal), weight=counts.astype(float), rotations=R,
                           perm=perm, shape=L, n_total=int(np.prod(L)))


def commensurate_k(lattice, supercell_lattice) -> np.ndarray:
    """The wave vectors of a cell's Brillouin zone commensurate with a supercell of it: shape
    (n_cells, 3), Cartesian Å⁻¹ (2π included), one per class modulo the cell's reciprocal lattice."""
    lattice = np.asarray(lattice, dtype=float)
    M = np.asarray(supercell_lattice, dtype=float) @ np.linalg.inv(lattice)
    n_cells = round(abs(np.linalg.det(M)))
    minv = np.linalg.inv(M)
    L = next(L for L in range(1, n_cells + 1) if np.allclose(L * minv, np.round(L * minv), atol=1e-6))
    r = np.arange(L)
    m = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    exact = np.mod(m @ minv.T, 1.0)
    key = np.round(exact, 8) % 1.0  # for finding the classes only: 1/3 rounded would put k off by 1e-9
    _, first = np.unique(key, axis=0, return_index=True)
    first = np.sort(first)
    frac = exact[first] - np.round(exact[first] - key[first])  # in [0, 1), not rounded
    if len(frac) != n_cells:
        raise ValueError(f"found {len(frac)} commensurate wave vectors for {n_cells} cells: is the supercell a "
                         "multiple of the cell?")
    return frac @ (2 * np.pi * np.linalg.inv(lattice).T)
