"""Powder averages: a single-crystal quantity averaged over the orientations of |Q|.

    S(|Q|, E) = (1/4π) ∮ S(|Q| n̂, E) dn̂ ≈ Σ_d w_d S(|Q| n̂_d, E)

on a Lebedev rule (scipy.integrate.lebedev_rule; exact for spherical harmonics up to its order),
reduced by the crystal's Laue group: S(g Q) = S(Q) for every operation g, so directions equivalent
under the group share one evaluation and their weights add (48 → about 1/48 of the m-3m
directions). The accuracy is controlled by the order and reported by :func:`powder_average`'s
``check``: the same average on a finer rule, and the largest difference relative to the largest
value. A powder spectrum at fine energy resolution is sharp on the sphere (the band where the
dispersion surface meets E), which a Lebedev rule resolves poorly (Al, 1.5 meV FWHM: 5–40 % off
at order 131, measured); the default is therefore a Gauss–Legendre × azimuth product rule whose
arc spacing is fixed on every sphere (0.07 Å⁻¹: 4e-4 of the peak at |Q| = 3.7 Å⁻¹, 1.6e-2 at
5.8 Å⁻¹ with 160 polar nodes, measured). It costs thousands of evaluations per |Q|; binning the
modes of a k-mesh over all Q = k + G (one eigen-decomposition per k) is the fast route for whole
spectra, not built yet. The same machinery averages the coherent neutron S(Q, E)
(:func:`powder_sqe`) and the X-ray TDS intensity of any single-crystal observable
(:func:`powder_tds`: the energy-integrated I(|Q|) that total-scattering beamlines measure).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import lebedev_rule

from xtds.laue import LaueGroup

__all__ = ["sphere_rule", "powder_average", "powder_sqe", "powder_sqe_mesh", "powder_tds", "PowderSpectrum",
           "LEBEDEV_ORDERS", "DEFAULT_ORDER"]

#: Orders of the Lebedev rules scipy provides (degree of the spherical harmonics integrated exactly).
LEBEDEV_ORDERS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35, 41, 47, 53, 59, 65, 71, 77, 83, 89,
                  95, 101, 107, 113, 119, 125, 131)

#: Default order of :func:`powder_average`: polar nodes of the product rule (2·order² directions
#: before the Laue reduction).
DEFAULT_ORDER = 160


def _product_rule(n: int):
    """Gauss–Legendre in cos θ (n nodes) × 2n uniform azimuths offset by half a step: (2n², 3)
    directions and weights summing to 1; for even n invariant under the 4/mmm operations about z
    (so that a cubic Laue group reduces it 16×)."""
    mu, wmu = np.polynomial.legendre.leggauss(n)
    phi = (np.arange(2 * n) + 0.5) * np.pi / n
    st = np.sqrt(1 - mu**2)
    dirs = np.stack([st[:, None] * np.cos(phi)[None], st[:, None] * np.sin(phi)[None],
                     np.broadcast_to(mu[:, None], (n, 2 * n))], -1).reshape(-1, 3)
    return dirs, (wmu[:, None] / (4 * n) * np.ones(2 * n)[None]).ravel()


def sphere_rule(order: int = DEFAULT_ORDER, crystal=None, laue: str | None = None, kind: str = "product"):
    """Directions n̂ (N, 3) and weights (N,) summing to 1 of a rule on the unit sphere: ``kind``
    ``"product"`` (default: Gauss–Legendre in cos θ with ``order`` nodes × 2·order azimuths, for
    integrands as sharp as a powder spectrum at fine energy resolution) or ``"lebedev"`` (scipy's
    Lebedev rule of degree ``order``, for smooth integrands). With ``crystal`` (or a Laue class
    ``laue`` and a crystal), reduced by its Laue group: one direction per set of equivalent ones,
    carrying their summed weight."""
    if kind == "lebedev":
        if order not in LEBEDEV_ORDERS:
            raise ValueError(f"no Lebedev rule of order {order}; choose one of {LEBEDEV_ORDERS}")
        x, w = lebedev_rule(order)
        dirs, w = np.asarray(x).T, np.asarray(w) / np.sum(w)
    elif kind == "product":
        if int(order) < 2:
            raise ValueError(f"the product rule needs at least 2 polar nodes, got {order}")
        dirs, w = _product_rule(int(order))
    else:
        raise ValueError(f"kind must be 'product' or 'lebedev', got {kind!r}")
    if crystal is None:
        return dirs, w
    ops = LaueGroup.of(crystal, laue=laue).cartesian(crystal)  # (G, 3, 3)
    images = np.einsum("gij,nj->ngi", ops, dirs)  # (N, G, 3)
    # canonical image: the lexicographically largest, rounded
    r = np.round(images, 9)
    order_ = np.lexsort((r[..., 2], r[..., 1], r[..., 0]), axis=-1)[:, -1]
    key = r[np.arange(len(dirs)), order_]
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    wsum = np.bincount(inv.ravel(), weights=w, minlength=len(uniq))
    return uniq / np.linalg.norm(uniq, axis=1, keepdims=True), wsum


def _next_order(order: int, kind: str) -> int:
    if kind == "product":
        return 2 * int(round(order * 0.75))
    i = LEBEDEV_ORDERS.index(order)
    return LEBEDEV_ORDERS[i + 1] if i + 1 < len(LEBEDEV_ORDERS) else order


#: Default arc spacing (Å⁻¹) between neighbouring directions of the product rule on a |Q| sphere
#: (``order="auto"``: π|Q|/order ≤ this). Al at 1.5 meV FWHM: 4e-4 of the peak at |Q| = 3.7 Å⁻¹.
ARC_SPACING = 0.07


def powder_average(fn: Callable[[np.ndarray], torch.Tensor], qnorm, order="auto", crystal=None,
                   laue: str | None = None, check: bool = False, kind: str = "product",
                   arc: float = ARC_SPACING):
    """Σ_d w_d fn(|Q| n̂_d) for each |Q| of ``qnorm`` (Nq,) Å⁻¹: ``fn`` takes Cartesian Q (P, 3) Å⁻¹
    and returns a tensor (P, …); the result is (Nq, …). ``order``: of :func:`sphere_rule`, or
    ``"auto"`` (product rule with π|Q|/order ≤ ``arc`` Å⁻¹ on each sphere: the finer angular
    structure of larger spheres is resolved alike). With ``crystal`` the directions are reduced by
    its Laue group (``fn`` must then have the crystal's Laue symmetry). With ``check``, returns
    (average, report): per |Q| the order, the number of directions evaluated, and
    ``max_rel_change``, the largest |difference| to the next order (1.5× the polar nodes, or the
    next Lebedev rule) relative to the largest |value| (the quadrature's accuracy)."""
    qn = np.asarray(qnorm, dtype=float).reshape(-1)
    if np.any(qn < 0) or not np.all(np.isfinite(qn)):
        raise ValueError("|Q| must be finite and non-negative (Å⁻¹)")
    if order == "auto":
        if kind != "product":
            raise ValueError("order='auto' is for the product rule")
        orders = [max(8, 2 * int(np.ceil(np.pi * x / arc / 2))) for x in qn]  # even: 4/mmm-invariant
    else:
        orders = [order] * len(qn)

    def average(x, o):
        dirs, w = sphere_rule(o, crystal, laue, kind)
        vals = fn(x * dirs)
        wt = torch.as_tensor(w, dtype=vals.dtype, device=vals.device)
        return torch.einsum("d...,d->...", vals, wt), len(dirs)

    out, reports = [], []
    for x, o in zip(qn, orders, strict=True):
        val, n_dirs = average(x, o)
        out.append(val)
        if check:
            nxt = _next_order(o, kind)
            with torch.no_grad():
                ref, _ = average(x, nxt)
            scale = float(ref.abs().max()) or 1.0
            reports.append({"Q": float(x), "order": o, "next_order": nxt, "n_directions": n_dirs,
                            "max_rel_change": float((val.detach() - ref).abs().max()) / scale})
    out = torch.stack(out)
    if not check:
        return out
    return out, {"per_Q": reports, "max_rel_change": max(r["max_rel_change"] for r in reports),
                 "n_directions": sum(r["n_directions"] for r in reports)}


def powder_sqe(model, phi, qnorm, energies, temperature: float, resolution=1.0, order="auto",
               dw=None, scattering_lengths=None, quantum: bool = True, check: bool = False):
    """Coherent one-phonon powder S(|Q|, E) (mbarn/meV per atom), shape (Nq, E): the orientation
    average of :func:`xtds.model.neutron.coherent_sqe` over each |Q| sphere, Laue-reduced;
    differentiable in ``phi``. The Debye–Waller matrices are computed once (``dw`` as there)."""
    from xtds.model.neutron import coherent_sqe, resolve_dw

    dw = resolve_dw(model, phi, temperature, dw, quantum)
    return powder_average(lambda q: coherent_sqe(model, phi, q, energies, temperature, resolution=resolution, dw=dw,
                                                 scattering_lengths=scattering_lengths, quantum=quantum),
                          qnorm, order=order, crystal=model.crystal, check=check)


def powder_tds(observable_factory: Callable[[np.ndarray], Callable], phi, qnorm, order="auto",
               crystal=None, check: bool = False):
    """Powder X-ray TDS I(|Q|) (energy-integrated; the units of the observable): the orientation
    average of a single-crystal observable. ``observable_factory(q)`` builds it at Cartesian q (P, 3)
    (e.g. ``lambda q: xtds.TDSIntensity(model, q, T, geometry=InfiniteCrystal())``), called once
    per rule; it is then evaluated at ``phi`` (differentiable)."""
    return powder_average(lambda q: observable_factory(q)(phi), qnorm, order=order, crystal=crystal, check=check)


class _BinnedSpectral(torch.autograd.Function):
    """out_be = Σ_{p: bin(p) = b} Σ_ν f_e(λ_{k(p)ν}) |c_pν|², c_p = U_{k(p)}^H v_p, D_k = U diag(λ) U^H:
    the modes of each k-point projected on the vectors v_p of all its Q = k + G, summed into |Q|
    bins. Backward: Daleckii–Krein divided differences of h_pb(λ) = Σ_e g_be f_e(λ) (finite at
    degeneracies), to D and to v. ``fn(λ)`` returns f (K, m, E), elementwise in λ (its derivative is
    taken by forward-mode differentiation in the backward only)."""

    @staticmethod
    def forward(ctx, D, V, kidx, bidx, n_bins, fn):
        lam, U = torch.linalg.eigh(D)
        c = torch.einsum("pij,pi->pj", U[kidx].conj(), V)  # (P, m)
        f = fn(lam)
        K, m = lam.shape
        A = torch.zeros((K * n_bins, m), dtype=lam.dtype, device=lam.device)
        A.index_add_(0, kidx * n_bins + bidx, c.abs() ** 2)
        out = torch.einsum("kbm,kme->be", A.reshape(K, n_bins, m), f)
        ctx.save_for_backward(lam, U, c, kidx, bidx)
        ctx.n_bins, ctx.fn = n_bins, fn
        return out

    @staticmethod
    def backward(ctx, grad):
        lam, U, c, kidx, bidx = ctx.saved_tensors
        f, fp = torch.func.jvp(ctx.fn, (lam,), (torch.ones_like(lam),))
        h = torch.einsum("kme,be->kbm", f, grad)[kidx, bidx]  # (P, m)
        hp = torch.einsum("kme,be->kbm", fp, grad)[kidx, bidx]
        lk = lam[kidx]
        dl = lk[:, :, None] - lk[:, None, :]
        close = dl.abs() <= 1e-9 * lk.abs().amax(-1, keepdim=True)[:, :, None].clamp(min=1e-30)
        gamma = torch.where(close, 0.5 * (hp[:, :, None] + hp[:, None, :]),
                            (h[:, :, None] - h[:, None, :]) / torch.where(close, torch.ones_like(dl), dl))
        inner = torch.zeros((len(lam),) + gamma.shape[1:], dtype=c.dtype, device=c.device)
        inner.index_add_(0, kidx, gamma.to(c.dtype) * (c[:, :, None] * c.conj()[:, None, :]))
        gD = U @ inner @ U.mH
        gV = 2 * torch.einsum("pij,pj->pi", U[kidx], h.to(c.dtype) * c)
        return gD, gV, None, None, None, None


def powder_sqe_mesh(model, phi, q_edges, energies, temperature: float, resolution=1.0, mesh=16, dw=None,
                    scattering_lengths=None, quantum: bool = True, k_chunk: int = 128) -> torch.Tensor:
    """Coherent one-phonon powder S(|Q|, E) (mbarn/meV per atom) averaged over |Q| bins, shape
    (B, E) for bin edges ``q_edges`` (B + 1,) Å⁻¹: the modes of a shifted k-mesh (``mesh``³ over the
    primitive zone, one eigen-decomposition per k) projected on every Q = k + G with |Q| in a bin
    (the eigenvectors at k + G are those at k with the phases e^{−iG·τ_s}), each Q standing for
    the volume V_BZ/N_k of Q-space: the exact shell average of each bin as the mesh grows (compare
    two meshes for its accuracy). Resolution, ``dw`` and the rest as
    :func:`xtds.model.neutron.coherent_sqe`; differentiable in ``phi``."""
    from xtds import dynamics
    from xtds.errors import check_temperature
    from xtds.model.neutron import MBARN_PER_FM2, mode_weight, resolve_dw
    from xtds.model.neutron import scattering_lengths as lengths_of

    T = check_temperature(temperature)
    edges = np.asarray(q_edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0) or edges[0] < 0:
        raise ValueError("q_edges must be increasing, non-negative |Q| bin edges (Å⁻¹), at least two")
    P = model.primitive
    n = P.n_atoms
    E = torch.as_tensor(np.array(energies, dtype=float), dtype=phi.dtype, device=phi.device)
    C0 = resolve_dw(model, phi, T, dw, quantum)
    b = torch.as_tensor(lengths_of(P.species) if scattering_lengths is None else np.asarray(scattering_lengths, float),
                        dtype=phi.dtype, device=phi.device)
    inv_sqrt_m = dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device).reshape(n, 3)[:, 0]
    M = np.broadcast_to(np.asarray(mesh, dtype=int), (3,))
    Bm = np.asarray(P.reciprocal)
    frac = np.stack(np.meshgrid(*[(np.arange(m) + 0.5) / m - 0.5 for m in M], indexing="ij"), -1).reshape(-1, 3)
    k_all = frac @ Bm
    kmax = float(np.linalg.norm(k_all, axis=1).max())
    reach = np.ceil((edges[-1] + kmax) * np.linalg.norm(np.asarray(P.lattice), axis=1) / (2 * np.pi)).astype(int)
    G = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3) @ Bm
    G = G[np.linalg.norm(G, axis=1) <= edges[-1] + kmax]
    tau = np.asarray(P.cartesian_positions)
    f_of = mode_weight(E, T, resolution)

    n_bins = len(edges) - 1
    out = torch.zeros((n_bins, len(E)), dtype=phi.dtype, device=phi.device)
    for lo in range(0, len(k_all), k_chunk):
        kc = k_all[lo : lo + k_chunk]
        Q = kc[:, None, :] + G[None]  # (Kc, NG, 3)
        qn = np.linalg.norm(Q, axis=2)
        ki, gi = np.nonzero((qn >= edges[0]) & (qn < edges[-1]))
        if len(ki) == 0:
            continue
        bins = np.searchsorted(edges, qn[ki, gi], side="right") - 1
        Qp = torch.as_tensor(Q[ki, gi], dtype=phi.dtype, device=phi.device)
        W = 0.5 * torch.einsum("pa,sab,pb->ps", Qp, C0, Qp)
        phase = torch.as_tensor(np.exp(1j * (G[gi] @ tau.T)), device=phi.device)  # e^{iG·τ_s}
        amp = (b * torch.exp(-W) * inv_sqrt_m).to(phase.dtype) * phase  # (P, n)
        V = (amp[:, :, None] * Qp[:, None, :].to(phase.dtype)).reshape(len(ki), 3 * n)
        D = dynamics.dynamical_matrix(model, phi, torch.as_tensor(kc, dtype=phi.dtype, device=phi.device))
        out = out + _BinnedSpectral.apply(D, V.to(D.dtype), torch.as_tensor(ki, device=phi.device),
                                          torch.as_tensor(bins, device=phi.device), n_bins, f_of)
    v_bz = (2 * np.pi) ** 3 / abs(np.linalg.det(np.asarray(P.lattice)))
    shell = 4 * np.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
    norm = torch.as_tensor(v_bz / len(k_all) / shell, dtype=phi.dtype, device=phi.device)
    return out * norm[:, None] * (MBARN_PER_FM2 / n)


class PowderSpectrum:
    """A powder neutron spectrum as an observable for the fit: the coherent one-phonon powder
    S(|Q|, E) of :func:`powder_sqe_mesh` (mbarn/meV per atom) or χ''(|Q|, E) (``kind="chi"``) on
    |Q| bins × energies, at the pixels of ``mask`` (E, Q) bool, flattened E-major: shape (P,).

    ``normalize=True`` applies the normalization the ARCS spectra of
    :func:`xtds.datasets.al_arcs` carry, (x − mean)/(max − min) over the valid pixels, which
    removes the overall scale and a constant background (the max and min are those of the model,
    differentiable only almost everywhere: a fit with ``normalize=False`` and a free scale and
    constant, ``Problem(..., background="constant")``, is smooth and fits the same data).
    ``multiphonon``: the orders n ≥ 2 added in the incoherent approximation
    (:func:`xtds.model.multiphonon.multiphonon_sqe`, self spectral function on
    ``multiphonon_mesh``, smeared by 1 meV), or () to leave them out. ``q_centers`` (Q,) Å⁻¹ are
    bin centres whose edges are
    halfway between them; ``energies`` (E,) meV; ``resolution`` as
    :func:`xtds.model.neutron.coherent_sqe`; ``mesh`` the k-mesh of :func:`powder_sqe_mesh`."""

    stochastic = False

    def __init__(self, model, q_centers, energies, temperature: float, mask=None, resolution=2.0, mesh=16,
                 kind: str = "chi", normalize: bool = True, multiphonon=(2, 3, 4, 5, 6), multiphonon_mesh=8,
                 dtype=torch.float64, device=None):
        from xtds.errors import check_temperature

        self.model, self.temperature = model, check_temperature(temperature)
        self.q_centers = np.array(q_centers, dtype=float)
        self.energies = np.array(energies, dtype=float)
        if kind not in ("chi", "sqe"):
            raise ValueError(f"kind must be 'chi' or 'sqe', got {kind!r}")
        self.kind, self.normalize, self.resolution, self.mesh = kind, bool(normalize), resolution, mesh
        self.multiphonon = tuple(int(n) for n in multiphonon) if multiphonon else ()
        if any(n < 2 for n in self.multiphonon):
            raise ValueError(f"multiphonon orders start at 2 (the one-phonon term is always there), got {multiphonon}")
        self.multiphonon_mesh = multiphonon_mesh
        self.mask = np.ones((len(self.energies), len(self.q_centers)), bool) if mask is None else np.asarray(mask, bool)
        if self.mask.shape != (len(self.energies), len(self.q_centers)):
            raise ValueError(f"mask must have shape (E, Q) = {(len(self.energies), len(self.q_centers))}, "
                             f"got {self.mask.shape}")
        if not self.mask.any():
            raise ValueError("the mask leaves no pixel")
        mid = 0.5 * (self.q_centers[1:] + self.q_centers[:-1])
        step0, step1 = self.q_centers[1] - self.q_centers[0], self.q_centers[-1] - self.q_centers[-2]
        self.q_edges = np.concatenate([[max(0.0, self.q_centers[0] - step0 / 2)], mid,
                                       [self.q_centers[-1] + step1 / 2]])
        used = self.mask.any(axis=0)
        self._cols = np.flatnonzero(used)  # only the |Q| bins with a valid pixel are computed
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return int(self.mask.sum())

    def spectrum(self, phi: torch.Tensor) -> torch.Tensor:
        """The full (E, Q) spectrum (NaN in |Q| bins without a valid pixel), before normalization."""
        from xtds.model.multiphonon import multiphonon_sqe
        from xtds.model.neutron import chi_from_sqe, debye_waller

        lo, hi = self._cols.min(), self._cols.max()
        C0 = debye_waller(self.model, phi, self.temperature)
        S = powder_sqe_mesh(self.model, phi, self.q_edges[lo : hi + 2], self.energies, self.temperature,
                            resolution=self.resolution, mesh=self.mesh, dw=C0)  # (B, E)
        if self.multiphonon:
            S = S + multiphonon_sqe(self.model, phi, self.q_centers[lo : hi + 1], self.energies, self.temperature,
                                    orders=self.multiphonon, resolution=self.resolution, mesh=self.multiphonon_mesh,
                                    step=0.25, smearing=1.0, dw=C0)
        if self.kind == "chi":
            S = chi_from_sqe(S, self.energies, self.temperature)
        full = torch.full((len(self.q_centers), len(self.energies)), float("nan"), dtype=S.dtype, device=S.device)
        full[lo : hi + 1] = S
        return full.T

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        x = self.spectrum(phi)[torch.as_tensor(self.mask, device=phi.device)]
        if self.normalize:
            x = (x - x.mean()) / (x.max() - x.min())
        return x

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        P = self.model.primitive
        M = np.broadcast_to(np.asarray(self.mesh, dtype=int), (3,))
        frac = np.stack(np.meshgrid(*[(np.arange(m) + 0.5) / m - 0.5 for m in M], indexing="ij"), -1).reshape(-1, 3)
        return frac @ np.asarray(P.reciprocal)
