"""Structure factors of off-lattice atoms on a box of supercell modes, by non-uniform FFT (finufft).

For atoms at fractional supercell coordinates f_j (phases θ_j = 2π f_j), the amplitude of a group
of atoms g (one species) at the supercell's reciprocal-grid point n (q = Σ n_i b_i / L_i) is

    F_g(n) = Σ_{j∈g} exp(i n·θ_j),

a type-1 NUFFT. It is evaluated only on a :class:`ModeBox`, the smallest box of integer modes that
holds the requested n, or their Friedel mates −n: the intensities used here are Friedel-symmetric
(real form factors), so a centred grid needs only half its modes, and an irreducible wedge of a
cubic grid one octant. A box not centred at n = 0 is a centred type-1 NUFFT with strengths
exp(i s·θ_j), s the box's offset.

:func:`pair_sums` returns what the sampled estimator needs, summed over configurations c:
S1_p(n) = Σ_c Re F_s,c(n) F_t,c(n)* for each species pair p = (s ≤ t), and, on request, the
products P_p,c of each configuration (no gradient) for its Monte-Carlo error. Its backward pass is
one vectorized type-2 NUFFT per configuration:

    ∂L/∂θ_ja = −Im Σ_n n_a Γ_g(n)* exp(i n·θ_j),  Γ_g = Σ_t γ_gt F_t,
    γ_gg = 2 ∂L/∂S1_(g,g),  γ_gt = ∂L/∂S1_(g,t) (t ≠ g),

for atom j of species g. :func:`structure_factor_direct` is the same amplitude by a direct sum (exact,
pure torch), for small systems and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ModeBox", "pair_sums", "species_pairs", "structure_factor_direct"]

#: finufft's relative tolerance unless asked otherwise. The error it gives intensities is measured in
#: tests/test_model_sampled.py (test_nufft_path_gives_the_same_draws).
DEFAULT_EPS = 1e-6

#: FFTW planning for finufft: FFTW_MEASURE (0) costs about a second per transform size, once per
#: process (FFTW keeps the wisdom), and makes each later transform 1.3× (type 1) to 1.5× (type 2,
#: 3 transforms) faster than FFTW_ESTIMATE (64), measured on the paper's 81×81×41 half box.
_FFTW_MEASURE = 0

#: Boxes with fewer modes run finufft on one thread: on the 2-core development machine, waking a
#: second OpenMP thread cost more than it saved below about 250,000 modes (500 atoms, type 1 plus
#: a 3-fold type 2: 2.3 ms on one thread vs 5.0 ms on two at 9×17×17 modes, 7.1 vs 8.5 ms at 41³,
#: 23 vs 20 ms at 41×81×81).
_SERIAL_BELOW = 2**17


def _plan(kind: int, box: ModeBox, n_trans: int, eps: float):
    import finufft

    threads = {"nthreads": 1} if box.size < _SERIAL_BELOW else {}
    return finufft.Plan(kind, box.shape, n_trans, eps=eps, isign=1, fftw=_FFTW_MEASURE, **threads)


@dataclass(frozen=True)
class ModeBox:
    """A box of integer supercell modes n, lo ≤ n < lo + shape on each axis.

    Attributes
    ----------
    lo
        Shape (3,) int: the smallest mode on each axis.
    shape
        Shape (3,) int: the number of modes on each axis.
    """

    lo: tuple[int, int, int]
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, n, friedel: bool = True) -> tuple[ModeBox, np.ndarray]:
        """The smallest box holding every mode of ``n`` (or, with ``friedel``, each mode or its −n).

        Parameters
        ----------
        n
            Shape (Q, 3) int: supercell modes.
        friedel
            Allow a mode to be stood for by −n (the intensities here are Friedel-symmetric).

        Returns
        -------
        box, flat
            The box, and shape (Q,) int: the position of each mode (or its −n) in the box,
            C order.
        """
        n = np.asarray(n, dtype=np.int64).reshape(-1, 3)
        if not len(n):
            return cls((0, 0, 0), (1, 1, 1)), np.zeros(0, dtype=np.int64)
        cols = np.ascontiguousarray(n.T)  # (3, Q): contiguous reductions are much faster
        options = [cols]  # keep every n; or, per axis a, n where n_a ≥ 0 and −n elsewhere
        if friedel:
            options += [np.where(cols[a] >= 0, cols, -cols) for a in range(3)]
        best = min(options, key=lambda m: int(np.prod(m.max(1) - m.min(1) + 1)))
        lo = best.min(1)
        shape = best.max(1) - lo + 1
        flat = np.ravel_multi_index(tuple(best - lo[:, None]), tuple(shape))
        return cls(tuple(int(v) for v in lo), tuple(int(v) for v in shape)), flat

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def offset(self) -> np.ndarray:
        """s with n = m + s, m on finufft's centred modes of ``shape``."""
        return np.asarray(self.lo) + np.asarray(self.shape) // 2

    def modes(self) -> list[np.ndarray]:
        """The modes of each axis, shape (N_i,) int each."""
        return [np.arange(lo, lo + s) for lo, s in zip(self.lo, self.shape, strict=True)]


def species_pairs(n_groups: int) -> list[tuple[int, int]]:
    """The species pairs (s, t), s ≤ t, in the order :func:`pair_sums` returns them."""
    return [(s, t) for s in range(n_groups) for t in range(s, n_groups)]


def _products(F: torch.Tensor) -> torch.Tensor:
    """Re F_s F_t* for each pair: (b, G, *box) complex → (b, n_pairs, *box) real."""
    re, im = F.real, F.imag  # (torch's complex product with a conjugate is several times slower)
    return torch.stack([re[:, s] * re[:, t] + im[:, s] * im[:, t] for s, t in species_pairs(F.shape[1])], 1)


def _theta(frac: torch.Tensor) -> torch.Tensor:
    """Phases 2π f wrapped to [−π, π) (finufft's range); differentiable in f."""
    theta = 2 * np.pi * (frac - torch.floor(frac))
    return torch.where(theta >= np.pi, theta - 2 * np.pi, theta)


def _points(theta: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(theta[:, a]) for a in range(3)]


def _amplitudes(plan, th: np.ndarray, onehot: np.ndarray, box: ModeBox, out: np.ndarray) -> None:
    """F_g(n) of one configuration into ``out``, shape (G, *box) complex128 (plan: type 1, n_trans = G)."""
    plan.setpts(*_points(th))
    strengths = onehot * np.exp(1j * (th @ box.offset))[None, :]
    plan.execute(strengths, out=out)


class _PairSums(torch.autograd.Function):
    """S1 (differentiable) and, with ``each``, the products of each configuration (not
    differentiable) of :func:`pair_sums`, by finufft (cufinufft for CUDA tensors, which never
    leave the device); see the module docstring.

    Works one configuration at a time into preallocated arrays: fresh multi-megabyte temporaries
    cost page faults that, measured here, can take longer than the transforms.
    """

    @staticmethod
    def forward(ctx, theta, group, box, eps, each):
        if _device_path(theta):
            return _forward_cuda(ctx, theta, group, box, eps, each)
        th_all = theta.detach().cpu().numpy().astype(np.float64)  # (b, M, 3)
        grp = np.asarray(group)
        G = int(grp.max()) + 1
        n_pairs = len(species_pairs(G))
        onehot = (grp[None, :] == np.arange(G)[:, None]).astype(np.complex128)  # (G, M)
        plan = _plan(1, box, G, eps)
        keep = ctx.needs_input_grad[0]  # the backward pass needs every configuration's amplitudes
        F = torch.empty((len(th_all) if keep else 1, G, *box.shape), dtype=torch.complex128)
        S1 = torch.zeros((n_pairs, *box.shape), dtype=torch.float64)
        P = torch.empty((len(th_all) if each else 0, n_pairs, *box.shape), dtype=torch.float64)
        for c, th in enumerate(th_all):
            Fc = F[c if keep else 0]
            _amplitudes(plan, th, onehot, box, out=Fc.numpy())
            Pc = _products(Fc[None])[0]
            S1 += Pc
            if each:
                P[c] = Pc
        P = P.to(theta.device)
        ctx.mark_non_differentiable(P)
        if keep:
            ctx.save_for_backward(theta)
            ctx.F, ctx.group, ctx.box, ctx.eps = F, grp, box, eps
        return S1.to(theta.device), P

    @staticmethod
    def backward(ctx, gS1, _gP):
        (theta,) = ctx.saved_tensors
        if _device_path(theta):
            return _backward_cuda(ctx, theta, gS1), None, None, None, None
        F, grp, box, eps = ctx.F, ctx.group, ctx.box, ctx.eps
        G = F.shape[1]
        g = gS1.detach().cpu().numpy().astype(np.float64)
        gamma = np.zeros((G, G, *box.shape))
        for p, (s, t) in enumerate(species_pairs(G)):
            if s == t:
                gamma[s, s] = 2 * g[p]
            else:
                gamma[s, t] = gamma[t, s] = g[p]
        n = [m.reshape([-1 if b == a else 1 for b in range(3)]) for a, m in enumerate(box.modes())]  # broadcastable
        plan = _plan(2, box, 3 * G, eps)
        th_all = theta.detach().cpu().numpy().astype(np.float64)
        out = np.empty_like(th_all)
        coeff = np.empty((G, 3, *box.shape), dtype=np.complex128)
        for c, th in enumerate(th_all):
            gam_conj = np.einsum("gt...,t...->g...", gamma, F[c].numpy()).conj()  # Γ_g*, (G, *box)
            for a in range(3):
                np.multiply(n[a], gam_conj, out=coeff[:, a])
            plan.setpts(*_points(th))
            vals = plan.execute(coeff.reshape(3 * G, *box.shape)).reshape(G, 3, -1)  # (G, 3, M)
            own = vals[grp, :, np.arange(len(grp))]  # each atom's own species: (M, 3)
            out[c] = -(own * np.exp(1j * (th @ box.offset))[:, None]).imag
        return torch.from_numpy(out).to(dtype=theta.dtype, device=theta.device), None, None, None, None


def _device_path(theta: torch.Tensor) -> bool:
    """Whether :class:`_PairSums` runs on the device (cufinufft): for CUDA tensors."""
    return theta.is_cuda


def _cufinufft():
    try:
        import cufinufft
    except ImportError as err:
        raise ImportError(
            "the sampled model on a CUDA device needs cufinufft (pip install cufinufft), or "
            "method='direct' for small systems, or device='cpu'"
        ) from err
    return cufinufft


def _gamma(g: torch.Tensor, G: int) -> torch.Tensor:
    """γ_gt of the module docstring from ∂L/∂S1 (n_pairs, *box): shape (G, G, *box)."""
    gamma = g.new_zeros((G, G, *g.shape[1:]))
    for p, (s, t) in enumerate(species_pairs(G)):
        if s == t:
            gamma[s, s] = 2 * g[p]
        else:
            gamma[s, t] = gamma[t, s] = g[p]
    return gamma


def _forward_cuda(ctx, theta, group, box, eps, each):
    """:class:`_PairSums` forward on a CUDA device by cufinufft: every array stays on the device."""
    cufinufft = _cufinufft()
    dev = theta.device
    th_all = theta.detach().to(torch.float64)
    grp = np.asarray(group)
    G = int(grp.max()) + 1
    onehot = torch.as_tensor(grp[None, :] == np.arange(G)[:, None], dtype=torch.complex128, device=dev)
    offset = torch.as_tensor(box.offset, dtype=torch.float64, device=dev)
    plan = cufinufft.Plan(1, box.shape, n_trans=G, eps=eps, isign=1, dtype="complex128")
    keep = ctx.needs_input_grad[0]
    F = torch.empty((len(th_all) if keep else 1, G, *box.shape), dtype=torch.complex128, device=dev)
    S1 = torch.zeros((len(species_pairs(G)), *box.shape), dtype=torch.float64, device=dev)
    P = torch.empty((len(th_all) if each else 0, *S1.shape), dtype=torch.float64, device=dev)
    for c, th in enumerate(th_all):
        plan.setpts(*(th[:, a].contiguous() for a in range(3)))
        strengths = (onehot * torch.exp(1j * (th @ offset))[None, :]).contiguous()
        Fc = torch.as_tensor(plan.execute(strengths), device=dev).reshape(G, *box.shape)
        F[c if keep else 0] = Fc
        Pc = _products(Fc[None])[0]
        S1 += Pc
        if each:
            P[c] = Pc
    ctx.mark_non_differentiable(P)
    if keep:
        ctx.save_for_backward(theta)
        ctx.F, ctx.group, ctx.box, ctx.eps = F, grp, box, eps
    return S1, P


def _backward_cuda(ctx, theta, gS1):
    """:class:`_PairSums` backward on a CUDA device: one type-2 cufinufft per configuration."""
    cufinufft = _cufinufft()
    F, grp, box, eps = ctx.F, ctx.group, ctx.box, ctx.eps
    dev, G = theta.device, F.shape[1]
    gamma = _gamma(gS1.detach().to(torch.float64), G).to(torch.complex128)
    n = [torch.as_tensor(m, dtype=torch.float64, device=dev).reshape([-1 if b == a else 1 for b in range(3)])
         for a, m in enumerate(box.modes())]
    offset = torch.as_tensor(box.offset, dtype=torch.float64, device=dev)
    own_index = torch.as_tensor(grp, device=dev)
    plan = cufinufft.Plan(2, box.shape, n_trans=3 * G, eps=eps, isign=1, dtype="complex128")
    th_all = theta.detach().to(torch.float64)
    out = torch.empty_like(th_all)
    atoms = torch.arange(len(grp), device=dev)
    for c, th in enumerate(th_all):
        gam_conj = torch.einsum("gt...,t...->g...", gamma, F[c]).conj()  # Γ_g*, (G, *box)
        coeff = torch.stack([n[a] * gam_conj for a in range(3)], 1).reshape(3 * G, *box.shape).contiguous()
        plan.setpts(*(th[:, a].contiguous() for a in range(3)))
        vals = torch.as_tensor(plan.execute(coeff), device=dev).reshape(G, 3, -1)  # (G, 3, M)
        own = vals[own_index, :, atoms]  # (M, 3)
        out[c] = -(own * torch.exp(1j * (th @ offset))[:, None]).imag
    return out.to(dtype=theta.dtype)


def pair_sums(frac: torch.Tensor, group, box: ModeBox, eps: float = DEFAULT_EPS, method: str = "nufft",
              each: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Configuration sums of the species-pair intensities on a box of modes.

    Parameters
    ----------
    frac
        Shape (b, M, 3): fractional supercell coordinates of the M atoms in b configurations (any
        real values; periodic).
    group
        Shape (M,) int: each atom's species index 0 … G−1 (every index present).
    box
        The modes to evaluate.
    eps
        finufft's relative tolerance (``method="nufft"``).
    method
        ``"nufft"`` (finufft; its backward is a type-2 NUFFT) or ``"direct"`` (exact sum in torch,
        O(M · box.size) per configuration: small systems and tests).
    each
        Also return the products of each configuration (for a Monte-Carlo error).

    Returns
    -------
    S1, P
        S1 = Σ_c P_c: shape (n_pairs, *box), differentiable in ``frac``. P_p,c = Re F_s,c F_t,c*:
        shape (b, n_pairs, *box), no gradient, or None without ``each``. Pairs as
        :func:`species_pairs`. Dimensionless (bare lattice sums).
    """
    if frac.ndim != 3 or frac.shape[-1] != 3:
        raise ValueError(f"frac must have shape (b, M, 3), got {tuple(frac.shape)}")
    group = np.asarray(group, dtype=np.int64)
    if group.shape != (frac.shape[1],) or set(np.unique(group)) != set(range(int(group.max()) + 1)):
        raise ValueError("group must give each atom a species index 0 … G−1, every index used")
    if method == "nufft":
        S1, P = _PairSums.apply(_theta(frac), group, box, float(eps), bool(each))
    elif method == "direct":
        F = torch.stack([structure_factor_direct(frac[:, group == s], box) for s in range(int(group.max()) + 1)], 1)
        P = _products(F)
        S1, P = P.sum(0), P.detach()
    else:
        raise ValueError(f"method must be 'nufft' or 'direct', got {method!r}")
    return S1, (P if each else None)


def structure_factor_direct(frac: torch.Tensor, box: ModeBox) -> torch.Tensor:
    """F(n) = Σ_j exp(2πi n·f_j) on ``box`` by a direct sum (exact, differentiable; O(M · box.size)).

    Shape (..., M, 3) → (..., *box.shape) complex.
    """
    n = np.stack(np.meshgrid(*box.modes(), indexing="ij"), -1).reshape(-1, 3)
    nt = torch.as_tensor(n, dtype=frac.dtype, device=frac.device)
    F = torch.exp(1j * (2 * np.pi * frac @ nt.T)).sum(dim=-2)  # (..., Nq)
    return F.reshape(*frac.shape[:-2], *box.shape)
