"""Multiphonon neutron scattering in the incoherent approximation, with the one-phonon term's
Debye–Waller factor.

Per atom s of the cell, the self spectral function of one phonon (isotropic average, per unit Q²),

    T_s(E) = (ħ²/2m_s) (1/3N_k) Σ_kν |e_sν(k)|² [(n(ε)+1) δ(E − ε) + n(ε) δ(E + ε)] / ε   (Å²/meV),

is computed on the k-mesh M and its sub-meshes M/2, M/4 and extrapolated as the Debye–Waller
matrices are (:func:`xtds.model.neutron.debye_waller`), so that ∫T_s dE = tr C_ss(0)/3 exactly and
∫E T_s dE = ħ²/2m_s (the sum rule of each mesh, kept by the extrapolation's weights, which add up to
one). The n-phonon terms are then (Sjölander)

    S_n(|Q|, E) = (1/N) Σ_s b_s² e^{−2W_s} (Q²)ⁿ/n! T_s^{*n}(E),   2W_s = Q² tr C_ss(0)/3,

n = 2 … N, by repeated convolution (FFT on a uniform energy grid), broadened by the instrument's
resolution; in mbarn/meV per atom like the one-phonon S(Q, E). Summed with n = 0, 1 they fulfil the
first-moment sum rule ∫E S dE = ħ²Q²/2m b² exactly (for one atom per cell; the coherent one-phonon
term has the same first moment as the incoherent one). Differentiable in the force constants.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xtds import dynamics
from xtds.errors import check_temperature
from xtds.model.covariance import _HBAR_OMEGA_UNIT
from xtds.model.neutron import MBARN_PER_FM2, as_resolution, mode_weight, resolve_dw, richardson
from xtds.model.neutron import scattering_lengths as lengths_of

__all__ = ["self_spectral_function", "multiphonon_sqe"]


def _spectral_on_mesh(model, phi, mesh, grid, temperature, sigma, quantum):
    """T_s on one Γ-centred mesh (Γ's zero modes left out): (n, G), from one k of each orbit of the
    mesh (:mod:`xtds.model.kmesh`: T_s is a scalar per atom, so the orbit sums need only the
    exchange of atoms)."""
    from xtds.model.kmesh import irreducible_mesh
    from xtds.model.spectral import BinnedSpectral

    P = model.primitive
    n = P.n_atoms
    irr = irreducible_mesh(P, tuple(int(m) for m in mesh))
    k = irr.k
    D = dynamics.dynamical_matrix(model, phi, torch.as_tensor(k, dtype=phi.dtype, device=phi.device))
    m3 = 3 * n
    inv_sqrt_m = dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device)
    eye = torch.diag(inv_sqrt_m).to(D.dtype)  # rows: unit vectors e_sα / √m_s
    root_w = torch.as_tensor(np.sqrt(irr.weight), dtype=phi.dtype, device=phi.device).to(D.dtype)
    V = (root_w[:, None, None] * eye[None]).reshape(len(k) * m3, m3)  # (K·3n, 3n), |c|² × the orbit's size
    kidx = torch.arange(len(k), device=phi.device).repeat_interleave(m3)
    bidx = torch.arange(n, device=phi.device).repeat_interleave(3).repeat(len(k))
    f_of = mode_weight(grid, temperature, 2 * math.sqrt(2 * math.log(2)) * sigma, quantum=quantum)
    return irr.symmetrize(BinnedSpectral.apply(D, V, kidx, bidx, n, f_of, None, None)) / (3 * irr.n_total)


def self_spectral_function(model, phi, temperature: float, mesh=16, step: float = 0.1, smearing: float = 0.3,
                           quantum: bool = True):
    """The one-phonon self spectral function T_s(E) of each atom (see the module docstring):
    (energies (G,) meV, a symmetric uniform grid of ``step`` meV, T (n, G) Å²/meV). Modes are
    Gaussians of σ = ``smearing`` meV; the mesh (multiple of 4) and its sub-meshes are extrapolated
    as the Debye–Waller factor."""
    T = check_temperature(temperature)
    M = np.broadcast_to(np.asarray(mesh, dtype=int), (3,))
    if np.any(M % 4) or np.any(M < 8):
        raise ValueError(f"mesh must be multiples of 4, at least 8 (got {tuple(M)})")
    with torch.no_grad():  # the highest mode energy sets the grid
        k = model.primitive.k_grid(tuple(M // 4)).reshape(-1, 3)
        lam = torch.linalg.eigvalsh(dynamics.dynamical_matrix(model, phi.detach(), k))
    emax = float(1e3 * _HBAR_OMEGA_UNIT * torch.sqrt(lam.clamp(min=0)).max()) * 1.3 + 8 * smearing
    half = int(np.ceil(emax / step))
    grid = np.arange(-half, half + 1) * step
    return grid, richardson(*(_spectral_on_mesh(model, phi, M // h, grid, T, smearing, quantum) for h in (1, 2, 4)))


def multiphonon_sqe(model, phi, qnorm, energies, temperature: float, orders=(2, 3, 4, 5, 6), resolution=1.0,
                    mesh=16, step: float = 0.1, smearing: float = 0.3, scattering_lengths=None,
                    quantum: bool = True, dw=None, separate: bool = False) -> torch.Tensor:
    """The n-phonon terms (n in ``orders``) of the powder S(|Q|, E), incoherent approximation
    (module docstring), mbarn/meV per atom, shape (Q, E) (or (n_orders, Q, E) with ``separate``)
    at |Q| ``qnorm`` (Å⁻¹) and ``energies`` (meV), broadened by the resolution (FWHM at each
    output energy, :func:`~xtds.model.neutron.as_resolution`). ``dw``: C_ss(0) (n, 3, 3) Å², else
    from :func:`~xtds.model.neutron.debye_waller` on ``mesh``."""
    T = check_temperature(temperature)
    P = model.primitive
    n_at = P.n_atoms
    qn = torch.as_tensor(np.array(qnorm, dtype=float).reshape(-1), dtype=phi.dtype, device=phi.device)
    Eo = torch.as_tensor(np.array(energies, dtype=float), dtype=phi.dtype, device=phi.device)
    grid, T1 = self_spectral_function(model, phi, T, mesh=mesh, step=step, smearing=smearing, quantum=quantum)
    C0 = resolve_dw(model, phi, T, mesh if dw is None else dw, quantum)
    msd = torch.diagonal(C0, dim1=-2, dim2=-1).sum(-1) / 3  # (n,)
    b = torch.as_tensor(lengths_of(P.species) if scattering_lengths is None else np.array(scattering_lengths, float),
                        dtype=phi.dtype, device=phi.device)
    N = max(orders)
    G = len(grid)
    L = 1 << int(np.ceil(np.log2(N * G)))  # linear (not circular) convolutions up to order N
    F1 = torch.fft.rfft(T1, n=L)  # (n, L/2+1)
    fwhm = as_resolution(resolution)
    sig = fwhm(Eo) / (2 * math.sqrt(2 * math.log(2)))
    out = []
    Fn = F1
    for order in range(2, N + 1):
        Fn = Fn * F1 * step  # T^{*order} (each convolution integral × the step)
        if order not in orders:
            continue
        Tn = torch.fft.irfft(Fn, n=L)[:, : order * (G - 1) + 1]  # grid from order·grid[0]
        e_n = order * grid[0] + np.arange(Tn.shape[1]) * step
        # broaden onto the output energies: Σ_j Tn(e_j) R(E − e_j) step
        ej = torch.as_tensor(e_n, dtype=phi.dtype, device=phi.device)
        keep = (e_n > float(Eo.min()) - 10 * float(sig.max())) & (e_n < float(Eo.max()) + 10 * float(sig.max()))
        ej, Tk = ej[torch.as_tensor(keep)], Tn[:, torch.as_tensor(keep)]
        R = torch.exp(-0.5 * ((Eo[:, None] - ej[None]) / sig[:, None]) ** 2) / (sig[:, None] * math.sqrt(2 * math.pi))
        Tb = Tk @ R.T * step  # (n, E)
        pref = torch.exp(-(qn[:, None] ** 2) * msd[None]) * qn[:, None] ** (2 * order) / math.factorial(order)
        out.append(torch.einsum("s,qs,se->qe", b**2, pref, Tb) * (MBARN_PER_FM2 / n_at))
    out = torch.stack(out)
    return out if separate else out.sum(0)
