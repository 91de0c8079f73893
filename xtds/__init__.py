"""xtds: interatomic force constants and phonons from X-ray thermal diffuse scattering.

Conventions (units, 2π, IFC naming, signs): see ``docs/conventions.md``.
"""

from xtds import accessor as _accessor  # registers ds.tds  # noqa: F401
from xtds._version import __version__
from xtds.crystal import PRESETS, Crystal
from xtds.ifc import IFCInfo, IFCModel
from xtds.io import open_volume, write_volume
from xtds.kpath import KPath, standard_path
from xtds.phonons import (
    StabilityReport,
    UnstableError,
    dispersion,
    dos,
    elastic_constants,
    sound_speeds,
    stability,
)
from xtds.supercell import Supercell, supercell_hessian

__all__ = [
    "__version__",
    "Crystal",
    "PRESETS",
    "IFCModel",
    "IFCInfo",
    "KPath",
    "standard_path",
    "Supercell",
    "supercell_hessian",
    "dispersion",
    "dos",
    "elastic_constants",
    "sound_speeds",
    "stability",
    "StabilityReport",
    "UnstableError",
    "open_volume",
    "write_volume",
]
