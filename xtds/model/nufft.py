"""Structure factors of off-lattice atoms on a supercell's q-grid, by non-uniform FFT (finufft).

For atoms at fractional supercell coordinates f_j, the amplitude on the grid q_n = Σ n_i b_i / L_i is
F(n) = Σ_j exp(2π i n·f_j), a type-1 NUFFT with points θ_j = 2π f_j. finufft evaluates it to a
requested relative tolerance (default 1e-12). The backward pass is a type-2 NUFFT:
∂L/∂θ_ja = −Im Σ_n n_a conj(g(n)) exp(i n·θ_j) for a real loss L with gradient g = ∂L/∂F̄.
A direct sum (exact, pure torch) is available for small systems and tests.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["structure_factor", "structure_factor_direct"]

DEFAULT_EPS = 1e-12


def _cols(t: np.ndarray):
    return [np.ascontiguousarray(t[:, a]) for a in range(3)]


def _modes(shape):
    return [torch.arange(-(n // 2), n - n // 2) for n in shape]  # finufft's default ordering


class _NUFFT1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, shape, eps):
        import finufft

        th = theta.detach().cpu().numpy().astype(np.float64)
        c = np.ones(th.shape[:-1], dtype=np.complex128)
        batch = th.shape[:-1]
        th2 = th.reshape(-1, th.shape[-2], 3) if th.ndim == 3 else th[None]
        c2 = c.reshape(th2.shape[:2])
        out = np.stack(
            [
                finufft.nufft3d1(*_cols(t), cc, tuple(shape), eps=eps, isign=1)
                for t, cc in zip(th2, c2)
            ]
        )
        if th.ndim == 2:
            out = out[0]
        ctx.save_for_backward(theta)
        ctx.shape, ctx.eps, ctx.batch = tuple(shape), eps, batch
        return torch.as_tensor(out, device=theta.device)

    @staticmethod
    def backward(ctx, grad):
        import finufft

        (theta,) = ctx.saved_tensors
        th = theta.detach().cpu().numpy().astype(np.float64)
        g = grad.detach().cpu().numpy()
        th2 = th.reshape(-1, th.shape[-2], 3) if th.ndim == 3 else th[None]
        g2 = g.reshape(-1, *ctx.shape) if th.ndim == 3 else g[None]
        n = np.meshgrid(*[m.numpy().astype(float) for m in _modes(ctx.shape)], indexing="ij")
        res = []
        for t, gg in zip(th2, g2):
            coeff = np.stack([na * np.conj(gg) for na in n])  # (3, N1, N2, N3)
            vals = finufft.nufft3d2(*_cols(t), coeff, eps=ctx.eps, isign=1)  # (3, M)
            res.append(-vals.imag.T)
        out = np.stack(res)
        if th.ndim == 2:
            out = out[0]
        return torch.as_tensor(out, dtype=theta.dtype, device=theta.device), None, None


def structure_factor(frac: torch.Tensor, shape, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """F(n) = Σ_j exp(2πi n·f_j) on the centred grid ``shape`` (finufft; differentiable in f).

    Parameters
    ----------
    frac
        Shape (..., M, 3): fractional coordinates in the supercell (any real values; periodic).
    shape
        (N1, N2, N3): modes n_i from −(N_i//2) to N_i − N_i//2 − 1.

    Returns
    -------
    Shape (..., N1, N2, N3) complex128.
    """
    if frac.ndim not in (2, 3):
        raise ValueError("frac must have shape (M, 3) or (batch, M, 3)")
    theta = 2 * np.pi * (frac - torch.floor(frac))
    theta = torch.where(theta >= np.pi, theta - 2 * np.pi, theta)
    return _NUFFT1.apply(theta, tuple(int(s) for s in shape), float(eps))


def structure_factor_direct(frac: torch.Tensor, shape) -> torch.Tensor:
    """The same as :func:`structure_factor` by a direct sum (exact; O(M · N1 N2 N3))."""
    modes = _modes(shape)
    n = torch.stack(torch.meshgrid(*modes, indexing="ij"), -1).reshape(-1, 3).to(frac.dtype).to(frac.device)
    phase = 2 * np.pi * frac @ n.T  # (..., M, Nq)
    F = torch.exp(1j * phase).sum(dim=-2)
    return F.reshape(*frac.shape[:-2], *shape)
