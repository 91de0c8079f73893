"""Multiphonon neutron scattering in the incoherent approximation, with the one-phonon term's
Debye–Waller factor.

Per atom s of the cell, the self spectral function of one phonon (isotropic average, per unit Q²),

    T_s(E) = (ħ²/2m_s) (1/3N_k) Σ_kν |e_sν(k)|² [(n(ε)+1) δ(E − ε) + n(ε) δ(E + ε)] / ε   (Å²/meV),

is computed on the k-mesh M and its sub-meshes M/2, M/4 and extrapolated as the Debye–Waller
matrices are (:func:`xtds.observables.neutron.sqe.debye_waller`), so that ∫T_s dE = tr C_ss(0)/3 exactly and
∫E T_s dE = ħ²/2m_s (the sum rule of each mesh, kept by the extrapolation's weights, which add up to
one). The n-phonon terms are then (Sjölander)

    S_n(|Q|, E) = (1/N) Σ_s b_s² e^{−2W_s} (Q²)ⁿ/n! T_s^{*n}(E),   2W_s = Q² tr C_ss(0)/3,

n = 2 … N, by repeated convolution (FFT on a uniform energy grid), broadened by the instrument's
resolution; in mbarn/meV per atom like the one-phonon S(Q, E). Summed with n = 0, 1 they fulfil the
first-moment sum rule ∫E S dE = ħ²Q²/2m b² exactly (for one atom per cell; the coherent one-phonon
term has the same first moment as the incoherent one). Differentiable in the force constants.

Where an atom's site is not cubic (hexagonal metals, most multi-atom cells), its displacements are
anisotropic and the scalar form above breaks the sum rule (by 0.1–3 % for Mg and Zn at 2W ≈ 0.3–2.4).
There the tensor T_s^{αβ}(E) (the same sum with e_sα e_sβ*, :func:`self_spectral_tensor`) gives the
n-phonon term along each direction Q̂ (the anisotropic incoherent approximation),

    S_n(Q, E) = (1/N) Σ_s b_s² e^{−QᵀC_ssQ} (QᵀT_sQ)^{*n}(E) / n!,

whose first moments add up to ħ²Q²/2m_s b_s² for every Q (∫QᵀT_sQ dE = QᵀC_ssQ and ∫E QᵀT_sQ dE =
ħ²Q²/2m_s, by the completeness of the eigenvectors), and the powder S_n(|Q|, E) is its average over
the directions, by a product rule on the sphere reduced by the Laue group (``directions``: its
polar nodes, :data:`ANISOTROPIC_ORDER`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xtds.errors import check_temperature
from xtds.lattice import dynamics
from xtds.observables.neutron.sqe import MBARN_PER_FM2, as_resolution, mode_weight
from xtds.observables.scattering import scattering_lengths as lengths_of
from xtds.thermal.debye_waller import resolve_dw, richardson
from xtds.units import HBAR_OMEGA_EV

__all__ = ["self_spectral_function", "self_spectral_tensor", "multiphonon_sqe", "mesh_widths"]

#: Polar nodes of the product rule (:func:`xtds.observables.sphere.sphere_rule`, 2·n² directions before the
#: reduction by the Laue group) of the powder average where some site is anisotropic: Gauss–Legendre
#: in cos θ with 18 nodes is exact to degree 35 (the integrand is smooth: e^{−QᵀCQ} times a
#: polynomial of degree 2n in Q̂), and 18 is a multiple of 6, so a hexagonal group reduces it fully.
ANISOTROPIC_ORDER = 18


def mesh_widths(model, phi, mesh, scale: float) -> np.ndarray:
    """The adaptive widths σ (I, 3n) meV of the modes at the irreducible k of the Γ-centred ``mesh``:
    ``scale`` × mesh step × |∇ε| (:func:`xtds.thermal.spectral.adaptive_widths`, ∂D/∂k by central
    differences), made at ``phi`` (detached). Made once and passed as ``adaptive=`` they keep a fit's
    model one differentiable function of φ."""
    from xtds.lattice.kmesh import irreducible_mesh
    from xtds.thermal.spectral import mesh_mode_widths

    P = model.primitive
    irr = irreducible_mesh(P, tuple(int(m) for m in np.broadcast_to(np.asarray(mesh, int), (3,))))
    step = (abs(np.linalg.det(np.asarray(P.reciprocal))) / np.prod(irr.shape)) ** (1 / 3)
    return mesh_mode_widths(model, phi, irr.k, float(scale) * step).cpu().numpy()


def _spectral_on_mesh(model, phi, mesh, grid, temperature, sigma, quantum, tensor=False, adaptive=0.0):
    """T_s on one Γ-centred mesh (Γ's zero modes left out): (n, G), or with ``tensor`` the real
    symmetric T_s^{αβ} (n, 3, 3, G), from one k of each orbit of the mesh
    (:mod:`xtds.lattice.kmesh`: the orbit sums need only the exchange of atoms and, for the tensor,
    the rotations). The tensor's six components come from the weights of six unit vectors per atom,
    e_α and (e_α + e_β)/√2: Re T^{αβ} = T[(e_α + e_β)/√2] − (T^{αα} + T^{ββ})/2. ``adaptive`` a > 0
    broadens each mode besides ``sigma`` by a × mesh step × |∇ε| (the spread of its energy over its
    mesh cell, :func:`xtds.thermal.spectral.adaptive_widths`; held fixed in the derivatives), or
    ``adaptive`` the widths themselves (:func:`mesh_widths`)."""
    from xtds.lattice.kmesh import irreducible_mesh
    from xtds.thermal.spectral import BinnedSpectral

    P = model.primitive
    n = P.n_atoms
    irr = irreducible_mesh(P, tuple(int(m) for m in mesh))
    k = irr.k
    D = dynamics.dynamical_matrix(model, phi, torch.as_tensor(k, dtype=phi.dtype, device=phi.device))
    m3 = 3 * n
    inv_sqrt_m = dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device)
    eye = torch.diag(inv_sqrt_m).to(D.dtype)  # rows: unit vectors e_sα / √m_s
    if tensor:  # per atom: e_x, e_y, e_z, (e_x + e_y)/√2, (e_x + e_z)/√2, (e_y + e_z)/√2
        rows = eye.reshape(n, 3, m3)
        pairs = [(rows[:, a] + rows[:, b]) / math.sqrt(2) for a, b in _PAIRS]
        eye = torch.cat([rows, torch.stack(pairs, 1)], 1).reshape(6 * n, m3)
    per_k = eye.shape[0]
    root_w = torch.as_tensor(np.sqrt(irr.weight), dtype=phi.dtype, device=phi.device).to(D.dtype)
    V = (root_w[:, None, None] * eye[None]).reshape(len(k) * per_k, m3)  # |c|² × the orbit's size
    kidx = torch.arange(len(k), device=phi.device).repeat_interleave(per_k)
    f_of = mode_weight(grid, temperature, 2 * math.sqrt(2 * math.log(2)) * sigma, quantum=quantum)
    if isinstance(adaptive, torch.Tensor | np.ndarray):
        widths = torch.as_tensor(np.asarray(adaptive) if isinstance(adaptive, np.ndarray) else adaptive,
                                 dtype=phi.dtype, device=phi.device)
        if widths.shape != (len(k), m3):
            raise ValueError(f"adaptive widths must have shape {(len(k), m3)} (irreducible k, modes), got "
                             f"{tuple(widths.shape)}: make them with mesh_widths() for this mesh")
    elif adaptive:
        widths = torch.as_tensor(mesh_widths(model, phi, mesh, float(adaptive)), dtype=phi.dtype, device=phi.device)
    else:
        widths = None
    if not tensor:
        bidx = torch.arange(n, device=phi.device).repeat_interleave(3).repeat(len(k))
        return irr.symmetrize(BinnedSpectral.apply(D, V, kidx, bidx, n, f_of, widths, None)) / (3 * irr.n_total)
    bidx = torch.arange(6 * n, device=phi.device).repeat(len(k))
    out = BinnedSpectral.apply(D, V, kidx, bidx, 6 * n, f_of, widths, None).reshape(n, 6, -1) / irr.n_total
    xx, yy, zz = out[:, 0], out[:, 1], out[:, 2]
    xy, xz, yz = (out[:, 3 + j] - 0.5 * (out[:, a] + out[:, b]) for j, (a, b) in enumerate(_PAIRS))
    Tt = torch.stack([torch.stack(row, 1) for row in ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))], 1)  # (n, 3, 3, G)
    return irr.symmetrize_tensor(Tt)


_PAIRS = ((0, 1), (0, 2), (1, 2))


def self_spectral_function(model, phi, temperature: float, mesh=16, step: float = 0.1, smearing: float = 0.3,
                           quantum: bool = True, extrapolate: bool = True, adaptive=0.0):
    """The one-phonon self spectral function T_s(E) of each atom (see the module docstring):
    (energies (G,) meV, a symmetric uniform grid of ``step`` meV, T (n, G) Å²/meV). Modes are
    Gaussians of σ = ``smearing`` meV; the mesh (multiple of 4) and its sub-meshes are extrapolated
    as the Debye–Waller factor (its moments are then exact), or with ``extrapolate=False`` taken from
    the mesh alone: extrapolation holds for the integrals but not point by point (the sub-meshes'
    spectra are spikier than their smearing can resolve), so a spectrum seen directly (the
    incoherent one-phonon term) is made on one mesh, with ``adaptive`` broadening (a number a:
    σ = a × mesh step × |∇ε| per mode, besides ``smearing``) if asked."""
    T = check_temperature(temperature)
    M = _mesh_of(mesh)
    grid = _energy_grid(model, phi, M, step, smearing)
    if not extrapolate:
        return grid, _spectral_on_mesh(model, phi, M, grid, T, smearing, quantum, adaptive=adaptive)
    return grid, richardson(*(_spectral_on_mesh(model, phi, M // h, grid, T, smearing, quantum) for h in (1, 2, 4)))


def _energy_grid(model, phi, M, step, smearing):
    """The symmetric uniform grid (meV) of the self spectral function: past the highest mode."""
    with torch.no_grad():  # the highest mode energy sets the grid
        k = model.primitive.k_grid(tuple(M // 4)).reshape(-1, 3)
        lam = torch.linalg.eigvalsh(dynamics.dynamical_matrix(model, phi.detach(), k))
    emax = float(1e3 * HBAR_OMEGA_EV * torch.sqrt(lam.clamp(min=0)).max()) * 1.3 + 8 * smearing
    half = int(np.ceil(emax / step))
    return np.arange(-half, half + 1) * step


def _mesh_of(mesh):
    M = np.broadcast_to(np.asarray(mesh, dtype=int), (3,))
    if np.any(M % 4) or np.any(M < 8):
        raise ValueError(f"mesh must be multiples of 4, at least 8 (got {tuple(M)})")
    return M


def self_spectral_tensor(model, phi, temperature: float, mesh=16, step: float = 0.1, smearing: float = 0.3,
                         quantum: bool = True, extrapolate: bool = True, adaptive=0.0):
    """The one-phonon self spectral tensor T_s^{αβ}(E) of each atom, (1/N_k) Σ (ħ²/2m_s)
    Re(e_sα e_sβ*) [(n+1)δ(E − ε) + nδ(E + ε)]/ε (module docstring): (energies (G,) meV, T (n, 3, 3, G)
    Å²/meV), with ∫T_s dE = C_ss(0) and ∫E T_s dE = (ħ²/2m_s) 1; its trace over 3 is
    :func:`self_spectral_function`. Mesh, grid, smearing and ``extrapolate`` as there."""
    T = check_temperature(temperature)
    M = _mesh_of(mesh)
    grid = _energy_grid(model, phi, M, step, smearing)
    if not extrapolate:
        return grid, _spectral_on_mesh(model, phi, M, grid, T, smearing, quantum, tensor=True, adaptive=adaptive)
    return grid, richardson(*(_spectral_on_mesh(model, phi, M // h, grid, T, smearing, quantum, tensor=True)
                              for h in (1, 2, 4)))


def isotropic_sites(model, tol: float = 1e-9) -> bool:
    """Whether every atom's site symmetry makes its symmetric rank-2 tensors (⟨u uᵀ⟩, T_s) multiples
    of the identity (a cubic site group): then one direction gives the powder average exactly.
    Checked on the six symmetric basis tensors, each averaged over the operations that keep the atom."""
    from xtds.lattice.kmesh import irreducible_mesh

    irr = irreducible_mesh(model.primitive, (4, 4, 4))
    e = np.eye(3)
    basis = [np.outer(e[a], e[b]) + np.outer(e[b], e[a]) for a in range(3) for b in range(a, 3)]
    for s in range(model.primitive.n_atoms):
        site = irr.rotations[irr.perm[:, s] == s]
        for A in basis:
            mean = np.einsum("gia,ab,gjb->ij", site, A, site) / len(site)
            if np.abs(mean - np.trace(mean) / 3 * np.eye(3)).max() > tol:
                return False
    return True


def multiphonon_sqe(model, phi, qnorm, energies, temperature: float, orders=(2, 3, 4, 5, 6), resolution=1.0,
                    mesh=16, step: float = 0.1, smearing: float = 0.3, scattering_lengths=None,
                    quantum: bool = True, dw=None, separate: bool = False,
                    directions: int | None = None, weights=None, extrapolate: bool = True,
                    adaptive=0.0) -> torch.Tensor:
    """The n-phonon terms (n in ``orders``) of the powder S(|Q|, E), incoherent approximation
    (module docstring), mbarn/meV per atom, shape (Q, E) (or (n_orders, Q, E) with ``separate``)
    at |Q| ``qnorm`` (Å⁻¹) and ``energies`` (meV), broadened by the resolution (FWHM at each
    output energy, :func:`~xtds.observables.neutron.sqe.as_resolution`). ``dw``: C_ss(0) (n, 3, 3) Å², else
    from :func:`~xtds.observables.neutron.sqe.debye_waller` on ``mesh``. Where every site is cubic
    (:func:`isotropic_sites`) the scalar T_s gives the powder average exactly; otherwise the
    anisotropic terms are averaged over the directions of :func:`xtds.observables.sphere.sphere_rule`
    (product rule of :data:`ANISOTROPIC_ORDER` polar nodes, reduced by the crystal's Laue group).
    ``directions`` (polar nodes) forces that direction average, cubic sites included (a check of the
    scalar form). ``weights`` (n,) fm²: what multiplies each atom's terms in place of b_s² (the
    incoherent terms pass σ_inc/4π, :mod:`xtds.observables.neutron.incoherent`). ``orders`` may
    include 1: the one-phonon term in the same (incoherent) approximation. ``extrapolate``: the self
    spectral function from the mesh and its sub-meshes (default) or from the mesh alone
    (:func:`self_spectral_function`, with its ``adaptive`` broadening)."""
    T = check_temperature(temperature)
    P = model.primitive
    n_at = P.n_atoms
    qn = torch.as_tensor(np.array(qnorm, dtype=float).reshape(-1), dtype=phi.dtype, device=phi.device)
    Eo = torch.as_tensor(np.array(energies, dtype=float), dtype=phi.dtype, device=phi.device)
    C0 = resolve_dw(model, phi, T, mesh if dw is None else dw, quantum)
    if weights is not None:
        b2 = torch.as_tensor(np.array(weights, dtype=float).reshape(n_at), dtype=phi.dtype, device=phi.device)
    else:
        b = torch.as_tensor(lengths_of(P.species) if scattering_lengths is None else
                            np.array(scattering_lengths, float), dtype=phi.dtype, device=phi.device)
        b2 = b**2
    if min(orders) < 1:
        raise ValueError(f"the phonon orders start at 1, got {orders}")
    N = max(orders)
    isotropic = directions is None and isotropic_sites(model)
    if isotropic:
        grid, T1 = self_spectral_function(model, phi, T, mesh=mesh, step=step, smearing=smearing, quantum=quantum,
                                          extrapolate=extrapolate, adaptive=adaptive)
        msd = torch.diagonal(C0, dim1=-2, dim2=-1).sum(-1) / 3  # (n,)
    else:
        from xtds.observables.sphere import sphere_rule

        grid, Tt = self_spectral_tensor(model, phi, T, mesh=mesh, step=step, smearing=smearing, quantum=quantum,
                                        extrapolate=extrapolate, adaptive=adaptive)
        x, w = sphere_rule(ANISOTROPIC_ORDER if directions is None else int(directions), crystal=model.crystal)
        d = torch.as_tensor(x, dtype=phi.dtype, device=phi.device)  # (D, 3) unit vectors
        wd = torch.as_tensor(w, dtype=phi.dtype, device=phi.device)
        T1 = torch.einsum("da,sabg,db->sdg", d, Tt, d)  # (n, D, G): d̂ᵀT_s d̂, per unit Q²
        msd = torch.einsum("da,sab,db->sd", d, C0, d)  # (n, D): d̂ᵀC_ss d̂
    G = len(grid)
    L = 1 << int(np.ceil(np.log2(N * G)))  # linear (not circular) convolutions up to order N
    F1 = torch.fft.rfft(T1, n=L)  # (n, [D,] L/2+1)
    fwhm = as_resolution(resolution)
    sig = fwhm(Eo) / (2 * math.sqrt(2 * math.log(2)))
    out = []
    Fn = F1
    for order in range(1, N + 1):
        if order > 1:
            Fn = Fn * F1 * step  # T^{*order} (each convolution integral × the step)
        if order not in orders:
            continue
        e_n = order * grid[0] + np.arange(order * (G - 1) + 1) * step  # the grid of T^{*order}
        keep = (e_n > float(Eo.min()) - 10 * float(sig.max())) & (e_n < float(Eo.max()) + 10 * float(sig.max()))
        idx = torch.as_tensor(np.flatnonzero(keep), device=phi.device)
        ej = torch.as_tensor(e_n[keep], dtype=phi.dtype, device=phi.device)
        # broaden onto the output energies: Σ_j Tn(e_j) R(E − e_j) step
        R = torch.exp(-0.5 * ((Eo[:, None] - ej[None]) / sig[:, None]) ** 2) / (sig[:, None] * math.sqrt(2 * math.pi))
        Tb = torch.fft.irfft(Fn, n=L)[..., idx] @ R.T * step  # (n, [D,] E)
        q2n = qn ** (2 * order) / math.factorial(order)
        if isotropic:
            pref = torch.exp(-(qn[:, None] ** 2) * msd[None]) * q2n[:, None]  # (Q, n)
            term = torch.einsum("s,qs,se->qe", b2, pref, Tb)
        else:  # Σ_d w_d e^{−Q² d̂ᵀCd̂} (d̂ᵀTd̂)^{*n}: the average over the directions
            pref = torch.exp(-(qn[:, None, None] ** 2) * msd[None]) * wd[None, None, :] * q2n[:, None, None]
            term = torch.einsum("s,qsd,sde->qe", b2, pref, Tb)
        out.append(term * (MBARN_PER_FM2 / n_at))
    out = torch.stack(out)
    return out if separate else out.sum(0)
