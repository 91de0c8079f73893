"""xtds: interatomic force constants and phonons from X-ray thermal diffuse scattering.

The package in layers (``docs/architecture.md``): :mod:`xtds.lattice` (crystal, symmetry, force
constants, phonons), :mod:`xtds.thermal` (displacement covariances, Debye–Waller),
:mod:`xtds.observables` (what each kind of data predicts), :mod:`xtds.volume` and :mod:`xtds.io`
(beamline volumes), :mod:`xtds.fitting` (the fit) and :mod:`xtds.amortized`. Conventions (units,
2π, IFC naming, signs): ``docs/conventions.md``.
"""

from xtds import accessor as _accessor  # registers ds.tds  # noqa: F401
from xtds import datasets  # noqa: F401 - xtds.datasets.paper_ni_crystal() and the shipped data sets
from xtds._version import __version__
from xtds.errors import UnstableError
from xtds.fitting import (
    LM,
    Adam,
    Background,
    Constraints,
    Errors,
    Optimizer,
    Preparation,
    Problem,
    compare_fits,
    diagnostics,
    fit,
    fit_points,
    fit_problems,
    fit_series,
    open_fit,
)
from xtds.io import open_volume, write_volume
from xtds.lattice import (
    PRESETS,
    Crystal,
    IFCInfo,
    IFCModel,
    KPath,
    LaueGroup,
    StabilityReport,
    Supercell,
    dispersion,
    dos,
    elastic_constants,
    sound_speeds,
    stability,
    standard_path,
    supercell_hessian,
)
from xtds.observables import (
    InfiniteCrystal,
    Observable,
    PeriodicSupercell,
    TDSIntensity,
    TDSModel,
    simulate,
    tds_intensity,
)
from xtds.observables.neutron.linewidth import LinewidthIFC, Linewidths
from xtds.observables.tds.anharmonic import Anharmonic, AnharmonicIFC

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
    "Observable",
    "tds_intensity",
    "TDSIntensity",
    "TDSModel",
    "Anharmonic",
    "AnharmonicIFC",
    "Linewidths",
    "LinewidthIFC",
    "PeriodicSupercell",
    "InfiniteCrystal",
    "simulate",
    "fit",
    "fit_points",
    "fit_series",
    "fit_problems",
    "compare_fits",
    "open_fit",
    "Problem",
    "Preparation",
    "Errors",
    "Constraints",
    "Optimizer",
    "LM",
    "Adam",
]
