"""Thermal displacement covariances in k-space and on the lattice.

For a periodic crystal the displacement covariance is block-diagonal in k:

    C_{cc'}(k) = k_B T [H(k)⁺]_{cc'}                                      (classical)
    C_{cc'}(k) = M_c^-½ [Σ_j e_j e_jᴴ (ħ/2ω_j) coth(ħω_j / 2k_BT)]_{cc'} M_c'^-½   (quantum)

with H(k), D(k) in the phase convention of :mod:`xtds.lattice.dynamics` (atoms of a cell, e.g. the
conventional cubic cell). On the lattice, C(c0, c'r) = ⟨u_{c,0} u_{c',r}ᵀ⟩ =
(1/N) Σ_k C_{cc'}(k) exp(−i k·(x_{c'r} − x_c)), an FFT over the k-grid of an L1×L2×L3 supercell.
At k ≡ 0 the three rigid translations are left out (they do not change any intensity).
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.errors import UnstableError, check_temperature
from xtds.lattice import dynamics
from xtds.lattice.crystal import Crystal
from xtds.lattice.ifc import IFCModel
from xtds.lattice.stability import is_gamma
from xtds.thermal.geometry import k_grid, shape_of
from xtds.units import HBAR_OMEGA_EV, KB_EV_PER_K

__all__ = ["covariance_k", "lattice_covariance", "q_products", "symmetric_components", "SYM6"]

#: The six independent components (a, b) of a symmetric 3×3 tensor, in the order of
#: :func:`q_products` and :func:`symmetric_components`.
SYM6 = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def q_products(q: torch.Tensor) -> torch.Tensor:
    """(Q, 6): q_a q_b for the six symmetric pairs of :data:`SYM6`, off-diagonal ones doubled, so
    that qᵀCq = q_products(q) @ symmetric_components(C)."""
    cols = [q[:, a] * q[:, b] * (1.0 if a == b else 2.0) for a, b in SYM6]
    return torch.stack(cols, dim=1)


def symmetric_components(C: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 6): the symmetric part's components in the order of :data:`SYM6`."""
    return torch.stack([0.5 * (C[..., a, b] + C[..., b, a]) for a, b in SYM6], dim=-1)


class _HermitianFunction(torch.autograd.Function):
    """F = V f(Λ) Vᴴ for Hermitian D, with the Daleckii–Krein derivative (finite at degeneracies) in
    both modes (:mod:`xtds.thermal.spectral`): the backward and the jvp are the same linear map. The
    eigen-decomposition is returned too (not differentiable), for the derivatives to reuse;
    :func:`_hermitian_function` gives F alone."""

    generate_vmap_rule = True

    @staticmethod
    def forward(D, beta, zero_mask):
        lam, V = torch.linalg.eigh(D)
        f = torch.where(zero_mask, torch.zeros_like(lam), _quantum_g(lam, beta)[0])
        return (V * f.unsqueeze(-2).to(V.dtype)) @ V.mH, lam, V

    @staticmethod
    def setup_context(ctx, inputs, output):
        D, beta, zero_mask = inputs
        _, lam, V = output
        ctx.mark_non_differentiable(lam, V)
        ctx.beta = beta
        ctx.save_for_backward(lam, V, zero_mask)
        ctx.save_for_forward(lam, V, zero_mask)

    @staticmethod
    def _derivative(ctx, dD):
        from xtds.thermal.spectral import divided_differences

        lam, V, zero_mask = ctx.saved_tensors
        f, fp = _quantum_g(lam, ctx.beta)
        f = torch.where(zero_mask, torch.zeros_like(f), f)
        fp = torch.where(zero_mask, torch.zeros_like(fp), fp)
        gamma = divided_differences(lam, f, fp)
        return V @ (gamma.to(V.dtype) * (V.mH @ dD @ V)) @ V.mH

    @staticmethod
    def backward(ctx, grad, _grad_lam=None, _grad_V=None):
        return _HermitianFunction._derivative(ctx, grad), None, None

    @staticmethod
    def jvp(ctx, dD, *_):
        return _HermitianFunction._derivative(ctx, dD), None, None


def _hermitian_function(D, beta, zero_mask):
    """F = V f(Λ) Vᴴ (:class:`_HermitianFunction`)."""
    return _HermitianFunction.apply(D, beta, zero_mask)[0]


def _quantum_g(lam: torch.Tensor, beta: float):
    """g(λ) = (ħω/2) coth(ħω / 2k_BT) / λ (Å² amu) and dg/dλ, for ω² = λ > 0; β = 1/k_BT."""
    if torch.any(lam <= 0):
        raise UnstableError("imaginary or zero phonon frequencies away from Γ: the quantum covariance is undefined")
    s = torch.sqrt(lam)
    e = 0.5 * HBAR_OMEGA_EV * s  # ħω/2 in eV
    x = beta * e
    coth = 1.0 / torch.tanh(x)
    g = e * coth / lam
    # dg/ds with g = (a/2) coth(β a s/2)/s, a = ħ-unit
    a2 = 0.5 * HBAR_OMEGA_EV
    csch2 = 1.0 / torch.sinh(x) ** 2
    dg_ds = a2 * (-csch2 * beta * a2 / s - coth / s**2)
    return g, dg_ds / (2 * s)


def covariance_k(
    model: IFCModel,
    phi: torch.Tensor,
    k,
    temperature: float,
    quantum: bool = False,
    cell: Crystal | None = None,
) -> torch.Tensor:
    """C(k): shape (..., 3n, 3n) complex Hermitian, Å², for atoms of ``cell`` (default primitive).

    Classical: k_B T H(k)⁺. Quantum: Bose–Einstein with zero-point motion. At k ≡ 0 the rigid
    translations are projected out. Raises :class:`~xtds.lattice.phonons.UnstableError` for unstable IFCs.
    """
    T = check_temperature(temperature)
    cell = model.primitive if cell is None else cell
    if isinstance(k, torch.Tensor):  # no read of k's values: a fixed k under torch.func transforms has none
        lead = k.shape[:-1]
        kt = k.reshape(-1, 3).to(dtype=phi.dtype, device=phi.device)
        f = kt @ torch.as_tensor(np.asarray(cell.lattice, dtype=float).T / (2 * np.pi), dtype=kt.dtype,
                                 device=kt.device)
        gamma = torch.all(torch.abs(f - torch.round(f)) < 1e-8, dim=-1)
    else:
        k_np = np.asarray(k, dtype=float)
        lead = k_np.shape[:-1]
        kt = torch.as_tensor(k_np.reshape(-1, 3), dtype=phi.dtype, device=phi.device)
        gamma = torch.as_tensor(is_gamma(cell, k_np.reshape(-1, 3)), device=phi.device)
    n = cell.n_atoms
    H = dynamics.force_constant_matrix(model, phi, kt, cell=cell)
    # rigid translations at k ≡ G: u_{cR} = const is the Bloch vector w_c = e^{−i k·τ_c} (per axis)
    tau = torch.tensor(np.array(cell.cartesian_positions), dtype=phi.dtype, device=phi.device)
    w = torch.exp(-1j * (kt @ tau.T).to(H.dtype))  # (K, n)
    U = (w[:, :, None, None] * torch.eye(3, dtype=H.dtype, device=H.device)).reshape(-1, 3 * n, 3) / np.sqrt(n)
    P = U @ U.mH  # (K, 3n, 3n) projector onto the translations (used only where k ≡ G)
    inv_sqrt_m = dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device, cell=cell)
    scale = torch.diagonal(H, dim1=-2, dim2=-1).real.mean().detach().abs().clamp(min=1e-6)
    g = gamma[:, None, None]
    kBT = KB_EV_PER_K * T
    if not quantum:
        A = H + torch.where(g, scale * P, torch.zeros_like(P))
        L, info = torch.linalg.cholesky_ex(A)
        if torch.any(info != 0):
            bad = kt[info != 0].detach().cpu().numpy()
            raise UnstableError(
                f"the Hessian is not positive definite at {len(bad)} k-points, e.g. k = {bad[0].round(4)} Å⁻¹ "
                f"(H K L = {cell.cartesian_to_rlu(bad[0]).round(4)}): the IFCs are dynamically unstable"
            )
        # A⁻¹ by a solve against the identity: torch's forward-mode derivative of cholesky_inverse
        # is wrong (2.13: 2.7e-2 off central differences on a random 3×3; the solve's agrees to 7e-11)
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
        Ainv = torch.cholesky_solve(eye, L)
        C = kBT * (Ainv - torch.where(g, P / scale, torch.zeros_like(P)))
    else:
        D = H * (inv_sqrt_m[:, None] * inv_sqrt_m[None, :])
        sqrt_m = (1.0 / inv_sqrt_m).to(H.dtype)
        Um = U * sqrt_m[None, :, None]
        Um = Um / torch.linalg.norm(Um[:, :, :1], dim=1, keepdim=True)
        Pm = Um @ Um.mH
        # the translations at Γ are moved to twice the Gershgorin bound (above every mode; the mean
        # diagonal can meet a folded optical mode exactly) and get weight zero: marked by value
        dscale = 2 * D.detach().abs().sum(-1).amax().real.clamp(min=1e-6)
        Dreg = D + torch.where(g, dscale * Pm, torch.zeros_like(Pm))
        zero_mask = torch.zeros(Dreg.shape[:2], dtype=torch.bool, device=Dreg.device)
        if torch.any(gamma):  # only Γ-equivalent k hold the shifted translations
            lam0 = torch.linalg.eigvalsh(Dreg[gamma].detach())
            zero_mask[gamma] = (lam0 - dscale).abs() < 1e-9 * dscale
        if torch.any(g) and not torch.all(zero_mask.sum(-1)[gamma] == 3):
            raise UnstableError("could not isolate the three translations at Γ (accidental degeneracy)")
        F = _hermitian_function(Dreg, 1.0 / kBT, zero_mask)
        C = F * (inv_sqrt_m[:, None] * inv_sqrt_m[None, :])
    return C.reshape(*lead, 3 * n, 3 * n)


def lattice_covariance(
    model: IFCModel,
    phi: torch.Tensor,
    shape,
    temperature: float,
    quantum: bool = False,
    cell: Crystal | None = None,
) -> torch.Tensor:
    """C(c0, c'r) on an L1×L2×L3 periodic supercell of ``cell`` (default ``model.crystal``).

    ``shape``: (L1, L2, L3), or a geometry (its ``.shape``: the supercell, or an infinite
    crystal's k-mesh).

    Returns shape (n, n, L1, L2, L3, 3, 3) real, Å²: ``C[c, c', r1, r2, r3]`` = ⟨u_{c,0} u_{c',r}ᵀ⟩.
    """
    cell = model.crystal if cell is None else cell
    L = shape_of(shape)
    n = cell.n_atoms
    k = k_grid(cell, L)  # (L1, L2, L3, 3)
    Ck = covariance_k(model, phi, k.reshape(-1, 3), temperature, quantum=quantum, cell=cell)
    Ck = Ck.reshape(*L, n, 3, n, 3)
    tau = torch.tensor(np.array(cell.cartesian_positions), dtype=phi.dtype, device=phi.device)
    kt = torch.as_tensor(k, dtype=phi.dtype, device=phi.device)
    # Ĉ_{cc'}(k) = C_{cc'}(k) exp(−i k·(τ_c' − τ_c)); C(r) = (1/N) Σ_k Ĉ(k) exp(−i k·r) = fftn / N
    ph = torch.exp(-1j * torch.einsum("abcx,nx->abcn", kt, tau).to(Ck.dtype))  # (L1,L2,L3,n)
    Ck = Ck * ph.conj()[..., :, None, None, None] * ph[..., None, None, :, None]
    Cr = torch.fft.fftn(Ck, dim=(0, 1, 2)) / float(np.prod(L))
    return Cr.real.permute(3, 5, 0, 1, 2, 4, 6).contiguous()
