"""Amortize, then refine: a network's prediction as the start of the gradient fit.

The network's answer carries its amortization error (what it learned imperfectly, and what the
measurement has that the simulations lack); the fit from there removes it, usually in fewer
iterations than from a reference, and gives the Gauss–Newton errors of the refined constants.
"""

from __future__ import annotations

import numpy as np

__all__ = ["distance_in_errors", "refine"]


def distance_in_errors(result, constants: dict) -> float:
    """The Mahalanobis distance √(δᵀ C⁻¹ δ) of ``constants`` (a dict name → eV/Å² of free
    constants, e.g. a start) from a fit's refined constants, C their covariance (``ifc_cov``):
    how many standard errors the start lies from the optimum. Unlike a count of iterations it is
    continuous, so it ranks two starts of one fit even where both take the same number of
    iterations. Give the free constants only: a derived one (a0 …, fixed by the sum rule) makes C
    singular."""
    names = list(constants)
    known = {str(n) for n in result["ifc"]["constant"].values}
    missing = [n for n in names if n not in known]
    if missing or not names:
        raise ValueError(f"the fit has no constants {missing or '(none given)'}: give some of {sorted(known)}")
    d = np.array([float(constants[n]) for n in names]) - result["ifc"].sel(constant=names).values
    C = result["ifc_cov"].sel(constant=names, constant_=names).values
    w = np.linalg.eigvalsh(C)
    if not w[0] > 1e-10 * w[-1]:  # a derived constant is a combination of the others
        raise ValueError(f"the covariance of {names} is singular: leave out derived constants (a0 …)")
    return float(np.sqrt(d @ np.linalg.solve(C, d)))


def refine(problems, model, predicted, **fit_options):
    """Fit ``problems`` (a :class:`~xtds.fitting.Problem` or a list) from the ``predicted``
    constants (a vector of the model's free constants, eV/Å², or a dict).

    Returns the fit's result Dataset (:func:`xtds.fitting.fit.fit_problems`) with attrs
    ``amortized`` (JSON: the predicted constants), ``amortized_loss`` (the loss at the
    prediction, with the scale and background at their least-squares values: the raw amortized
    answer's misfit, to compare with the refined ``loss``) and ``amortized_distance`` (how far the
    prediction's free constants lie from the refined ones, in their standard errors:
    :func:`distance_in_errors`; NaN, with ``amortized_distance_note`` saying why, where their
    covariance is singular).

    The refined optimum is independent of the start only if the objective is: a
    :class:`~xtds.observables.neutron.powder.PowderSpectrum` with adaptive broadening makes its widths at its
    ``reference`` constants, else at the first evaluation (the start). Give the observable
    ``reference=`` (e.g. the training set's reference) to compare refinements from different starts.
    """
    import json

    from xtds.fitting.fit import fit_problems

    problems = list(problems) if isinstance(problems, (list, tuple)) else [problems]
    start = predicted if isinstance(predicted, dict) else dict(zip(model.names, np.asarray(predicted, dtype=float),
                                                                     strict=True))
    res = fit_problems(problems, start, **fit_options)
    res.attrs["amortized"] = json.dumps({k: float(v) for k, v in start.items()})
    res.attrs["amortized_loss"] = float(res["loss"].values[0])
    try:  # a fit that is done is never lost to its summary: NaN, and why, where C is singular
        res.attrs["amortized_distance"] = distance_in_errors(res, {k: v for k, v in start.items()
                                                                  if k in model.names})
    except ValueError as err:
        res.attrs["amortized_distance"] = float("nan")
        res.attrs["amortized_distance_note"] = str(err)
    return res
