"""Fitting TDS volumes: a volume → its fitting points → a :class:`~xtds.fitting.problem.Problem` →
:func:`~xtds.fitting.fit.fit_problems`.

:func:`fit` (``ds.tds.fit``) prepares a volume (masks, Laue symmetrization, reduction to
irreducible points), :func:`fit_points` starts from points, :func:`points_problem` makes the
problem of points for a joint fit. Every one takes the same grouped settings:
``model=TDSModel(...)`` (the forward model), ``prepare=Preparation(...)`` (the volume's masks and
reduction, :func:`fit` only), ``loss``, ``background``, ``corrections``, ``errors=Errors(...)`` and
``optimizer=LM(...)`` or ``Adam(...)``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import xarray as xr

from xtds.errors import check_temperature
from xtds.fitting.fit import fit_problems
from xtds.fitting.optimizers import Optimizer
from xtds.fitting.problem import Problem
from xtds.fitting.settings import Constraints, Errors, Preparation, as_settings
from xtds.lattice.crystal import measured_cell
from xtds.observables.tds.settings import TDSModel, as_tds_model
from xtds.observables.tds.simulate import ifc_model
from xtds.volume import prepare as vol
from xtds.volume.schema import check_crystal

__all__ = ["fit", "fit_points", "points_problem"]

log = logging.getLogger("xtds.fitting")


def points_problem(points: xr.Dataset, crystal, temperature: float, shells: int | None = None, *,
                   model: TDSModel | dict | None = None, loss: str = "var_log", background=False, corrections=None,
                   errors: Errors | dict | None = None, name: str = "") -> Problem:
    """The :class:`Problem` of a volume's fitting points (from :func:`xtds.volume.prepare.to_points`):
    a :class:`~xtds.observables.TDSIntensity` at their q made by ``model``
    (:class:`~xtds.observables.tds.settings.TDSModel`), compared with their ``intensity``
    (weights: ``multiplicity``; ``sigma`` when present). ``crystal`` and ``shells``, or an
    :class:`~xtds.IFCModel` alone (give every problem of a joint fit the same one); ``errors``:
    its ``temperature_stderr`` and ``noise_configurations`` apply to this problem; ``name``: the
    prefix of its variables in a joint fit. Other arguments as :func:`fit_points`."""
    if "point" not in points.dims or "q" not in points:
        raise ValueError("points must be a Dataset on dim 'point' with 'q' (from ds.tds.to_points())")
    if str(points["q"].attrs.get("units", "")) != "1/angstrom":
        raise ValueError("points['q'] must carry units '1/angstrom' (Cartesian, 2π included)")
    errors = as_settings(Errors, errors, "errors")
    hkl = np.stack([points[d].values for d in "HKL"], 1)
    observable, why = as_tds_model(model).observable(ifc_model(crystal, shells, cell=measured_cell(points.attrs)),
                                                     points["q"].values, temperature,
                                                     hkl=hkl, attrs=points.attrs)
    mult = points["multiplicity"].values if "multiplicity" in points else None
    coords = {"point": points["point"].values} if "point" in points.coords else {}
    coords.update({d: (points[d].values, dict(points[d].attrs)) for d in "HKL"})
    return Problem(observable, points["intensity"].values, weight=mult,
                   sigma=points["sigma"].values if "sigma" in points else None, loss=loss,
                   background=None if background is False else background,
                   temperature_stderr=errors.temperature_stderr, corrections=corrections,
                   noise_configurations=errors.noise_configurations, name=name, coords=coords,
                   data_attrs=dict(points["intensity"].attrs), geometry_reason=why)


def fit_points(points: xr.Dataset, crystal, temperature: float, shells: int | None = None, initial=None, *,
               model: TDSModel | dict | None = None, loss: str = "var_log", background=False, corrections=None,
               optimizer: Optimizer | None = None, errors: Errors | dict | None = None,
               constraints: Constraints | dict | None = None, source: str | None = None) -> xr.Dataset:
    """Fit force constants to fitting points (from :func:`xtds.volume.prepare.to_points`).

    Parameters
    ----------
    points
        Dataset on dim ``point`` with ``intensity``, ``multiplicity``, ``q`` (Å⁻¹) and H, K, L
        (r.l.u.); optional ``sigma`` for ``loss="chi2"``.
    crystal, shells
        The :class:`~xtds.Crystal` (a preset name, a CIF path) and the number of neighbour shells,
        or an :class:`~xtds.IFCModel` alone (for a cutoff radius: ``IFCModel(crystal, cutoff=4.0)``).
    temperature
        K, required.
    initial
        Starting IFCs: mapping, DataArray, or a Phonopy object (projected on the basis).
    model
        The forward model: :class:`~xtds.observables.tds.settings.TDSModel` (method, geometry,
        statistics, form factors, the sampled method's options) or a dict of its settings; default
        ``TDSModel()`` (exact; ``geometry="auto"``: an infinite crystal for measured data, or the
        periodic supercell the data say they were simulated on; the statistics the data say, else
        quantum). The geometry's choice and its reason are logged and kept in the result's attrs
        ``geometry``/``geometry_reason``, with ``mesh_convergence`` for an infinite crystal.
    loss, background
        ``"var_log"`` (the paper's) or ``"chi2"``. ``background``: the nuisance terms fitted with an
        overall scale: True or ``"constant"``, ``"compton"``, ``"polynomial"``, or a
        :class:`~xtds.fitting.background.Background` (always at least a constant for ``chi2``).
    corrections
        Polarization and absorption factors multiplied into the model
        (:class:`~xtds.observables.tds.corrections.Corrections`); None: the volume is taken as corrected.
    optimizer
        :class:`~xtds.fitting.lm.LM` (default for ``exact``/``one_phonon``) or
        :class:`~xtds.fitting.adam.Adam` (default for ``sampled``), with their settings and the
        run-time ones (``checkpoint``, ``progress``, ``callback``).
    errors
        :class:`~xtds.fitting.settings.Errors` (``temperature_stderr`` K; ``noise_configurations``
        and ``noise_draws`` for data that are a mean over N sampled configurations).
    constraints
        :class:`~xtds.fitting.settings.Constraints`: constants held fixed and Gaussian priors.

    Returns
    -------
    The Dataset of :func:`~xtds.fitting.fit.fit_problems`, with ``intensity``,
    ``model_intensity`` and ``residual`` on dim ``point``.
    """
    check_temperature(temperature)
    m = ifc_model(crystal, shells, cell=measured_cell(points.attrs))
    problem = points_problem(points, m, temperature, model=model, loss=loss, background=background,
                             corrections=corrections, errors=errors)
    return fit_problems([problem], initial, optimizer=optimizer, errors=errors, constraints=constraints,
                        source=source)


def fit(ds: xr.Dataset, crystal, shells: int | None = None, initial=None, *, temperature: float | None = None,
        prepare: Preparation | dict | None = None, model: TDSModel | dict | None = None, loss: str = "var_log",
        background=False, corrections=None, optimizer: Optimizer | None = None,
        errors: Errors | dict | None = None, constraints: Constraints | dict | None = None) -> xr.Dataset:
    """Fit a volume: mask, symmetrize, reduce to irreducible points, and :func:`fit_points`.

    ``crystal`` and ``shells`` (or an :class:`~xtds.IFCModel` alone), ``initial`` (the starting
    constants) and ``temperature`` (K; default ``ds.attrs['temperature']``, the file's, and
    required one way or the other). ``prepare``: :class:`~xtds.fitting.settings.Preparation`
    (Bragg and |q| masks, Laue symmetrization, a random subset of points); masks and wedges beyond
    it are the accessor chain's: ``ds.tds.mask(...).tds.wedge(...).tds.fit(...)``. Symmetrizing
    makes each Laue orbit one point holding the weighted mean of its valid voxels (and the σ of that
    mean), what ``ds.tds.symmetrize()`` followed by the reduction gives, without writing the
    symmetrized volume. Every other argument is :func:`fit_points`'s.
    """
    if temperature is None:
        temperature = ds.attrs.get("temperature")
        if temperature is None:
            raise ValueError("temperature (K) is required: pass temperature=..., or set ds.attrs['temperature']")
    check_temperature(temperature)
    prep = as_settings(Preparation, prepare, "prepare")
    m = ifc_model(crystal, shells, cell=measured_cell(ds.attrs))
    check_crystal(ds, m.crystal, require_cell=True)
    prepared = vol.mask(ds, bragg=prep.bragg, q_min=prep.q_min, q_max=prep.q_max, crystal=m.crystal)
    group = dict(laue=prep.laue, crystal=m.crystal) if prep.laue else dict(crystal=m.crystal)
    points = vol.to_points(prepared, irreducible=bool(prep.symmetrize), max_points=prep.max_points, seed=prep.seed,
                           **group)
    symmetrized = (f"{vol.laue_of(prepared, prep.laue, m.crystal).name} (orbit means of the valid voxels)"
                   if prep.symmetrize else prepared.attrs.get("symmetrized"))
    n_all = points.attrs.get("n_points_available")
    subset = json.loads(points.attrs["subset"]) if "subset" in points.attrs else None
    if subset:
        log.info("fitting %d of %s points (max_points, seed %d; %s)", points.sizes["point"],
                 "the" if n_all is None else f"the {n_all}", prep.seed, subset["drawn"])
    out = fit_points(points, m, temperature, initial=initial, model=model, loss=loss, background=background,
                     corrections=corrections, optimizer=optimizer, errors=errors, constraints=constraints,
                     source=ds.attrs.get("source"))
    out.attrs["preparation"] = json.dumps(
        {"masks": prepared.attrs.get("masks"), "symmetrized": symmetrized,
         "n_valid_voxels": points.attrs.get("n_valid_voxels"), "n_points_available": n_all,
         "n_points_fitted": points.sizes["point"], "subset": subset},
        default=str)
    return out
