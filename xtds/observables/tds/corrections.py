"""Experimental corrections applied to the model: polarization and sample absorption.

A measured intensity is the scattering of the sample times factors of the experiment that depend on
the scattering angle 2θ (sin θ = |q|λ/4π). When the reduced volume does not already carry them,
xtds multiplies the model by them (:class:`Corrections`, ``ds.tds.fit(..., corrections=...)``)
rather than dividing the data, so that the data and their uncertainties stay as measured.

- **Polarization.** A synchrotron beam is linearly polarized in the horizontal plane (fraction p).
  For a scattered ray at azimuth φ about the beam (φ = 0 horizontal),
  P = p (1 − sin²2θ cos²φ) + (1 − p)(1 − sin²2θ sin²φ). A voxel of a rotating-crystal volume
  is measured at an azimuth that depends on where its reflection sphere crossed the detector; the
  volume does not record it, so xtds uses the azimuthal average, P = 1 − ½ sin²2θ = (1 + cos²2θ)/2
  (independent of p). With the per-voxel azimuth (from the reduction) the exact factor is
  :func:`polarization_factor` with ``azimuth``.
- **Absorption** by a spherical sample of radius R: A(2θ) = (1/V) ∫ exp(−μ (l_in + l_out)) dV, the
  mean attenuation over the sample of the paths in along the beam and out along the scattered ray
  (independent of the sample's orientation, which is why the sphere is the shape for a rotating
  crystal). μ is the linear attenuation coefficient of the crystal's composition and density from
  xraylib's cross sections (``CS_Total``, cm²/g). The integral is a fixed quasi-random (Sobol)
  quadrature over the sphere.

What the reduction applied: NXrefine transforms the frames to (H, K, L) with CCTW and normalizes by
the monitor; check its settings for polarization and absorption corrections before adding them
here (xtds cannot tell from the volume whether they were applied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xtds.observables.scattering import two_theta
from xtds.units import G_PER_AMU, HC_KEV_A

__all__ = ["Corrections", "polarization_factor", "absorption_factor", "attenuation_coefficient"]

#: Sobol points (2^n) of the absorption quadrature over the sphere.
_SOBOL_LOG2 = 14


def polarization_factor(two_theta_rad, fraction: float = 1.0, azimuth=None) -> np.ndarray:
    """The polarization factor P(2θ) (see the module docstring); ``azimuth`` (radians, 0 =
    horizontal) per point, or None for the azimuthal average."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the polarization fraction must lie in [0, 1], got {fraction}")
    s2 = np.sin(np.asarray(two_theta_rad, dtype=float)) ** 2
    if azimuth is None:
        return 1 - 0.5 * s2
    c2 = np.cos(np.asarray(azimuth, dtype=float)) ** 2
    return fraction * (1 - s2 * c2) + (1 - fraction) * (1 - s2 * (1 - c2))


def attenuation_coefficient(crystal, energy_keV: float) -> float:
    """Linear attenuation coefficient μ (1/mm) of the crystal (composition and density of the cell)
    from xraylib's total cross sections."""
    import xraylib

    from xtds.lattice.crystal import element_of

    mass = np.asarray(crystal.masses, dtype=float)
    sigma = np.array([xraylib.CS_Total(int(element_of(s).number), float(energy_keV)) for s in crystal.species])
    mass_att = float((mass * sigma).sum() / mass.sum())  # cm²/g, mass-fraction weighted
    density = mass.sum() * G_PER_AMU / (crystal.volume * 1e-24)  # g/cm³
    return mass_att * density / 10.0  # 1/cm → 1/mm


def _sphere_points() -> np.ndarray:
    from scipy.stats import qmc

    u = qmc.Sobol(3, scramble=False).random_base2(_SOBOL_LOG2)[1:]  # the first point is the origin corner
    r = np.cbrt(u[:, 0])
    cos_t = 2 * u[:, 1] - 1
    sin_t = np.sqrt(1 - cos_t**2)
    ph = 2 * math.pi * u[:, 2]
    return r[:, None] * np.stack([sin_t * np.cos(ph), sin_t * np.sin(ph), cos_t], 1)


def _exit_length(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance from points p inside the unit sphere to its surface along the unit vector d."""
    pd = p @ d
    return -pd + np.sqrt(pd**2 - (p * p).sum(1) + 1)


def absorption_factor(two_theta_rad, mu_r: float) -> np.ndarray:
    """A(2θ) of a sphere with μR = ``mu_r`` (dimensionless): the mean of exp(−μ(l_in + l_out))
    over the sphere (1 for μR = 0)."""
    if not mu_r >= 0:
        raise ValueError(f"μR must be non-negative, got {mu_r}")
    tt = np.atleast_1d(np.asarray(two_theta_rad, dtype=float))
    p = _sphere_points()
    beam = np.array([0.0, 0.0, 1.0])
    l_in = _exit_length(p, -beam)
    out = np.empty(len(tt))
    uniq, inv = np.unique(np.round(tt, 12), return_inverse=True)
    vals = np.array([np.mean(np.exp(-mu_r * (l_in + _exit_length(p, np.array([math.sin(t), 0.0, math.cos(t)])))))
                     for t in uniq])
    out[:] = vals[inv]
    return out.reshape(np.shape(two_theta_rad))


@dataclass(frozen=True)
class Corrections:
    """Factors of the experiment multiplied into the model (see the module docstring).

    Parameters
    ----------
    wavelength
        Å (NeXus: ``entry/instrument/monochromator/wavelength``, ``ds.attrs['wavelength']``).
    polarization
        Apply the (azimuth-averaged) polarization factor.
    sample_radius
        Radius (mm) of a spherical sample for the absorption factor; None: no absorption factor.
    """

    wavelength: float
    polarization: bool = True
    sample_radius: float | None = None

    def __post_init__(self):
        if not (np.isfinite(self.wavelength) and self.wavelength > 0):
            raise ValueError(f"wavelength must be a positive number of Å, got {self.wavelength!r}")
        if self.sample_radius is not None and not self.sample_radius > 0:
            raise ValueError(f"sample_radius must be positive (mm), got {self.sample_radius!r}")

    @classmethod
    def from_attrs(cls, attrs, **kwargs) -> Corrections:
        """From a volume's attrs: the wavelength its file recorded (``attrs['wavelength']``, Å)."""
        if "wavelength" not in attrs:
            raise ValueError("the volume records no wavelength (attrs['wavelength'], Å): "
                             "give Corrections(wavelength=...)")
        return cls(float(attrs["wavelength"]), **kwargs)

    @property
    def energy_keV(self) -> float:
        return HC_KEV_A / self.wavelength

    def factor(self, crystal, q) -> np.ndarray:
        """The product of the factors at Cartesian q (shape (Q, 3), Å⁻¹): shape (Q,)."""
        tt = two_theta(np.linalg.norm(np.asarray(q, dtype=float).reshape(-1, 3), axis=1), self.wavelength)
        out = np.ones_like(tt)
        if self.polarization:
            out *= polarization_factor(tt)
        if self.sample_radius is not None:
            out *= absorption_factor(tt, attenuation_coefficient(crystal, self.energy_keV) * self.sample_radius)
        return out
