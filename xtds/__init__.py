"""xtds: interatomic force constants and phonons from X-ray thermal diffuse scattering.

Conventions (units, 2π, IFC naming, signs): see ``docs/conventions.md``; the layers of the
package and the data flow: ``docs/architecture.md``.
"""

from xtds import accessor as _accessor  # registers ds.tds  # noqa: F401
from xtds._version import __version__
from xtds.crystal import PRESETS, Crystal
from xtds.errors import UnstableError
from xtds.fitting import (
    LM,
    Adam,
    Background,
    Problem,
    diagnostics,
    fit,
    fit_points,
    fit_problems,
    fit_series,
    open_fit,
)
from xtds.ifc import IFCInfo, IFCModel
from xtds.io import open_volume, write_volume
from xtds.kpath import KPath, standard_path
from xtds.laue import LaueGroup
from xtds.model import InfiniteCrystal, PeriodicSupercell, TDSIntensity, simulate, tds_intensity
from xtds.phonons import StabilityReport, dispersion, dos, elastic_constants, sound_speeds, stability
from xtds.supercell import Supercell, supercell_hessian

__all__ = [
    "__version__",
    "Crystal",
    "PRESETS",
    "IFCModel",
    "IFCInfo",
    "LaueGroup",
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
    "Background",
    "diagnostics",
    "open_volume",
    "write_volume",
    "tds_intensity",
    "TDSIntensity",
    "PeriodicSupercell",
    "InfiniteCrystal",
    "simulate",
    "fit",
    "fit_points",
    "fit_series",
    "fit_problems",
    "open_fit",
    "Problem",
    "LM",
    "Adam",
]
