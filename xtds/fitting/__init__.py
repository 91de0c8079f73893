"""IFC fitting: the objective, the optimizers, the covariance and the result of a fit.

- :mod:`~xtds.fitting.problem`: a :class:`Problem` (an observable, its data, the loss and the
  nuisance terms: :mod:`~xtds.fitting.losses`, :mod:`~xtds.fitting.background`);
- :mod:`~xtds.fitting.objective`, :mod:`~xtds.fitting.fit`: a sum of problems sharing one vector of
  force constants, minimized by an :class:`Optimizer` (:mod:`~xtds.fitting.optimizers`:
  :class:`LM`, :class:`Adam`, checkpoints);
- :mod:`~xtds.fitting.covariance`, :mod:`~xtds.fitting.derived`, :mod:`~xtds.fitting.result`:
  the errors, the derived phonons with theirs, the labelled result and :func:`open_fit`;
- :mod:`~xtds.fitting.tds`: volumes and points of TDS (:func:`fit`, ``ds.tds.fit``) with the
  grouped settings of :mod:`~xtds.fitting.settings`; :mod:`~xtds.fitting.series`,
  :mod:`~xtds.fitting.joint`: series of volumes, separately in parallel or jointly;
- :mod:`~xtds.fitting.diagnostics`: residuals against |q| and the distance to Bragg peaks.
"""

from xtds.fitting.adam import Adam
from xtds.fitting.background import Background
from xtds.fitting.compare import compare_fits
from xtds.fitting.diagnostics import diagnostics
from xtds.fitting.fit import fit_problems
from xtds.fitting.joint import fit_joint_series
from xtds.fitting.lm import LM
from xtds.fitting.objective import Objective
from xtds.fitting.optimizers import Optimizer
from xtds.fitting.problem import Problem
from xtds.fitting.result import FitResult, open_fit
from xtds.fitting.series import fit_series
from xtds.fitting.settings import Constraints, Errors, Preparation
from xtds.fitting.tds import fit, fit_points, points_problem

__all__ = [
    "compare_fits",
    "fit",
    "fit_series",
    "fit_joint_series",
    "fit_points",
    "fit_problems",
    "points_problem",
    "Problem",
    "Objective",
    "Optimizer",
    "LM",
    "Adam",
    "Preparation",
    "Errors",
    "Constraints",
    "open_fit",
    "FitResult",
    "Background",
    "diagnostics",
]
