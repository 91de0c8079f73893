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
  within a smooth (cos²) window of radius R, half the in-radius of the mesh's supercell, with C(r)
  from the mesh by FFT plus the same uniform long-wavelength correction as C(0). Their terms fall
  only as 1/r² (C(r) → the elastic Kelvin solution A(r̂)/r), so the truncated sum alone is poor
  near Bragg peaks; the pair sum therefore subtracts the continuum's x²/2 + x³/6 pair by pair, and
  :mod:`xtds.model.continuum` adds the continuum's sum over the whole lattice in closed form
  (Poisson summation over the :data:`TAIL_G` reciprocal-lattice vectors nearest q). What remains
  truncated falls as 1/r⁴. :func:`mesh_convergence` measures the rest on the points of a fit.

Everything is a torch expression of φ, so the model is differentiable. The pair set and window are
geometry (:class:`InfinitePlan`), built once per model and mesh.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xtds.formfactor import form_factor_table
from xtds.ifc import IFCModel
from xtds.model.continuum import ORDERS, Continuum, smooth_step
from xtds.model.covariance import covariance_k
from xtds.model.exact import _c6, _qq
from xtds.model.geometry import shape_of

__all__ = ["InfinitePlan", "infinite_intensity", "default_mesh", "mesh_convergence", "WINDOW", "MESH_SPACING"]

#: Radius of the window of the multi-phonon pair sum, as a fraction of the in-radius of the k-mesh's
#: supercell (the periodic images of C(r) are then far from every pair summed).
WINDOW = 0.5

#: Largest window × cos(q·d) matrix (bytes) :func:`infinite_intensity` keeps between calls.
CACHE_BYTES = 512 * 2**20

#: Reciprocal-lattice vectors nearest each q whose continuum tails are summed (Poisson summation).
TAIL_G = 4

#: Default k-mesh spacing |b_i| / M_i (Å⁻¹) of :func:`default_mesh`.
MESH_SPACING = 0.1


def default_mesh(crystal, spacing: float = MESH_SPACING) -> tuple[int, int, int]:
    """The k-mesh of the primitive cell with steps |b_i|/M_i ≤ ``spacing`` (Å⁻¹), each M_i a multiple
    of 4 (the Richardson sub-meshes M/2 and M/4) and at least 8."""
    b = np.linalg.norm(np.asarray(crystal.primitive().reciprocal), axis=1)
    return tuple(int(max(8, 4 * np.ceil(x / spacing / 4))) for x in b)


def _window(t: np.ndarray) -> np.ndarray:
    """1 for t ≤ ½, cos² down to 0 at t = 1."""
    return np.where(t <= 0.5, 1.0, np.where(t < 1.0, np.cos(np.pi * (t - 0.5)) ** 2, 0.0))


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
        groups, d, w, idx = [], [], [], []
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
                w.append(2.0 * _window(dist[keep] / self.radius))
                idx.append((s * n + t) * Mp + flat)
        bounds = np.cumsum([0] + [n_ for _, _, n_ in groups])
        self.groups = [(s, t, slice(int(lo), int(hi)))
                       for (s, t, _), lo, hi in zip(groups, bounds[:-1], bounds[1:], strict=True) if hi > lo]
        self.d, self.weight, self.index = np.concatenate(d), np.concatenate(w), np.concatenate(idx)
        self.k = P.k_grid(self.mesh)  # (M1, M2, M3, 3)
        # the elastic-continuum tail (xtds.model.continuum), switched on from a third of the window
        self.continuum = Continuum(model, P, r0=self.radius / 3)
        self.chi = smooth_step(np.linalg.norm(self.d, axis=1) / self.continuum.r0 - 1.0)
        self.Y_pairs = self.continuum.harmonics_over_r(self.d)

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
    c1, c2, c4 = means
    r1, r1h = 2 * c1 - c2, 2 * c2 - c4
    c_inf = (8 * r1 - r1h) / 7
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


def _g_el(x: torch.Tensor) -> torch.Tensor:
    """The continuum's Σ_{n ∈ ORDERS} xⁿ/n! (x²/2 + x³/6)."""
    if ORDERS == (2, 3):
        return x * x * (0.5 + x / 6)
    return sum(x**n / math.factorial(n) for n in ORDERS)


def infinite_intensity(plan: InfinitePlan, phi, q, temperature, quantum=True, form_factor="cromer-mann",
                       multi_phonon: bool = True, chunk: int = 2048, cache: dict | None = None) -> torch.Tensor:
    """Diffuse ⟨I(q)⟩ of an infinite crystal, shape (Q,), electrons² per primitive cell; q: (Q, 3)
    Cartesian Å⁻¹ (Bragg peaks excluded: at q ≡ G the acoustic one-phonon part is left out).
    ``multi_phonon=False``: the one-phonon term alone (with the Debye–Waller factor). ``cache``: a
    dict owned by the caller that always passes the same q, where the window × cos(q·d) matrices are
    kept between calls (up to :data:`CACHE_BYTES`)."""
    P = plan.cell
    c_inf, Cp = _covariances(plan, phi, temperature, quantum)
    C6, C06 = _c6(Cp), _c6(c_inf)
    dev = q.device
    d = torch.as_tensor(plan.d, dtype=q.dtype, device=dev)
    w = torch.as_tensor(plan.weight, dtype=q.dtype, device=dev)
    cont = plan.continuum
    if multi_phonon:
        coeffs = cont.kelvin_coefficients(phi, temperature, quantum)
        A_pairs = torch.as_tensor(plan.Y_pairs, dtype=q.dtype, device=dev) @ coeffs  # (N, 6): A(d̂)/|d|
        chi = torch.as_tensor(plan.chi, dtype=q.dtype, device=dev)
        powers = cont.power_coefficients(coeffs)
    tau = torch.as_tensor(np.array(P.cartesian_positions), dtype=q.dtype, device=dev)
    keep = cache is not None and len(q) * len(plan) * q.element_size() <= CACHE_BYTES
    out = []
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]
        qq = _qq(qc)
        W = 0.5 * qq @ C06.T  # (Q, n)
        f = form_factor_table(P.species, torch.linalg.norm(qc, dim=1), form_factor).T
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
            x, x_el = qq @ C6.T, qq @ A_pairs.T
            if torch.is_grad_enabled():
                g = (_g(x) - chi * _g_el(x_el)) * wc
            else:  # the same in place (a fit's finite-difference Jacobians): fewer (Q, N) temporaries
                g = torch.expm1(x).sub_(x)
                if ORDERS == (2, 3):
                    g.sub_(x_el.div(6).add_(0.5).mul_(x_el).mul_(x_el).mul_(chi))
                else:
                    g.sub_(chi * _g_el(x_el))
                g.mul_(wc)
            for s, t, sl in plan.groups:
                one = one + a[:, s] * a[:, t] * g[:, sl].sum(dim=1)
            key = ("tail", start)
            tab = cache.get(key) if cache is not None else None
            if tab is None:
                G, take, K = cont.table(qc.detach().cpu().numpy(), TAIL_G)
                tab = (torch.as_tensor(G, dtype=q.dtype, device=dev), torch.as_tensor(take, dtype=q.dtype, device=dev),
                       {n: torch.as_tensor(v_, device=dev) for n, v_ in K.items()})
                if cache is not None:
                    cache[key] = tab
            G, take, K = tab
            mono = cont.monomial_values(qq)
            ph = G @ tau.T  # (Q, n_g, n)
            F2 = (a[:, None] * torch.cos(ph)).sum(2) ** 2 + (a[:, None] * torch.sin(ph)).sum(2) ** 2  # (Q, n_g)
            # [Xⁿ]_ℓm of each point first (Q, n_lm), then against each G's fixed factors
            tail = sum((K[n].to(q.dtype) * (mono[n] @ powers[n])[:, None, :]).sum(dim=2) for n in ORDERS)  # (Q, n_g)
            one = one + (take * F2 * tail).sum(dim=1) / cont.volume
        out.append(one)
    return torch.cat(out)


def mesh_convergence(observable, phi, max_points: int = 2000, factor: float = 1.5) -> dict:
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
        vals = [infinite_intensity(InfinitePlan(observable.model, m), phi, q, observable.temperature,
                                   quantum=observable.quantum, form_factor=observable.form_factor,
                                   multi_phonon=multi).numpy() for m in (mesh, finer)]
    ok = np.isfinite(vals[0]) & np.isfinite(vals[1]) & (np.abs(vals[1]) > 0)
    if not np.any(ok):
        return {"mesh": list(mesh), "finer_mesh": list(finer), "median_rel_change": float("nan"),
                "max_rel_change": float("nan"), "n_points": 0}
    rel = np.abs(vals[0][ok] - vals[1][ok]) / np.abs(vals[1][ok])
    return {"mesh": list(mesh), "finer_mesh": list(finer), "median_rel_change": float(np.median(rel)),
            "max_rel_change": float(rel.max()), "n_points": int(ok.sum())}
