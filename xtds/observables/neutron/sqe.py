"""Coherent one-phonon neutron scattering of a single crystal: S(Q, E), its modes, χ''(Q, E).

Per atom of the sample (the convention of euphonic and of Squires), in the phase of the atoms'
positions (Q need not be reduced to the first zone), with D(Q) the mass-weighted dynamical
matrix, e_ν its eigenvectors and ε_ν = ħω_ν:

    S_ν(Q) = (1/n) |Σ_s (b_s / √m_s) e^{−W_s(Q)} (Q·e_sν)|² ħ²/(2ε_ν)          (mbarn, per atom)
    S(Q, E) = Σ_ν S_ν(Q) {[n(ε_ν) + 1] R(E − ε_ν; ε_ν) + n(ε_ν) R(E + ε_ν; ε_ν)}     (mbarn/meV)
    χ''(Q, E) = π (1 − e^{−E/k_BT}) S(Q, E)

with b_s the bound coherent scattering lengths (:func:`scattering_lengths`, periodictable), W_s =
½ QᵀC_ss(0)Q the Debye–Waller exponent from the same covariances as the X-ray models
(:func:`xtds.thermal.debye_waller.debye_waller`), n the Bose occupation and R a normalized Gaussian of FWHM Γ(ε) (meV,
:func:`as_resolution`). Written as v^H f_E(D) v with v_sα = b_s e^{−W_s} Q_α/√m_s, S(Q, E) is a
matrix function of D: its gradient (:class:`xtds.thermal.spectral.SpectralSum`) uses the Daleckii–Krein divided
differences and is finite at degenerate modes (high-symmetry directions), so S(Q, E) is
differentiable in the force constants everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import constants as _c

from xtds.errors import UnstableError, check_temperature
from xtds.lattice import dynamics
from xtds.lattice.ifc import IFCModel
from xtds.observables.base import Observable, check_points_q
from xtds.observables.scattering import scattering_lengths
from xtds.thermal.debye_waller import resolve_dw
from xtds.thermal.spectral import SpectralSum
from xtds.transforms import TRANSFORMS
from xtds.units import HBAR_OMEGA_EV, KB_EV_PER_K

__all__ = ["SQEPoints", "mode_weight", "as_resolution",
           "chopper_resolution", "ARCS_DISTANCES",
           "coherent_modes", "coherent_sqe", "chi_from_sqe",
           "direct_geometry_q_range", "direct_geometry_coverage", "scattering_angle", "ARCS_TWO_THETA",
           "NEUTRON_E_PER_K2",
           "HBAR2_OVER_AMU"]

#: ħ²/amu in meV·Å² (CODATA, through scipy.constants).
HBAR2_OVER_AMU: float = _c.hbar**2 / _c.atomic_mass / _c.e * 1e3 * 1e20

#: 1 fm² = 10 mbarn.
MBARN_PER_FM2 = 10.0

#: Modes below this energy (meV) carry no one-phonon intensity (the acoustic modes at Q ≡ G).
MIN_ENERGY = 1e-3


def as_resolution(resolution) -> Callable[[torch.Tensor], torch.Tensor]:
    """Energy resolution as a function FWHM(ε) (meV) of the mode energy ε (meV): a number (a
    constant FWHM), a callable (torch tensor in, tensor out), or polynomial coefficients
    (c₀, c₁, …): FWHM = c₀ + c₁ε + c₂ε² + …. Raises on a non-positive constant."""
    if callable(resolution):
        return resolution
    if np.ndim(resolution) == 0:
        fwhm = float(resolution)
        if not fwhm > 0:
            raise ValueError(f"the energy resolution (FWHM, meV) must be positive, got {resolution!r}")
        return lambda e: torch.full_like(e, fwhm)
    coeffs = [float(c) for c in resolution]

    def poly(e):
        out = torch.zeros_like(e)
        for c in reversed(coeffs):
            out = out * e + c
        return out

    return poly


def mode_weight(energies: torch.Tensor, temperature: float, resolution, quantum: bool = True):
    """f_E(λ) = ħ²/(2ε) [(n(ε) + 1) R(E − ε) + n(ε) R(E + ε)] (amu Å² / meV), ε = ħ√λ in meV, as a
    function of the eigenvalues λ (..., m) → (..., m, E): the weight of a mode in S(Q, E) per unit
    |v|², with R a normalized Gaussian of FWHM ``resolution`` (:func:`as_resolution`) at ε.
    ``quantum=False``: classical occupation k_BT/ε on both sides. Modes below MIN_ENERGY weigh 0.
    ``f_of(lam, extra)``: ``extra`` (..., m) meV adds a Gaussian σ per mode in quadrature (the
    adaptive broadening of a k-mesh, :class:`xtds.thermal.spectral.BinnedSpectral`)."""
    fwhm = as_resolution(resolution)
    kT = KB_EV_PER_K * 1e3 * temperature
    unit = 1e3 * HBAR_OMEGA_EV  # meV per √(eV/(Å² amu))
    # kept as numbers and made a tensor at each call: a tensor captured from the caller's frame would
    # belong to another level of a torch.func transform (jacfwd of a fit)
    grid = energies.detach().cpu().numpy().copy() if isinstance(energies, torch.Tensor) else np.array(energies, float)

    to_sigma = 1 / (2 * np.sqrt(2 * np.log(2)))

    def parts(lam, extra):
        energies = torch.as_tensor(grid, dtype=lam.dtype, device=lam.device)
        eps = unit * torch.sqrt(lam.clamp(min=0))
        live = eps > MIN_ENERGY
        e = torch.where(live, eps, torch.ones_like(eps))[..., None]
        return energies, live, e

    def f_of(lam, extra=None):
        energies, live, e = parts(lam, extra)
        sig = fwhm(e) * to_sigma
        if extra is not None:  # a mesh's adaptive broadening (σ per mode, meV), in quadrature
            sig = torch.sqrt(sig**2 + extra[..., None] ** 2)
        norm = sig * np.sqrt(2 * np.pi)
        nb = 1.0 / torch.expm1(e / kT) if quantum else kT / e
        up = nb + 1 if quantum else nb
        val = HBAR2_OVER_AMU / (2 * e) * (up * torch.exp(-0.5 * ((energies - e) / sig) ** 2)
                                          + nb * torch.exp(-0.5 * ((energies + e) / sig) ** 2)) / norm
        return torch.where(live[..., None], val, torch.zeros_like(val))

    def with_derivative(lam, extra=None):
        """(f, ∂f/∂λ), both (..., m, E): the derivative written out (the energy, the occupation, the
        width's dependence on the energy through the resolution, and the Gaussians), a third of the
        cost of forward-mode differentiation of ``f_of``."""
        energies, live, e = parts(lam, extra)
        with TRANSFORMS:
            fw, dfw = torch.func.jvp(fwhm, (e,), (torch.ones_like(e),))  # FWHM(ε) and dFWHM/dε
        s0, ds0 = fw * to_sigma, dfw * to_sigma
        if extra is not None:
            sig = torch.sqrt(s0**2 + extra[..., None] ** 2)
            dsig = s0 * ds0 / sig
        else:
            sig, dsig = s0, ds0
        if quantum:
            nb = 1.0 / torch.expm1(e / kT)
            dnb = -nb * (nb + 1) / kT
            up, dup = nb + 1, dnb
        else:
            nb, dnb = kT / e, -kT / e**2
            up, dup = nb, dnb
        pre = HBAR2_OVER_AMU / (2 * e) / (sig * np.sqrt(2 * np.pi))  # includes the Gaussians' 1/(σ√2π)
        dpre = -pre / e - pre * dsig / sig
        u, v = (energies - e) / sig, (energies + e) / sig
        gs, ga = torch.exp(-0.5 * u**2), torch.exp(-0.5 * v**2)  # Stokes (E = +ε), anti-Stokes (E = −ε)
        dgs = gs * (u / sig + u**2 * dsig / sig)
        dga = ga * (-v / sig + v**2 * dsig / sig)
        val = pre * (up * gs + nb * ga)
        dval = dpre * (up * gs + nb * ga) + pre * (dup * gs + up * dgs + dnb * ga + nb * dga)
        zero = torch.zeros_like(val)
        de_dlam = unit**2 / (2 * e)  # ε = unit √λ
        return torch.where(live[..., None], val, zero), torch.where(live[..., None], dval * de_dlam, zero)

    f_of.with_derivative = with_derivative
    return f_of


def _vector(model, phi, q, temperature, lengths, dw, quantum):
    """v (Q, 3n) = b_s e^{−W_s} Q_α / √m_s (fm amu^−½ Å⁻¹) and D(Q) (Q, 3n, 3n)."""
    P = model.primitive
    n = P.n_atoms
    b = torch.as_tensor(scattering_lengths(P.species) if lengths is None else np.asarray(lengths, dtype=float),
                        dtype=phi.dtype, device=phi.device)
    if b.shape != (n,):
        raise ValueError(f"give one scattering length per atom of the primitive cell ({n}), got shape {tuple(b.shape)}")
    C0 = resolve_dw(model, phi, temperature, dw, quantum)
    W = 0.5 * torch.einsum("qa,sab,qb->qs", q, C0, q)
    inv_sqrt_m = dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device).reshape(n, 3)[:, 0]
    amp = b * torch.exp(-W) * inv_sqrt_m  # (Q, n)
    v = (amp[:, :, None] * q[:, None, :]).reshape(len(q), 3 * n)
    D = dynamics.dynamical_matrix(model, phi, q)
    return v.to(D.dtype), D


def coherent_modes(model: IFCModel, phi: torch.Tensor, q, temperature: float | None = None, dw=None,
                   scattering_lengths=None, quantum: bool = True):
    """Mode-resolved coherent one-phonon structure factor at Cartesian ``q`` (Q, 3) Å⁻¹: mode
    energies ε (Q, 3n) meV and S_ν(Q) (Q, 3n) mbarn per atom, without occupation factors (see
    the module docstring). ``dw``: None (Debye–Waller factor at ``temperature`` from the default
    mesh), a mesh, an (n, 3, 3) array C_ss(0) in Å², or False (none). Not for gradients (the
    modes of a degenerate level are not unique; use :func:`coherent_sqe`)."""
    q = torch.as_tensor(np.asarray(q, dtype=float) if not isinstance(q, torch.Tensor) else q, dtype=phi.dtype,
                        device=phi.device)
    if dw is not False and not isinstance(dw, torch.Tensor | np.ndarray):
        check_temperature(temperature)
    v, D = _vector(model, phi, q, temperature, scattering_lengths, dw, quantum)
    lam, U = torch.linalg.eigh(D)
    if torch.any(lam < -1e-8 * lam.abs().amax()):
        raise UnstableError("imaginary phonon frequencies at some Q: the structure factor is undefined")
    eps = HBAR_OMEGA_EV * torch.sqrt(lam.clamp(min=0)) * 1e3  # meV
    c = torch.einsum("qij,qi->qj", U.conj(), v)
    n = model.primitive.n_atoms
    safe = torch.where(eps > MIN_ENERGY, eps, torch.ones_like(eps))
    S = torch.where(eps > MIN_ENERGY, c.abs() ** 2 * HBAR2_OVER_AMU / (2 * safe), torch.zeros_like(eps))
    return eps, S * MBARN_PER_FM2 / n


def coherent_sqe(model: IFCModel, phi: torch.Tensor, q, energies, temperature: float, resolution=1.0, dw=None,
                 scattering_lengths=None, quantum: bool = True, chunk: int = 2048) -> torch.Tensor:
    """Coherent one-phonon S(Q, E) (mbarn/meV per atom) at Cartesian ``q`` (Q, 3) Å⁻¹ and energy
    transfers ``energies`` (E,) meV (positive: the neutron loses energy), shape (Q, E): every mode
    with its Bose occupation (Stokes [n + 1] and anti-Stokes n) broadened by a normalized Gaussian
    of FWHM ``resolution`` (meV: a number, polynomial coefficients in ε or a callable, see
    :func:`as_resolution`). ``dw`` as :func:`coherent_modes`. Differentiable in ``phi``."""
    T = check_temperature(temperature)
    q = torch.as_tensor(np.asarray(q, dtype=float) if not isinstance(q, torch.Tensor) else q, dtype=phi.dtype,
                        device=phi.device)
    n = model.primitive.n_atoms
    f_of = mode_weight(energies, T, resolution, quantum=True)
    C0 = resolve_dw(model, phi, T, dw, quantum)  # once for all chunks
    out = []
    for lo in range(0, len(q), chunk):
        v, D = _vector(model, phi, q[lo : lo + chunk], T, scattering_lengths, C0, quantum)
        out.append(SpectralSum.apply(D, v, f_of))
    return torch.cat(out) * (MBARN_PER_FM2 / n)


def chi_from_sqe(sqe: torch.Tensor, energies, temperature: float) -> torch.Tensor:
    """χ''(Q, E) = π (1 − e^{−E/k_BT}) S(Q, E) (same units as S per meV), E (meV) on the last axis."""
    T = check_temperature(temperature)
    E = torch.as_tensor(np.asarray(energies, dtype=float), dtype=sqe.dtype, device=sqe.device)
    return np.pi * (-torch.expm1(-E / (KB_EV_PER_K * 1e3 * T))) * sqe


#: ħ²/2m_n in meV·Å² (E = this × k² for a neutron of wavevector k; CODATA through scipy.constants).
NEUTRON_E_PER_K2: float = _c.hbar**2 / (2 * _c.m_n) / _c.e * 1e3 * 1e20


def direct_geometry_q_range(incident_energy: float, energies, two_theta_min: float, two_theta_max: float):
    """|Q| limits (Å⁻¹) of a direct-geometry spectrometer at energy transfers ``energies`` (meV, <
    Eᵢ) for detectors between scattering angles 2θ_min and 2θ_max (degrees): Q² = kᵢ² + k_f² −
    2kᵢk_f cos 2θ, kᵢ² = Eᵢ/(ħ²/2m_n), k_f² = (Eᵢ − E)/(ħ²/2m_n). Returns (Q_min, Q_max), each like
    ``energies``; NaN where E ≥ Eᵢ (no neutron leaves)."""
    E = np.asarray(energies, dtype=float)
    ki = np.sqrt(float(incident_energy) / NEUTRON_E_PER_K2)
    kf = np.sqrt(np.where(E < incident_energy, incident_energy - E, np.nan) / NEUTRON_E_PER_K2)

    def q(t):
        return np.sqrt(ki**2 + kf**2 - 2 * ki * kf * np.cos(np.radians(t)))

    return q(two_theta_min), q(two_theta_max)


def scattering_angle(qnorm, energies, incident_energy: float) -> np.ndarray:
    """The scattering angle 2θ (degrees) at which a direct-geometry spectrometer of incident energy
    Eᵢ (meV) sees momentum transfer |Q| (1/Å) at energy transfer E (meV): the inverse of
    :func:`direct_geometry_q_range`, cos 2θ = (kᵢ² + k_f² − Q²)/(2kᵢk_f). ``qnorm`` and
    ``energies`` broadcast. Points just outside the kinematic range (a bin centre of a partly
    covered bin, |cos 2θ| up to 1.1) are put at 0° or 180°; points far outside it (a wrong Eᵢ, or
    E ≥ Eᵢ) raise ValueError."""
    Ei = float(incident_energy)
    Q, E = np.broadcast_arrays(np.asarray(qnorm, dtype=float), np.asarray(energies, dtype=float))
    if np.any(E >= Ei):
        raise ValueError(f"energy transfers up to {E.max():g} meV reach Eᵢ = {Ei:g} meV: no neutron leaves "
                         "there (is the incident energy right?)")
    ki, kf = np.sqrt(Ei / NEUTRON_E_PER_K2), np.sqrt((Ei - E) / NEUTRON_E_PER_K2)
    c = (ki**2 + kf**2 - Q**2) / (2 * ki * kf)
    if np.any(np.abs(c) > 1.1):
        i = int(np.argmax(np.abs(c)))
        raise ValueError(f"|Q| = {Q.flat[i]:.3g} 1/Å at E = {E.flat[i]:.3g} meV is out of reach of a spectrometer "
                         f"with Eᵢ = {Ei:g} meV at any angle: is the incident energy right?")
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


#: Scattering angles (degrees) of the ARCS detectors with which :func:`direct_geometry_coverage`
#: reproduces the valid-pixel mask of :func:`xtds.datasets.al_arcs` best (fitted here: 22 of its
#: 7,070 pixels differ, 16 of them outside the data's mask); the instrument's own range is about
#: 3°–135° in the horizontal plane.
ARCS_TWO_THETA = (2.4, 134.7)


def direct_geometry_coverage(incident_energy: float, energies, q, two_theta=ARCS_TWO_THETA, energy_width=None,
                             q_width=None) -> np.ndarray:
    """Which pixels (E, |Q|) of a direct-geometry spectrometer's data are measured: (E, Q) bool for
    pixel centres ``energies`` (meV) and ``q`` (Å⁻¹), a pixel counting when any part of it (widths
    ``energy_width`` meV and ``q_width`` Å⁻¹; default the grids' steps) lies within the kinematic
    limits of :func:`direct_geometry_q_range` for detectors at ``two_theta`` (min, max) degrees."""
    E = np.asarray(energies, dtype=float)
    Q = np.asarray(q, dtype=float)
    dE = float(np.median(np.diff(E))) if energy_width is None else float(energy_width)
    dQ = float(np.median(np.diff(Q))) if q_width is None else float(q_width)
    lo = [direct_geometry_q_range(incident_energy, E + s * dE / 2, *two_theta) for s in (-1, 1)]
    q_lo = np.fmin(lo[0][0], lo[1][0])
    q_hi = np.fmax(lo[0][1], lo[1][1])
    return (Q[None] + dQ / 2 > q_lo[:, None]) & (Q[None] - dQ / 2 < q_hi[:, None])


#: Flight paths of ARCS (m): moderator → Fermi chopper, Fermi chopper → sample, sample → detectors
#: (Abernathy et al., Rev. Sci. Instrum. 83, 015114 (2012): moderator–sample 13.6 m, the Fermi
#: chopper 11.6 m from the moderator, detectors at 3.0 m).
ARCS_DISTANCES = (11.6, 2.0, 3.0)


def chopper_resolution(incident_energy: float, moderator_us: float, chopper_us: float,
                       distances=ARCS_DISTANCES) -> Callable[[torch.Tensor], torch.Tensor]:
    """FWHM(ε) (meV) of a direct-geometry chopper spectrometer at energy transfer ε, as a callable
    for ``resolution=`` (:func:`as_resolution`).

    The time-of-flight propagation of the two timing uncertainties (Windsor, *Pulsed Neutron
    Scattering*, Taylor & Francis 1981, ch. 7; the "flat" model of PyChop): a neutron leaves the
    moderator within ``moderator_us`` (FWHM, μs) and passes the Fermi chopper within ``chopper_us``
    (its opening time, FWHM μs); with flight paths L₁ (moderator → chopper), L₂ (chopper → sample),
    L₃ (sample → detector) and speeds v_i, v_f (E_f = E_i − ε), first-order propagation to the
    energy transfer gives

        ΔE = (m_n / L₁) √{ [v_i³ + v_f³ L₂/L₃]² Δt_m² + [v_i³ + v_f³ (L₁ + L₂)/L₃]² Δt_c² },

    largest at the elastic line and falling as ε → E_i. ε ≥ E_i is outside the kinematic range
    (E_f is floored at 10⁻³ E_i there). The timing widths depend on the chopper's frequency and
    slit package and the moderator; give them, or calibrate them on the data (a vanadium or
    elastic line, or the spectra themselves, as ``benchmarks/al_arcs.py`` does)."""
    Ei = float(incident_energy)
    L1, L2, L3 = (float(d) for d in distances)
    if not (Ei > 0 and L1 > 0 and L2 >= 0 and L3 > 0):
        raise ValueError(f"the incident energy (meV) and the distances (m) must be positive, got {Ei}, {distances}")
    if not (0 <= moderator_us < np.inf and 0 <= chopper_us < np.inf and moderator_us + chopper_us > 0):
        raise ValueError(f"the timing widths must be non-negative μs, not both 0: got {moderator_us}, {chopper_us}")
    return ChopperFWHM(Ei, float(moderator_us), float(chopper_us), L1, L2, L3)


@dataclass(frozen=True)
class ChopperFWHM:
    """FWHM(ε) meV of :func:`chopper_resolution`: a callable that can be pickled (sent to worker
    processes with the observable that holds it)."""

    incident_energy: float
    moderator_us: float
    chopper_us: float
    L1: float
    L2: float
    L3: float

    def __call__(self, eps):
        J_PER_MEV = _c.e * 1e-3
        Ei, L1, L2, L3 = self.incident_energy, self.L1, self.L2, self.L3

        def speed(E):  # m/s for E in meV
            return torch.sqrt(2 * E * J_PER_MEV / _c.m_n)

        eps = torch.as_tensor(eps)
        vi = speed(torch.full_like(eps, Ei))
        vf = speed((Ei - eps).clamp(min=1e-3 * Ei))
        a = (vi**3 + vf**3 * L2 / L3) * self.moderator_us * 1e-6
        b = (vi**3 + vf**3 * (L1 + L2) / L3) * self.chopper_us * 1e-6
        return _c.m_n / L1 * torch.sqrt(a**2 + b**2) / J_PER_MEV


class SQEPoints(Observable):
    """The coherent one-phonon S(Q, E) (mbarn/meV per atom; ``kind="chi"``: χ''(Q, E)) of a single
    crystal at points (``q[p]`` Cartesian Å⁻¹, ``energy[p]`` meV): shape (P,). ``resolution``: the
    energy FWHM (meV, a number, polynomial or callable such as
    :func:`xtds.observables.neutron.sqe.chopper_resolution`). Points sharing a Q (a constant-Q scan) share one
    eigen-decomposition: the spectra are computed on the distinct Q × distinct E and gathered."""

    stochastic = False

    def __init__(self, model, q, energy, temperature: float, resolution=1.0, kind: str = "sqe", dw=None,
                 dtype=torch.float64, device=None):
        self.model, self.temperature = model, check_temperature(temperature)
        self.q = check_points_q(q, "q")
        self.energy = np.asarray(energy, dtype=float).reshape(-1)
        if self.energy.shape != (len(self.q),) or not np.all(np.isfinite(self.energy)):
            raise ValueError(f"give one finite energy transfer (meV) per q-point: shape {self.energy.shape} for "
                             f"{len(self.q)} points")
        if kind not in ("sqe", "chi"):
            raise ValueError(f"kind must be 'sqe' or 'chi', got {kind!r}")
        as_resolution(resolution)  # validates
        self.kind, self.resolution, self.dw = kind, resolution, dw
        self.point_energy = self.energy
        self._qu, self._qi = np.unique(self.q.round(12), axis=0, return_inverse=True)
        self._eu, self._ei = np.unique(self.energy, return_inverse=True)
        self._qi, self._ei = self._qi.reshape(-1), self._ei.reshape(-1)
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return len(self.q)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        S = coherent_sqe(self.model, phi, self._qu, self._eu, self.temperature, resolution=self.resolution,
                         dw=self.dw)  # (Qu, Eu)
        if self.kind == "chi":
            S = chi_from_sqe(S, self._eu, self.temperature)
        return S[torch.as_tensor(self._qi, device=S.device), torch.as_tensor(self._ei, device=S.device)]

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        return self._qu
