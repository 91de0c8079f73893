"""The lattice-dynamics core: the crystal, its symmetry, the force-constant model and its phonons.

- :mod:`~xtds.lattice.crystal`: lattice, basis, species, masses, space group, r.l.u. ↔ Å⁻¹;
- :mod:`~xtds.lattice.symmetry`, :mod:`~xtds.lattice.laue`, :mod:`~xtds.lattice.kmesh`: space-group
  operations, the Laue group and its orbits, the one reduction of a k-mesh to its irreducible points;
- :mod:`~xtds.lattice.ifc`: the symmetry-reduced force-constant model (sympy, once);
  :mod:`~xtds.lattice.minimum_image`: imported supercell constants as they are (minimum images);
- :mod:`~xtds.lattice.dynamics`: H(k), D(k) and frequencies (torch, differentiable);
  :mod:`~xtds.lattice.nac`: the dipole–dipole term of polar crystals;
  :mod:`~xtds.lattice.supercell`: the Hessian of a periodic supercell;
- :mod:`~xtds.lattice.kpath`, :mod:`~xtds.lattice.phonons`, :mod:`~xtds.lattice.elastic`,
  :mod:`~xtds.lattice.stability`: k-paths, dispersion, DOS, elastic constants, the one stability
  check.

Nothing here knows of scattering, data or fitting.
"""

from xtds.lattice.crystal import PRESETS, Crystal, as_crystal
from xtds.lattice.ifc import IFCInfo, IFCModel
from xtds.lattice.kpath import KPath, standard_path
from xtds.lattice.laue import LaueGroup
from xtds.lattice.minimum_image import MinimumImageIFC
from xtds.lattice.phonons import dispersion, dos, elastic_constants, sound_speeds
from xtds.lattice.stability import StabilityReport, stability
from xtds.lattice.supercell import Supercell, supercell_hessian

__all__ = ["Crystal", "PRESETS", "as_crystal", "IFCModel", "IFCInfo", "MinimumImageIFC", "KPath", "standard_path",
           "LaueGroup", "dispersion", "dos", "elastic_constants", "sound_speeds", "stability", "StabilityReport",
           "Supercell", "supercell_hessian"]
