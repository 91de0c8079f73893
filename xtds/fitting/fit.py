"""The fit loop every kind of data goes through: problems → optimizer → covariance → a labelled Dataset.

:func:`fit_problems` takes a list of :class:`~xtds.fitting.problem.Problem` sharing one vector of
force constants (joint fits of volumes, temperatures and kinds of data), an
:class:`~xtds.fitting.optimizers.Optimizer` and the :class:`~xtds.fitting.settings.Errors`
settings; :mod:`xtds.fitting.tds` builds the problems of TDS volumes and points on top of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import torch
import xarray as xr

from xtds.errors import UnstableError
from xtds.fitting.covariance import covariances
from xtds.fitting.objective import Objective, initial_vector
from xtds.fitting.optimizers import Checkpoint, Optimizer
from xtds.fitting.problem import Problem
from xtds.fitting.result import result_dataset
from xtds.fitting.settings import Constraints, Errors, as_settings
from xtds.observables.base import describe

__all__ = ["fit_problems", "objective_of"]

log = logging.getLogger("xtds.fitting")


def objective_of(problems, initial, constraints: Constraints | dict | None = None) -> tuple[Objective, torch.Tensor]:
    """The :class:`Objective` of ``problems`` (checked: one IFC model, distinct names, enough
    points; each observable refined at the start, :meth:`~xtds.observables.base.Observable.refine`)
    with ``constraints`` (:class:`~xtds.fitting.settings.Constraints`), and the starting φ (fixed
    constants at their values), checked for stability."""
    problems = (problems,) if isinstance(problems, Problem) else tuple(problems)
    if not problems:
        raise ValueError("give at least one Problem to fit")
    model = problems[0].model
    for p in problems[1:]:
        if p.model is not model and (repr(p.model.crystal), p.model.names) != (repr(model.crystal), model.names):
            raise ValueError("the problems of one fit must share one IFCModel (crystal and cutoff)")
    names = [p.name for p in problems]
    if len(problems) > 1 and (len(set(names)) != len(names) or "" in names):
        raise ValueError(f"the problems of a joint fit need distinct, non-empty names, got {names}")
    phi0 = initial_vector(model, initial)
    constraints = as_settings(Constraints, constraints, "constraints")
    constraints.check(model.names, model.derived_names)
    index = {n: i for i, n in enumerate(model.names)}
    fixed = {index[n]: float(phi0[index[n]]) if v is None else float(v) for n, v in constraints.fixed.items()}
    if len(fixed) == model.n_free:
        raise ValueError("every force constant is fixed: nothing is left to fit")
    phi0 = phi0.clone()
    for i, v in fixed.items():
        phi0[i] = v
    problems = tuple(_refined(p, phi0) for p in problems)
    _check_counts(problems, model, len(fixed), len(constraints.priors))
    k = np.unique(np.concatenate([p.observable.stability_k() for p in problems]).round(12), axis=0)
    objective = Objective(problems, model, k, fixed=fixed,
                          priors={index[n]: mv for n, mv in constraints.priors.items()})
    phi0 = phi0.to(dtype=objective.dtype, device=objective.device)
    try:
        objective.check_stable(phi0)
    except UnstableError as err:
        raise UnstableError(
            f"the starting force constants are dynamically unstable ({err}); start from stable IFCs (check with "
            "xtds.stability(model, ifc)), e.g. a nearest-neighbour model or projected phonopy force constants"
        ) from err
    return objective, phi0


def _refined(p: Problem, phi0: torch.Tensor) -> Problem:
    obs, note = p.observable.refine(phi0)
    if obs is p.observable:
        return p
    return dataclasses.replace(p, observable=obs, geometry_reason="; ".join(x for x in (p.geometry_reason, note) if x))


def _check_counts(problems, model, n_fixed: int = 0, n_priors: int = 0) -> None:
    n_points = sum(len(p) for p in problems) + n_priors
    n_params = model.n_free - n_fixed + sum(p.n_nuisance for p in problems)
    n_centring = sum(1 for p in problems if p.loss == "var_log" and not p.n_nuisance)
    if n_points <= n_params + n_centring:  # at least one degree of freedom, or the errors are undefined
        raise ValueError(
            f"{n_points} data points cannot determine {n_params} parameters ({model.n_free} force constants"
            f"{' and nuisance parameters' if n_params > model.n_free else ''}"
            f"{', and the var_log loss spends one on the scale' if n_centring else ''}) and leave a degree of "
            "freedom for their errors: add data (a larger volume, no wedge, fewer masks) or fit fewer constants "
            "(fewer shells or a smaller cutoff)"
        )


def fit_problems(problems, initial, *, optimizer: Optimizer | None = None, errors: Errors | dict | None = None,
                 constraints: Constraints | dict | None = None, source: str | None = None, starts: int = 1,
                 start_spread: float = 0.2, seed: int = 0) -> xr.Dataset:
    """Fit one vector of force constants to a sum of problems.

    Parameters
    ----------
    problems
        A :class:`~xtds.fitting.problem.Problem` or a list of them, all on the same
        :class:`~xtds.IFCModel` (joint fits of several volumes, temperatures or kinds of data).
    initial
        Starting force constants: mapping, DataArray, array, or a Phonopy object (projected).
    optimizer
        An :class:`~xtds.fitting.optimizers.Optimizer` (default: Levenberg–Marquardt for
        deterministic observables, Adam when one is stochastic), with its run-time settings
        (``checkpoint``: a file to save progress to and resume from, the problems and optimizer
        settings being the same; ``progress``; ``callback(iteration, x, loss)``).
    errors
        :class:`~xtds.fitting.settings.Errors`; here its ``noise_draws`` (single-configuration
        draws for the covariance of problems with ``noise_configurations``).
    constraints
        :class:`~xtds.fitting.settings.Constraints` (or a dict of its fields): constants held fixed
        and Gaussian priors. ``attrs["constraints"]`` records them (JSON).
    starts, start_spread, seed
        With ``starts`` > 1, the fit also runs from ``starts`` − 1 other stable starting points,
        each constant multiplied by 1 + ``start_spread``·u, u uniform in [−1, 1] (``seed``), and
        keeps the lowest loss. ``attrs["starts"]`` lists every start's final loss (JSON);
        ``attrs["best_start"]`` which one won (0: ``initial``).

    Returns
    -------
    ``xr.Dataset``: ``ifc``, ``ifc_stderr`` (dim ``constant``; eV/Å², a0 included), ``ifc_cov``,
    ``dispersion``, ``dos``, ``elastic_constants``, ``loss`` and ``wall_time`` (dim
    ``iteration``), each problem's data, scaled model and residual (prefixed by its name in a
    joint fit), attrs with provenance and timings (``wall_time_s``: the whole call;
    ``minimize_time_s``: the optimizer alone).
    """
    t_start = time.perf_counter()
    errors = as_settings(Errors, errors, "errors")
    objective, phi0 = objective_of(problems, initial, constraints)
    optimizer = Optimizer.default_for(objective.stochastic) if optimizer is None else optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xtds Optimizer (e.g. xtds.LM() or xtds.Adam()), got {optimizer!r}")
    optimizer.check(objective)
    if int(starts) < 1 or (int(starts) > 1 and optimizer.checkpoint is not None):
        raise ValueError(f"starts must be at least 1 (got {starts}), and 1 with a checkpoint")
    x0 = objective.x_of(phi0, [p.initial_nuisance(phi0) for p in objective.problems])
    constraints = as_settings(Constraints, constraints, "constraints")
    settings = {"problems": [describe(p) for p in objective.problems], "optimizer": describe(optimizer)}
    if constraints:
        settings["constraints"] = {"fixed": {objective.model.names[i]: v for i, v in objective.fixed.items()},
                                   "priors": constraints.priors}
    ckpt = None
    if optimizer.checkpoint is not None:
        ckpt = Checkpoint(optimizer.checkpoint, Checkpoint.fingerprint_of({**settings, "initial": x0.tolist()}))
    t_min = time.perf_counter()
    res = optimizer.minimize(objective, x0, checkpoint=ckpt)
    tried, best = [float(res.loss)], 0
    for x_start in _other_starts(objective, phi0, int(starts) - 1, start_spread, seed):
        other = optimizer.minimize(objective, x_start)
        tried.append(float(other.loss))
        if other.loss < res.loss:
            res, best = other, len(tried) - 1
    t_min = time.perf_counter() - t_min
    cov, robust, stats = covariances(objective, res, errors.noise_draws, errors.chi2_scale)
    if objective.fixed:  # the result in the model's layout: fixed constants with zero variance
        res = dataclasses.replace(res, x=objective.full_x(res.x),
                                  x_cov=None if res.x_cov is None else objective.expand(res.x_cov))
        cov, robust = objective.expand(cov), objective.expand(robust)
    out = result_dataset(objective, res, cov, stats, settings, objective.full_x(x0), robust=robust)
    if constraints:
        out.attrs["constraints"] = json.dumps(settings["constraints"])
    out.attrs.update(source=str(source), wall_time_s=float(time.perf_counter() - t_start),
                     minimize_time_s=float(t_min), optimizer=optimizer.name)
    if starts > 1:
        out.attrs.update(starts=json.dumps(tried), best_start=int(best))
    return out


def _other_starts(objective: Objective, phi0: torch.Tensor, n: int, spread: float, seed: int):
    """``n`` stable starting vectors: φ0 with each constant scaled by 1 + spread·u (u uniform in
    [−1, 1]), the nuisance parameters refitted to each; unstable draws are skipped (at most 20n)."""
    rng = np.random.default_rng(seed)
    made = 0
    for _ in range(20 * n):
        if made == n:
            return
        phi = phi0 * torch.as_tensor(1 + spread * rng.uniform(-1, 1, len(phi0)), dtype=phi0.dtype,
                                     device=phi0.device)
        for i, v in objective.fixed.items():
            phi[i] = v
        try:
            objective.check_stable(phi)
        except UnstableError:
            continue
        made += 1
        yield objective.x_of(phi, [p.initial_nuisance(phi) for p in objective.problems])
    if made < n:
        log.warning("only %d of %d extra starting points were stable", made, n)
