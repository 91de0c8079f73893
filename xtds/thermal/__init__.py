"""Thermal displacements of a harmonic crystal: where they are computed, their covariances, their
spectral functions and the Debye–Waller factor.

- :mod:`~xtds.thermal.geometry`: a periodic supercell or an infinite crystal (the k-grids);
- :mod:`~xtds.thermal.covariance`: C(k) = ⟨u u†⟩(k), classical and quantum, and on the lattice;
- :mod:`~xtds.thermal.spectral`: spectral sums f(D) with derivatives finite at degeneracies;
- :mod:`~xtds.thermal.debye_waller`: the one Debye–Waller factor, classical and quantum.

These are what every observable (X-ray TDS, neutron S(Q, E), powder spectra) is built from.
"""

from xtds.thermal.geometry import InfiniteCrystal, PeriodicSupercell, auto_geometry, supercell_q_grid

__all__ = ["PeriodicSupercell", "InfiniteCrystal", "auto_geometry", "supercell_q_grid"]
