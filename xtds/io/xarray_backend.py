"""The xarray backend ``engine="xtds"``: NeXus (NXrefine) volumes as lazy (H, K, L) Datasets.

    xr.open_dataset("sample_300K.nxs", engine="xtds", chunks={})     # dask, file-aligned chunks

Registered under the ``xarray.backends`` entry-point group (see pyproject.toml).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from xtds.io.nexus import NEXUS_EXTENSIONS, find_nxdata, read_nxdata

__all__ = ["XtdsBackendEntrypoint", "open_nexus_dataset"]

_LOCK = threading.Lock()  # the HDF5 library is not thread-safe in every build


class _NXVolumeArray(BackendArray):
    """A lazily read (H, K, L) view of an L-first (or any order) NeXus field.

    ``kind="intensity"``: data / weights where weights > 0 (NaN elsewhere) when weights exist,
    else the signal itself. ``kind="weights"``: the weights.
    """

    def __init__(self, filename, signal, weights, disk_dims, shape, dtype, kind):
        self.filename = filename
        self.signal = signal
        self.weights = weights
        self.disk_dims = disk_dims
        self.order = [disk_dims.index(d) for d in "HKL"]  # disk axis of H, K, L
        self.shape = tuple(shape[i] for i in self.order)
        self.kind = kind
        self.dtype = np.dtype(np.float64) if (kind == "intensity" and weights) else np.dtype(dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _read(self, f, path, disk_key):
        return np.asarray(f[path][disk_key])

    def _raw(self, key):
        import h5py

        full = []
        for k in key:
            full.append(slice(k, k + 1) if isinstance(k, (int, np.integer)) else k)
        disk_key = [None] * 3
        for hkl_axis, disk_axis in enumerate(self.order):
            disk_key[disk_axis] = full[hkl_axis]
        disk_key = tuple(disk_key)
        with _LOCK, h5py.File(self.filename, "r") as f:
            if self.kind == "weights":
                out = self._read(f, self.weights, disk_key)
            else:
                out = self._read(f, self.signal, disk_key)
                if self.weights:
                    w = self._read(f, self.weights, disk_key)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        out = np.where(w > 0, out / np.where(w > 0, w, 1), np.nan)
        out = np.transpose(out, self.order)
        drop = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        return out.squeeze(axis=drop) if drop else out


def open_nexus_dataset(filename, group: str | None = None, axis_units: str | None = None) -> xr.Dataset:
    """The NXdata volume of a NeXus file as a lazily indexed Dataset (no dask yet)."""
    import h5py

    filename = os.fspath(filename)
    with h5py.File(filename, "r") as f:
        path = find_nxdata(f, group)
    info = read_nxdata(filename, path, axis_units=axis_units)
    order = [info["disk_dims"].index(d) for d in "HKL"]
    chunks = info["chunks"]
    preferred = {d: (chunks[order[i]] if chunks else info["shape"][order[i]]) for i, d in enumerate("HKL")}
    variables = {}
    kinds = ["intensity"] + (["weights"] if info["weights"] else [])
    for kind in kinds:
        arr = _NXVolumeArray(filename, info["signal"], info["weights"], info["disk_dims"], info["shape"],
                             info["dtype"], kind)
        data = indexing.LazilyIndexedArray(arr)
        attrs = {"units": info["signal_attrs"].get("units", "arbitrary")} if kind == "intensity" else {"units": "1"}
        attrs["long_name"] = "intensity (data / weights)" if (kind == "intensity" and info["weights"]) else kind
        var = xr.Variable(("H", "K", "L"), data, attrs=attrs)
        var.encoding["preferred_chunks"] = preferred
        var.encoding["disk_dims"] = tuple(info["disk_dims"])  # the file's axis order, slowest first
        variables[kind] = var
    coords = {d: xr.Variable((d,), info["coords"][d], attrs=info["coord_attrs"][d]) for d in "HKL"}
    attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in info["attrs"].items()}
    attrs.update(source=os.path.abspath(filename), nexus_group=path)
    return xr.Dataset(variables, coords=coords, attrs=attrs)


class XtdsBackendEntrypoint(BackendEntrypoint):
    """Open NXrefine-layout NeXus volumes: ``xr.open_dataset(path, engine="xtds", chunks={})``."""

    description = "NeXus/NXrefine reciprocal-space volumes as (H, K, L) Datasets (xtds)"
    url = "https://github.com/xtds/xtds/tree/main/docs/data.md"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "group", "axis_units")

    def open_dataset(self, filename_or_obj, *, drop_variables=None, group=None, axis_units=None):
        ds = open_nexus_dataset(filename_or_obj, group=group, axis_units=axis_units)
        if drop_variables:
            ds = ds.drop_vars(drop_variables)
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        try:
            ext = os.path.splitext(os.fspath(filename_or_obj))[1].lower()
        except TypeError:
            return False
        return ext in NEXUS_EXTENSIONS
