"""The long-range part of the multi-phonon sum of an infinite crystal, from elasticity.

Far from an atom the displacement covariance is that of an elastic continuum,
C(d) → A(d̂)/|d| (the anisotropic Kelvin solution): with Cₗ(k̂) = lim k² C(k) (the long-wavelength
limit of the covariance, classical at any temperature),

    A(d̂) = V_c/(8π²) ∮_{k̂ ⊥ d̂} Cₗ(k̂) dψ,

so x = qᵀC(d)q → X(d̂)/|d| with X = qᵀA q; the next term B(d̂)/|d|³ (from the k⁰ term of C(k))
gives z = Z/|d|³, Z = qᵀBq. The multi-phonon terms x²/2 + x³/6 + … then fall only as 1/|d|², 1/|d|³,
…: their lattice sum converges only through the oscillation of cos(q·d), which a truncated sum
resolves poorly near Bragg peaks. This module adds the sum over all lattice vectors of the
continuum's G_el = X²/2|d|² + X³/6|d|³ + (X⁴/24 + X·Z)/|d|⁴ in closed form: with a smooth step χ(d)
that removes the origin,

    Σ_r χ(d) G_el(d) e^{iq·d} = (1/V_c) Σ_G |F_G|² T(q − G),
    T(κ) = Σ_p 4π Σ_ℓm (−1)^{ℓ/2} Y_ℓm(κ̂) [Θ_p]_ℓm J⁽ᵖ⁾_ℓ(|κ|),
    J⁽ᵖ⁾_ℓ(κ) = ∫₀^∞ d^{2−p} j_ℓ(κd) χ(d) dd,

(Poisson summation, then the plane-wave expansion), with Θ_p the angular factor of the 1/|d|ᵖ term
and F_G = Σ_s a_s e^{−iG·τ_s}. Spherical harmonics are real and of even degree (every function here
is even); [Θ_p]_ℓm comes from the monomials of q q, so the q-dependence is a fixed table per point
and the force-constant dependence a small matrix per call. The pair sum of :mod:`xtds.model.infinite`
subtracts χ G_el pair by pair, so only the difference between the lattice and the continuum, which
falls as 1/|d|⁵, is truncated. :meth:`Continuum.aliasing` gives the continuum's periodic images on a
k-mesh, which the pair sum removes from the mesh's C(r).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from scipy.special import sici, sph_harm_y, spherical_jn

from xtds.model.covariance import covariance_k

__all__ = ["Continuum", "smooth_step", "ORDERS"]

#: The radial powers p of the continuum terms summed in closed form (1/|d|ᵖ): X²/2 (p = 2), X³/6
#: (p = 3), X⁴/24 + X·Z (p = 4, with Z = qᵀBq of the 1/|d|³ correction B(d̂)/|d|³ of C(d)).
ORDERS = (2, 3, 4)

#: Spherical-harmonic degree of the long-wavelength covariance Cₗ(k̂) and of A(d̂).
DEGREE = 10

#: Spherical-harmonic degree kept of the angular factor of each radial power p (truncated: a higher
#: degree changes the model by < 2e-5 relative on Ni; the pair sum subtracts the same truncated terms).
POWER_DEGREE = {2: 16, 3: 10, 4: 10}

#: ε (Å⁻¹) of the long-wavelength limit ε² C(ε k̂).
EPS = 1e-3

#: The two ε (Å⁻¹) of the k⁰ term of C(k) (its 1/|d|³ tail B), from ε² C(ε k̂) = Cₗ + ε² B̃ + O(ε⁴).
#: Not smaller: the difference divides by ε², which amplifies the rounding of the quantum covariance's
#: gradient (at 0.01, 0.02 a gradcheck of Si fails); the O(ε²) error changes Ni by < 4e-6 relative.
EPS_B = (0.05, 0.1)


def smooth_step(t: np.ndarray) -> np.ndarray:
    """0 for t ≤ 0, 1 for t ≥ 1, C^∞ in between."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    a = np.where(t > 0, np.exp(-1.0 / np.where(t > 0, t, 1.0)), 0.0)
    b = np.where(t < 1, np.exp(-1.0 / np.where(t < 1, 1 - t, 1.0)), 0.0)
    return a / (a + b)


def _real_sph(lmax: int, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Real spherical harmonics of even degree ≤ lmax at polar angles θ, azimuths φ: (P, n_lm),
    ordered by degree ℓ, then m = −ℓ … ℓ."""
    cols = []
    for ell in range(0, lmax + 1, 2):
        ys = [sph_harm_y(ell, m, theta, phi) for m in range(ell + 1)]
        neg = [np.sqrt(2) * (-1) ** m * ys[m].imag for m in range(ell, 0, -1)]
        pos = [np.sqrt(2) * (-1) ** m * ys[m].real for m in range(1, ell + 1)]
        cols.extend(neg + [ys[0].real] + pos)
    return np.stack(cols, axis=1)


def _degrees(lmax: int) -> np.ndarray:
    return np.concatenate([np.full(2 * ell + 1, ell) for ell in range(0, lmax + 1, 2)])


def _angles(v: np.ndarray):
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.arccos(np.clip(v[..., 2], -1, 1)), np.arctan2(v[..., 1], v[..., 0])


def _monomials(n: int):
    """Index tuples α₁ ≤ … ≤ αₙ over the 6 symmetric pairs and their multinomial counts."""
    out = []
    for combo in itertools.combinations_with_replacement(range(6), n):
        counts = np.bincount(combo, minlength=6)
        mult = math.factorial(n) / np.prod([math.factorial(c) for c in counts])
        out.append((combo, mult))
    return out


def _radial_smooth(n: int, ell: int, kappa: np.ndarray, r0: float) -> np.ndarray:
    """The part of J⁽ⁿ⁾_ℓ that is smooth in κ (see :func:`_radial`)."""
    x, w = np.polynomial.legendre.leggauss(96)
    d = r0 * (x + 1.0)  # [0, 2 r0]
    w = w * r0
    inner = 1.0 - smooth_step(d / r0 - 1.0)  # 1 − χ on [0, 2 r0]
    k = np.asarray(kappa, dtype=float)[:, None]
    if n == 2 or ell >= 2:
        return -(d[None] ** (2 - n) * spherical_jn(ell, k * d[None]) * inner[None] * w[None]).sum(1)
    # n ≥ 3, ℓ = 0: ∫_{r0}^{2r0} j₀(κd) χ d^{2−n} dd
    return (spherical_jn(0, k * d[None]) * d[None] ** (2 - n) * (1.0 - inner)[None] * w[None]).sum(1)


def _radial(n: int, ell: int, kappa: np.ndarray, r0: float, table=None) -> np.ndarray:
    """J⁽ⁿ⁾_ℓ(κ) = ∫₀^∞ d^{2−n} j_ℓ(κd) χ(d) dd, χ(d) = smooth_step(d/r0 − 1), n = 2, 3; κ > 0 (Å⁻¹).

    The full integral ∫₀^∞ (known in closed form, a power of κ) minus the part on [0, 2 r0] where
    χ < 1, a smooth function of κ tabulated on a fine grid and interpolated; for n = 3, ℓ = 0 (where
    the full integral diverges) the part on [r0, 2 r0] plus the rest through the cosine integral."""
    kappa = np.asarray(kappa, dtype=float)
    if table is None or kappa.max() > table[0][-1]:
        grid = np.linspace(0.0, kappa.max() * 1.001 + 1e-9, 4097)
        table = (grid, _radial_smooth(n, ell, grid, r0))
    smooth = np.interp(kappa, *table)
    if n == 2 or ell >= 2:
        mu = 3 - n  # ∫₀^∞ t^{μ−1} j_ℓ(t) dt (−ℓ < μ < 2)
        full = 2.0 ** (mu - 2) * np.sqrt(np.pi) * math.gamma((ell + mu) / 2) / math.gamma((ell - mu + 3) / 2)
        return full / kappa ** (3 - n) + smooth
    a = 2 * r0
    si, ci = sici(kappa * a)
    if n == 3:  # ∫_a^∞ sin(κd)/(κd²) dd
        return smooth + (np.sin(kappa * a) / a - kappa * ci) / kappa
    if n == 4:  # ∫_a^∞ sin(κd)/(κd³) dd
        rest = np.sin(kappa * a) / (2 * a * a) + kappa / 2 * (np.cos(kappa * a) / a - kappa * (np.pi / 2 - si))
        return smooth + rest / kappa
    raise ValueError(f"no closed form for the order {n}")


@functools.lru_cache(maxsize=16)
def _radial_tables(r0: float, kmax: float) -> dict:
    """The smooth parts of every radial integral on a κ grid [0, kmax] (shared by plans alike)."""
    grid = np.linspace(0.0, kmax, 8193)
    return {(n, ell): (grid, _radial_smooth(n, ell, grid, r0))
            for n in ORDERS for ell in range(0, POWER_DEGREE[n] + 1, 2)}


class Continuum:
    """The elastic-continuum tail of one primitive cell (see the module docstring).

    Built once per plan: the direction grid (Gauss–Legendre × uniform azimuth), its spherical
    harmonics, the smooth step's radius ``r0`` (Å).
    """

    def __init__(self, model, cell, r0: float, degree: int = DEGREE):
        self.model, self.cell, self.r0, self.degree = model, cell, float(r0), int(degree)
        self.volume = abs(float(np.linalg.det(np.asarray(cell.lattice))))
        if self.degree != DEGREE:
            raise ValueError(f"degree must be {DEGREE} (POWER_DEGREE is set for it)")
        exact = max(n * self.degree + POWER_DEGREE[n] for n in ORDERS)  # the projections integrate these
        exact = max(exact, self.degree + POWER_DEGREE[2] + 1)
        top = max(POWER_DEGREE.values())
        n_theta = exact // 2 + 1
        mu, wmu = np.polynomial.legendre.leggauss(n_theta)
        n_phi = exact + 1
        phi = np.arange(n_phi) * 2 * np.pi / n_phi
        theta = np.arccos(mu)
        T, Ph = np.meshgrid(theta, phi, indexing="ij")
        self.weights = (wmu[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).ravel()
        self.dirs = np.stack([np.sin(T) * np.cos(Ph), np.sin(T) * np.sin(Ph), np.cos(T)], -1).reshape(-1, 3)
        self.Y_top = _real_sph(max(top, self.degree), T.ravel(), Ph.ravel())  # (G, n_lm(top))
        nA = len(_degrees(self.degree))
        ell = _degrees(self.degree)
        # C(d) = V_c/(2π)³ ∫ e^{−ik·d} Cₗ(k̂)/k² d³k: degree ℓ picks up 4π(−1)^{ℓ/2} ∫₀^∞ j_ℓ = this / |d|
        gam = np.array([math.gamma((x + 1) / 2) / math.gamma(x / 2 + 1) for x in ell])
        self.kelvin = self.volume / (2 * np.pi**2) * (-1.0) ** (ell // 2) * np.sqrt(np.pi) * gam / 2
        # the k⁰ term B̃(k̂) of C(k): degree ℓ ≥ 2 gives 4π(−1)^{ℓ/2} ∫₀^∞ t² j_ℓ(t) dt / |d|³ (the
        # analytic continuation of the Mellin transform; ℓ = 0 is a δ at the origin)
        gam3 = np.array([math.gamma((x + 3) / 2) / math.gamma(x / 2) if x > 0 else 0.0 for x in ell])
        self.correction = self.volume / (2 * np.pi**2) * (-1.0) ** (ell // 2) * 2 * np.sqrt(np.pi) * gam3
        self.nA = nA
        self.monos = {n: _monomials(n) for n in (2, 3, 4)}
        # the smooth parts of the radial integrals on a κ grid covering |q − G| for the nearest G's
        kmax = 3.0 * float(np.linalg.norm(np.asarray(cell.reciprocal), axis=1).max())
        self.radial_tables = _radial_tables(round(self.r0, 12), round(kmax, 12))

    def aliasing(self, mesh, d: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The periodic images that a k-mesh adds to the continuum part of C(d), per unit Kelvin
        coefficient: (N, n_lm(degree)), so that C(d) ≈ C_M(d) + [C(0) − C_M(0)] − table @ coeffs.

        C_M(d) = (1/N)Σ_k C(k) e^{−ik·d} over the mesh is C(d) plus its images at the mesh's supercell
        vectors; their constant part is the Debye–Waller extrapolation's, the rest grows as |d|² (the
        1/k² singularity of C(k) at Γ). Per harmonic, F(k) = Y_ℓm(k̂) h(|k|)/k², with a smooth cutoff
        h inside the Brillouin zone: E(d) = (1/N)Σ_{k≠0} F(k) e^{−ik·d} (FFT) − V_c/(2π)³∫F e^{−ik·d} d³k
        (Hankel transform), and the table is [E(d) − E(0)] / (Kelvin factor of ℓ). ``d`` (N, 3) Å are
        pair vectors r + ``shift`` with r a lattice vector; ``shift`` (N, 3) Å."""
        M = np.asarray(mesh)
        B = np.asarray(self.cell.reciprocal)
        k = self.cell.k_grid(tuple(M))  # (M1, M2, M3, 3)
        offs = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ B
        cand = k[..., None, :] - offs  # the shortest image of each k
        k = np.take_along_axis(cand, np.linalg.norm(cand, axis=-1).argmin(-1)[..., None, None], axis=-2)[..., 0, :]
        G = np.linalg.norm(np.array([o for o in offs if np.linalg.norm(o) > 0]), axis=1).min()
        kc = 0.5 * G  # support of h inside the zone's in-sphere
        kn = np.linalg.norm(k, axis=-1)
        h = 1.0 - smooth_step(2 * kn / kc - 1.0)
        safe = np.where(kn[..., None] > 0, k, [0, 0, 1.0])
        th, ph = _angles(safe.reshape(-1, 3))
        F = _real_sph(self.degree, th, ph) * np.divide(h, kn**2, out=np.zeros_like(kn), where=kn > 0).reshape(-1, 1)
        F = F.reshape(*M, -1)
        d = np.asarray(d, dtype=float)
        shift = np.asarray(shift, dtype=float)
        r = d - shift
        frac = np.rint(r @ np.linalg.inv(np.asarray(self.cell.lattice))).astype(int) % M
        out = np.empty((len(d), F.shape[-1]))
        uniq, inv = np.unique(np.round(shift, 9), axis=0, return_inverse=True)
        for u, sh in enumerate(uniq):
            rows = np.flatnonzero(inv.ravel() == u)
            S = np.fft.fftn(F * np.exp(-1j * (k @ sh))[..., None], axes=(0, 1, 2)).real / M.prod()
            out[rows] = S[frac[rows, 0], frac[rows, 1], frac[rows, 2]]
        S0 = F.reshape(-1, F.shape[-1]).sum(0) / M.prod()
        # the integral: 4π V_c/(2π)³ (−1)^{ℓ/2} Y_ℓm(d̂) ∫₀^{kc} h(k) j_ℓ(k|d|) dk
        x, w = np.polynomial.legendre.leggauss(256)
        kq, wq = kc / 2 * (x + 1), w * kc / 2
        hq = 1.0 - smooth_step(2 * kq / kc - 1.0)
        ell = _degrees(self.degree)
        dn = np.linalg.norm(d, axis=1)
        th, ph = _angles(np.where(dn[:, None] > 0, d, [0, 0, 1.0]))
        Yd = _real_sph(self.degree, th, ph)
        pref = 4 * np.pi * self.volume / (2 * np.pi) ** 3
        du, back = np.unique(np.round(dn, 9), return_inverse=True)  # shells share |d|
        J = np.stack([(spherical_jn(x_, np.outer(du, kq)) * hq * wq).sum(1) for x_ in range(0, self.degree + 1, 2)], 1)
        out -= pref * (-1.0) ** (ell // 2) * Yd * J[back.ravel()][:, ell // 2]
        E0 = S0.copy()
        E0[0] -= pref * float((hq * wq).sum()) * _real_sph(0, np.zeros(1), np.zeros(1))[0, 0]
        return (out - E0) / self.kelvin

    # ------------------------------------------------------------------ force-constant dependent
    def kelvin_coefficients(self, phi, temperature, quantum) -> torch.Tensor:
        """Spherical-harmonic coefficients of A (the six symmetric components): (n_lm(degree), 6), Å³."""
        from xtds.model.exact import _c6

        k = EPS * self.dirs
        C = covariance_k(self.model, phi, k, temperature, quantum=quantum, cell=self.cell)[:, :3, :3].real * EPS**2
        Y = torch.as_tensor(self.Y_top[:, : self.nA] * self.weights[:, None], dtype=phi.dtype, device=phi.device)
        b = Y.T @ _c6(C)  # (n_lm, 6)
        return b * torch.as_tensor(self.kelvin, dtype=phi.dtype, device=phi.device)[:, None]

    def correction_coefficients(self, phi, temperature, quantum) -> torch.Tensor:
        """Spherical-harmonic coefficients of B, the next term B(d̂)/|d|³ of C(d) (from the k⁰ term
        of C(k): the dispersion of the acoustic branches and, quantum, ħ²/12k_BT): (n_lm(degree), 6), Å⁵."""
        from xtds.model.exact import _c6

        e1, e2 = EPS_B
        C1, C2 = (covariance_k(self.model, phi, e * self.dirs, temperature, quantum=quantum,
                               cell=self.cell)[:, :3, :3].real * e**2 for e in (e1, e2))
        Bk = (C2 - C1) / (e2**2 - e1**2)
        Y = torch.as_tensor(self.Y_top[:, : self.nA] * self.weights[:, None], dtype=phi.dtype, device=phi.device)
        return (Y.T @ _c6(Bk)) * torch.as_tensor(self.correction, dtype=phi.dtype, device=phi.device)[:, None]

    def harmonics_over_r(self, d: np.ndarray, power: int = 1) -> np.ndarray:
        """Y_ℓm(d̂)/|d|ᵖ at vectors d (N, 3) Å: (N, n_lm(degree)). With the coefficients of
        :meth:`kelvin_coefficients` (p = 1) or :meth:`correction_coefficients` (p = 3)."""
        th, ph = _angles(np.asarray(d, dtype=float))
        return _real_sph(self.degree, th, ph) / np.linalg.norm(d, axis=1)[:, None] ** power

    def _mono_index(self, n: int):
        """The monomials of degree n as an index array (n_monomials, n) and their counts."""
        return (np.array([c for c, _ in self.monos[n]]), np.array([m for _, m in self.monos[n]], dtype=float))

    def power_coefficients(self, coeffs: torch.Tensor, bcoeffs: torch.Tensor) -> dict:
        """For each radial power p: a list of (monomial degree n, (n_monomials, n_lm(POWER_DEGREE[p])))
        spherical-harmonic coefficients of the angular factor of the 1/|d|ᵖ term (see :data:`ORDERS`),
        on the monomials of qq of degree n: Xⁿ/n! for p = n, and X·Z on degree 2 for p = 4."""
        Y = torch.as_tensor(self.Y_top, dtype=coeffs.dtype, device=coeffs.device)
        A = Y[:, : self.nA] @ coeffs  # (G, 6) on the grid
        w = torch.as_tensor(self.weights, dtype=coeffs.dtype, device=coeffs.device)
        out = {}
        for n in ORDERS:
            nlm = len(_degrees(POWER_DEGREE[n]))
            idx, mult = self._mono_index(n)
            prods = A[:, idx].prod(dim=-1).T * torch.as_tensor(mult, dtype=A.dtype, device=A.device)[:, None]
            out[n] = [(n, (prods * w) @ Y[:, :nlm] / math.factorial(n))]
        if 4 in out:
            B = Y[:, : self.nA] @ bcoeffs
            nlm = len(_degrees(POWER_DEGREE[4]))
            prods = torch.stack([mult * 0.5 * (A[:, a] * B[:, b] + A[:, b] * B[:, a])
                                 for (a, b), mult in self.monos[2]], 0)
            out[4].append((2, (prods * w) @ Y[:, :nlm]))
        return out

    # ------------------------------------------------------------------ data dependent
    def table(self, q: np.ndarray, n_g: int = 1):
        """Per point: the ``n_g`` nearest reciprocal-lattice vectors G, and any as near as the last
        (Q, n, 3), with weights 1 or 0 for padding (Q, n), and, per radial power p, the fixed factor
        4π (−1)^{ℓ/2} Y_ℓm(κ̂) J⁽ᵖ⁾_ℓ(|κ|) of κ = q − G: {p: (Q, n, n_lm)}."""
        B = np.asarray(self.cell.reciprocal)
        q = np.asarray(q, dtype=float)
        base = np.floor(q @ np.linalg.inv(B))
        offs = np.array(list(itertools.product((-1, 0, 1, 2), repeat=3)))
        cand = (base[:, None, :] + offs[None]) @ B  # (Q, 64, 3)
        dist = np.linalg.norm(q[:, None, :] - cand, axis=2)
        order = np.argsort(dist, axis=1)
        ds = np.take_along_axis(dist, order, axis=1)
        # every G as near as the n_g-th is taken (ties broken alike for symmetric points)
        take = ds <= ds[:, n_g - 1 : n_g] * (1 + 1e-9) + 1e-12
        n_max = int(take.sum(axis=1).max())
        order, take = order[:, :n_max], take[:, :n_max]
        G = np.take_along_axis(cand, order[:, :, None], axis=1)  # (Q, n_max, 3)
        n_g = n_max
        kappa = (q[:, None, :] - G).reshape(-1, 3)
        kn = np.maximum(np.linalg.norm(kappa, axis=1), 1e-6)
        safe = np.where(np.linalg.norm(kappa, axis=1, keepdims=True) > 0, kappa, [0, 0, 1.0])
        th, ph = _angles(safe)
        out = {}
        Yall = _real_sph(max(POWER_DEGREE.values()), th, ph)
        for n in ORDERS:
            top = POWER_DEGREE[n]
            ell = _degrees(top)
            Y = Yall[:, : len(ell)]
            J = np.stack([_radial(n, x, kn, self.r0, self.radial_tables[n, x])
                          for x in range(0, top + 1, 2)], 1)  # (Q·n_g, n_ell)
            val = 4 * np.pi * (-1.0) ** (ell // 2) * Y * J[:, ell // 2]
            out[n] = val.reshape(len(q), n_g, -1)
        return G, take.astype(float), out

    def monomial_values(self, qq: torch.Tensor) -> dict:
        """Per degree n (2, 3, 4): the monomials qq_α₁…qq_αₙ of each point, (Q, n_monomials)."""
        out = {}
        for n in self.monos:
            idx = torch.as_tensor([c for c, _ in self.monos[n]], device=qq.device)  # (n_monomials, n)
            out[n] = qq[:, idx].prod(dim=-1)
        return out
