"""Matrix functions of Hermitian dynamical matrices, with exact derivatives in both directions.

Every spectral quantity of xtds is tr(P f(D)) for a Hermitian D (the dynamical matrix at a k-point)
and a Hermitian weight P (a projection on scattering vectors, or an atom): the Debye–Waller and
displacement covariances, S(Q, E), the powder spectrum. Its derivative along dD is the
Daleckii–Krein formula

    d tr(P f(D)) = Σ_{νμ} Γ_νμ (Uᴴ dD U)_νμ (Uᴴ P U)_μν,   Γ_νμ = (f(λ_ν) − f(λ_μ)) / (λ_ν − λ_μ)

(Γ_νν = f'(λ_ν); D = U diag(λ) Uᴴ), which is finite at degenerate levels where the eigenvectors are
not unique. The functions here implement it as a backward (reverse mode: gradients of a loss) and
as a jvp (forward mode: ``torch.func.jacfwd`` gives the Jacobian of a few force constants against
thousands of pixels in one vectorized pass). :class:`BinnedSpectral` hands its eigen-decomposition
from the forward pass to its backward and jvp (as non-differentiable outputs); :class:`SpectralSum`
recomputes it. ``fn(λ)`` arguments are elementwise functions of the eigenvalues returning (..., m, E);
their derivative is taken by forward-mode differentiation.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.transforms import TRANSFORMS

__all__ = ["BinnedSpectral", "SpectralSum", "divided_differences", "adaptive_widths"]


def divided_differences(lam: torch.Tensor, f: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Γ (..., m, m, *rest) from eigenvalues ``lam`` (..., m) and f, f' (..., m, *rest): the divided
    differences of f between levels, the mean derivative where two levels coincide (relative
    1e-9)."""
    extra = f.dim() - lam.dim()
    lv = lam.reshape(lam.shape + (1,) * extra)
    dl = lv.unsqueeze(lam.dim()) - lv.unsqueeze(lam.dim() - 1)  # (..., m, m, 1...)
    scale = lam.abs().amax(-1, keepdim=True).clamp(min=1e-30).reshape(lam.shape[:-1] + (1, 1) + (1,) * extra)
    close = dl.abs() <= 1e-9 * scale
    d = lam.dim() - 1
    df = f.unsqueeze(d + 1) - f.unsqueeze(d)
    avg = 0.5 * (fp.unsqueeze(d + 1) + fp.unsqueeze(d))
    return torch.where(close, avg, df / torch.where(close, torch.ones_like(dl), dl))


def _f_and_fp(fn, lam):
    """f(λ) and f′(λ) (elementwise): by the function's own ``with_derivative`` where it has one,
    else by forward-mode differentiation."""
    both = getattr(fn, "with_derivative", None)
    if both is not None:
        return both(lam)
    with TRANSFORMS:
        return torch.func.jvp(fn, (lam,), (torch.ones_like(lam),))


class _Bound:
    """A mode function with its per-mode widths bound: ``fn(λ, σ)`` as a function of λ alone."""

    def __init__(self, fn, sigma):
        self.fn, self.sigma = fn, sigma
        if hasattr(fn, "with_derivative"):
            self.with_derivative = lambda lam: fn.with_derivative(lam, sigma)

    def __call__(self, lam):
        return self.fn(lam, self.sigma)


#: ħ√λ in meV for λ in eV/(Å² amu) (as xtds.thermal.covariance).
def _energy_unit():
    from xtds.units import HBAR_OMEGA_EV

    return 1e3 * HBAR_OMEGA_EV


def adaptive_widths(lam: torch.Tensor, U: torch.Tensor, dDk: torch.Tensor, step: float) -> torch.Tensor:
    """σ (K, m) meV: the adaptive broadening of a k-mesh of spacing ``step`` Å⁻¹ (Yates, Wang,
    Vanderbilt & Souza, Phys. Rev. B 75, 195121 (2007)): σ_kν = step · |∇_k ε_kν|, the spread of a
    mode's energy across its mesh cell, so that a coarse mesh gives a smooth spectrum instead of a
    comb of narrow peaks. ∂λ/∂k_α = (Uᴴ ∂D/∂k_α U)_νν (Hellmann–Feynman; ``dDk`` (3, K, m, m));
    degenerate modes share their mean width."""
    grad = torch.stack([torch.diagonal(U.mH @ d @ U, dim1=-2, dim2=-1).real for d in dDk], -1)  # (K, m, 3)
    eps = torch.sqrt(lam.clamp(min=1e-30))
    v = _energy_unit() * torch.linalg.norm(grad, dim=-1) / (2 * eps)  # |∇ε| meV·Å
    scale = lam.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    same = (lam[:, :, None] - lam[:, None, :]).abs() <= 1e-6 * scale[:, :, None]  # (K, m, m) degenerate pairs
    v = (same.to(v.dtype) @ v[..., None])[..., 0] / same.sum(-1)
    return step * v


def mesh_mode_widths(model, phi, k, step: float) -> torch.Tensor:
    """The adaptive widths σ (K, m) meV of the modes at the wave vectors ``k`` (K, 3) Å⁻¹ of a mesh
    of spacing ``step`` Å⁻¹ (:func:`adaptive_widths`), ∂D/∂k by central differences (h = 1e-4 Å⁻¹),
    made at ``phi`` detached (no derivative)."""
    from xtds.lattice import dynamics

    with torch.no_grad():
        phi = phi.detach()
        kt = torch.as_tensor(np.asarray(k, dtype=float), dtype=phi.dtype, device=phi.device)
        lam, U = torch.linalg.eigh(dynamics.dynamical_matrix(model, phi, kt))
        h = 1e-4
        dDk = torch.stack([(dynamics.dynamical_matrix(model, phi, kt + h * e)
                            - dynamics.dynamical_matrix(model, phi, kt - h * e)) / (2 * h)
                           for e in torch.eye(3, dtype=phi.dtype, device=phi.device)])
        return adaptive_widths(lam, U, dDk, float(step))


class BinnedSpectral:
    """``BinnedSpectral.apply(D, V, kidx, bidx, n_bins, fn, sigma, korbit)``: the binned spectrum
    (:class:`_BinnedSpectralFn`), without the eigen-decomposition it hands its derivatives."""

    @staticmethod
    def apply(D, V, kidx, bidx, n_bins, fn, sigma, korbit):
        return _BinnedSpectralFn.apply(D, V, kidx, bidx, n_bins, fn, sigma, korbit)[0]


class _BinnedSpectralFn(torch.autograd.Function):
    """out_be = Σ_{p: bin(p) = b} Σ_ν f_e(λ_{k(p)ν}) |c_pν|², c_p = U_{k(p)}ᴴ v_p: the modes of each
    k-point projected on the vectors v_p of all its Q = k + G, summed into bins (|Q| bins, or atoms).

    Inputs: D (K, m, m) Hermitian, V (P, m), kidx (P,) k of each vector, bidx (P,) its bin,
    ``n_bins``, ``fn``, ``sigma`` (K, m) meV, fixed widths per mode passed to ``fn(λ, σ)`` (the
    adaptive broadening, :func:`adaptive_widths`), or None, and ``korbit`` (K,) the orbit of each k
    under the crystal's point group with time reversal, or None. k-points of one orbit have the same
    eigenvalues (and widths), so f(λ) (K, m, E), the costly part, is made once per orbit, and the
    binned weights are summed per orbit before they meet it (:func:`xtds.observables.neutron.powder.powder_points`
    already gives about one k per orbit; this catches the rest, e.g. zone-boundary pairs).
    Outputs: (B, E), and λ (K, m) and U (K, m, m), the eigen-decomposition
    (not differentiable), kept for the backward and jvp so that they do not repeat it. Derivatives
    to D and V in both modes (module docstring).
    """

    generate_vmap_rule = True

    @staticmethod
    def _modes(D, sigma, fn, korbit, lam=None, U=None):
        """λ (K, m), U, the column of each k in the binned weights (its orbit; None: itself), the
        orbits' eigenvalues λ_r (R, m) and the mode function with the widths bound (of λ_r alone)."""
        if lam is None:
            lam, U = torch.linalg.eigh(D)
        if korbit is None:
            return lam, U, None, lam, (fn if sigma is None else _Bound(fn, sigma))
        K = len(lam)
        n_orbits = int(korbit.max()) + 1
        rep = torch.full((n_orbits,), K, dtype=korbit.dtype, device=korbit.device)
        rep = rep.scatter_reduce(0, korbit, torch.arange(K, dtype=korbit.dtype, device=korbit.device), "amin")
        return lam, U, korbit, lam[rep], (fn if sigma is None else _Bound(fn, sigma[rep]))

    @staticmethod
    def forward(D, V, kidx, bidx, n_bins, fn, sigma, korbit):
        lam, U, orbit, lam_r, f_of = _BinnedSpectralFn._modes(D, sigma, fn, korbit)
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)
        R, m = lam_r.shape
        col = kidx if orbit is None else orbit[kidx]
        A = torch.zeros((n_bins * R, m), dtype=lam.dtype, device=lam.device)
        A = A.index_add(0, bidx * R + col, c.abs() ** 2)
        return A.reshape(n_bins, R * m) @ f_of(lam_r).reshape(R * m, -1), lam, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        D, V, kidx, bidx, n_bins, fn, sigma, korbit = inputs
        _, lam, U = output
        ctx.mark_non_differentiable(lam, U)
        ctx.n_bins, ctx.fn = n_bins, fn
        ctx.adaptive, ctx.orbits = sigma is not None, korbit is not None
        saved = (V, kidx, bidx, lam, U) + ((sigma,) if sigma is not None else ()) + \
            ((korbit,) if korbit is not None else ())
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def _saved(ctx):
        V, kidx, bidx, lam, U, *rest = ctx.saved_tensors
        sigma = rest.pop(0) if ctx.adaptive else None
        korbit = rest.pop(0) if ctx.orbits else None
        lam, U, orbit, lam_r, f_of = _BinnedSpectralFn._modes(None, sigma, ctx.fn, korbit, lam, U)
        col = kidx if orbit is None else orbit[kidx]
        return V, kidx, bidx, lam, U, col, lam_r, f_of

    @staticmethod
    def backward(ctx, grad, _grad_lam=None, _grad_U=None):
        V, kidx, bidx, lam, U, col, lam_r, f_of = _BinnedSpectralFn._saved(ctx)
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)
        f, fp = _f_and_fp(f_of, lam_r)
        h = torch.einsum("kme,be->kbm", f, grad)[col, bidx]  # (P, m)
        hp = torch.einsum("kme,be->kbm", fp, grad)[col, bidx]
        gamma = divided_differences(lam[kidx], h, hp)  # (P, m, m)
        inner = torch.zeros((len(lam),) + gamma.shape[1:], dtype=c.dtype, device=c.device)
        inner = inner.index_add(0, kidx, gamma.to(c.dtype) * (c[:, :, None] * c.conj()[:, None, :]))
        gD = U @ inner @ U.mH
        gV = 2 * torch.einsum("pij,pj->pi", U[kidx], h.to(c.dtype) * c)
        return gD, gV, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, dD, dV, *_):
        # Σ_νμ Y_νμ Γ_νμ with Y symmetric splits into per-mode coefficients of f and f′:
        # Σ_ν [g_ν f(λ_ν) + a_ν f′(λ_ν)], g_ν = 2 Σ_{μ apart} Y_νμ/(λ_ν − λ_μ) (the eigenvectors'
        # turn), a_ν = Σ_{μ level with ν} Y_νμ (the level's shift, degenerate partners included);
        # both are binned like the forward's |c|² and contracted with f and f′ in one GEMM, so a
        # batch of tangents (jacfwd) costs a few GEMMs more than the forward, not a pass per tangent.
        V, kidx, bidx, lam, U, col, lam_r, f_of = _BinnedSpectralFn._saved(ctx)
        nb = ctx.n_bins
        R, m = lam_r.shape
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)
        f, fp = _f_and_fp(f_of, lam_r)
        slot = bidx * R + col
        g = torch.zeros(c.shape, dtype=lam.dtype, device=lam.device)
        a = None
        if dD is not None:
            dl = lam[:, :, None] - lam[:, None, :]  # (K, m, m)
            scale = lam.abs().amax(-1, keepdim=True).clamp(min=1e-30)[..., None]
            close = dl.abs() <= 1e-9 * scale
            inv = torch.where(close, torch.zeros_like(dl), 1.0 / torch.where(close, torch.ones_like(dl), dl))
            dDt = U.mH @ dD @ U  # (K, m, m) [ν, μ]
            Y = (dDt[kidx] * (c.conj()[:, :, None] * c[:, None, :])).real  # dD̃_νμ c_μ c_ν*, symmetric
            g = g + 2 * (Y * inv[kidx]).sum(-1)
            a = (Y * close[kidx].to(Y.dtype)).sum(-1)
        if dV is not None:
            dc = torch.einsum("pij,pi->pj", U[kidx].conj(), dV)
            g = g + 2 * (c.conj() * dc).real

        E = f.shape[-1]
        if a is None:
            coef, F = g, f
        else:  # f and f′ side by side: one scatter and one GEMM
            coef, F = torch.cat([g, a], -1), torch.cat([f, fp], -2)
        w = coef.shape[-1]
        binned = torch.zeros((nb * R, w), dtype=lam.dtype, device=lam.device).index_add(0, slot, coef)
        return binned.reshape(nb, R * w) @ F.reshape(R * w, E), None, None


class SpectralSum(torch.autograd.Function):
    """out_qe = Σ_ν f_e(λ_qν) |c_qν|², c = Uᴴ v, D = U diag(λ) Uᴴ: v_qᴴ f_e(D_q) v_q for every e.

    Inputs: D (Q, m, m) Hermitian, v (Q, m), ``fn``. Output (Q, E). Derivatives to D and v in both
    modes (module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(D, v, fn):
        lam, U = torch.linalg.eigh(D)
        c = torch.einsum("qij,qi->qj", U.conj(), v)
        return torch.einsum("qm,qme->qe", c.abs() ** 2, fn(lam))

    @staticmethod
    def setup_context(ctx, inputs, output):
        D, v, fn = inputs
        ctx.fn = fn
        ctx.save_for_backward(D, v)
        ctx.save_for_forward(D, v)

    @staticmethod
    def backward(ctx, grad):
        D, v = ctx.saved_tensors
        lam, U = torch.linalg.eigh(D)
        c = torch.einsum("qij,qi->qj", U.conj(), v)
        f, fp = _f_and_fp(ctx.fn, lam)
        h = torch.einsum("qme,qe->qm", f, grad)
        hp = torch.einsum("qme,qe->qm", fp, grad)
        gamma = divided_differences(lam, h, hp)
        inner = gamma.to(c.dtype) * (c[:, :, None] * c.conj()[:, None, :])
        gD = U @ inner @ U.mH
        gv = 2 * torch.einsum("qij,qj->qi", U, h.to(c.dtype) * c)
        return gD, gv, None

    @staticmethod
    def jvp(ctx, dD, dv, _):
        D, v = ctx.saved_tensors
        lam, U = torch.linalg.eigh(D)
        c = torch.einsum("qij,qi->qj", U.conj(), v)
        f, fp = _f_and_fp(ctx.fn, lam)
        out = torch.zeros((len(lam), f.shape[-1]), dtype=lam.dtype, device=lam.device)
        if dD is not None:
            gamma = divided_differences(lam, f, fp)  # (Q, m, m, E)
            dDt = U.mH @ dD @ U
            Y = (dDt * (c.conj()[:, :, None] * c[:, None, :])).real  # [ν, μ]: dD̃_νμ c_μ c_ν*
            out = out + torch.einsum("qnm,qnme->qe", Y, gamma)
        if dv is not None:
            dc = torch.einsum("qij,qi->qj", U.conj(), dv)
            out = out + torch.einsum("qm,qme->qe", 2 * (c.conj() * dc).real, f)
        return out
