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

__all__ = ["diagnostics", "nearest_bragg_distance", "spectrum_diagnostics", "smooth_share"]


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


def _standardized(result: xr.Dataset, problem) -> np.ndarray:
    """(data − model)/σ per point (χ²), the deviance residuals (Poisson), or the log residuals."""
    prefix = f"{problem.name}_" if problem.name else ""
    d = np.asarray(result[f"{prefix}{problem.data_name}"].values, dtype=float)
    m = np.asarray(result[f"{prefix}model_{problem.data_name}"].values, dtype=float)
    if problem.loss == "chi2":
        return (d - m) / np.asarray(problem.sigma, dtype=float)
    if problem.loss == "poisson":
        import torch

        from xtds.fitting.losses import residuals

        return residuals(torch.as_tensor(m), torch.as_tensor(d), torch.ones(len(d)), "poisson", True).numpy()
    return np.log(d) - np.log(m)


def smooth_share(z_map: np.ndarray, mask: np.ndarray, modes: int = 6) -> float:
    """The share of Σz² over the valid pixels of an (E, Q) map that its lowest ``modes`` × ``modes``
    cosine modes carry (least squares on the valid pixels): about modes²/N for independent noise,
    towards 1 when the residuals are a smooth function of E and |Q| (a missing term)."""
    nE, nQ = z_map.shape
    i, j = np.nonzero(mask)
    z = z_map[mask]
    cols = [np.cos(np.pi * a * (i + 0.5) / nE) * np.cos(np.pi * b * (j + 0.5) / nQ)
            for a in range(modes) for b in range(modes)]
    X = np.stack(cols, 1)
    coef = np.linalg.lstsq(X, z, rcond=None)[0]
    total = float(z @ z)
    return float(np.sum((X @ coef) ** 2) / total) if total > 0 else 0.0


def spectrum_diagnostics(result: xr.Dataset, problem, e_bins: int = 12, q_bins: int = 12, modes: int = 6) -> xr.Dataset:
    """Residual structure of a fit of an (E, |Q|) spectrum: the (Q, E) analogue of :func:`diagnostics`.

    ``result``: the fit result; ``problem``: its :class:`~xtds.fitting.problem.Problem` (a powder
    spectrum: the observable's ``mask``, ``energies``, ``q_centers``). The standardized residuals
    ((data − model)/σ for χ², deviance residuals for Poisson, log residuals otherwise) are returned
    as a map ``residual_map`` (E, Q) and binned by energy transfer and by |Q| (weighted means,
    standard errors, counts, η² of each binning); attrs ``rms`` (the standardized residuals' rms:
    1 for a model that fits to the noise), ``smooth_share`` (the share of Σz² in the lowest
    ``modes`` × ``modes`` cosine modes of the map, :func:`smooth_share`) and ``smooth_share_noise``
    (what independent noise would give, modes²/N), ``pixel_noise`` (the rms over the pixels of the
    noise the data show by themselves, pixel by pixel: :func:`xtds.observables.neutron.screen.noise_map`)
    and ``residual_over_noise`` (the rms of data − model over it: about 1 for a model that fits to
    the noise, whatever σ the fit was given), and the same against one pooled robust spread
    (``pixel_noise_pooled``, :func:`~xtds.observables.neutron.screen.pixel_noise`, the typical σ:
    lower than the rms σ where the noise varies across the map, so ``residual_over_pooled_noise``
    exceeds 1 for a model that fits to the noise there). Censored points
    (:class:`~xtds.fitting.problem.Problem`'s ``censored``) are left out of all of these
    (``n_censored`` says how many). Plot with
    :func:`xtds.plot.plot_spectrum_residuals`."""
    obs = problem.observable
    for need in ("mask", "energies", "q_centers", "point_energy", "point_qnorm"):
        if not hasattr(obs, need):
            raise ValueError(f"{type(obs).__name__} is not an (E, |Q|) spectrum: spectrum_diagnostics needs "
                             "a PowderSpectrum's problem")
    # censored points (limits, not values) are left out of every figure of merit
    keep = np.ones(len(problem), bool) if problem.censored is None else np.asarray(problem.censored) == 0
    z = _standardized(result, problem)[keep]
    mask = np.asarray(obs.mask, bool).copy()
    mask[mask] = keep
    E, Q = np.asarray(obs.energies, float), np.asarray(obs.q_centers, float)
    zmap = np.full(mask.shape, np.nan)
    zmap[mask] = z
    data, coords, attrs = {}, {}, {"n_censored": int((~keep).sum())}
    w = np.ones_like(z)
    for x, nb, key, units in ((obs.point_energy[keep], e_bins, "energy", "meV"),
                              (obs.point_qnorm[keep], q_bins, "qnorm", "1/Å")):
        edges = np.linspace(float(x.min()), float(x.max()) * (1 + 1e-12) + 1e-12, int(nb) + 1)
        d, c, eta2 = _binned(np.asarray(x, float), z, w, edges, key, units)
        for k in d:
            d[k].attrs["long_name"] = d[k].attrs["long_name"].replace("log data − log model", "standardized residual")
        data.update(d)
        coords.update(c)
        attrs[f"eta2_{key}"] = eta2
    data["residual_map"] = xr.DataArray(zmap, dims=("E", "Q"), coords={"E": ("E", E, {"units": "meV"}),
                                                                        "Q": ("Q", Q, {"units": "1/Å"})},
                                        attrs={"long_name": "standardized residual", "loss": problem.loss})
    attrs["rms"] = float(np.sqrt(np.mean(z**2)))
    # the residuals against the noise the data show by themselves (pixel to pixel)
    from xtds.observables.neutron.screen import noise_map, pixel_noise

    prefix = f"{problem.name}_" if problem.name else ""
    dmap = np.full(mask.shape, np.nan)
    dmap[mask] = np.asarray(result[f"{prefix}{problem.data_name}"].values, dtype=float)[keep]
    mmap = np.full(mask.shape, np.nan)
    mmap[mask] = np.asarray(result[f"{prefix}model_{problem.data_name}"].values, dtype=float)[keep]
    rms_residual = float(np.sqrt(np.nanmean((dmap - mmap)[mask] ** 2)))
    noise = float(np.sqrt(np.nanmean(noise_map(dmap, mask)[mask] ** 2)))
    pooled = pixel_noise(dmap, mask)["sigma"]
    attrs.update(pixel_noise=noise, residual_over_noise=rms_residual / noise, pixel_noise_pooled=pooled,
                 residual_over_pooled_noise=rms_residual / pooled)
    attrs["smooth_share"] = smooth_share(zmap, mask, modes)
    attrs["smooth_share_noise"] = modes**2 / int(mask.sum())
    attrs["modes"] = int(modes)
    attrs["n_points"] = int(mask.sum())
    return xr.Dataset(data, coords=coords, attrs=attrs)
