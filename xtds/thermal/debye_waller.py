"""The Debye–Waller factor, the one home: W_s(q) = ½ qᵀ C_ss(0) q, classical and quantum.

C_ss(0) = ⟨u_s u_sᵀ⟩ (Å²) is the self covariance of atom s (:mod:`xtds.thermal.covariance`):

- of an infinite crystal (:func:`debye_waller`): the mean of C_ss(k) over a Γ-centred mesh of the
  primitive cell, with two levels of Richardson extrapolation over the sub-meshes M/2 and M/4
  (:func:`richardson`), which removes the 1/M and 1/M³ errors of the acoustic 1/k² at Γ; what the
  neutron, powder and infinite-crystal models use;
- of a periodic supercell (:func:`supercell_exponents`): the plain mean over the supercell's own
  k-grid, exactly what a finite periodic crystal has (the paper's benchmark).

Both follow the statistics asked for (``quantum``: Bose–Einstein with zero-point motion; else
classical k_BT H⁺).
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.lattice.ifc import IFCModel
from xtds.lattice.kmesh import irreducible_mesh
from xtds.thermal.covariance import covariance_k, lattice_covariance, q_products, symmetric_components

__all__ = ["debye_waller", "resolve_dw", "richardson", "self_components", "supercell_exponents", "exponents"]


def debye_waller(model: IFCModel, phi: torch.Tensor, temperature: float, mesh=16, kpoints=None,
                 quantum: bool = True) -> torch.Tensor:
    """C_ss(0) = ⟨u_s u_sᵀ⟩ (Å²) of each atom of the primitive cell, shape (n, 3, 3); W_s(Q) =
    ½ QᵀC_ss(0)Q. By default on the Γ-centred ``mesh`` (a multiple of 4) with two levels of
    Richardson extrapolation over the sub-meshes M/2 and M/4 (the 1/M and 1/M³ errors of the
    acoustic 1/k² at Γ removed, as the infinite-crystal model does); with ``kpoints`` (K, 3)
    Cartesian Å⁻¹ instead, their plain mean (the rigid translations at Γ left out), e.g. to
    compare with a code that sums over given q-points."""
    P = model.primitive
    n = P.n_atoms

    def mean_over(k, weight=None):
        C = covariance_k(model, phi, k, temperature, quantum=quantum, cell=P)
        blocks = torch.stack([C[:, 3 * s : 3 * s + 3, 3 * s : 3 * s + 3].real for s in range(n)], 1)  # (K, n, 3, 3)
        if weight is None:
            return blocks.mean(0)
        return torch.einsum("k,ksab->sab", torch.as_tensor(weight, dtype=blocks.dtype, device=blocks.device), blocks)

    if kpoints is not None:
        return mean_over(np.asarray(kpoints, dtype=float).reshape(-1, 3))
    M = np.broadcast_to(np.asarray(mesh, dtype=int), (3,))
    if np.any(M % 4) or np.any(M < 8):
        raise ValueError(f"mesh must be multiples of 4, at least 8 (got {tuple(M)}): the Debye–Waller factor is "
                         "extrapolated from the sub-meshes M/2 and M/4")

    def mesh_mean(shape):  # over the orbits of the mesh only (xtds.lattice.kmesh)
        irr = irreducible_mesh(P, shape)
        return irr.symmetrize(mean_over(irr.k, irr.weight / irr.n_total))

    return richardson(*(mesh_mean(tuple(M // h)) for h in (1, 2, 4)))


def resolve_dw(model: IFCModel, phi: torch.Tensor, temperature, dw=None, quantum: bool = True) -> torch.Tensor:
    """C_ss(0) (n, 3, 3) Å² from a ``dw`` argument: None (:func:`debye_waller` on its default mesh),
    a mesh, an (n, 3, 3) array or tensor (taken as is), or False (zeros: no Debye–Waller factor)."""
    if isinstance(dw, torch.Tensor | np.ndarray):
        return torch.as_tensor(dw, dtype=phi.dtype, device=phi.device)
    if dw is False:
        return torch.zeros((model.primitive.n_atoms, 3, 3), dtype=phi.dtype, device=phi.device)
    if dw is None:
        return debye_waller(model, phi, temperature, quantum=quantum)
    return debye_waller(model, phi, temperature, mesh=dw, quantum=quantum)


def richardson(c1, c2, c4):
    """Two levels of Richardson extrapolation of a Γ-centred mesh average from the mesh (c1) and its
    sub-meshes M/2 (c2) and M/4 (c4): removes the 1/M and 1/M³ errors of the acoustic 1/k² at Γ.
    The weights add up to one, so sum rules of each mesh carry over."""
    r1, r1h = 2 * c1 - c2, 2 * c2 - c4
    return (8 * r1 - r1h) / 7


def self_components(Cr: torch.Tensor) -> torch.Tensor:
    """(n, 6): the self covariances C(c0, c0) of the cell's atoms, from a lattice covariance."""
    n = Cr.shape[0]
    return symmetric_components(Cr[torch.arange(n), torch.arange(n), 0, 0, 0])


def supercell_exponents(model, phi, q, temperature, mesh, quantum=False, lattice_cov=None):
    """W_c(q) = ½ qᵀ C(c0, c0) q for every atom of the crystal's cell: shape (Q, n), from the k-mesh
    ``mesh`` (or from ``lattice_cov``, a :func:`lattice_covariance` already computed)."""
    Cr = lattice_covariance(model, phi, mesh, temperature, quantum=quantum) if lattice_cov is None else lattice_cov
    return 0.5 * q_products(q) @ self_components(Cr).T


def exponents(q: torch.Tensor, C0: torch.Tensor) -> torch.Tensor:
    """W_s(q) = ½ qᵀ C_ss(0) q: shape (Q, n) from q (Q, 3) Å⁻¹ and C0 (n, 3, 3) Å²."""
    return 0.5 * q_products(q) @ symmetric_components(C0).T
