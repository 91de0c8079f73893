"""Residual diagnostics of a fit: structure in |q| and near the Bragg peaks.

A wrong background or scale leaves residuals that are smooth in |q| (Compton scattering rises with
|q|; a missing constant shows most where the TDS is weakest); Bragg tails, finite peak widths or a
too small Bragg mask leave residuals that grow towards the reflections. Both are invisible in the
loss, which only says how large the residuals are. :func:`diagnostics` bins the log residuals
(log data − log model) of a fit's points by |q| and by the distance to the nearest allowed Bragg
reflection and reports, per bin, the multiplicity-weighted mean, its standard error and the count,
and for each binning the share of the residual variance the bins explain (η², the correlation
ratio: ≈ bins/points for residuals without structure, towards 1 when a smooth function of |q|
carries them).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["diagnostics", "nearest_bragg_distance"]


def nearest_bragg_distance(crystal, hkl: np.ndarray) -> np.ndarray:
    """Distance (Å⁻¹, 2π included) from each (H, K, L) (shape (P, 3), r.l.u. of ``crystal``) to the
    nearest reflection whose structure factor does not vanish (:func:`xtds.lattice.reflections.allowed_reflections`)."""
    from scipy.spatial import cKDTree

    from xtds.lattice.reflections import allowed_reflections

    hkl = np.asarray(hkl, dtype=float).reshape(-1, 3)
    reach = int(np.ceil(np.abs(hkl).max())) + 2 if len(hkl) else 2
    refl = allowed_reflections(crystal, reach)
    tree = cKDTree(crystal.rlu_to_cartesian(refl.astype(float)))
    return tree.query(crystal.rlu_to_cartesian(hkl))[0]


def _binned(x: np.ndarray, r: np.ndarray, w: np.ndarray, edges: np.ndarray, dim: str, units: str):
    idx = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    nb = len(edges) - 1
    W = np.bincount(idx, w, nb)
    n = np.bincount(idx, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(idx, w * r, nb) / W
        var = np.bincount(idx, w * (r - mean[idx]) ** 2, nb) / W
        n_eff = W**2 / np.bincount(idx, w * w, nb)  # effective number of independent points
        se = np.where(n > 1, np.sqrt(var / np.maximum(n_eff - 1, 1)), np.nan)  # one point: no error
    rbar = np.sum(w * r) / w.sum()
    total = np.sum(w * (r - rbar) ** 2)
    between = np.nansum(W * (mean - rbar) ** 2)
    eta2 = float(between / total) if total > 0 else 0.0
    centre = 0.5 * (edges[1:] + edges[:-1])
    coords = {dim: (dim, centre, {"units": units}), f"{dim}_edges": ((f"{dim}_edge",), edges, {"units": units})}
    out = {
        f"residual_mean_by_{dim}": xr.DataArray(mean, dims=(dim,), attrs={
            "long_name": "weighted mean of log data − log model", "units": "1"}),
        f"residual_stderr_by_{dim}": xr.DataArray(se, dims=(dim,), attrs={
            "long_name": "standard error of that mean", "units": "1"}),
        f"count_by_{dim}": xr.DataArray(n, dims=(dim,), attrs={"long_name": "points in the bin", "units": "1"}),
    }
    return out, coords, eta2


def diagnostics(result: xr.Dataset, problem: str = "", crystal=None, q_bins: int = 16,
                bragg_bins: int = 10) -> xr.Dataset:
    """Residual structure of a fit vs |q| and vs the distance to the nearest Bragg reflection.

    Parameters
    ----------
    result
        A fit result (``ds.tds.fit``, :func:`xtds.fit_problems`, or read with :func:`xtds.open_fit`).
    problem
        The problem's name in a joint fit ('' for a single problem).
    crystal
        The :class:`~xtds.Crystal` (default: the one stored in the result).
    q_bins, bragg_bins
        Numbers of equal-width bins in |q| and in the Bragg distance.

    Returns
    -------
    ``xr.Dataset`` on dims ``q`` (|q| bin centres, Å⁻¹) and ``bragg_distance`` (Å⁻¹):
    ``residual_mean_by_*``, ``residual_stderr_by_*``, ``count_by_*``; attrs ``eta2_q`` and
    ``eta2_bragg`` (share of the residual variance each binning explains, 0–1), ``max_abs_z_q`` and
    ``max_abs_z_bragg`` (largest |mean|/stderr of a bin). Plot it with
    :func:`xtds.plot.plot_residuals`.
    """
    from xtds.fitting.result import crystal_from

    prefix = f"{problem}_" if problem else ""
    name = f"{prefix}residual"
    if name not in result:
        have = sorted(v[: -len("_residual")] for v in result.data_vars if str(v).endswith("_residual"))
        raise ValueError(f"the result has no {name!r}: give problem= one of {have}" if have else
                         f"the result has no {name!r}: is it a fit result?")
    res = result[name]
    missing = [c for c in "HKL" if c not in res.coords]
    if missing:
        raise ValueError(f"the residuals carry no {missing} coordinates: diagnostics need the points' H, K, L")
    crystal = crystal_from(result) if crystal is None else crystal
    hkl = np.stack([res[c].values for c in "HKL"], 1).astype(float)
    r = np.asarray(res.values, dtype=float)
    mult = f"{prefix}multiplicity"
    w = np.asarray(result[mult].values, dtype=float) if mult in result else np.ones_like(r)
    ok = np.isfinite(r)
    hkl, r, w = hkl[ok], r[ok], w[ok]
    qn = np.linalg.norm(crystal.rlu_to_cartesian(hkl), axis=1)
    dist = nearest_bragg_distance(crystal, hkl)
    data, coords, attrs = {}, {}, {}
    for x, nb, key in ((qn, q_bins, "q"), (dist, bragg_bins, "bragg_distance")):
        edges = np.linspace(float(x.min()), float(x.max()) * (1 + 1e-12) + 1e-12, int(nb) + 1)
        d, c, eta2 = _binned(x, r, w, edges, key, "1/angstrom")
        data.update(d)
        coords.update(c)
        tag = "q" if key == "q" else "bragg"
        attrs[f"eta2_{tag}"] = eta2
        with np.errstate(divide="ignore", invalid="ignore"):  # one-point bins have no standard error
            z = d[f"residual_mean_by_{key}"].values / d[f"residual_stderr_by_{key}"].values
        z = z[np.isfinite(z)]
        attrs[f"max_abs_z_{tag}"] = float(np.abs(z).max()) if len(z) else 0.0
    attrs["n_points"] = int(ok.sum())
    attrs["description"] = ("log residuals binned by |q| and by the distance to the nearest allowed Bragg reflection; "
                            "eta2_*: share of the residual variance the bins explain")
    out = xr.Dataset(data, coords=coords, attrs=attrs)
    out["q"].attrs["long_name"] = "|q|"
    out["bragg_distance"].attrs["long_name"] = "distance to the nearest Bragg reflection"
    return out
