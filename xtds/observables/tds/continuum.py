"""The long-range part of the multi-phonon sum of an infinite crystal, from elasticity.

Far from an atom the displacement covariance is that of an elastic continuum,
C(d) → A(d̂)/|d| (the anisotropic Kelvin solution): with Cₗ(k̂) = lim k² C(k) (the long-wavelength
limit of the covariance, classical at any temperature),

    A(d̂) = V_c/(8π²) ∮_{k̂ ⊥ d̂} Cₗ(k̂) dψ,

so x = qᵀC(d)q → X(d̂)/|d| with X = qᵀA q, the same for every pair of atoms s, t of the cell. The
next terms depend on the pair (d = r + τ_t − τ_s): between different atoms an odd W_st(d̂)/|d|² (from
the 1/k term of C_st(k) in the phase of the atoms' positions: internal strain, e.g. between the two
sublattices of diamond), w = qᵀW q/|d|²; and B_st(d̂)/|d|³ (from the k⁰ term), z = qᵀB q/|d|³.
The multi-phonon terms then fall only as 1/|d|², 1/|d|³, …: their lattice sum converges only through
the oscillation of cos(q·d), which a truncated sum resolves poorly near Bragg peaks. This module adds
the sum over all lattice vectors of the continuum's terms up to 1/|d|⁴,

    G_el = X²/2|d|² + (X³/6 + X·W)/|d|³ + (X⁴/24 + X·Z + W²/2 + X²W/2)/|d|⁴,

in closed form: with a smooth step χ(d) that removes the origin,

    Σ_{s,t} a_s a_t Σ_r χ(d) G_el,st(d) e^{iq·d} = (1/V_c) Σ_G Σ_{s,t} a_s a_t e^{iG·(τ_t − τ_s)} T_st(q − G),
    T_st(κ) = Σ_p 4π Σ_ℓm i^ℓ Y_ℓm(κ̂) [Θ_p,st]_ℓm J⁽ᵖ⁾_ℓ(|κ|),
    J⁽ᵖ⁾_ℓ(κ) = ∫₀^∞ d^{2−p} j_ℓ(κd) χ(d) dd,

(Poisson summation, then the plane-wave expansion), with Θ_p,st the angular factor of the 1/|d|ᵖ
term. The common part (Xᵖ/p!) sums to |F_G|² T(q − G), F_G = Σ_s a_s e^{−iG·τ_s}; the even
pair-dependent part enters with cos G·(τ_t − τ_s), the odd (imaginary, i^ℓ for odd ℓ) with
−sin G·(τ_t − τ_s). Spherical harmonics are real; [Θ_p]_ℓm comes from the monomials of q q, so the
q-dependence is a fixed table per point and the force-constant dependence a small matrix per call.
The pair sum of :mod:`xtds.observables.tds.infinite` subtracts χ G_el pair by pair, so only the difference
between the lattice and the continuum, which falls as 1/|d|⁵, is truncated.
:meth:`Continuum.aliasing` gives the continuum's (Kelvin) periodic images on a k-mesh, which the
pair sum removes from the mesh's C(r).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.special import sici, sph_harm_y, spherical_jn

from xtds.thermal.covariance import covariance_k, symmetric_components

__all__ = ["Continuum", "smooth_step", "ORDERS"]

#: The radial powers p of the continuum terms summed in closed form (1/|d|ᵖ): X²/2 (p = 2), X³/6
#: (p = 3), X⁴/24 + X·Z (p = 4, with Z = qᵀBq of the 1/|d|³ correction B(d̂)/|d|³ of C(d)).
ORDERS = (2, 3, 4)

#: Spherical-harmonic degree of the long-wavelength covariance Cₗ(k̂) and of A(d̂).
DEGREE = 10

#: Spherical-harmonic degree kept of the angular factor of each radial power p (truncated: a higher
#: degree changes the model by < 2e-5 relative on Ni; the pair sum subtracts the same truncated terms).
POWER_DEGREE = {2: 16, 3: 10, 4: 10}

#: Spherical-harmonic degree of W(d̂), the odd 1/|d|² term of the covariance between two different
#: atoms of the cell (from the 1/k term of C(k): internal strain, e.g. Si's two sublattices).
ODD_DEGREE = 9

#: Spherical-harmonic degree kept of the odd angular factors X·W (p = 3) and X²W/2 (p = 4).
ODD_POWER_DEGREE = {3: 11, 4: 9}

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


def _real_sph(lmax: int, theta: np.ndarray, phi: np.ndarray, parity: int = 0) -> np.ndarray:
    """Real spherical harmonics of even (``parity`` 0) or odd (1) degree ≤ lmax at polar angles θ,
    azimuths φ: (P, n_lm), ordered by degree ℓ, then m = −ℓ … ℓ."""
    cols = []
    for ell in range(parity, lmax + 1, 2):
        ys = [sph_harm_y(ell, m, theta, phi) for m in range(ell + 1)]
        neg = [np.sqrt(2) * (-1) ** m * ys[m].imag for m in range(ell, 0, -1)]
        pos = [np.sqrt(2) * (-1) ** m * ys[m].real for m in range(1, ell + 1)]
        cols.extend(neg + [ys[0].real] + pos)
    return np.stack(cols, axis=1)


def _degrees(lmax: int, parity: int = 0) -> np.ndarray:
    return np.concatenate([np.full(2 * ell + 1, ell) for ell in range(parity, lmax + 1, 2)])


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
    if ell >= n - 2:
        return -(d[None] ** (2 - n) * spherical_jn(ell, k * d[None]) * inner[None] * w[None]).sum(1)
    # ℓ < n − 2 (the integral from 0 diverges): ∫_{r0}^{2r0} j_ℓ(κd) χ d^{2−n} dd
    return (spherical_jn(ell, k * d[None]) * d[None] ** (2 - n) * (1.0 - inner)[None] * w[None]).sum(1)


def _radial(n: int, ell: int, kappa: np.ndarray, r0: float, table=None) -> np.ndarray:
    """J⁽ⁿ⁾_ℓ(κ) = ∫₀^∞ d^{2−n} j_ℓ(κd) χ(d) dd, χ(d) = smooth_step(d/r0 − 1), n = 2, 3, 4; κ > 0 (Å⁻¹).

    For ℓ ≥ n − 2: the full integral ∫₀^∞ (known in closed form, a power of κ) minus the part on
    [0, 2 r0] where χ < 1, a smooth function of κ tabulated on a fine grid and interpolated; for
    ℓ < n − 2 (where the full integral diverges at 0) the part on [r0, 2 r0] plus the rest through the
    sine and cosine integrals."""
    kappa = np.asarray(kappa, dtype=float)
    if table is None or kappa.max() > table.x[-1]:
        table = _smooth_spline(n, ell, r0, kappa.max() * 1.001 + 1e-9)
    smooth = table(kappa)
    if ell >= n - 2:
        mu = 3 - n  # ∫₀^∞ t^{μ−1} j_ℓ(t) dt (−ℓ < μ < 2)
        full = 2.0 ** (mu - 2) * np.sqrt(np.pi) * math.gamma((ell + mu) / 2) / math.gamma((ell - mu + 3) / 2)
        return full / kappa ** (3 - n) + smooth
    a = 2 * r0
    si, ci = sici(kappa * a)
    if n == 3:  # ∫_a^∞ sin(κd)/(κd²) dd
        return smooth + (np.sin(kappa * a) / a - kappa * ci) / kappa
    if n == 4 and ell == 0:  # ∫_a^∞ sin(κd)/(κd³) dd
        rest = np.sin(kappa * a) / (2 * a * a) + kappa / 2 * (np.cos(kappa * a) / a - kappa * (np.pi / 2 - si))
        return smooth + rest / kappa
    if n == 4 and ell == 1:  # κ ∫_x^∞ j₁(u)/u² du, x = κa
        x = kappa * a
        rest = np.sin(x) / (3 * x**3) - np.cos(x) / (3 * x**2) + (np.sin(x) / x - ci) / 3
        return smooth + kappa * rest
    raise ValueError(f"no closed form for the order {n}, degree {ell}")


#: Nodes per oscillation period 2π/2r₀ of the cubic spline of each radial integral's smooth part on
#: [0, κ_max] (at least 1025 in all): interpolation error ~1e-8 of its scale (measured, r₀ = 3–10 Å).
SPLINE_NODES_PER_PERIOD = 128


def _smooth_spline(n: int, ell: int, r0: float, kmax: float) -> CubicSpline:
    periods = kmax * 2 * r0 / (2 * np.pi)
    grid = np.linspace(0.0, kmax, max(1025, int(np.ceil(SPLINE_NODES_PER_PERIOD * periods)) + 1))
    return CubicSpline(grid, _radial_smooth(n, ell, grid, r0))


@functools.lru_cache(maxsize=16)
def _radial_tables(r0: float, kmax: float) -> dict:
    """The smooth parts of every radial integral on a κ grid [0, kmax] (shared by plans alike)."""
    out = {(n, ell): _smooth_spline(n, ell, r0, kmax) for n in ORDERS for ell in range(0, POWER_DEGREE[n] + 1, 2)}
    out.update({(n, ell): _smooth_spline(n, ell, r0, kmax)
                for n in ODD_POWER_DEGREE for ell in range(1, ODD_POWER_DEGREE[n] + 1, 2)})
    return out


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
        # the 1/k term i W̃(k̂)/k of C(k) between different atoms: odd ℓ gives
        # 4π (−i)^ℓ i ∫₀^∞ t j_ℓ(t) dt / |d|² (continued analytically)
        odd = _degrees(ODD_DEGREE, 1)
        self.nW = len(odd)
        self.Y_odd = _real_sph(max(ODD_POWER_DEGREE.values()), T.ravel(), Ph.ravel(), parity=1)
        gam2 = np.array([math.gamma((x + 2) / 2) / math.gamma((x + 1) / 2) for x in odd])
        self.odd_factor = self.volume / (2 * np.pi**2) * (-1.0) ** ((odd - 1) // 2) * np.sqrt(np.pi) * gam2
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
        k = EPS * self.dirs
        C = covariance_k(self.model, phi, k, temperature, quantum=quantum, cell=self.cell)[:, :3, :3].real * EPS**2
        Y = torch.as_tensor(self.Y_top[:, : self.nA] * self.weights[:, None], dtype=phi.dtype, device=phi.device)
        b = Y.T @ symmetric_components(C)  # (n_lm, 6)
        return b * torch.as_tensor(self.kelvin, dtype=phi.dtype, device=phi.device)[:, None]

    def block_coefficients(self, phi, temperature, quantum, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """The atom-pair-dependent continuum terms of C_st(d) for each (s, t) of ``pairs``: the odd
        W_st(d̂)/|d|² (from the 1/k term i W̃(k̂)/k of C_st(k), zero for s = t) and the next even
        B_st(d̂)/|d|³ (from its k⁰ term: the dispersion of the acoustic branches, the optic modes'
        static part and, quantum, ħ²/12k_BT). With f(ε) = ε² C_st(ε k̂) (the phase of the atoms'
        positions), Re f = Cₗ + ε² B̃ + O(ε⁴) and Im f / ε = W̃ + O(ε²), both taken at the two ε of
        :data:`EPS_B` and extrapolated. Returns W (n_pairs, n_lm(ODD_DEGREE), 6) Å⁴ and
        B (n_pairs, n_lm(DEGREE), 6) Å⁵ spherical-harmonic coefficients."""
        e1, e2 = EPS_B
        f1, f2 = (covariance_k(self.model, phi, e * self.dirs, temperature, quantum=quantum, cell=self.cell) * e**2
                  for e in (e1, e2))
        dt, dev = phi.dtype, phi.device
        Y = torch.as_tensor(self.Y_top[:, : self.nA] * self.weights[:, None], dtype=dt, device=dev)
        Yo = torch.as_tensor(self.Y_odd[:, : self.nW] * self.weights[:, None], dtype=dt, device=dev)
        Ws, Bs = [], []
        for s, t in pairs:
            b1, b2 = (f[:, 3 * s : 3 * s + 3, 3 * t : 3 * t + 3] for f in (f1, f2))
            Bk = (b2.real - b1.real) / (e2**2 - e1**2)
            Wk = (e2**2 * b1.imag / e1 - e1**2 * b2.imag / e2) / (e2**2 - e1**2)
            corr = torch.as_tensor(self.correction, dtype=dt, device=dev)[:, None]
            Bs.append((Y.T @ symmetric_components(Bk)) * corr)
            if s == t:  # C_ss(k) − C_ss(k)ᵀ is all its imaginary part: no symmetric odd term
                Ws.append(torch.zeros((self.nW, 6), dtype=dt, device=dev))
            else:
                odd = torch.as_tensor(self.odd_factor, dtype=dt, device=dev)[:, None]
                Ws.append((Yo.T @ symmetric_components(Wk)) * odd)
        return torch.stack(Ws), torch.stack(Bs)

    def harmonics_over_r(self, d: np.ndarray, power: int = 1) -> np.ndarray:
        """Y_ℓm(d̂)/|d|ᵖ at vectors d (N, 3) Å: (N, n_lm). With the coefficients of
        :meth:`kelvin_coefficients` (p = 1, even ℓ ≤ DEGREE) or :meth:`block_coefficients` (p = 2:
        odd ℓ ≤ ODD_DEGREE, W; p = 3: even ℓ ≤ DEGREE, B)."""
        th, ph = _angles(np.asarray(d, dtype=float))
        Y = _real_sph(ODD_DEGREE, th, ph, parity=1) if power == 2 else _real_sph(self.degree, th, ph)
        return Y / np.linalg.norm(d, axis=1)[:, None] ** power

    def _mono_index(self, n: int):
        """The monomials of degree n as an index array (n_monomials, n) and their counts."""
        return (np.array([c for c, _ in self.monos[n]]), np.array([m for _, m in self.monos[n]], dtype=float))

    def _products(self, factors, n: int) -> torch.Tensor:
        """Σ over the orderings of each monomial of degree n of Π_i factors[i][:, α_i]: the angular
        factor of Π_i (qq·F_i) on the monomials of qq, (G, n_monomials). ``factors``: n tensors (G, 6)."""
        idx, mult = self._mono_index(n)
        m = torch.as_tensor(mult, dtype=factors[0].dtype, device=factors[0].device)
        if all(f is factors[0] for f in factors):  # Xⁿ: every ordering alike
            return factors[0][:, idx].prod(dim=-1) * m
        perms = list(itertools.permutations(range(n)))
        acc = 0
        for p in perms:
            term = factors[0][:, idx[:, p[0]]]
            for i in range(1, n):
                term = term * factors[i][:, idx[:, p[i]]]
            acc = acc + term
        return acc * (m / len(perms))

    def _project(self, values: torch.Tensor, top: int, parity: int = 0) -> torch.Tensor:
        """(G, n_monomials) on the direction grid → spherical-harmonic coefficients of degree ≤ top
        and the given parity: (n_monomials, n_lm)."""
        Yall = self.Y_odd if parity else self.Y_top
        Y = torch.as_tensor(Yall[:, : len(_degrees(top, parity))] * self.weights[:, None], dtype=values.dtype,
                            device=values.device)
        return values.T @ Y

    def power_coefficients(self, coeffs: torch.Tensor, W: torch.Tensor, B: torch.Tensor) -> tuple[dict, list]:
        """The angular factors of the continuum terms, as spherical-harmonic coefficients on the
        monomials of qq. ``coeffs``: A's (:meth:`kelvin_coefficients`); ``W``, ``B``: per atom pair
        (:meth:`block_coefficients`).

        Returns ``common`` {p: (monomial degree p, (n_monomials, n_lm(POWER_DEGREE[p])))}: Xᵖ/p!,
        shared by every pair of atoms; and per atom pair a dict with ``"even"``: [(2, X·Z + W²/2)]
        (p = 4, even ℓ ≤ POWER_DEGREE[4]) and ``"odd"`` {p: (degree, coefficients)}: X·W (p = 3) and
        X²W/2 (p = 4), odd ℓ ≤ ODD_POWER_DEGREE[p] (``None`` where W is zero: s = t)."""
        dt, dev = coeffs.dtype, coeffs.device
        Y = torch.as_tensor(self.Y_top, dtype=dt, device=dev)
        A = Y[:, : self.nA] @ coeffs  # (G, 6) on the grid
        common = {n: (n, self._project(self._products([A] * n, n), POWER_DEGREE[n]) / math.factorial(n))
                  for n in ORDERS}
        per_pair = []
        Yo = torch.as_tensor(self.Y_odd[:, : self.nW], dtype=dt, device=dev)
        for Wj, Bj in zip(W, B, strict=True):
            Wg, Bg = Yo @ Wj, Y[:, : self.nA] @ Bj
            even = self._products([A, Bg], 2)
            odd = None
            if bool((Wj != 0).any()):
                even = even + 0.5 * self._products([Wg, Wg], 2)
                odd = {3: (2, self._project(self._products([A, Wg], 2), ODD_POWER_DEGREE[3], 1)),
                       4: (3, self._project(0.5 * self._products([A, A, Wg], 3), ODD_POWER_DEGREE[4], 1))}
            per_pair.append({"even": [(2, self._project(even, POWER_DEGREE[4]))], "odd": odd})
        return common, per_pair

    # ------------------------------------------------------------------ data dependent
    def table(self, q: np.ndarray, n_g: int = 1, odd: bool = False):
        """Per point: the ``n_g`` nearest reciprocal-lattice vectors G, and any as near as the last
        (Q, n, 3), with weights 1 or 0 for padding (Q, n), and, per radial power p, the fixed factor
        4π (−1)^{ℓ/2} Y_ℓm(κ̂) J⁽ᵖ⁾_ℓ(|κ|) of κ = q − G: {p: (Q, n, n_lm)}; with ``odd``, also that of
        the odd degrees, 4π (−1)^{(ℓ−1)/2} Y_ℓm(κ̂) J⁽ᵖ⁾_ℓ(|κ|) (the transform is i times it):
        {(p, "odd"): (Q, n, n_lm)} for p in :data:`ODD_POWER_DEGREE`."""
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
        if odd:
            Yall = _real_sph(max(ODD_POWER_DEGREE.values()), th, ph, parity=1)
            for n, top in ODD_POWER_DEGREE.items():
                ell = _degrees(top, 1)
                J = np.stack([_radial(n, x, kn, self.r0, self.radial_tables[n, x])
                              for x in range(1, top + 1, 2)], 1)
                val = 4 * np.pi * (-1.0) ** ((ell - 1) // 2) * Yall[:, : len(ell)] * J[:, ell // 2]
                out[n, "odd"] = val.reshape(len(q), n_g, -1)
        return G, take.astype(float), out

    def monomial_values(self, qq: torch.Tensor) -> dict:
        """Per degree n (2, 3, 4): the monomials qq_α₁…qq_αₙ of each point, (Q, n_monomials)."""
        out = {}
        for n in self.monos:
            idx = torch.as_tensor([c for c, _ in self.monos[n]], device=qq.device)  # (n_monomials, n)
            out[n] = qq[:, idx].prod(dim=-1)
        return out
