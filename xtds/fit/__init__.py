"""IFC fitting: losses (:mod:`xtds.fit.losses`), optimizers with checkpoints
(:mod:`xtds.fit.optimize`) and the end-to-end :func:`fit` (:mod:`xtds.fit.core`)."""

from xtds.fit.core import auto_geometry, fit, fit_points, simulate

__all__ = ["fit", "fit_points", "simulate", "auto_geometry"]
