"""Measured powder spectra I(|Q|, E) or S(|Q|, E) with their errors, from the files reduction
software writes, as one labelled ``xr.Dataset``.

:func:`load_powder_spectrum` reads

- **Mantid MDHisto NeXus** (``SaveMD`` of an MDHistoWorkspace, e.g. from ``ConvertToMD`` and
  ``BinMD`` in |Q| and ΔE): group ``MDHistoWorkspace/data`` with ``signal``, ``errors_squared``,
  ``mask`` and the bin edges ``D0``, ``D1``, … (the signal stored last dimension first); dimensions
  of one bin are integrated out; the |Q| and ΔE dimensions are told by their names and units;
- **Mantid processed NeXus** (``SaveNexusProcessed`` of a ``SofQW`` workspace): group
  ``mantid_workspace_1/workspace`` with ``values`` (Q, E), ``errors``, ``axis1`` (energy edges) and
  ``axis2`` (|Q|), the instrument's name and the ``Ei`` log where recorded;
- **NXSPE** (``SaveNXSPE``): spectra per detector with their scattering angles: the |Q| of each
  detector and energy follows from Eᵢ (``NXSPE_info/fixed_energy``) and the polar angle,
  Q² = kᵢ² + k_f² − 2kᵢk_f cos 2θ, and the detectors are averaged into |Q| bins (``q_bins``),
  errors combined in quadrature;
- **plain HDF5** histograms: an intensity (``intensity``, ``signal``, ``S``, ``data``), its
  errors (``error``, ``errors``, ``sigma``, or ``variance``) and the axes (``Q``/``q``/``Qnorm``
  and ``E``/``energy``/``DeltaE``), centres or edges, in either order;
- an **xr.Dataset** or **xr.DataArray** already in memory.

The result has dims (E, Q) (meV, Å⁻¹, bin centres), ``intensity`` and ``sigma`` (NaN where a
pixel is masked or empty), ``valid``, and attrs: ``instrument``, ``incident_energy_meV``,
``ki_over_kf_scaling`` (whether kᵢ/k_f has been applied: the data are then S(Q, E); otherwise the
intensity carries k_f/kᵢ), ``counts`` (whether the values are raw counts), ``source_format`` and
``source``. What a file does not record is absent, never guessed.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

__all__ = ["load_powder_spectrum", "POWDER_FORMATS"]

POWDER_FORMATS = ("mdhisto", "mantid_processed", "nxspe", "hdf5", "xarray")

_INTENSITY = ("intensity", "signal", "S", "sqe", "data", "I")
_ERRORS = ("sigma", "error", "errors", "err")
_VARIANCE = ("variance", "errors_squared", "var")
_Q = ("Q", "q", "Qnorm", "qnorm", "|Q|", "MomentumTransfer")
_E = ("E", "energy", "DeltaE", "dE", "energy_transfer")


def _centres(v: np.ndarray, n: int, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=float).reshape(-1)
    if len(v) == n + 1:
        return 0.5 * (v[1:] + v[:-1])
    if len(v) == n:
        return v
    raise ValueError(f"the {what} axis has {len(v)} values for {n} bins (neither centres nor edges)")


def _text(x) -> str:
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, np.ndarray):
        return _text(x.reshape(-1)[0]) if x.size else ""
    return str(x)


def _is_q(name: str, units: str) -> bool:
    n, u = name.lower(), units.lower().replace(" ", "")
    return "|q|" in n or n in ("q", "qnorm", "momentumtransfer", "|q|") or "momentumtransfer" in u \
        or u in ("angstrom^-1", "å^-1", "1/angstrom", "1/å", "a^-1", "invangstrom")


def _is_e(name: str, units: str) -> bool:
    n, u = name.lower(), units.lower().replace(" ", "")
    return (n in ("deltae", "e", "energy", "de", "energy_transfer", "energytransfer") or "deltae" in n + u
            or u == "mev" or "energytransfer" in u)


def _dataset(I, sig, E, Q, attrs) -> xr.Dataset:
    """The common layout: (E, Q) with NaN for masked or empty pixels."""
    I = np.asarray(I, dtype=float)
    sig = None if sig is None else np.asarray(sig, dtype=float)
    valid = np.isfinite(I) & (np.isfinite(sig) if sig is not None else True)
    if sig is not None:
        valid &= sig >= 0
    I = np.where(valid, I, np.nan)
    order_e, order_q = np.argsort(E), np.argsort(Q)
    I = I[order_e][:, order_q]
    valid = valid[order_e][:, order_q]
    data = {"intensity": (("E", "Q"), I, {"long_name": "measured intensity"}),
            "valid": (("E", "Q"), valid, {"long_name": "finite, unmasked pixels"})}
    if sig is not None:
        data["sigma"] = (("E", "Q"), np.where(valid, sig, np.nan)[order_e][:, order_q],
                         {"long_name": "standard uncertainty of the intensity"})
    ds = xr.Dataset(data, coords={"E": ("E", np.asarray(E, float)[order_e], {"units": "meV"}),
                                  "Q": ("Q", np.asarray(Q, float)[order_q], {"units": "1/Å"})})
    ds.attrs.update({k: v for k, v in attrs.items() if v is not None})
    if not valid.any():
        raise ValueError(f"{attrs.get('source', 'the data')}: no finite, unmasked pixel")
    return ds


def _find(group, names):
    for n in names:
        if n in group:
            return n
    lower = {k.lower(): k for k in group}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _read_mdhisto(f, path: str) -> xr.Dataset:
    g = f["MDHistoWorkspace"]
    d = g["data"] if "data" in g else g
    signal = np.asarray(d["signal"], dtype=float)
    err2 = np.asarray(d["errors_squared"], dtype=float) if "errors_squared" in d else None
    mask = np.asarray(d["mask"]).astype(bool) if "mask" in d else np.zeros(signal.shape, bool)
    ndim = signal.ndim
    dims = []
    for k in range(ndim):  # the file stores the signal with the last dimension first
        ax = d[f"D{k}"]
        dims.append((np.asarray(ax, dtype=float), _text(ax.attrs.get("long_name", f"D{k}")),
                     _text(ax.attrs.get("units", ""))))
    arr_dims = list(range(ndim))[::-1]  # axis i of the signal is dimension ndim-1-i
    keep = [k for k in range(ndim) if len(dims[k][0]) - 1 > 1]
    q = [k for k in keep if _is_q(dims[k][1], dims[k][2])]
    e = [k for k in keep if _is_e(dims[k][1], dims[k][2])]
    if len(keep) != 2 or len(q) != 1 or len(e) != 1:
        raise ValueError(f"{path}: an MDHisto powder spectrum needs exactly two binned dimensions, |Q| and ΔE; "
                         f"found {[(dims[k][1], dims[k][2], len(dims[k][0]) - 1) for k in range(ndim)]}: bin the "
                         "workspace in |Q| (MomentumTransfer) and DeltaE only (BinMD), then SaveMD")
    axes = {k: i for i, k in enumerate(arr_dims)}

    def plane(a):
        # integrate (sum) the one-bin dimensions away, put E first
        a = np.moveaxis(a, [axes[e[0]], axes[q[0]]], [0, 1])
        return a.reshape(a.shape[0], a.shape[1], -1).sum(-1)

    I = plane(signal)
    sig = None if err2 is None else np.sqrt(np.clip(plane(err2), 0, None))
    bad = plane(mask.astype(float)) > 0
    I[bad] = np.nan
    E = _centres(dims[e[0]][0], I.shape[0], "ΔE")
    Q = _centres(dims[q[0]][0], I.shape[1], "|Q|")
    attrs = {"source_format": "mdhisto", "source": os.path.abspath(path), "counts": False}
    attrs.update(_mantid_logs(g))
    return _dataset(I, sig, E, Q, attrs)


def _mantid_logs(g) -> dict:
    """Instrument name and Ei from a Mantid group's experiment info or logs, where present."""
    out = {}
    for base in ("experiment0", "."):
        if base != "." and base not in g:
            continue
        root = g[base] if base != "." else g
        for path in ("instrument/name", "logs/Ei/value", "logs/EnergyRequest/value", "run/Ei/value"):
            if path in root:
                v = np.asarray(root[path])
                if path.endswith("name"):
                    out.setdefault("instrument", _text(v).strip().upper())
                else:
                    out.setdefault("incident_energy_meV", float(np.asarray(v, dtype=float).reshape(-1)[0]))
    return out


def _read_processed(f, path: str) -> xr.Dataset:
    g = f["mantid_workspace_1"]
    w = g["workspace"]
    values = np.asarray(w["values"], dtype=float)  # (spectra, bins)
    errors = np.asarray(w["errors"], dtype=float) if "errors" in w else None
    x = w["axis1"]
    y = w["axis2"]
    xu, yu = _text(x.attrs.get("units", "")), _text(y.attrs.get("units", ""))
    if not (_is_e("", xu) or "energy" in xu.lower()) or not _is_q("", yu):
        raise ValueError(f"{path}: expected a SofQW workspace (energy transfer along x, |Q| as the spectrum axis), "
                         f"got x in {xu!r} and spectra in {yu!r}")
    E = _centres(np.asarray(x), values.shape[1], "energy")
    Q = _centres(np.asarray(y), values.shape[0], "|Q|")
    attrs = {"source_format": "mantid_processed", "source": os.path.abspath(path), "counts": False}
    attrs.update(_mantid_logs(g))
    if "instrument" in g and "name" in g["instrument"]:
        attrs.setdefault("instrument", _text(np.asarray(g["instrument/name"])).strip().upper())
    if "logs" in g and "Ei" in g["logs"]:
        attrs.setdefault("incident_energy_meV", float(np.asarray(g["logs/Ei/value"], dtype=float).reshape(-1)[0]))
    return _dataset(values.T, None if errors is None else errors.T, E, Q, attrs)


def _read_nxspe(f, path: str, q_bins) -> xr.Dataset:
    from xtds.observables.neutron.sqe import NEUTRON_E_PER_K2

    entry = next(f[k] for k in f if "NXSPE_info" in f[k])
    info = entry["NXSPE_info"]
    Ei = float(np.asarray(info["fixed_energy"]).reshape(-1)[0])
    scaled = bool(np.asarray(info["ki_over_kf_scaling"]).reshape(-1)[0]) if "ki_over_kf_scaling" in info else None
    d = entry["data"]
    data = np.asarray(d["data"], dtype=float)  # (detectors, energies)
    err = np.asarray(d["error"], dtype=float) if "error" in d else None
    E = _centres(np.asarray(d["energy"]), data.shape[1], "energy")
    two_theta = np.radians(np.asarray(d["polar"], dtype=float))
    ki = np.sqrt(Ei / NEUTRON_E_PER_K2)
    kf = np.sqrt(np.clip(Ei - E, 0, None) / NEUTRON_E_PER_K2)
    Qd = np.sqrt(np.clip(ki**2 + kf[None] ** 2 - 2 * ki * kf[None] * np.cos(two_theta)[:, None], 0, None))  # (det, E)
    good = np.isfinite(data) & (Ei - E[None] > 0)
    if err is not None:
        good &= np.isfinite(err)
    # Mantid marks masked detectors with a huge negative value or NaN
    good &= data > -1e29
    edges = np.asarray(q_bins, dtype=float) if q_bins is not None and np.ndim(q_bins) else \
        np.arange(0.0, float(Qd[good].max()) + 0.05, 0.05 if q_bins is None else float(q_bins))
    nq = len(edges) - 1
    idx = np.digitize(Qd, edges) - 1
    ok = good & (idx >= 0) & (idx < nq)
    I = np.full((len(E), nq), np.nan)
    S = np.full((len(E), nq), np.nan)
    for e in range(len(E)):
        sel = ok[:, e]
        n = np.bincount(idx[sel, e], minlength=nq)
        tot = np.bincount(idx[sel, e], weights=data[sel, e], minlength=nq)
        with np.errstate(invalid="ignore", divide="ignore"):
            I[e] = np.where(n > 0, tot / n, np.nan)
            if err is not None:
                var = np.bincount(idx[sel, e], weights=err[sel, e] ** 2, minlength=nq)
                S[e] = np.where(n > 0, np.sqrt(var) / n, np.nan)
    name = None
    if "instrument" in entry and "name" in entry["instrument"]:
        name = _text(np.asarray(entry["instrument/name"])).strip().upper()
    attrs = {"source_format": "nxspe", "source": os.path.abspath(path), "instrument": name,
             "incident_energy_meV": Ei, "ki_over_kf_scaling": scaled, "counts": False,
             "q_binning": "detectors averaged in |Q| bins of the NXSPE angles"}
    return _dataset(I, None if err is None else S, E, 0.5 * (edges[1:] + edges[:-1]), attrs)


def _read_plain(f, path: str) -> xr.Dataset:
    keys = list(f.keys())
    ni, ne, nv = _find(f, _INTENSITY), _find(f, _ERRORS), _find(f, _VARIANCE)
    nq, nE = _find(f, _Q), _find(f, _E)
    missing = [w for w, v in (("intensity", ni), ("|Q| axis", nq), ("energy axis", nE)) if v is None]
    if missing:
        raise ValueError(f"{path}: not a powder spectrum xtds can read: no {', '.join(missing)} among {keys} "
                         f"(intensity as one of {_INTENSITY}, errors {_ERRORS} or variance {_VARIANCE}, axes "
                         f"{_Q} and {_E}); Mantid files: SaveMD (MDHisto), SaveNexusProcessed (SofQW) or SaveNXSPE")
    I = np.asarray(f[ni], dtype=float)
    q, e = np.asarray(f[nq], dtype=float), np.asarray(f[nE], dtype=float)
    sig = None
    if ne:
        sig = np.asarray(f[ne], dtype=float)
    elif nv:
        sig = np.sqrt(np.clip(np.asarray(f[nv], dtype=float), 0, None))
    if I.ndim != 2:
        raise ValueError(f"{path}: the intensity must be 2-D (E, Q) or (Q, E), got shape {I.shape}")
    if I.shape[0] in (len(q), len(q) - 1) and I.shape[1] in (len(e), len(e) - 1) and \
            not (I.shape[0] in (len(e), len(e) - 1) and I.shape[1] in (len(q), len(q) - 1)):
        I = I.T
        sig = None if sig is None else sig.T
    E = _centres(e, I.shape[0], "energy")
    Q = _centres(q, I.shape[1], "|Q|")
    attrs = {"source_format": "hdf5", "source": os.path.abspath(path)}
    for k, v in f.attrs.items():
        key = {"ei": "incident_energy_meV", "incident_energy": "incident_energy_meV"}.get(k.lower(), k)
        attrs[key] = _text(v) if isinstance(v, bytes | str) else (float(v) if np.ndim(v) == 0 else v)
    finite = I[np.isfinite(I)]
    attrs.setdefault("counts", bool(sig is None and np.array_equal(finite, np.round(finite))))
    return _dataset(I, sig, E, Q, attrs)


def _from_xarray(obj) -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name="intensity")
    names = {d.lower(): d for d in obj.dims}
    dq = next((names[n.lower()] for n in _Q if n.lower() in names), None)
    de = next((names[n.lower()] for n in _E if n.lower() in names), None)
    var = next((v for v in _INTENSITY if v in obj), None)
    if dq is None or de is None or var is None:
        raise ValueError(f"an xarray powder spectrum needs dims |Q| (one of {_Q}) and energy (one of {_E}) and an "
                         f"intensity variable (one of {_INTENSITY}); got dims {tuple(obj.dims)}, variables "
                         f"{list(obj.data_vars)}")
    I = obj[var].transpose(de, dq).values
    sv = next((v for v in _ERRORS if v in obj), None)
    vv = next((v for v in _VARIANCE if v in obj), None)
    sig = obj[sv].transpose(de, dq).values if sv else (np.sqrt(obj[vv].transpose(de, dq).values) if vv else None)
    attrs = dict(obj.attrs)
    attrs.setdefault("source_format", "xarray")
    return _dataset(I, sig, obj[de].values, obj[dq].values, attrs)


def load_powder_spectrum(source, q_bins=None) -> xr.Dataset:
    """A measured powder spectrum as an (E, Q) ``xr.Dataset`` (module docstring): ``source`` a file
    path (Mantid MDHisto, Mantid processed SofQW, NXSPE, plain HDF5) or an xarray object.
    ``q_bins`` (NXSPE only): the |Q| bin edges (Å⁻¹) or a step (default 0.05)."""
    if isinstance(source, xr.Dataset | xr.DataArray):
        return _from_xarray(source)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not an HDF5/NeXus file ({err}); powder spectra are read from Mantid "
                         "NeXus (SaveMD, SaveNexusProcessed, SaveNXSPE) or plain HDF5") from err
    with f:
        if "MDHistoWorkspace" in f:
            return _read_mdhisto(f, path)
        if "mantid_workspace_1" in f:
            return _read_processed(f, path)
        if any(isinstance(f[k], h5py.Group) and "NXSPE_info" in f[k] for k in f):
            return _read_nxspe(f, path, q_bins)
        return _read_plain(f, path)
