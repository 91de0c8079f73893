"""Reading and writing reciprocal-space volumes: NeXus (NXrefine), zarr and netCDF.

- :func:`open_volume`: any of the three formats → a lazy (dask) ``xr.Dataset`` with
  ``intensity`` (and ``weights``/``mask`` where present) on dims ``H, K, L`` (r.l.u.).
- :func:`write_volume`: a Dataset → zarr (``.zarr``), NeXus (``.nxs``) or netCDF (``.nc``).
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from xtds.io.nexus import NEXUS_EXTENSIONS
from xtds.volume.schema import check_volume, crystal_attrs
from xtds.volume.symmetrize import symmetric_chunks

__all__ = ["open_volume", "write_volume", "check_volume", "crystal_attrs"]



def _format_of(path: str) -> str:
    p = os.fspath(path).rstrip("/")
    ext = os.path.splitext(p)[1].lower()
    zarr_marker = any(os.path.exists(os.path.join(p, name)) for name in ("zarr.json", ".zgroup"))
    if ext == ".zarr" or (os.path.isdir(p) and zarr_marker):
        return "zarr"
    if ext in (".nc", ".nc4", ".cdf"):
        return "netcdf"
    if ext in NEXUS_EXTENSIONS:
        import h5py

        if os.path.exists(p):
            with h5py.File(p, "r") as f:
                if "_NCProperties" in f.attrs:
                    return "netcdf"
        return "nexus"
    raise ValueError(
        f"cannot tell the format of {path!r} from its name: use .nxs/.h5 (NeXus), .zarr or .nc, or pass format=..."
    )


def _attach_crystal(ds: xr.Dataset, crystal, rtol: float = 0.02) -> xr.Dataset:
    if crystal is None:
        return ds
    mine = crystal_attrs(crystal)
    if "unit_cell" in ds.attrs:
        theirs = np.asarray(ds.attrs["unit_cell"], dtype=float)
        if not np.allclose(theirs, mine["unit_cell"], rtol=rtol):
            raise ValueError(
                f"the file's unit cell {np.round(theirs, 4).tolist()} differs from the crystal's "
                f"{np.round(mine['unit_cell'], 4).tolist()} by more than {rtol:.0%}: pass a Crystal with the "
                "measured lattice (e.g. Crystal.fcc('Ni', a=...)), or check the file"
            )
    out = ds.copy()
    out.attrs.update(mine)
    return out


def open_volume(
    path,
    crystal=None,
    group: str | None = None,
    chunks="auto",
    format: str | None = None,
    axis_units: str | None = None,
) -> xr.Dataset:
    """Open a reciprocal-space volume lazily.

    Parameters
    ----------
    path
        A NeXus file (NXrefine layout or any NXdata with @signal/@axes), a zarr store, or netCDF.
    crystal
        Optional :class:`~xtds.Crystal`: its cell is checked against the file's (2%) and stored in
        the attrs (``unit_cell``, ``space_group``).
    group
        NeXus only: the NXdata group, e.g. ``"entry/masked_transform"`` or ``"f1/transform"``
        (default: NXrefine's ``masked_transform``, ``transform``, … of the root entry).
    chunks
        ``"auto"``: the file's own chunks (dask); ``"symmetric"``: equal chunks mirrored about the
        centre, near the file's size, which Laue symmetrization uses without a rechunk (each block
        read straight from the file: the way to symmetrize volumes larger than memory); a dict as
        in ``xr.open_dataset``; None: no dask.
    axis_units
        NeXus only: ``"rlu"`` to declare axes without a @units attribute as r.l.u.

    Returns
    -------
    ``xr.Dataset`` with ``intensity`` (float, arbitrary units) on (H, K, L), ``weights`` where the
    file has them, coords H, K, L (r.l.u.) and attrs ``unit_cell``, ``space_group``,
    ``temperature`` (K), ``wavelength`` (Å) where present. Nothing is computed.
    """
    fmt = format or _format_of(path)
    if not os.path.exists(os.fspath(path)):
        raise FileNotFoundError(f"no such file or store: {path}")
    ck = {} if chunks in ("auto", "symmetric") else chunks
    if fmt == "nexus":
        ds = xr.open_dataset(path, engine="xtds", chunks=ck, group=group, axis_units=axis_units)
    elif fmt == "zarr":
        ds = xr.open_zarr(path, chunks=ck)
    elif fmt == "netcdf":
        ds = xr.open_dataset(path, engine="h5netcdf", chunks=ck)
    else:
        raise ValueError(f"format must be 'nexus', 'zarr' or 'netcdf', got {fmt!r}")
    ds = check_volume(ds.transpose("H", "K", "L", ...))
    if chunks == "symmetric":
        ds = _symmetric(ds, fmt, path, group, axis_units)
    if "mask" in ds:
        ds["mask"] = ds["mask"].astype(bool)
    return _attach_crystal(ds, crystal)


def _symmetric(ds, fmt, path, group, axis_units):
    target = max(max(c) for c in ds["intensity"].chunks)
    if fmt == "nexus":  # re-chunk the lazily indexed arrays, so each block is read from the file
        ds = xr.open_dataset(path, engine="xtds", chunks=None, group=group, axis_units=axis_units)
    return ds.chunk({d: symmetric_chunks(ds.sizes[d], target) for d in "HKL"})


def _serializable_attrs(attrs: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = int(v)
        elif isinstance(v, (str, int, float, np.integer, np.floating)):
            out[k] = v
        elif isinstance(v, (list, tuple, np.ndarray)):
            out[k] = np.asarray(v).tolist() if np.asarray(v).dtype.kind in "biuf" else [str(x) for x in v]
        elif isinstance(v, dict):
            import json

            out[k] = json.dumps(v, default=str)
        elif v is not None:
            out[k] = str(v)
    return out


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """zarr needs equal chunks (but the last): rechunk irregular dask dims to their first chunk size."""
    if not ds.chunks:
        return ds
    target = {}
    for dim, c in ds.chunks.items():
        if len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]):
            target[dim] = c[0]
    return ds.chunk(target) if target else ds


def write_volume(ds: xr.Dataset, path, format: str | None = None, overwrite: bool = False) -> str:
    """Write a volume (or any result Dataset) to zarr, NeXus or netCDF; returns the path.

    Dask-backed data is streamed chunk by chunk. An existing file is never replaced unless
    ``overwrite=True``. NeXus output is the NXrefine layout (``entry/data`` with ``data``,
    ``weights``, ``Ql``/``Qk``/``Qh``), holding ``intensity`` and ``weights`` only.
    """
    fmt = format or _format_of(path)
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    out = ds.copy()
    out.attrs = _serializable_attrs(ds.attrs)
    for name in list(out.variables):
        out[name].attrs = _serializable_attrs(out[name].attrs)
        out[name].encoding = {}
        if out[name].dtype == bool and name != "mask":  # netCDF has no booleans
            out[name] = out[name].astype("u1")
    if fmt == "zarr":
        if "mask" in out:
            out["mask"] = out["mask"].astype("u1")
        out = _regular_chunks(out)
        out.to_zarr(path, mode="w" if overwrite else "w-")
    elif fmt == "netcdf":
        if "mask" in out:
            out["mask"] = out["mask"].astype("u1")
        out.to_netcdf(path, engine="h5netcdf", mode="w")
    elif fmt == "nexus":
        from xtds.io.nexus import write_nexus

        check_volume(out)
        write_nexus(out, path, mode="w" if overwrite else "w-")
    else:
        raise ValueError(f"format must be 'nexus', 'zarr' or 'netcdf', got {fmt!r}")
    return path
