"""Physical constants and unit conversions shared by every module.

All values derive from :mod:`scipy.constants` (CODATA); none is typed in by hand.
The conventions (Å, eV, amu, THz, 2π in q) are those of ``docs/conventions.md``.
"""

from __future__ import annotations

import math

from scipy import constants as _c

#: Boltzmann constant, eV/K.
KB_EV_PER_K: float = _c.k / _c.e

#: Planck constant h in eV·s: ħω in meV = 1e15 · h · ν[THz] … see :data:`MEV_PER_THZ`.
H_EV_S: float = _c.h / _c.e

#: Energy in meV of a phonon of frequency 1 THz (h · 1e12 Hz), ≈ 4.135667696.
MEV_PER_THZ: float = _c.h * 1e12 / _c.e * 1e3

#: Angular frequency in rad/s of an eigenvalue of 1 eV/(Å² amu) of the dynamical matrix.
RAD_PER_S_PER_SQRT_EV_A2_AMU: float = math.sqrt(_c.e / (_c.angstrom**2 * _c.atomic_mass))

#: ħω in eV of an eigenvalue λ = ω² of 1 eV/(Å² amu) of the dynamical matrix (≈ 0.0646).
HBAR_OMEGA_EV: float = H_EV_S / (2.0 * math.pi) * RAD_PER_S_PER_SQRT_EV_A2_AMU

#: Frequency ν in THz for an eigenvalue λ = 1 eV/(Å² amu): ν = sqrt(λ) · this (≈ 15.633302).
THZ_PER_SQRT_EV_A2_AMU: float = RAD_PER_S_PER_SQRT_EV_A2_AMU / (2.0 * math.pi) / 1e12

#: Pressure in GPa of 1 eV/Å³ (≈ 160.2177).
GPA_PER_EV_A3: float = _c.e / _c.angstrom**3 / 1e9

#: Force constant in eV/Å² of 1 N/m (≈ 0.0624150907).
EV_A2_PER_N_M: float = 1.0 / _c.e * _c.angstrom**2

#: Mass density in kg/m³ of 1 amu/Å³.
KG_M3_PER_AMU_A3: float = _c.atomic_mass / _c.angstrom**3

#: h c in keV·Å: the X-ray wavelength λ (Å) = this / E (keV) (≈ 12.398420).
HC_KEV_A: float = _c.h * _c.c / _c.e / 1e3 / _c.angstrom

#: The electron's rest energy m_e c² in keV (≈ 510.999).
ELECTRON_REST_KEV: float = _c.m_e * _c.c**2 / _c.e / 1e3

#: The atomic mass unit in grams.
G_PER_AMU: float = _c.atomic_mass * 1e3

