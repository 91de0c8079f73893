"""Amortize, then refine: a network's prediction as the start of the gradient fit.

The network's answer carries its amortization error (what it learned imperfectly, and what the
measurement has that the simulations lack); the fit from there removes it, usually in fewer
iterations than from a reference, and gives the Gauss–Newton errors of the refined constants.
"""

from __future__ import annotations

import numpy as np

__all__ = ["refine"]


def refine(problems, model, predicted, **fit_options):
    """Fit ``problems`` (a :class:`~xtds.fitting.Problem` or a list) from the ``predicted``
    constants (a vector of the model's free constants, eV/Å², or a dict).

    Returns the fit's result Dataset (:func:`xtds.fitting.core.fit_problems`) with attrs
    ``amortized`` (JSON: the predicted constants) and ``amortized_loss`` (the loss at the
    prediction, with the scale and background at their least-squares values: the raw amortized
    answer's misfit, to compare with the refined ``loss``).

    The refined optimum is independent of the start only if the objective is: a
    :class:`~xtds.model.powder.PowderSpectrum` with adaptive broadening makes its widths at its
    ``reference`` constants, else at the first evaluation (the start). Give the observable
    ``reference=`` (e.g. the training set's reference) to compare refinements from different starts.
    """
    import json

    from xtds.fitting.core import fit_problems

    problems = list(problems) if isinstance(problems, (list, tuple)) else [problems]
    start = predicted if isinstance(predicted, dict) else dict(zip(model.names, np.asarray(predicted, dtype=float),
                                                                     strict=True))
    res = fit_problems(problems, start, **fit_options)
    res.attrs["amortized"] = json.dumps({k: float(v) for k, v in start.items()})
    res.attrs["amortized_loss"] = float(res["loss"].values[0])
    return res
