"""Phonon linewidths: anharmonic damping of the modes in neutron spectra, fitted with the constants.

A harmonic mode is a line at ±ε; anharmonicity (the decay of a phonon into two, the scattering of
phonons by phonons) damps it. The damped harmonic oscillator (DHO) of damping Γ replaces each
mode's δ(E ∓ ε) by

    (1/π) 2εEΓ / [(E² − ε²)² + E²Γ²]  →  two Lorentzians of FWHM Γ at ±ε  (Γ ≪ ε),

with the harmonic weights [n(ε) + 1] and n(ε). xtds uses that Γ ≪ ε form (the DHO's asymmetry and
its shift of the peak to √(ε² − Γ²/4) are of order (Γ/ε)²: 10⁻³ for Al at 640 K, where Γ/ε ≈ 0.03),
applied to the spectrum already broadened by the instrument: a Lorentzian of FWHM Γ(|E'|) convolved
with a Gaussian of the resolution is the Voigt line of each mode, and because Γ depends on the
mode's energy only, the convolution acts on the spectrum's energy axis,

    S(Q, E) = ∫ S₀(Q, E') L(E − E'; Γ(|E'|)) dE',

with S₀ the spectrum without damping (coherent, incoherent and multiphonon terms) on a fine energy
grid (:func:`fine_energies`) and L integrated exactly over each cell of it (arctan differences), so
that Γ → 0 gives S₀ back exactly.

The damping is parameterized by few physical parameters (:class:`Linewidths`):

    Γ(ε, T) = (T / T_ref) Σ_p γ_p (ε / ε_s)^p          (meV, FWHM),

γ_p in meV; the default p = 1 is Γ ∝ ε T, the high-temperature three-phonon law of acoustic modes
(Γ ∝ T from the occupation of the decay products, ∝ ε from the phase space at small ε).

The factor T/T_ref is the classical limit of the occupation of the decay products. A mode of
energy ε decays most often into two of about ε/2 (Klemens 1966), at a rate ∝ 1 + 2n(ε/2) =
coth(ε/4k_BT), which stays finite as T → 0 (spontaneous decay). ``temperature_law="klemens"``
replaces T/T_ref by

    g(ε, T) = (ε / 4k_BT_ref) coth(ε / 4k_BT)  →  T/T_ref  (k_BT ≫ ε/4),   ε/4k_BT_ref  (T → 0),

so the γ_p keep their meaning at high temperature and a fit across temperatures need not read a
width that does not vanish at low T as a larger γ_p (at 50 K, ε = 30 meV: g = 0.31 against
T/T_ref = 0.17).

Branch families (``branches=True``): longitudinal and transverse modes damp at their own rates
(phono3py's aluminium: X_T ten times narrower than X_L). Each family has its own γ_p (names
``gamma1_T``, ``gamma1_L``, …); the coherent one-phonon spectrum is split into the part seen
through the longitudinal projection of Q on each mode's reduced wave vector k̂,
S_L = Σ |(Q·k̂)(k̂·e)|² …, and the rest S − S_L, which are the longitudinal and transverse modes'
shares exactly where the modes are purely one or the other (the high-symmetry lines of a
monatomic crystal) and a split of mixed modes by their projections elsewhere; S_L is damped with
Γ_L, S − S_L with Γ_T, and the incoherent and multiphonon terms (no crystal momentum) with the
mode average (2Γ_T + Γ_L)/3. The γ_p
join the force constants as parameters of :class:`LinewidthIFC` (names ``gamma1`` …, unit meV), so a
fit returns them with errors, constraints and priors apply to them, and a joint fit of several
temperatures shares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.lattice.crystal import Crystal
from xtds.lattice.ifc import ExtendedIFCModel, IFCInfo, IFCModel

__all__ = ["Linewidths", "LinewidthIFC", "fine_energies", "lorentzian_kernel"]


@dataclass(frozen=True)
class Linewidths:
    """Γ(ε, T) = (T/T_ref) Σ_p γ_p (ε/ε_s)^p (meV FWHM): the ``powers`` p (default (1,): Γ ∝ εT),
    ``reference_temperature`` T_ref (K), ``energy_scale`` ε_s (meV); ``margin`` (meV) how far
    beyond the data's energies the undamped spectrum is computed (the sources of the Lorentzian
    tails that reach the data) and ``step`` (meV) the fine grid's largest spacing;
    ``temperature_law`` ``"linear"`` (T/T_ref, above) or ``"klemens"`` (the occupation of two decay
    products of ε/2, the module docstring: the same at high T, finite as T → 0); ``branches``
    separate γ_p for the transverse and longitudinal modes (the module docstring)."""

    powers: tuple = (1,)
    reference_temperature: float = 300.0
    energy_scale: float = 10.0
    margin: float = 10.0
    step: float = 0.25
    temperature_law: str = "linear"
    branches: bool = False

    def __post_init__(self):
        powers = tuple(int(p) for p in np.atleast_1d(self.powers))
        if not powers or len(set(powers)) != len(powers) or min(powers) < 0:
            raise ValueError(f"Linewidths(powers=...) must be distinct non-negative integers, got {self.powers!r}")
        object.__setattr__(self, "powers", powers)
        for name in ("reference_temperature", "energy_scale", "step"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"Linewidths({name}=...) must be positive, got {getattr(self, name)!r}")
        if not float(self.margin) >= 0:
            raise ValueError(f"Linewidths(margin=...) must be non-negative meV, got {self.margin!r}")
        if self.temperature_law not in ("linear", "klemens"):
            raise ValueError(f"Linewidths(temperature_law=...) must be 'linear' (Γ ∝ T) or 'klemens' (Γ ∝ "
                             f"1 + 2n(ε/2)), got {self.temperature_law!r}")

    @property
    def names(self) -> tuple[str, ...]:
        if self.branches:
            return tuple(f"gamma{p}_{b}" for b in ("T", "L") for p in self.powers)
        return tuple(f"gamma{p}" for p in self.powers)

    def width(self, gamma: torch.Tensor, eps: torch.Tensor, temperature: float, branch: str | None = None
              ) -> torch.Tensor:
        """Γ (meV FWHM) at mode energies ``eps`` (meV, any shape) for parameters ``gamma`` (meV, in
        the order of :attr:`names`); with ``branches``, of the family ``branch`` ("T", "L"), or
        their mode average (2Γ_T + Γ_L)/3 for None."""
        if self.branches:
            n = len(self.powers)
            if branch is None:
                return (2 * self.width(gamma, eps, temperature, "T") + self.width(gamma, eps, temperature, "L")) / 3
            if branch not in ("T", "L"):
                raise ValueError(f"branch must be 'T', 'L' or None, got {branch!r}")
            gamma = gamma[:n] if branch == "T" else gamma[n:]
        x = eps.abs() / self.energy_scale
        out = torch.zeros_like(x)
        for g, p in zip(gamma, self.powers, strict=True):
            out = out + g * x**p
        return out * self.occupation(eps, temperature)

    def occupation(self, eps: torch.Tensor, temperature: float) -> torch.Tensor:
        """The temperature factor at mode energies ``eps`` (meV): T/T_ref (``"linear"``) or
        (ε/4k_BT_ref) coth(ε/4k_BT) (``"klemens"``; T/T_ref at ε = 0)."""
        T, T_ref = float(temperature), float(self.reference_temperature)
        if self.temperature_law == "linear":
            return torch.full_like(eps, T / T_ref, dtype=eps.dtype)
        from xtds.units import KB_EV_PER_K

        y = eps.abs() / (4e3 * KB_EV_PER_K * T)  # ε / 4k_BT
        small = y < 1e-6
        safe = torch.where(small, torch.ones_like(y), y)
        ycoth = torch.where(small, 1.0 + y**2 / 3, safe / torch.tanh(safe))  # y coth y, smooth at 0
        return ycoth * (T / T_ref)


class LinewidthIFC(ExtendedIFCModel):
    """Harmonic force constants plus the linewidth parameters γ_p of :class:`Linewidths`.

    ``names``: the constants (eV/Å²), then ``gamma1`` … (meV); ``n_harmonic`` how many are force
    constants; ``units`` per name. The γ do not enter the dynamical matrix (zero columns of the
    basis); neutron observables (:class:`xtds.observables.neutron.powder.PowderSpectrum`) read them.

    >>> from xtds import Crystal
    >>> m = LinewidthIFC(Crystal.fcc("Al", a=4.05), shells=2, linewidths=Linewidths())
    >>> m.names, m.units[-1]
    (('b0', 'b1', 'b2', 'c0', 'c1', 'gamma1'), 'meV')
    """

    extra_units_note = "meV linewidths"
    settings_attr = "linewidths"

    def __init__(self, crystal: Crystal, shells: int | None = None, cutoff: float | None = None,
                 linewidths: Linewidths | None = None):
        super().__init__(crystal, shells=shells, cutoff=cutoff)
        self.linewidths = Linewidths() if linewidths is None else linewidths
        if not isinstance(self.linewidths, Linewidths):
            raise TypeError(f"linewidths must be an xtds Linewidths(...), got {self.linewidths!r}")
        sp = self.primitive.species
        self._append([IFCInfo(name=n, shell=0, distance=0.0, sites=(0, 0), species=(sp[0], sp[0]),
                              neighbour=(0.0, 0.0, 0.0), element="Γ", count=0, derived=False)
                      for n in self.linewidths.names], ["meV"] * len(self.linewidths.names))

    @classmethod
    def of(cls, model: IFCModel, linewidths: Linewidths) -> LinewidthIFC:
        """The model with linewidths over the same harmonic constants as ``model``."""
        out = cls(model.crystal, cutoff=model.cutoff, linewidths=linewidths)
        out.nac_lambda, out.nac_factor = model.nac_lambda, model.nac_factor
        return out

    def width(self, phi: torch.Tensor, eps: torch.Tensor, temperature: float, branch: str | None = None
              ) -> torch.Tensor:
        """Γ(ε, T) (meV FWHM) at mode energies ``eps`` for the parameters in ``phi`` (of the family
        ``branch`` with ``Linewidths(branches=True)``, :meth:`Linewidths.width`)."""
        return self.linewidths.width(phi[self.n_harmonic :], eps, temperature, branch)


def fine_energies(energies, step: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """A uniform grid (meV) that holds every one of ``energies`` (uniform, or else an error) and
    extends ``margin`` beyond them, with spacing ≤ ``step`` (the data's spacing divided by an
    integer); and the index of each data energy in it."""
    E = np.asarray(energies, dtype=float)
    if len(E) < 2:
        raise ValueError("linewidths need at least two energies")
    d = np.diff(E)
    if np.any(d <= 0) or np.ptp(d) > 1e-6 * d.mean():
        raise ValueError("linewidths need uniformly spaced, increasing energies (the fine grid holds them)")
    r = max(1, int(np.ceil(d.mean() / step - 1e-9)))
    h = d.mean() / r
    pad = int(np.ceil(margin / h))
    idx = np.arange(len(E)) * r + pad
    grid = E[0] + (np.arange(idx[-1] + pad + 1) - pad) * h
    return grid, idx


def lorentzian_kernel(out_energies: torch.Tensor, grid: torch.Tensor, fwhm: torch.Tensor) -> torch.Tensor:
    """K (E_out, G): ∫ over cell j of the grid of a Lorentzian of FWHM ``fwhm``[j] centred on
    ``grid``[j], at each output energy: (1/π)[atan(2(a + h/2)/Γ) − atan(2(a − h/2)/Γ)], a = E − x_j.
    Written as atan of Γ/(2(a ± h/2)), smooth at Γ = 0 where it becomes the identity on grid
    points (output energies must lie on the grid, never on a cell edge)."""
    h = grid[1] - grid[0]
    a = out_energies[:, None] - grid[None, :]
    g = fwhm.clamp(min=0)[None, :]

    def half_atan(x):  # atan(2x/Γ) = sign(x) π/2 − atan(Γ/(2x)) for x ≠ 0
        return torch.sign(x) * (np.pi / 2) - torch.atan(g / (2 * x))

    return (half_atan(a + h / 2) - half_atan(a - h / 2)) / np.pi
