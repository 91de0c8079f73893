"""Matrix functions of Hermitian dynamical matrices, with exact derivatives in both directions.

Every spectral quantity of xtds is tr(P f(D)) for a Hermitian D (the dynamical matrix at a k-point)
and a Hermitian weight P (a projection on scattering vectors, or an atom): the Debye–Waller and
displacement covariances, S(Q, E), the powder spectrum. Its derivative along dD is the
Daleckii–Krein formula

    d tr(P f(D)) = Σ_{νμ} Γ_νμ (Uᴴ dD U)_νμ (Uᴴ P U)_μν,   Γ_νμ = (f(λ_ν) − f(λ_μ)) / (λ_ν − λ_μ)

(Γ_νν = f'(λ_ν); D = U diag(λ) Uᴴ), which is finite at degenerate levels where the eigenvectors are
not unique. The functions here implement it as a backward (reverse mode: gradients of a loss) and
as a jvp (forward mode: ``torch.func.jacfwd`` gives the Jacobian of a few force constants against
thousands of pixels in one vectorized pass). Their
forward passes keep no eigen-decomposition: backward and jvp recompute it (it is cheap next to the
projections). ``fn(λ)`` arguments are elementwise functions of the eigenvalues returning (..., m, E);
their derivative is taken by forward-mode differentiation.
"""

from __future__ import annotations

import torch

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
    return torch.func.jvp(fn, (lam,), (torch.ones_like(lam),))


#: ħ√λ in meV for λ in eV/(Å² amu) (as xtds.model.covariance).
def _energy_unit():
    from xtds.model.covariance import _HBAR_OMEGA_UNIT

    return 1e3 * _HBAR_OMEGA_UNIT


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


class BinnedSpectral(torch.autograd.Function):
    """out_be = Σ_{p: bin(p) = b} Σ_ν f_e(λ_{k(p)ν}) |c_pν|², c_p = U_{k(p)}ᴴ v_p: the modes of each
    k-point projected on the vectors v_p of all its Q = k + G, summed into bins (|Q| bins, or atoms).

    Inputs: D (K, m, m) Hermitian, V (P, m), kidx (P,) k of each vector, bidx (P,) its bin,
    ``n_bins``, ``fn``, and ``sigma`` (K, m) meV, fixed widths per mode passed to ``fn(λ, σ)`` (the
    adaptive broadening, :func:`adaptive_widths`), or None. Output (B, E). Derivatives to D and V in
    both modes (module docstring).
    """

    generate_vmap_rule = True

    @staticmethod
    def _modes(D, sigma, fn):
        """λ, U and the mode function with the widths bound (a function of λ alone)."""
        lam, U = torch.linalg.eigh(D)
        return lam, U, (fn if sigma is None else lambda x: fn(x, sigma))

    @staticmethod
    def forward(D, V, kidx, bidx, n_bins, fn, sigma):
        lam, U, f_of = BinnedSpectral._modes(D, sigma, fn)
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)
        K, m = lam.shape
        A = torch.zeros((K * n_bins, m), dtype=lam.dtype, device=lam.device)
        A = A.index_add(0, kidx * n_bins + bidx, c.abs() ** 2)
        return A.reshape(K, n_bins, m).transpose(0, 1).reshape(n_bins, K * m) @ f_of(lam).reshape(K * m, -1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        D, V, kidx, bidx, n_bins, fn, sigma = inputs
        ctx.n_bins, ctx.fn = n_bins, fn
        ctx.adaptive = sigma is not None
        saved = (D, V, kidx, bidx) + ((sigma,) if sigma is not None else ())
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def _saved(ctx):
        D, V, kidx, bidx, *rest = ctx.saved_tensors
        lam, U, f_of = BinnedSpectral._modes(D, rest[0] if ctx.adaptive else None, ctx.fn)
        return D, V, kidx, bidx, lam, U, f_of

    @staticmethod
    def backward(ctx, grad):
        D, V, kidx, bidx, lam, U, f_of = BinnedSpectral._saved(ctx)
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)
        f, fp = _f_and_fp(f_of, lam)
        h = torch.einsum("kme,be->kbm", f, grad)[kidx, bidx]  # (P, m)
        hp = torch.einsum("kme,be->kbm", fp, grad)[kidx, bidx]
        gamma = divided_differences(lam[kidx], h, hp)  # (P, m, m)
        inner = torch.zeros((len(lam),) + gamma.shape[1:], dtype=c.dtype, device=c.device)
        inner = inner.index_add(0, kidx, gamma.to(c.dtype) * (c[:, :, None] * c.conj()[:, None, :]))
        gD = U @ inner @ U.mH
        gV = 2 * torch.einsum("pij,pj->pi", U[kidx], h.to(c.dtype) * c)
        return gD, gV, None, None, None, None, None

    @staticmethod
    def jvp(ctx, dD, dV, *_):
        D, V, kidx, bidx, lam, U, f_of = BinnedSpectral._saved(ctx)
        nb = ctx.n_bins
        K, m = lam.shape
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)
        f, fp = _f_and_fp(f_of, lam)
        slot = kidx * nb + bidx
        out = None
        if dD is not None:
            gamma = divided_differences(lam, f, fp)  # (K, m, m, E)
            dDt = U.mH @ dD @ U  # (K, m, m) [ν, μ]
            if len(kidx) < K * nb:  # few vectors per (k, bin) (a symmetry-reduced powder): point by point
                out = torch.zeros((nb, f.shape[-1]), dtype=lam.dtype, device=lam.device)
                step = max(1, (1 << 22) // (m * m * f.shape[-1]))  # bounds the (points, m, m, E) block
                for lo in range(0, len(kidx), step):
                    ki, cc = kidx[lo : lo + step], c[lo : lo + step]
                    Y = (dDt[ki] * (cc.conj()[:, :, None] * cc[:, None, :])).real  # dD̃_νμ c_μ c_ν*
                    Z = torch.einsum("pnm,pnme->pe", Y, gamma[ki])
                    out = out.index_add(0, bidx[lo : lo + step], Z)
            else:  # many: sum the projections per (k, bin) first, then one GEMM
                Pt = torch.zeros((K * nb, m, m), dtype=c.dtype, device=c.device)
                Pt = Pt.index_add(0, slot, c[:, :, None] * c.conj()[:, None, :]).reshape(K, nb, m, m)  # [μ, ν]
                Y = (dDt[:, None] * Pt.transpose(-1, -2)).real  # (K, B, m, m)
                out = Y.transpose(0, 1).reshape(nb, K * m * m) @ gamma.reshape(K * m * m, -1)
        if dV is not None:
            dc = torch.einsum("pij,pi->pj", U[kidx].conj(), dV)
            A = torch.zeros((K * nb, m), dtype=lam.dtype, device=lam.device)
            A = A.index_add(0, slot, 2 * (c.conj() * dc).real)
            term = A.reshape(K, nb, m).transpose(0, 1).reshape(nb, K * m) @ f.reshape(K * m, -1)
            out = term if out is None else out + term
        if out is None:
            out = torch.zeros((nb, f.shape[-1]), dtype=lam.dtype, device=lam.device)
        return out


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
