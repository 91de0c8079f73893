"""Lattice dynamics in torch, differentiable in the free force constants φ.

Array-in, array-out kernels (no xarray): wave vectors k are Cartesian, Å⁻¹, 2π included.

Phase convention: H(k)_{s s'} = Σ_R Φ(s, R+s') exp(i k·(x_{s'R} − x_s)), with x the Cartesian
atom positions, so that a uniform translation is the k = 0 null vector and H(k + G) is H(k)
up to a diagonal phase. D(k) = H(k) / sqrt(M_s M_s') is the dynamical matrix (eV/(Å² amu)),
whose eigenvalues are ω² and ν = ω / 2π in THz.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.lattice.crystal import Crystal
from xtds.lattice.ifc import IFCModel
from xtds.units import MEV_PER_THZ, THZ_PER_SQRT_EV_A2_AMU

__all__ = [
    "force_constant_matrix",
    "dynamical_matrix",
    "frequencies",
    "eigenvalues_to_thz",
    "mesh",
]


def _as_k(k, dtype, device) -> torch.Tensor:
    k = torch.as_tensor(k, dtype=dtype, device=device)
    if k.shape[-1] != 3:
        raise ValueError(f"k must have shape (..., 3) (Cartesian Å⁻¹), got {tuple(k.shape)}")
    return k


def force_constant_matrix(
    model: IFCModel, phi: torch.Tensor, k, chunk: int = 4096, cell: Crystal | None = None
) -> torch.Tensor:
    """The Fourier-transformed Hessian H(k).

    Parameters
    ----------
    model
        The IFC model.
    phi
        Shape (n_free,), eV/Å²: the free constants (a tensor, see :meth:`IFCModel.vector`).
    k
        Shape (..., 3), Cartesian Å⁻¹ (2π included).
    chunk
        k-points per batch (memory: chunk × n_pairs complex numbers).
    cell
        The cell whose atoms index H (default the primitive cell; e.g. ``model.crystal`` for the
        conventional cubic cell, whose bands are then folded).

    Returns
    -------
    Shape (..., 3n, 3n) complex Hermitian, eV/Å²; index 3s + i for atom s of the cell, axis i.
    For a polar crystal (Born charges and ε∞ set) the dipole–dipole term of :mod:`xtds.lattice.nac` is
    included.
    """
    table = model.pair_table(cell)
    kt = _as_k(k, phi.dtype, phi.device)
    lead = kt.shape[:-1]
    kt = kt.reshape(-1, 3)
    n = table.n_atoms
    blocks = model.blocks(phi)[torch.as_tensor(table.pair, device=phi.device)].reshape(-1, 9)
    cdtype = torch.complex128 if phi.dtype == torch.float64 else torch.complex64
    d = torch.as_tensor(table.vector, dtype=phi.dtype, device=phi.device)
    groups = []
    for s in range(n):
        for t in range(n):
            sel = np.nonzero((table.src == s) & (table.dst == t))[0]
            if len(sel):
                idx = torch.as_tensor(sel, device=phi.device)
                groups.append((s, t, idx, blocks[idx].to(cdtype)))
    out = []
    for start in range(0, kt.shape[0], chunk):
        kc = kt[start : start + chunk]
        phase = torch.exp(1j * (kc @ d.T).to(cdtype))  # (nk, P)
        H = torch.zeros(kc.shape[0], n, n, 9, dtype=cdtype, device=phi.device)
        for s, t, idx, b in groups:
            H[:, s, t] = phase[:, idx] @ b
        H = H.reshape(-1, n, n, 3, 3).permute(0, 1, 3, 2, 4).reshape(-1, 3 * n, 3 * n)
        out.append(H)
    H = torch.cat(out) if out else torch.zeros(0, 3 * n, 3 * n, dtype=cdtype, device=phi.device)
    atoms = model.primitive if cell is None else cell
    if atoms.polar:  # the long-range dipole–dipole term (LO–TO), independent of φ
        from xtds.lattice.nac import dipole_dipole_tensor

        H = H + dipole_dipole_tensor(atoms, kt, model.nac_lambda, model.nac_factor).to(H.dtype)
    return H.reshape(*lead, 3 * n, 3 * n)


def inverse_sqrt_mass(model: IFCModel, dtype=torch.float64, device=None, cell: Crystal | None = None):
    """Shape (3n,): 1/sqrt(M_s) per degree of freedom of ``cell`` (default primitive), amu^-1/2."""
    cell = model.primitive if cell is None else cell
    m = np.repeat(cell.masses, 3)
    return torch.as_tensor(1.0 / np.sqrt(m), dtype=dtype, device=device)


def dynamical_matrix(model: IFCModel, phi: torch.Tensor, k, chunk: int = 4096, cell: Crystal | None = None):
    """D(k) = H(k) / sqrt(M_s M_s'): shape (..., 3n, 3n) complex Hermitian, eV/(Å² amu)."""
    H = force_constant_matrix(model, phi, k, chunk=chunk, cell=cell)
    w = inverse_sqrt_mass(model, phi.dtype, phi.device, cell=cell)
    return H * (w[:, None] * w[None, :])


def eigenvalues_to_thz(eigenvalues: torch.Tensor) -> torch.Tensor:
    """ν = sign(λ) sqrt(|λ|) / 2π in THz for eigenvalues λ of D (eV/(Å² amu)).

    Imaginary modes (λ < 0) come out negative, the usual convention. The square root's gradient is
    set to zero where |λ| < 1e-300, so that the acoustic modes at Γ do not poison a backward pass.
    """
    mag = eigenvalues.abs()
    tiny = mag < 1e-300
    safe = torch.where(tiny, torch.ones_like(mag), mag)
    root = torch.where(tiny, torch.zeros_like(mag), torch.sqrt(safe))
    return torch.sign(eigenvalues) * root * THZ_PER_SQRT_EV_A2_AMU


def frequencies(
    model: IFCModel,
    phi: torch.Tensor,
    k,
    unit: str = "THz",
    return_eigenvectors: bool = False,
    chunk: int = 4096,
):
    """Phonon frequencies (and eigenvectors) at wave vectors k.

    Parameters
    ----------
    k
        Shape (..., 3), Cartesian Å⁻¹.
    unit
        ``"THz"`` (ν) or ``"meV"`` (ħω).

    Returns
    -------
    freqs
        Shape (..., 3n), ascending, in ``unit``; imaginary modes negative.
    vecs
        If asked: shape (..., 3n, 3n) complex, columns the orthonormal eigenvectors of D(k).
    """
    if unit not in ("THz", "meV"):
        raise ValueError(f"unit must be 'THz' or 'meV', got {unit!r}")
    D = dynamical_matrix(model, phi, k, chunk=chunk)
    if return_eigenvectors:
        lam, vecs = torch.linalg.eigh(D)
    else:
        lam, vecs = torch.linalg.eigvalsh(D), None
    nu = eigenvalues_to_thz(lam)
    if unit == "meV":
        nu = nu * MEV_PER_THZ
    return (nu, vecs) if return_eigenvectors else nu


def mesh(model: IFCModel, n, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A Γ-centred (or shifted) n1×n2×n3 mesh over the primitive Brillouin zone.

    Returns shape (n1 n2 n3, 3) Cartesian k, Å⁻¹. ``shift`` in units of the mesh step.
    """
    return model.primitive.k_grid(n, shift).reshape(-1, 3)
