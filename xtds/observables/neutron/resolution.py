"""Energy resolution of the direct-geometry chopper spectrometers, from the field's library.

The resolution function of an inelastic neutron spectrometer depends on its moderator, choppers,
flight paths, incident energy and chopper frequencies. The field keeps these models in maintained
libraries; xtds takes them from **resins** (PACE, https://github.com/pace-neutrons/resins), which
holds, for ARCS, SEQUOIA, CNCS, HYSPEC, MAPS, MERLIN, MARI, LET and others, the PyChop models
(Bewley, Ewings, Le, Perring & Voneshen, PyChop 2018; Lin et al., Physica B 562, 26 (2019) for the
SNS instruments) as polynomials σ(ε) in the energy transfer ε for a given instrument, chopper package,
incident energy and frequency. resins was chosen over PyChop itself because it is a small pure-Python
package (numpy, scipy, pyyaml; PyChop lives inside Mantid), it covers every instrument named above
through one interface, and its curves are PyChop's own (fitted to order 4 over 0 ≤ ε < E_i).

:func:`instrument_resolution` returns a picklable FWHM(ε) (meV) for ``resolution=`` of every neutron
observable (:func:`xtds.observables.neutron.sqe.as_resolution`): the same polynomial as resins,
evaluated in torch, with ε held to the polynomial's domain (0 ≤ ε ≤ its upper end, just below E_i)
so that mode energies outside the kinematic range do not meet the polynomial's extrapolation.
:func:`resolution_from_attrs` reads the instrument and incident energy that a data set records.

``pip install xtds[neutron]`` (or ``pip install resins``) provides resins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["instrument_resolution", "resolution_from_attrs", "InstrumentFWHM", "FWHM_PER_SIGMA"]

#: FWHM / σ of a Gaussian, 2√(2 ln 2).
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _resins():
    try:
        import resins
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("instrument resolutions come from the resins library: pip install 'xtds[neutron]' "
                          "(or pip install resins)") from err
    return resins


def _instrument(name: str):
    """The resins Instrument for a name, case-insensitive, with the list of names on a miss."""
    resins = _resins()
    from resins.instrument import INSTRUMENT_MAP

    names = {k.lower(): k for k in INSTRUMENT_MAP}
    key = names.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown instrument {name!r}: resins knows {sorted(INSTRUMENT_MAP)}")
    return resins.Instrument.from_default(key)


@dataclass(frozen=True)
class InstrumentFWHM:
    """FWHM(ε) (meV) of an instrument's resolution at energy transfer ε (meV): the resins/PyChop
    polynomial in power form (``coefficients`` c₀, c₁, … of σ(ε), meV), times 2√(2 ln 2), with ε
    clamped to ``domain`` (meV). A frozen dataclass, so it can be pickled to worker processes.
    ``instrument``, ``incident_energy`` (meV) and ``settings`` (the chopper package and frequencies
    as resins names them) say where it came from."""

    instrument: str
    incident_energy: float
    settings: tuple
    coefficients: tuple
    domain: tuple

    def sigma(self, eps):
        """σ(ε) meV (torch in, torch out; numbers or arrays give a float64 tensor)."""
        eps = torch.as_tensor(eps, dtype=torch.float64) if not isinstance(eps, torch.Tensor) else eps
        x = eps.clamp(min=self.domain[0], max=self.domain[1])
        out = torch.zeros_like(x)
        for c in reversed(self.coefficients):
            out = out * x + c
        return out

    def __call__(self, eps):
        return FWHM_PER_SIGMA * self.sigma(eps)

    def __str__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.settings)
        return f"{self.instrument} Ei = {self.incident_energy:g} meV ({kw}; resins/PyChop)"


def instrument_resolution(instrument: str, incident_energy: float, **settings) -> InstrumentFWHM:
    """The energy resolution FWHM(ε) (meV) of ``instrument`` at ``incident_energy`` (meV).

    ``settings`` are resins' names for the instrument's chopper set-up, e.g. ARCS and SEQUOIA
    ``chopper_package="ARCS-100-1.5-AST"``, ``chopper_frequency=600`` (Hz); MAPS, MARI, MERLIN
    ``chopper_package`` and ``chopper_frequency``; LET ``chopper_package``, ``resolution_frequency``,
    ``pulse_remover_frequency``; CNCS ``chopper_package``, ``resolution_disk_frequency``,
    ``fermi_frequency``. What is not given takes resins' default (named in the error on a bad
    name). A setting without transmission, or an incident energy outside the instrument's range,
    raises ``ValueError`` with resins' reason.

    >>> fwhm = instrument_resolution("ARCS", 50.0, chopper_package="ARCS-100-1.5-AST", chopper_frequency=600)
    >>> round(float(fwhm(0.0)), 3), round(float(fwhm(40.0)), 3)    # meV at the elastic line and 40 meV
    (1.562, 0.847)
    """
    inst = _instrument(instrument)
    Ei = float(incident_energy)
    if not (np.isfinite(Ei) and Ei > 0):
        raise ValueError(f"the incident energy must be a positive number of meV, got {incident_energy!r}")
    model = inst.default_model
    signature = inst.get_model_signature(model)
    allowed = [p for p in signature.parameters if p not in ("model_name", "e_init", "fitting_order", "_")]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"{inst.name} takes the settings {allowed} (resins), not {unknown}; signature: {signature}")
    try:
        rf = inst.get_resolution_function(model, e_init=Ei, **settings)
    except Exception as err:  # resins' own errors: no transmission, out of range, bad package
        raise ValueError(f"resins could not make the {inst.name} resolution at Ei = {Ei:g} meV with {settings}: "
                         f"{err}") from err
    poly = rf.polynomial
    power = poly.convert()  # the same polynomial in powers of ε (domain = window)
    coeffs = tuple(float(c) for c in power.coef)
    used = {k: settings.get(k, signature.parameters[k].default) for k in allowed}
    domain = (float(poly.domain[0]), float(poly.domain[1]))
    return InstrumentFWHM(inst.name, Ei, tuple(sorted(used.items())), coeffs, domain)


def resolution_from_attrs(attrs, **settings) -> InstrumentFWHM:
    """:func:`instrument_resolution` for a data set whose ``attrs`` record ``instrument`` and the
    incident energy (``incident_energy_meV``, ``incident_energy`` or ``Ei``, meV); ``settings``
    give the chopper set-up (files seldom record it). Raises ``KeyError`` naming what is missing."""
    attrs = dict(attrs)
    name = attrs.get("instrument")
    Ei = next((attrs[k] for k in ("incident_energy_meV", "incident_energy", "Ei", "ei") if k in attrs), None)
    missing = [w for w, v in (("instrument", name), ("incident energy (incident_energy_meV)", Ei)) if v is None]
    if missing:
        raise KeyError(f"the data set does not record its {' and '.join(missing)}: call "
                       "instrument_resolution(instrument, incident_energy, ...) with them")
    return instrument_resolution(str(name), float(np.asarray(Ei)), **settings)
