"""Molecular-dynamics truth for anharmonic TDS.

A classical MD run of a crystal (:func:`run_md`, asap3's EMT potentials with ASE's Langevin
integrator), the exact mean intensity of its frames on the supercell's reciprocal grid
(:func:`md_intensity`, with finufft) and its covariance-defined effective harmonic constants
(:func:`effective_constants`: k_BT C(k)⁻¹ projected on an :class:`~xtds.IFCModel`'s basis).
Together they are the truth against which the harmonic and the anharmonic TDS models are judged
(``benchmarks/anharmonic_md.py``, docs/anharmonic.md). asap3 and ASE are optional: ``pip install
xtds[md]``.
"""

from xtds.md.cumulants import measured_bond_constants, measured_cumulants
from xtds.md.effective import effective_constants, frame_covariance
from xtds.md.intensity import gaussian_intensity, md_intensity
from xtds.md.trajectory import Trajectory, equilibrium_lattice_constant, run_md

__all__ = ["Trajectory", "run_md", "equilibrium_lattice_constant", "md_intensity", "effective_constants",
           "measured_cumulants", "measured_bond_constants", "frame_covariance", "gaussian_intensity"]
