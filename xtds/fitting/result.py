"""The result of a fit as a labelled Dataset, and a fit rebuilt from its file.

The Dataset holds everything needed to use the result without the session that made it: the
constants with their covariance, the derived phonons, the fit's history and data, and the crystal
(lattice, basis, species, masses) and the model's cutoff as data. :func:`open_fit` reads such a
file (netCDF or zarr) and rebuilds the :class:`~xtds.IFCModel`, so that the dispersion, DOS or
elastic constants can be recomputed (on another path or mesh) in a new process.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from xtds._version import __version__
from xtds.errors import UnstableResultWarning
from xtds.fitting.derived import derived_quantities
from xtds.io import open_dataset_file
from xtds.lattice.crystal import Crystal
from xtds.lattice.ifc import IFCModel
from xtds.lattice.phonons import dispersion, dos, elastic_constants
from xtds.lattice.stability import stability
from xtds.observables.tds.infinite import mesh_convergence
from xtds.thermal.geometry import InfiniteCrystal
from xtds.volume.sources import reading

log = logging.getLogger("xtds.fit")

__all__ = ["result_dataset", "crystal_variables", "crystal_from", "FitResult", "open_fit"]


#: The Γ-centred mesh on which every result is checked for stability (besides the standard path and
#: the long-wavelength limit, the Born criteria of the elastic tensor).
STABILITY_MESH = 16


def flag_stability(ds: xr.Dataset, model: IFCModel, phi: torch.Tensor) -> None:
    """Check the fitted constants on a fine mesh, the standard path and the long-wavelength limit;
    record the outcome in ``attrs['stable']`` (1/0) and ``attrs['stability']``, and warn
    (:class:`~xtds.errors.UnstableResultWarning`) when they are unstable."""
    report = stability(model, phi, mesh=STABILITY_MESH)
    ds.attrs.update(stable=int(report.stable), stability=str(report))
    if not report.stable:
        warnings.warn(
            f"the fitted force constants are dynamically unstable ({report}). The result is flagged "
            "(attrs['stable'] = 0): check the masks (Bragg tails), the background and the model's range before "
            "using it",
            UnstableResultWarning,
            stacklevel=4,
        )


def crystal_variables(crystal: Crystal) -> dict[str, xr.DataArray]:
    """The crystal as data: ``crystal_lattice`` (Å), ``crystal_positions`` (fractional),
    ``crystal_species`` and ``crystal_masses`` (amu), on dims ``lattice_vector``, ``atom``,
    ``cartesian`` and ``fractional``."""
    return {
        "crystal_lattice": xr.DataArray(np.asarray(crystal.lattice, dtype=float), dims=("lattice_vector", "cartesian"),
                                        attrs={"units": "Å", "long_name": "lattice vectors (rows)",
                                               "space_group": crystal.space_group, "name": crystal.name}),
        "crystal_positions": xr.DataArray(np.asarray(crystal.positions, dtype=float), dims=("atom", "fractional"),
                                          attrs={"units": "1", "long_name": "basis, fractional coordinates"}),
        "crystal_species": xr.DataArray(np.array(list(crystal.species), dtype=object), dims=("atom",)),
        "crystal_masses": xr.DataArray(np.asarray(crystal.masses, dtype=float), dims=("atom",),
                                       attrs={"units": "amu"}),
        **({} if not crystal.polar else {
            "crystal_born": xr.DataArray(np.asarray(crystal.born), dims=("atom", "cartesian", "cartesian_"),
                                         attrs={"units": "e", "long_name": "Born effective charges Z[s, i, j]"}),
            "crystal_epsilon": xr.DataArray(np.asarray(crystal.epsilon), dims=("cartesian", "cartesian_"),
                                            attrs={"units": "1", "long_name": "electronic dielectric tensor ε∞"})}),
    }


def crystal_from(ds: xr.Dataset) -> Crystal:
    """The :class:`Crystal` stored by :func:`crystal_variables`."""
    missing = [v for v in ("crystal_lattice", "crystal_positions", "crystal_species") if v not in ds]
    if missing:
        raise ValueError(f"the Dataset holds no crystal ({missing} missing): it is not an xtds fit result of "
                         "version 0.2 or later")
    return Crystal(np.asarray(ds["crystal_lattice"].values, dtype=float),
                   np.asarray(ds["crystal_positions"].values, dtype=float),
                   tuple(str(s) for s in ds["crystal_species"].values),
                   masses=np.asarray(ds["crystal_masses"].values, dtype=float) if "crystal_masses" in ds else None,
                   born=np.asarray(ds["crystal_born"].values, dtype=float) if "crystal_born" in ds else None,
                   epsilon=np.asarray(ds["crystal_epsilon"].values, dtype=float) if "crystal_epsilon" in ds else None,
                   name=str(ds["crystal_lattice"].attrs.get("name", "")))


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fit result read back from its file: the Dataset and the rebuilt model."""

    dataset: xr.Dataset
    model: IFCModel

    @property
    def phi(self) -> torch.Tensor:
        """The fitted free constants, shape (n_free,), eV/Å²."""
        return self.model.vector(self.dataset["ifc"].sel(constant=list(self.model.names)))

    def dispersion(self, **kwargs) -> xr.DataArray:
        """:func:`xtds.dispersion` of the fitted constants (THz)."""
        return dispersion(self.model, self.phi, **kwargs)

    def dos(self, **kwargs) -> xr.DataArray:
        """:func:`xtds.dos` of the fitted constants."""
        return dos(self.model, self.phi, **kwargs)

    def elastic_constants(self) -> xr.DataArray:
        """:func:`xtds.elastic_constants` of the fitted constants (GPa)."""
        return elastic_constants(self.model, self.phi)


def open_fit(path) -> FitResult:
    """Read a fit result written with :func:`xtds.write_volume` (netCDF or zarr) and rebuild its
    model from the crystal and cutoff stored in it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such fit result: {path}")
    ds = open_dataset_file(path)
    if "ifc" not in ds or "ifc_cutoff_A" not in ds.attrs:
        raise ValueError(f"{path} is not an xtds fit result (no 'ifc' or no 'ifc_cutoff_A'); for a volume use "
                         "xtds.open_volume")
    try:
        cutoff = float(ds.attrs["ifc_cutoff_A"])
    except (TypeError, ValueError):
        cutoff = float("nan")
    if not 0 < cutoff <= MAX_CUTOFF_A:
        raise ValueError(f"{path}: attrs['ifc_cutoff_A'] = {ds.attrs['ifc_cutoff_A']!r} is not a cutoff a fit wrote "
                         f"(0–{MAX_CUTOFF_A:g} Å): the file was edited or is corrupt")
    try:
        model = IFCModel(crystal_from(ds), cutoff=cutoff)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: its crystal and cutoff do not make a force-constant model ({err}): the file was "
                         "edited or is corrupt") from err
    stored = [str(c) for c in ds["constant"].values if not bool(ds["derived"].sel(constant=c))] \
        if "derived" in ds.coords else None
    if stored is not None and tuple(stored) != tuple(model.names):
        raise ValueError(f"{path}: the rebuilt model has constants {model.names}, the file {tuple(stored)}")
    with reading(ds, f"loading the fit result {path}"):  # a corrupt chunk: an error that names the file
        ds = ds.load()
    out = FitResult(ds, model)
    _check_consistent(path, out)
    return out


#: The largest cutoff (Å) :func:`open_fit` builds a model for: far beyond any fit's, below the sizes
#: whose pair tables would not fit in memory (an edited file).
MAX_CUTOFF_A = 50.0


def _check_consistent(path: str, result: FitResult) -> None:
    """The file's constants must give the dispersion stored beside them (an edited or corrupt file
    would pair constants with phonons they do not have)."""
    ds = result.dataset
    if not np.all(np.isfinite(ds["ifc"].values)):
        raise ValueError(f"{path}: the fitted constants hold NaN or inf (a chunk lost, or the file edited)")
    if "dispersion" not in ds:
        return
    disp = ds["dispersion"]
    k = np.stack([disp[f"k_{c}"].values for c in ("qx", "qy", "qz")], 1)
    from xtds.lattice.dynamics import frequencies

    with torch.no_grad():
        nu = frequencies(result.model, result.phi, k).cpu().numpy()
    scale = max(float(np.nanmax(np.abs(disp.values))), 1e-12)
    if not np.allclose(nu, disp.values, rtol=0, atol=1e-6 * scale):
        raise ValueError(
            f"{path}: the stored constants give a dispersion up to {np.nanmax(np.abs(nu - disp.values)):.3g} THz away "
            "from the one stored beside them: the file was edited or is corrupt; refit, or recompute what you need "
            "from the constants you trust"
        )


def result_dataset(objective, res, cov, stats, settings, x0, robust=None) -> xr.Dataset:
    """The labelled result of a fit (see :func:`xtds.fitting.fit.fit_problems`), the crystal and the
    model's cutoff included as data, so that :func:`open_fit` can rebuild the model from the file."""
    model, n_free = objective.model, objective.n_free
    ds = _constants(model, res, cov, robust, n_free)
    phi_t = torch.as_tensor(res.x[:n_free], dtype=torch.float64)
    cov_free = (cov if res.x_cov is None else cov + res.x_cov)[:n_free, :n_free]
    ds = ds.assign(derived_quantities(model, phi_t, cov_free))
    hist = np.array(res.history, dtype=float).reshape(-1, 3)
    losses = sorted({p.loss for p in objective.problems})
    ds["loss"] = xr.DataArray(hist[:, 1], dims=("iteration",), coords={"iteration": hist[:, 0].astype(int)},
                              attrs={"long_name": f"loss ({' + '.join(losses)})", "units": "1"})
    ds["wall_time"] = xr.DataArray(hist[:, 2], dims=("iteration",), attrs={"units": "s"})
    phi, nuisances = objective.split_full(res.x)
    cov_x = cov if res.x_cov is None else cov + res.x_cov
    start = n_free
    for p, eta in zip(objective.problems, nuisances, strict=True):
        ds = ds.assign(p.result_variables(phi, eta))
        # the nuisance parameters' standard errors (Gauss–Newton, as the constants'): the scale's from
        # its logarithm's, σ_s = s σ_log s
        sd = np.sqrt(np.clip(np.diag(cov_x)[start : start + p.n_nuisance], 0, None)) if cov_x.shape[0] >= \
            start + p.n_nuisance else np.full(p.n_nuisance, np.nan)
        prefix = f"{p.name}_" if p.name else ""
        for name, err in zip(p.nuisance_names, sd, strict=True):
            if name == "log_scale" and f"{prefix}scale" in ds:
                ds[f"{prefix}scale_stderr"] = xr.DataArray(
                    float(ds[f"{prefix}scale"]) * float(err),
                    attrs={"units": "1", "long_name": "standard error of the scale"})
            elif f"{prefix}{name}" in ds:
                ds[f"{prefix}{name}_stderr"] = xr.DataArray(float(err), attrs={
                    "units": ds[f"{prefix}{name}"].attrs.get("units", ""), "long_name": f"standard error of {name}"})
        start += p.n_nuisance
    ds.attrs.update(
        xtds_version=__version__,
        settings=json.dumps(settings, default=str),
        initial_ifc=json.dumps(dict(zip(model.names, x0[:n_free].tolist(), strict=True))),
        converged=int(res.converged),
        message=res.message,
        iterations=int(res.iterations),
        resumed_from=-1 if res.resumed_from is None else int(res.resumed_from),
        sigma2_hat=float(stats[0]["sigma2_hat"]),
        dof=int(stats[0]["dof"]),
        problems=json.dumps(stats),
        final_loss=float(res.loss),
    )
    ds = ds.assign(crystal_variables(model.crystal))
    ds.attrs["ifc_cutoff_A"] = float(model.cutoff)
    flag_stability(ds, model, phi_t)
    if res.start_condition is not None:
        ds.attrs["start_condition"] = res.start_condition
    _record_geometry(ds, objective, res, phi_t)
    return ds


def _constants(model: IFCModel, res, cov, robust, n_free: int) -> xr.Dataset:
    """``ifc`` with its standard errors and covariance (and the robust ones, and the optimizer's
    own scatter where it has one), a0 included."""
    T = np.vstack([model.derived_matrix, np.eye(n_free)])  # derived constants first, as to_dataarray

    def on_constants(c):  # (n_x, n_x) → (n_constants, n_constants), a0 and the free constants
        return T @ c[:n_free, :n_free] @ T.T

    extra = res.x_cov
    label = res.x_cov_label or "the optimizer's scatter"
    kind = "Gauss–Newton" if extra is None else f"Gauss–Newton plus {label}"
    cov_all = on_constants(cov if extra is None else cov + extra)
    ifc = model.to_dataarray(res.x[:n_free])
    names = list(ifc["constant"].values)
    ds = xr.Dataset({"ifc": ifc})
    unit = ifc.attrs["units"]  # one unit, or (anharmonic models) per constant in the coordinate 'units'
    cov_unit = f"({unit})^2" if "units" not in ifc.coords else "the products of the two constants' units"
    ds["ifc_stderr"] = xr.DataArray(np.sqrt(np.clip(np.diag(cov_all), 0, None)), dims=("constant",),
                                    attrs={"units": unit, "long_name": f"standard error ({kind})"})
    ds["ifc_cov"] = xr.DataArray(cov_all, dims=("constant", "constant_"), coords={"constant_": names},
                                 attrs={"units": cov_unit, "long_name": f"covariance ({kind})"})
    if robust is not None:
        rob = on_constants(robust if extra is None else robust + extra)
        ds["ifc_stderr_robust"] = xr.DataArray(
            np.sqrt(np.clip(np.diag(rob), 0, None)), dims=("constant",),
            attrs={"units": unit, "long_name": "robust standard error (cluster sandwich over |q| shells)"})
        ds["ifc_cov_robust"] = xr.DataArray(rob, dims=("constant", "constant_"), coords={"constant_": names},
                                            attrs={"units": cov_unit, "long_name": "robust covariance"})
    if extra is not None:
        ds["ifc_optimizer_stderr"] = xr.DataArray(
            np.sqrt(np.clip(np.diag(on_constants(extra)), 0, None)), dims=("constant",),
            attrs={"units": unit, "long_name": label})
    return ds


def _record_geometry(ds: xr.Dataset, objective, res, phi_t) -> None:
    """Identifiability, the problems' geometries (and why), and the infinite crystals' mesh
    convergence at the fitted constants, in ``ds.attrs``."""
    ident = res.identifiability or {}
    ds.attrs.update(n_points=int(sum(len(p) for p in objective.problems)),
                    n_parameters=int(len(objective.parameter_names())),
                    jacobian_rank=int(ident.get("rank", -1)), jacobian_condition=float(ident.get("condition", np.nan)),
                    geometry="; ".join(repr(p.observable.geometry) for p in objective.problems))
    reasons = [p.geometry_reason for p in objective.problems if p.geometry_reason]
    if reasons:
        ds.attrs["geometry_reason"] = "; ".join(reasons)
    conv = [mesh_convergence(p.observable, phi_t) for p in objective.problems
            if isinstance(p.observable.geometry, InfiniteCrystal)]
    if conv:
        ds.attrs["mesh_convergence"] = json.dumps(conv)
        for c in conv:
            log.info("infinite crystal: mesh %s vs %s changes the model by %.2e (median) / %.2e (max, relative) "
                     "at the fitted constants", c["mesh"], c["finer_mesh"], c["median_rel_change"],
                     c["max_rel_change"])
