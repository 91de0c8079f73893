"""The diffuse intensity of an infinite crystal at any q, fast enough to fit measured grids.

Per primitive cell (atoms s, s' of the primitive cell, lattice vectors r, d = r + τ_s' − τ_s),

    I(q) = I₁(q) + Σ_s a_s² G(2W_s) + Σ_{(s,s',r) ≠ (s,s,0)} a_s a_s' cos(q·d) G(x_ss'r),

with a_s = f_s e^{−W_s}, W_s = ½ qᵀC_ss(0)q, x = qᵀC(s0, s'r)q and G(x) = eˣ − 1 − x. The three
parts and how each is made accurate:

- **One phonon** I₁ (Xu & Chiang): exactly at q, from the covariance C(q) of the primitive cell
  (a 3n×3n inverse or eigen-decomposition per point).
- **Debye–Waller factor**: C_ss(0) = mean of C(k) over the k-mesh converges only as 1/M (the
  acoustic 1/k² singularity at Γ); two levels of Richardson extrapolation over the sub-meshes M/2 and
  M/4 (free: subsets of the mesh) remove the 1/M and 1/M³ errors.
- **Multi-phonon**: the self term exactly; the correlated terms by a direct sum over the pairs
  within a window of radius R, half the in-radius of the mesh's supercell (1 up to :data:`FLAT`·R,
  then cos² to 0), with C(r) from the mesh by FFT. The mesh's C(r) carries the periodic images of
  the supercell: their constant part is the Debye–Waller extrapolation's, the part growing as r²
  comes from the 1/k² singularity at Γ and is removed with the elastic continuum's
  (:meth:`~xtds.observables.tds.continuum.Continuum.aliasing`). The terms fall only as 1/r² (C(r) → the
  elastic Kelvin solution A(r̂)/r, then W_st(r̂)/r² between different atoms s ≠ t and B_st(r̂)/r³),
  so the truncated sum alone is poor near Bragg peaks; the pair sum therefore subtracts the
  continuum's terms up to 1/r⁴ (:func:`_g_el`) pair by pair, and
  :mod:`xtds.observables.tds.continuum` adds their sum over the whole lattice in closed form (Poisson
  summation over the :data:`TAIL_G` reciprocal-lattice vectors nearest q). The pair sum is one fused
  forward/backward (:class:`_PairSum`), block by block. :func:`mesh_convergence` measures what
  remains on the points of a fit.

Everything is a torch expression of φ, so the model is differentiable. The pair set and window are
geometry (:class:`InfinitePlan`), built once per model and mesh.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from xtds.lattice.ifc import IFCModel
from xtds.observables.scattering import form_factors_at
from xtds.observables.tds.continuum import ODD_POWER_DEGREE, ORDERS, Continuum, smooth_step
from xtds.thermal.covariance import covariance_k, q_products, symmetric_components
from xtds.thermal.debye_waller import richardson
from xtds.thermal.geometry import shape_of

__all__ = ["InfinitePlan", "infinite_intensity", "plan_of", "mesh_convergence", "converge_mesh", "WINDOW",
           "MESH_TOLERANCE", "MESH_REFINEMENTS", "MESH_CHECK_POINTS"]

#: Radius of the window of the multi-phonon pair sum, as a fraction of the in-radius of the k-mesh's
#: supercell (the periodic images of C(r) are then far from every pair summed).
WINDOW = 0.5

#: Largest window × cos(q·d) matrix, and most bytes of the continuum tail's per-point tables, that
#: :func:`infinite_intensity` keeps between calls (beyond them it recomputes: bounded memory).
CACHE_BYTES = 512 * 2**20

#: Reciprocal-lattice vectors nearest each q whose continuum tails are summed (Poisson summation).
TAIL_G = 8

#: Whether the continuum's periodic images are removed from the mesh's C(r) (Continuum.aliasing).
ALIAS = True

#: The smooth step χ of the continuum rises from R0_FRACTION to 2·R0_FRACTION of the window radius
#: (inside the window's flat part, so that the pair sum's truncation sees the continuum in full).
R0_FRACTION = 0.35

#: The window of the pair sum is 1 up to this fraction of its radius, then falls as cos² to 0.
FLAT = 0.7


def _window(t: np.ndarray) -> np.ndarray:
    """1 for t ≤ FLAT, cos² down to 0 at t = 1."""
    u = (t - FLAT) / (1 - FLAT)
    return np.where(t <= FLAT, 1.0, np.where(t < 1.0, np.cos(0.5 * np.pi * u) ** 2, 0.0))


class InfinitePlan:
    """The geometry of the infinite-crystal model for one IFC model and k-mesh.

    Attributes: ``mesh`` (M1, M2, M3) of the primitive cell; ``radius`` (Å) of the window;
    ``d`` (N, 3) Å pair vectors, ``weight`` (N,) window × 2 (a pair and its inverse), ``groups``
    [(s, s', slice of the pairs between atoms s and s' of the primitive cell)], ``index`` (N,) into
    the flattened (n, n, M1, M2, M3) lattice covariance.
    """

    def __init__(self, model: IFCModel, mesh):
        P = model.primitive
        M = np.asarray(shape_of(mesh, "k-mesh sizes"))
        if np.any(M % 4) or np.any(M < 8):
            raise ValueError(f"the infinite-crystal k-mesh must be multiples of 4, at least 8 (got {tuple(M)}): "
                             "the Debye–Waller factor is extrapolated from the sub-meshes M/2 and M/4")
        self.model, self.mesh, self.cell = model, tuple(int(x) for x in M), P
        lat = np.asarray(P.lattice)
        spacing = 2 * np.pi / np.linalg.norm(np.asarray(P.reciprocal), axis=1)  # interplanar spacings
        self.radius = float(WINDOW * (M * spacing).min() / 2)
        n = P.n_atoms
        tau = np.asarray(P.positions)
        reach = np.ceil(self.radius / spacing).astype(int) + 1
        r = np.stack(np.meshgrid(*(np.arange(-k, k + 1) for k in reach), indexing="ij"), -1).reshape(-1, 3)
        groups, d, w, idx, shift = [], [], [], [], []
        Mp = int(np.prod(M))
        for s in range(n):
            for t in range(s, n):
                frac = r + tau[t] - tau[s]
                dist = np.linalg.norm(frac @ lat, axis=1)
                keep = dist < self.radius
                if s == t:  # one of each ±r, r ≠ 0
                    lex = (r[:, 0] > 0) | ((r[:, 0] == 0) & ((r[:, 1] > 0) | ((r[:, 1] == 0) & (r[:, 2] > 0))))
                    keep &= lex
                rr = r[keep]
                flat = np.ravel_multi_index(tuple((rr % M).T), tuple(M))
                groups.append((s, t, len(rr)))
                d.append(frac[keep] @ lat)
                shift.append(np.broadcast_to((tau[t] - tau[s]) @ lat, (len(rr), 3)))
                w.append(2.0 * _window(dist[keep] / self.radius))
                idx.append((s * n + t) * Mp + flat)
        bounds = np.cumsum([0] + [n_ for _, _, n_ in groups])
        self.groups = [(s, t, slice(int(lo), int(hi)))
                       for (s, t, _), lo, hi in zip(groups, bounds[:-1], bounds[1:], strict=True) if hi > lo]
        self.d, self.weight, self.index = np.concatenate(d), np.concatenate(w), np.concatenate(idx)
        self.k = P.k_grid(self.mesh)  # (M1, M2, M3, 3)
        # the elastic-continuum tail (xtds.observables.tds.continuum), switched on from a third of the window
        self.continuum = Continuum(model, P, r0=self.radius * R0_FRACTION)
        self.chi = smooth_step(np.linalg.norm(self.d, axis=1) / self.continuum.r0 - 1.0)
        self.pairs = [(s, t) for s, t, _ in self.groups]
        # odd terms W_st(d̂)/|d|² only between different atoms (s ≠ t)
        self.odd = any(s != t for s, t in self.pairs)
        self.Y_pairs = self.continuum.harmonics_over_r(self.d)
        self.Y2_pairs = self.continuum.harmonics_over_r(self.d, power=2) if self.odd else None
        self.Y3_pairs = self.continuum.harmonics_over_r(self.d, power=3)
        self.alias = self.continuum.aliasing(self.mesh, self.d, np.concatenate(shift))

    def __len__(self) -> int:
        return len(self.d)


def _covariances(plan: InfinitePlan, phi, temperature, quantum):
    """(C∞(0) of each atom (n, 3, 3), C(r) + long-wavelength correction at the plan's pairs (N, 3, 3)).

    C(−k) = C(k)* (time reversal), so C(k) is computed on half the mesh (m3 ≤ M3/2) and C(r) comes
    from an inverse real FFT."""
    P, (M1, M2, M3) = plan.cell, plan.mesh
    n = P.n_atoms
    half = M3 // 2 + 1
    k = plan.k[:, :, :half]
    Ck = covariance_k(plan.model, phi, k.reshape(-1, 3), temperature, quantum=quantum, cell=P)
    Ck = Ck.reshape(M1, M2, half, n, 3, n, 3)
    diag = torch.stack([Ck[..., s, :, s, :].real for s in range(n)], dim=3)  # (M1, M2, half, n, 3, 3)
    m3 = np.arange(half)
    means = []
    for h in (1, 2, 4):  # the mesh and its sub-meshes M/2, M/4; ±k pairs counted twice
        w = np.where((m3 % h == 0), np.where((m3 == 0) | (2 * m3 == M3), 1.0, 2.0), 0.0)
        wt = torch.as_tensor(w, dtype=phi.dtype, device=phi.device)
        sub = diag[::h, ::h]
        means.append(torch.einsum("abcnij,c->nij", sub, wt) / (sub.shape[0] * sub.shape[1] * w.sum()))
    c1 = means[0]
    c_inf = richardson(*means)
    delta = (c_inf - c1).mean(dim=0)  # the uniform k → 0 correction of every C(r)
    tau = torch.as_tensor(np.array(P.cartesian_positions), dtype=phi.dtype, device=phi.device)
    kt = torch.as_tensor(k, dtype=phi.dtype, device=phi.device)
    ph = torch.exp(-1j * torch.einsum("abcx,nx->abcn", kt, tau).to(Ck.dtype))
    Ck = Ck * ph.conj()[..., :, None, None, None] * ph[..., None, None, :, None]
    # C(r) = (1/N) Σ_k Ĉ(k) e^{−ik·r}, real: the inverse real FFT of Ĉ*
    Cr = torch.fft.irfftn(Ck.conj(), s=(M1, M2, M3), dim=(0, 1, 2))
    Cr = Cr.permute(3, 5, 0, 1, 2, 4, 6).reshape(-1, 3, 3)
    return c_inf, Cr[torch.as_tensor(plan.index, device=phi.device)] + delta


def _g(x: torch.Tensor) -> torch.Tensor:
    """eˣ − 1 − x (for small x the cancellation costs only an absolute error ~1e-16·|x|)."""
    return torch.expm1(x) - x


def _g_el(x: torch.Tensor, w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The continuum's terms summed in closed form, to 1/|d|⁴: with x = X/|d| (Kelvin),
    w = W/|d|² (odd, between different atoms) and z = Z/|d|³ (the even correction),
    (x + w)²/2 + x³/6 + x²w/2 + x⁴/24 + x·z."""
    u = x + w
    return 0.5 * u * u + x * (x * (x * (1 / 6 + x / 24) + 0.5 * w) + z)


#: Rows (points) per block of the fused pair sum: its (rows, pairs) temporaries stay in cache.
PAIR_BLOCK = 256


class _PairSum(torch.autograd.Function):
    """S_qj = Σ_{pairs p of group j} wc_qp [g(x_qp) − χ_p G_el(xe_qp, we_qp, ze_qp)], x = qq·C6_p,
    xe = qq·A_p, we = qq·W_p, ze = qq·B_p: the pair sum, forward and backward fused block by block (no
    (Q, N) autograd graph; the backward recomputes x, xe, we, ze). Gradients flow to C6, A, W and B.
    ``W`` may be ``None`` (one atom per cell, or no odd terms): then we = 0."""

    generate_vmap_rule = True

    @staticmethod
    def forward(qq, wc, chi, C6, A, W, B, groups):
        out = qq.new_empty((len(qq), len(groups)))
        parts = [C6, A, B] if W is None else [C6, A, B, W]
        M = torch.cat(parts).T  # (6, 3N or 4N)
        N = len(C6)
        for lo in range(0, len(qq), PAIR_BLOCK):
            blk = slice(lo, lo + PAIR_BLOCK)
            xs = qq[blk] @ M
            x, xe, ze = (xs[:, i * N : (i + 1) * N] for i in range(3))
            g = torch.expm1(x).sub_(x)
            ze.mul_(xe)  # x·z, then + ((x/24 + 1/6)x + 1/2)x²
            el = xe.div(24).add_(1 / 6).mul_(xe).add_(0.5).mul_(xe).mul_(xe).add_(ze)
            if W is not None:  # + x·w + w²/2 + x²w/2
                we = xs[:, 3 * N :]
                el.add_(xe.mul(0.5).add_(1.0).mul_(xe).add_(we.mul(0.5)).mul_(we))
            g.sub_(el.mul_(chi)).mul_(wc[blk])
            for j, (_, _, sl) in enumerate(groups):
                out[blk, j] = g[:, sl].sum(dim=1)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        qq, wc, chi, C6, A, W, B, groups = inputs
        ctx.save_for_backward(qq, wc, chi, C6, A, W, B)
        ctx.save_for_forward(qq, wc, chi, C6, A, W, B)
        ctx.groups = groups

    @staticmethod
    def jvp(ctx, _dqq, _dwc, _dchi, dC6, dA, dW, dB, _groups):
        """The forward-mode derivative in C6, A, W, B (qq, wc and χ are constants), block by block
        and out of place (it runs under ``vmap`` for batched Jacobians)."""
        qq, wc, chi, C6, A, W, B = ctx.saved_tensors
        N = len(C6)
        zero = torch.zeros_like(C6)
        parts = [C6, A, B] if W is None else [C6, A, B, W]
        tangents = [zero if d is None else d for d in ((dC6, dA, dB) if W is None else (dC6, dA, dB, dW))]
        M, dM = torch.cat(parts).T, torch.cat(tangents, dim=-2).transpose(-1, -2)
        out = []
        for lo in range(0, len(qq), PAIR_BLOCK):
            blk = slice(lo, lo + PAIR_BLOCK)
            xs, dxs = qq[blk] @ M, qq[blk] @ dM
            x, xe, ze = (xs[:, i * N : (i + 1) * N] for i in range(3))
            dx, dxe, dze = (dxs[..., i * N : (i + 1) * N] for i in range(3))
            dG_dxe = ((xe / 6 + 0.5) * xe + 1.0) * xe + ze
            el = dG_dxe * dxe + xe * dze
            if W is not None:
                we, dwe = xs[:, 3 * N :], dxs[..., 3 * N :]
                el = el + (xe + 1.0) * we * dxe + ((0.5 * xe + 1.0) * xe + we) * dwe
            s = (torch.expm1(x) * dx - chi * el) * wc[blk]
            out.append(torch.stack([s[..., sl].sum(-1) for _, _, sl in ctx.groups], dim=-1))
        return torch.cat(out, dim=-2)

    @staticmethod
    def backward(ctx, grad):
        qq, wc, chi, C6, A, W, B = ctx.saved_tensors
        N = len(C6)
        parts = [C6, A, B] if W is None else [C6, A, B, W]
        M = torch.cat(parts).T
        gC6, gA, gB = (torch.zeros_like(C6) for _ in range(3))
        gW = None if W is None else torch.zeros_like(W)
        for lo in range(0, len(qq), PAIR_BLOCK):
            blk = slice(lo, lo + PAIR_BLOCK)
            xs = qq[blk] @ M
            x, xe, ze = (xs[:, i * N : (i + 1) * N] for i in range(3))
            gw = torch.empty_like(x)  # ∂L/∂S spread over the pairs, times the window × cos
            for j, (_, _, sl) in enumerate(ctx.groups):
                gw[:, sl] = grad[blk, j : j + 1]
            gw.mul_(wc[blk])
            q6 = qq[blk]
            gC6 += (torch.expm1(x).mul_(gw)).T @ q6  # g'(x) = eˣ − 1
            gwc = gw.mul_(chi)
            gB -= (xe * gwc).T @ q6
            # ∂G_el/∂xe = xe + xe²/2 + xe³/6 + ze (+ we + xe·we); ∂G_el/∂we = xe + we + xe²/2
            dx = xe.div(6).add_(0.5).mul_(xe).add_(1.0).mul_(xe).add_(ze)
            if W is not None:
                we = xs[:, 3 * N :]
                dw = xe.mul(0.5).add_(1.0).mul_(xe).add_(we)
                dx.add_(xe.add(1.0).mul_(we))
                gW -= (dw.mul_(gwc)).T @ q6
            gA -= (dx.mul_(gwc)).T @ q6
        return None, None, None, gC6, gA, gW, gB, None


def infinite_intensity(plan: InfinitePlan, phi, q, temperature, quantum=True, form_factor="cromer-mann",
                       multi_phonon: bool = True, chunk: int = 2048, cache: dict | None = None,
                       q_values: np.ndarray | None = None) -> torch.Tensor:
    """Diffuse ⟨I(q)⟩ of an infinite crystal, shape (Q,), electrons² per primitive cell; q: (Q, 3)
    Cartesian Å⁻¹ (Bragg peaks excluded: at q ≡ G the acoustic one-phonon part is left out).
    ``multi_phonon=False``: the one-phonon term alone (with the Debye–Waller factor). ``cache``: a
    dict owned by the caller that always passes the same q, where the window × cos(q·d) matrices are
    kept between calls (up to :data:`CACHE_BYTES`). ``q_values``: q as a numpy array (the same
    values), for the steps that tabulate in numpy; needed under ``torch.func`` transforms, where
    the tensor's values cannot be read. ``form_factor``: a name or a table (Q, n) made in advance
    (:func:`~xtds.observables.scattering.form_factors_at`)."""
    P = plan.cell
    c_inf, Cp = _covariances(plan, phi, temperature, quantum)
    C6, C06 = symmetric_components(Cp), symmetric_components(c_inf)
    dev = q.device
    d = torch.as_tensor(plan.d, dtype=q.dtype, device=dev)
    w = torch.as_tensor(plan.weight, dtype=q.dtype, device=dev)
    cont = plan.continuum
    if multi_phonon:
        coeffs = cont.kelvin_coefficients(phi, temperature, quantum)
        if ALIAS:  # the continuum's periodic images out of the mesh's C(r)
            C6 = C6 - torch.as_tensor(plan.alias, dtype=C6.dtype, device=C6.device) @ coeffs
        Wc, Bc = cont.block_coefficients(phi, temperature, quantum, plan.pairs)
        A_pairs = torch.as_tensor(plan.Y_pairs, dtype=q.dtype, device=dev) @ coeffs  # (N, 6): A(d̂)/|d|
        Y3 = torch.as_tensor(plan.Y3_pairs, dtype=q.dtype, device=dev)
        B_pairs = torch.cat([Y3[sl] @ Bc[j] for j, (_, _, sl) in enumerate(plan.groups)])  # B_st(d̂)/|d|³
        if plan.odd:
            Y2 = torch.as_tensor(plan.Y2_pairs, dtype=q.dtype, device=dev)
            W_pairs = torch.cat([Y2[sl] @ Wc[j] for j, (_, _, sl) in enumerate(plan.groups)])  # W_st(d̂)/|d|²
        else:
            W_pairs = None
        chi = torch.as_tensor(plan.chi, dtype=q.dtype, device=dev)
        common, per_pair = cont.power_coefficients(coeffs, Wc, Bc)
        odd_pairs = [j for j, pp in enumerate(per_pair) if pp["odd"] is not None]
        delta = torch.as_tensor(np.array([np.asarray(P.cartesian_positions[t]) - np.asarray(P.cartesian_positions[s])
                                          for s, t in plan.pairs]), dtype=q.dtype, device=dev)  # (n_groups, 3)
        gw = torch.as_tensor([1.0 if s == t else 2.0 for s, t in plan.pairs], dtype=q.dtype, device=dev)
    keep = cache is not None and len(q) * len(plan) * q.element_size() <= CACHE_BYTES
    out = []
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]
        qq = q_products(qc)
        W = 0.5 * qq @ C06.T  # (Q, n)
        f = form_factors_at(P.species, qc, form_factor, start)
        a = f * torch.exp(-W)
        Cq = covariance_k(plan.model, phi, qc, temperature, quantum=quantum, cell=P)
        v = (a[:, :, None] * qc[:, None, :]).reshape(len(qc), -1).to(Cq.dtype)
        one = torch.einsum("qi,qij,qj->q", v.conj(), Cq, v).real
        if multi_phonon:
            one = one + (a * a * _g(2 * W)).sum(dim=1)
            wc = cache.get(start) if keep else None
            if wc is None:
                wc = w * torch.cos(qc @ d.T)
                if keep:
                    cache[start] = wc
            S = _PairSum.apply(qq, wc, chi, C6, A_pairs, W_pairs, B_pairs, plan.groups)  # (Q, n_groups)
            for j, (s, t, _) in enumerate(plan.groups):
                one = one + a[:, s] * a[:, t] * S[:, j]
            key = ("tail", start)
            tab = cache.get(key) if cache is not None else None
            if tab is None:
                qn = qc.detach().cpu().numpy() if q_values is None else q_values[start : start + chunk]
                G, take, K = cont.table(qn, TAIL_G, odd=bool(odd_pairs))
                tab = [G, take, np.concatenate([K[p] for p in ORDERS], axis=2)]  # (Q, n_g, Σ n_lm)
                if odd_pairs:
                    tab.append(np.concatenate([K[p, "odd"] for p in ODD_POWER_DEGREE], axis=2))
                tab = tuple(torch.as_tensor(t, dtype=q.dtype, device=dev) for t in tab)
                size = sum(t.numel() * t.element_size() for t in tab)
                if cache is not None and cache.get("tail_bytes", 0) + size <= CACHE_BYTES:
                    cache[key] = tab
                    cache["tail_bytes"] = cache.get("tail_bytes", 0) + size
            one = one + _tail(tab, cont.monomial_values(qq), common, per_pair, odd_pairs, a, plan.pairs, gw,
                              delta) / cont.volume
        out.append(one)
    return torch.cat(out)


def _tail(tab, mono, common, per_pair, odd_pairs, a, pairs, gw, delta) -> torch.Tensor:
    """The continuum's lattice sum (Q,) by Poisson summation over the nearest G of each point: per
    atom pair (s, t), weight ``gw`` a_s a_t, the even part × cos(G·Δ_st) and the odd (imaginary)
    part × −sin(G·Δ_st), Δ_st = τ_t − τ_s; summed over pairs the common part is |F_G|² T(q − G)."""
    G, take, K = tab[:3]
    ph = G @ delta.T  # (Q, n_g, n_groups)
    amp = gw * torch.stack([a[:, s] * a[:, t] for s, t in pairs], 1)  # (Q, n_groups)
    base = torch.cat([mono[n] @ c for n, c in (common[p] for p in ORDERS)], dim=1)  # (Q, Σ n_lm)
    n4 = common[4][1].shape[1]
    coef = base[:, None, :].repeat(1, len(pairs), 1)  # (Q, n_groups, Σ n_lm)
    for j, pp in enumerate(per_pair):
        coef[:, j, -n4:] += sum(mono[n] @ c for n, c in pp["even"])
    tail = (torch.bmm(K, coef.transpose(1, 2)) * torch.cos(ph) * amp[:, None]).sum(2)  # (Q, n_g)
    if odd_pairs:
        Ko = tab[3]
        codd = torch.stack([torch.cat([mono[n] @ c for n, c in (per_pair[j]["odd"][p] for p in ODD_POWER_DEGREE)], 1)
                            for j in odd_pairs], 2)  # (Q, Σ n_lm odd, n_odd_pairs)
        sel = torch.as_tensor(odd_pairs, device=ph.device)
        tail = tail - (torch.bmm(Ko, codd) * torch.sin(ph[..., sel]) * amp[:, None, sel]).sum(2)
    return (take * tail).sum(dim=1)


_PLANS: dict = {}


def plan_of(model: IFCModel, mesh) -> InfinitePlan:
    """An :class:`InfinitePlan`, the last two kept (a fit checks the same finer mesh before and after)."""
    key = (id(model), tuple(mesh))
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    plan = InfinitePlan(model, mesh)
    while len(_PLANS) >= 2:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = (model, plan)
    return plan


def mesh_convergence(observable, phi, max_points: int = 1000, factor: float = 1.5) -> dict:
    """How far an infinite-crystal observable is from mesh convergence at ``phi``: its intensities at
    (up to ``max_points``, evenly spread) of its points on its mesh M and on the mesh ≈ ``factor``·M
    (window radius scaled alike). Returns a dict with both meshes, the median and max relative change,
    and the number of points compared."""
    geometry = observable.geometry
    mesh = tuple(geometry.shape)
    finer = tuple(int(4 * np.ceil(m * factor / 4)) for m in mesh)
    q = torch.as_tensor(observable.q, dtype=observable.dtype)
    if len(q) > max_points:
        q = q[np.linspace(0, len(q) - 1, max_points).astype(int)]
    multi = observable.method == "exact"
    phi = observable.model.vector(phi, dtype=observable.dtype).detach().cpu()
    with torch.no_grad():
        vals = [infinite_intensity(plan, phi, q, observable.temperature, quantum=observable.quantum,
                                   form_factor=observable.form_factor, multi_phonon=multi).numpy()
                for plan in (observable.plan, plan_of(observable.model, finer))]
    ok = np.isfinite(vals[0]) & np.isfinite(vals[1]) & (np.abs(vals[1]) > 0)
    if not np.any(ok):
        return {"mesh": list(mesh), "finer_mesh": list(finer), "median_rel_change": float("nan"),
                "max_rel_change": float("nan"), "n_points": 0}
    rel = np.abs(vals[0][ok] - vals[1][ok]) / np.abs(vals[1][ok])
    return {"mesh": list(mesh), "finer_mesh": list(finer), "median_rel_change": float(np.median(rel)),
            "max_rel_change": float(rel.max()), "n_points": int(ok.sum())}


#: ``geometry="auto"`` refines an infinite crystal's k-mesh (×4/3, at most MESH_REFINEMENTS times)
#: until the model changes by at most this much (median relative change over up to MESH_CHECK_POINTS
#: of the points, to a 1.5× finer mesh, at the starting constants) before fitting.
MESH_TOLERANCE = 1e-4
MESH_REFINEMENTS = 2
MESH_CHECK_POINTS = 300


def converge_mesh(observable, phi0, tolerance: float = MESH_TOLERANCE):
    """(observable, note): ``observable`` (a TDSIntensity on an infinite crystal) with its k-mesh
    refined (×4/3, at most :data:`MESH_REFINEMENTS` times) until the model changes by at most
    ``tolerance`` at ``phi0``, and the meshes tried with their changes (for the record)."""
    steps = []
    for i in range(MESH_REFINEMENTS + 1):
        conv = mesh_convergence(observable, phi0, max_points=MESH_CHECK_POINTS)
        steps.append(f"{conv['mesh'][0]}³ vs {conv['finer_mesh'][0]}³: {conv['median_rel_change']:.1e}")
        if not conv["median_rel_change"] > tolerance or i == MESH_REFINEMENTS:
            break
        finer = tuple(int(4 * np.ceil(m * 4 / 3 / 4)) for m in observable.geometry.shape)
        observable = dataclasses.replace(observable, geometry=type(observable.geometry)(finer))
    note = (f"k-mesh {tuple(observable.geometry.shape)} chosen for a median change ≤ {tolerance:g} at the starting "
            f"constants ({', '.join(steps)})")
    return observable, note
