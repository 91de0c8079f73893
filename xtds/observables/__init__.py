"""Observables: what each kind of data predicts from the force constants φ, and the protocol they share.

- :mod:`~xtds.observables.base`: the protocol :class:`Observable` (what the fit, the series, the
  amortized simulator and the CLI read of a kind of data) and :func:`describe`;
- :mod:`~xtds.observables.scattering`: the one table of scattering factors (X-ray form factors,
  Compton, neutron lengths and cross-sections); :mod:`~xtds.observables.sphere`: orientation
  averages;
- :mod:`~xtds.observables.tds`: single-crystal X-ray TDS (:class:`TDSIntensity`: exact on a
  :class:`PeriodicSupercell` or an :class:`InfiniteCrystal`, one phonon, sampled), its grouped
  settings :class:`TDSModel`, corrections, the powder X-ray TDS :class:`PowderIntensity` and
  :func:`simulate` on a volume's grid;
- :mod:`~xtds.observables.neutron`: coherent S(Q, E) (:class:`SQEPoints`), powder spectra
  (:class:`PowderSpectrum`) and the multiphonon terms;
- :mod:`~xtds.observables.dispersion`: measured phonon frequencies (:class:`DispersionPoints`).

Intensities are in electrons² per primitive cell; q is Cartesian, Å⁻¹, 2π included.
"""

from xtds.observables.base import Observable, describe
from xtds.observables.dispersion import DispersionPoints
from xtds.observables.neutron.powder import PowderSpectrum
from xtds.observables.neutron.sqe import SQEPoints
from xtds.observables.tds.intensity import METHODS, TDSIntensity, TDSModule, tds_intensity
from xtds.observables.tds.powder import PowderIntensity
from xtds.observables.tds.sampled import sample_displacements, sampled_intensity
from xtds.observables.tds.settings import TDSModel
from xtds.observables.tds.simulate import simulate
from xtds.thermal.geometry import InfiniteCrystal, PeriodicSupercell, auto_geometry, supercell_q_grid

__all__ = [
    "Observable",
    "describe",
    "tds_intensity",
    "TDSIntensity",
    "TDSModel",
    "TDSModule",
    "PowderSpectrum",
    "PowderIntensity",
    "SQEPoints",
    "DispersionPoints",
    "PeriodicSupercell",
    "InfiniteCrystal",
    "auto_geometry",
    "supercell_q_grid",
    "sample_displacements",
    "sampled_intensity",
    "simulate",
    "METHODS",
]
