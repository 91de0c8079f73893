"""Amortized inference: simulate training sets with the differentiable forward model, train networks
that map a measured observable to force constants, and refine their predictions by the fit.

- :mod:`xtds.amortized.training_set`: training sets (stable draws, the instrument's mask and
  normalization, optional temperature draws, zarr with provenance, resumable).
- :mod:`xtds.amortized.networks`: Su & Li's two-stage model (VAE + regressor) and a Gaussian
  amortized posterior, with save/load and checkpoints.
- :mod:`xtds.amortized.refine`: the prediction as the start of the gradient fit.
"""

from xtds.amortized.networks import (
    GaussianPosterior,
    LabelScale,
    PosteriorEnsemble,
    TwoStage,
    load,
    standardized,
    with_temperature,
)
from xtds.amortized.refine import distance_in_errors, refine
from xtds.amortized.training_set import draw_constants, make_training_set

__all__ = ["draw_constants", "make_training_set", "TwoStage", "GaussianPosterior",
           "PosteriorEnsemble", "LabelScale", "load", "refine", "distance_in_errors", "standardized",
           "with_temperature"]
