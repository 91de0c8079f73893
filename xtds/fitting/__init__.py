"""IFC fitting: problems (:mod:`xtds.fitting.problem`), losses (:mod:`xtds.fitting.losses`),
optimizers with checkpoints (:mod:`xtds.fitting.optimize`), backgrounds
(:mod:`xtds.fitting.background`), residual diagnostics (:mod:`xtds.fitting.diagnostics`) and the
fit loop (:mod:`xtds.fitting.core`).

``xtds.fit`` is :func:`fit`; this package is its home."""

from xtds.fitting.background import Background
from xtds.fitting.core import Objective, fit, fit_points, fit_problems, points_problem
from xtds.fitting.diagnostics import diagnostics
from xtds.fitting.joint import fit_joint_series
from xtds.fitting.optimize import LM, Adam
from xtds.fitting.problem import Problem
from xtds.fitting.result import FitResult, open_fit
from xtds.fitting.series import fit_series

__all__ = [
    "fit",
    "fit_series",
    "fit_joint_series",
    "fit_points",
    "fit_problems",
    "points_problem",
    "Problem",
    "Objective",
    "LM",
    "Adam",
    "open_fit",
    "FitResult",
    "Background",
    "diagnostics",
]
