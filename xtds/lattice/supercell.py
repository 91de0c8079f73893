"""Periodic supercells and their dense Hessians.

A :class:`Supercell` is a periodic box of atoms, each of which sits on a site of the IFC model's
primitive cell. Its Hessian sums, for every atom j and every pair p starting at j's site, the block
Φ_p into the (j, image of j + d_p) entry: all periodic images add, as they must for a periodic box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from xtds.errors import triple
from xtds.lattice.crystal import Crystal
from xtds.lattice.ifc import IFCModel

__all__ = ["Supercell", "supercell_hessian", "supercell_sites"]


@dataclass(frozen=True, eq=False)
class Supercell:
    """A periodic supercell.

    Attributes
    ----------
    lattice
        Shape (3, 3), Å: rows are the supercell vectors.
    positions
        Shape (N, 3), Å: Cartesian atom positions.
    site
        Shape (N,) int: the primitive-cell site of each atom.
    """

    lattice: np.ndarray
    positions: np.ndarray
    site: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @classmethod
    def from_crystal(cls, model: IFCModel, repeats, crystal: Crystal | None = None) -> Supercell:
        """n1×n2×n3 copies of ``crystal``'s cell (default: the model's crystal, e.g. the cubic cell).

        Atoms are ordered cell by cell (n1 slowest), basis atoms fastest.
        """
        crystal = model.crystal if crystal is None else crystal
        reps = np.asarray(triple(repeats, "supercell repeats"))
        cells = np.stack(np.meshgrid(*(np.arange(r) for r in reps), indexing="ij"), -1).reshape(-1, 3)
        frac = (cells[:, None, :] + crystal.positions[None, :, :]).reshape(-1, 3)
        pos = frac @ crystal.lattice
        lattice = crystal.lattice * reps[:, None]
        return cls.from_positions(model, lattice, pos)

    @classmethod
    def from_positions(cls, model: IFCModel, lattice, positions) -> Supercell:
        """A supercell from its lattice (rows, Å) and Cartesian positions (N, 3), Å.

        Every atom must sit on a site of the model's crystal in the same orientation; the lattice
        vectors must be lattice translations of it.
        """
        lattice = np.asarray(lattice, float)
        positions = np.asarray(positions, float)
        site = supercell_sites(model.primitive, lattice, positions)
        pos = positions.copy()
        for a in (lattice, pos, site):
            a.setflags(write=False)
        return cls(lattice, pos, site)

    def pair_targets(self, model: IFCModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every (atom j, pair p from j's site): (j, p, index of the atom at x_j + d_p)."""
        inv = np.linalg.inv(self.lattice)
        frac = (self.positions @ inv) % 1.0
        tree = cKDTree(frac % 1.0, boxsize=1.0 + 1e-12)
        js, ps = [], []
        for s in range(model.n_sites):
            atoms = np.nonzero(self.site == s)[0]
            pairs = np.nonzero(model.pair_src == s)[0]
            js.append(np.repeat(atoms, len(pairs)))
            ps.append(np.tile(pairs, len(atoms)))
        j = np.concatenate(js)
        p = np.concatenate(ps)
        target = (self.positions[j] + model.pair_vector[p]) @ inv % 1.0
        dist, t = tree.query(target % 1.0)
        # check in Å
        delta = target - frac[t]
        delta -= np.round(delta)
        if np.linalg.norm(delta @ self.lattice, axis=1).max() > 1e-3:
            raise RuntimeError("a neighbour of a supercell atom was not found in the supercell")
        return j, p, t


def supercell_hessian(model: IFCModel, phi: torch.Tensor, supercell: Supercell) -> torch.Tensor:
    """The dense Hessian of a periodic supercell, shape (3N, 3N), eV/Å², differentiable in φ.

    Index 3j + i for atom j and Cartesian axis i. Periodic images of a pair add up. The model's
    short-range force constants only: a polar crystal's dipole–dipole term (:mod:`xtds.lattice.nac`) is
    not in it.
    """
    j, p, t = supercell.pair_targets(model)
    N = supercell.n_atoms
    blocks = model.blocks(phi)
    H = torch.zeros(N * N, 3, 3, dtype=phi.dtype, device=phi.device)
    idx = torch.as_tensor(j * N + t, device=phi.device)
    H = H.index_add(0, idx, blocks[torch.as_tensor(p, device=phi.device)])
    return H.reshape(N, N, 3, 3).permute(0, 2, 1, 3).reshape(3 * N, 3 * N)


def supercell_sites(prim: Crystal, lattice: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The primitive site of every supercell atom; errors name an atom off the crystal's sites."""
    fr = lattice @ np.linalg.inv(prim.lattice)
    if np.abs(fr - np.round(fr)).max() > 1e-4:
        raise ValueError("the supercell vectors are not lattice translations of the crystal (same orientation "
                         "and lattice constant needed)")
    f = positions @ np.linalg.inv(prim.lattice)
    d = f[:, None, :] - prim.positions[None, :, :]
    err = np.linalg.norm((d - np.round(d)) @ prim.lattice, axis=-1)
    if err.min(axis=1).max() > 1e-3:
        bad = int(err.min(axis=1).argmax())
        raise ValueError(f"supercell atom {bad} at {positions[bad].round(4)} Å is not on a site of the crystal; "
                         "the supercell must be the same structure in the same orientation")
    expected = round(abs(np.linalg.det(lattice)) / prim.volume) * prim.n_atoms
    if len(positions) != expected:
        raise ValueError(f"the supercell holds {len(positions)} atoms, its volume needs {expected}")
    return err.argmin(axis=1)

