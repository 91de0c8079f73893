"""A series of volumes (temperatures, pressures, samples), one fit each, as parallel tasks.

:func:`fit_series` runs :func:`xtds.fitting.tds.fit` once per volume as independent tasks: on a
``dask.distributed`` cluster (a ``LocalCluster`` of worker processes by default when
``distributed`` is installed, or any scheduler address or ``Client``), or on threads in this
process (``client="threads"``, the default without ``distributed``), or one after the other
(``client="sequential"``). What runs where:

- a worker opens its volume itself (a path is sent, not the data), prepares and fits it, and
  sends back the fit's result, a small Dataset (constants, errors, dispersion, the fit's
  diagnostics);
- this process collects the results as they finish and appends each to the zarr ``store`` at
  once (one group per volume): files are written by one process only, so nothing is written
  under a worker;
- a volume whose fit raises (an unreadable or corrupt file, unstable constants, …) is reported
  by name with its error and the others complete;
- a rerun with the same ``store`` and settings loads the finished volumes from it and fits only
  the missing ones (a killed run loses only the fits that were in flight).

The results are concatenated along the series dimension (``dim``, coordinate ``coords``) with
provenance: which volume each entry came from, whether it was fitted now or loaded from the
store, and the failures (``attrs["failed"]``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Sequence

import numpy as np
import xarray as xr

from xtds.fitting.optimizers import Optimizer
from xtds.fitting.tds import fit
from xtds.lattice.crystal import as_crystal
from xtds.lattice.ifc import IFCModel
from xtds.observables.base import describe
from xtds.observables.tds.settings import as_tds_model
from xtds.volume.sources import reading

log = logging.getLogger("xtds.fitting")

__all__ = ["fit_series", "local_cluster", "SERIES_VARIABLES"]

#: The per-volume variables kept in the concatenated result (those a fit of any volume has, on
#: dimensions every fit shares); the full result of each volume stays in the store.
SERIES_VARIABLES = ("ifc", "ifc_stderr", "ifc_cov", "dispersion", "dispersion_stderr", "elastic_constants",
                    "elastic_constants_stderr")


def _name_of(volume, i: int) -> str:
    if isinstance(volume, str | os.PathLike):
        return os.fspath(volume)
    src = getattr(volume, "attrs", {}).get("source")
    return f"volume {i}" + (f" ({src})" if src else "")


def _file_identity(path: str) -> str:
    """A file's path, size and modification time; for a folder (a zarr store), those of every file
    in it (an edited chunk changes its own time and size, not the folder's)."""
    path = os.path.abspath(path)
    try:
        if not os.path.isdir(path):
            st = os.stat(path)
            return f"{path}|{st.st_size}|{st.st_mtime_ns}"
        h = hashlib.sha256(path.encode())
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{os.path.relpath(os.path.join(folder, name), path)}|{st.st_size}|{st.st_mtime_ns};".encode())
        return f"{path}|{h.hexdigest()[:16]}"
    except OSError:
        return path


def _identity(volume) -> str:
    """What makes a finished entry reusable: the file (:func:`_file_identity`), or, for a Dataset,
    its sizes, attributes and content (in-memory arrays by a digest of their values, lazy ones by
    dask's token and the identity of the files they read)."""
    if isinstance(volume, str | os.PathLike):
        return _file_identity(os.fspath(volume))
    import dask

    from xtds.volume.sources import lazy_sources

    content = {}
    for name, var in volume.variables.items():
        data = var.data
        if isinstance(data, np.ndarray):
            content[str(name)] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:16]
        else:
            content[str(name)] = dask.base.tokenize(data)
    files = sorted(_file_identity(p) for p in lazy_sources(volume))
    return json.dumps({"sizes": dict(volume.sizes), "attrs": {k: str(v) for k, v in volume.attrs.items()},
                       "content": content, "files": files}, sort_keys=True)


#: What :func:`_attr_of` returns for a volume that cannot be read (its fit then fails, by name).
_UNREADABLE = object()


def _attr_of(volume, name: str):
    """``attrs[name]`` of a Dataset, or of a file's metadata (opened lazily): None where it has no
    such attribute, :data:`_UNREADABLE` where the file cannot be opened."""
    if isinstance(volume, str | os.PathLike):
        from xtds.io import open_volume

        try:
            volume = open_volume(volume)
        except Exception:  # noqa: BLE001 - the task reports the file's error
            return _UNREADABLE
    v = volume.attrs.get(name)
    return v.item() if isinstance(v, np.generic) else v


def _fit_one(volume, crystal, kwargs):
    """The task: open (if a path), fit, return the result Dataset, loaded (small).

    Its dask computations (reading, masking, reducing the volume) run on dask's threads in the
    process that runs the task: inside a distributed task the default scheduler would be the
    cluster itself, and the task would wait for threads that the other fits hold (measured: the
    81³ series took 3× the sequential time that way). The fit runs without a progress bar."""
    import dask

    from xtds.io import open_volume

    kwargs = dict(kwargs)
    optimizer = kwargs.get("optimizer")
    if optimizer is None:
        stochastic = as_tds_model(kwargs.get("model")).method == "sampled"
        kwargs["optimizer"] = Optimizer.default_for(stochastic, progress=False)
    else:
        kwargs["optimizer"] = dataclasses.replace(optimizer, progress=False)
    with dask.config.set(scheduler="threads"):
        ds = open_volume(volume) if isinstance(volume, str | os.PathLike) else volume
        res = fit(ds, crystal, **kwargs)
        return res.load()


def _json_attrs(ds: xr.Dataset) -> xr.Dataset:
    """A copy whose attributes zarr can store (numbers, strings, lists; the rest as JSON text)."""
    out = ds.copy()

    def clean(attrs):
        keep = {}
        for k, v in attrs.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, str | int | float | bool) or v is None:
                keep[k] = v
            elif isinstance(v, list | tuple) and all(isinstance(x, str | int | float | bool) for x in v):
                keep[k] = list(v)
            else:
                keep[k] = json.dumps(v, default=str)
        return keep

    out.attrs = clean(out.attrs)
    for name in out.variables:
        out[name].attrs = clean(out[name].attrs)
    return out


#: The root attribute ``xtds`` of a series store.
STORE_MARK = "fit_series store"


class _Store:
    """The zarr store of a series: one group per volume (``v<index>``), written when its fit ends."""

    def __init__(self, path, fingerprint: str):
        """Checks the path before any fit, and creates the store: a finished series is never lost to
        a path it cannot be written to."""
        import zarr

        self.path, self.fingerprint = os.fspath(path), fingerprint
        where = f"the series store {self.path}"
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"{where} is a file, not a zarr folder: give store= a new folder name (e.g. "
                             "'series.zarr'), or the folder of an earlier run of this series to resume it")
        if os.path.isdir(self.path):
            entries = sorted(os.listdir(self.path))
            if entries and not {"zarr.json", ".zgroup"} & set(entries):
                raise ValueError(f"{where} is a folder that holds {entries[:5]} but no zarr store: give store= a "
                                 "new folder name, or the folder of an earlier run of this series to resume it")
        try:
            root = zarr.open_group(self.path, mode="a")
            keys = list(root.keys())
        except Exception as err:  # noqa: BLE001 - zarr and the OS raise many kinds; each is named
            raise OSError(f"cannot create or open {where} ({type(err).__name__}: {err}): give store= a folder "
                          "you can write to") from err
        # a zarr store of something else (a volume, a fit result): its own data would be written into
        foreign = [k for k in keys if not re.fullmatch(r"v\d{5}", k)]
        if foreign or (keys and root.attrs.get("xtds") != STORE_MARK and not all(
                "series_fingerprint" in root[k].attrs for k in keys)):
            raise ValueError(f"{where} is a zarr store of something else (it holds {sorted(keys)[:5]}): give store= "
                             "a new folder name, or the folder of an earlier run of this series to resume it")
        if root.attrs.get("xtds") != STORE_MARK:
            root.attrs["xtds"] = STORE_MARK

    def group(self, i: int) -> str:
        return f"v{i:05d}"

    def load(self, i: int, identity: str) -> xr.Dataset | None:
        """The finished result of volume ``i``, if the store holds one for these settings and this
        volume; None otherwise."""
        import zarr

        try:
            g = zarr.open_group(self.path, mode="r", path=self.group(i))
        except Exception:  # noqa: BLE001 - no such group (yet): not finished
            return None
        attrs = dict(g.attrs)
        if attrs.get("series_fingerprint") != self.fingerprint or attrs.get("series_identity") != identity:
            return None
        if not attrs.get("series_complete"):
            return None
        ds = xr.open_zarr(self.path, group=self.group(i), consolidated=False)
        with reading(ds, f"loading the finished fit {self.group(i)} of the series store {self.path}"):
            return ds.load()

    def finished(self, identities: list[str]) -> dict[int, xr.Dataset]:
        """The results the store holds for these settings and volumes, by volume index."""
        out = {}
        for i, identity in enumerate(identities):
            got = self.load(i, identity)
            if got is not None:
                out[i] = got
        return out

    def save(self, i: int, identity: str, res: xr.Dataset) -> None:
        import warnings

        import zarr

        ds = _json_attrs(res)
        ds.attrs.update(series_fingerprint=self.fingerprint, series_identity=identity, series_complete=False)
        with warnings.catch_warnings():  # zarr 3 on fixed-length strings (the constants' names): read back fine
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
            ds.to_zarr(self.path, group=self.group(i), mode="w", consolidated=False)
        # marked complete last: a run killed while writing leaves an entry the next run refits
        zarr.open_group(self.path, mode="r+", path=self.group(i)).attrs["series_complete"] = True


#: Worker environment variables of distributed's defaults that :func:`local_cluster` leaves out.
#: MALLOC_TRIM_THRESHOLD_ (65536) fixes glibc's thresholds, so every array above 128 kB becomes a
#: fresh mmap: torch's large temporaries then cost page faults. Measured on one 81³ Ni fit on the
#: 2-core machine: 92 s in a worker with it, 33 s without, 35 s in this process on one thread.
WORKER_ENV_DROPPED = ("MALLOC_TRIM_THRESHOLD_",)


def local_cluster(n_workers: int, **kwargs):
    """A ``distributed.LocalCluster`` of single-threaded worker processes for fits: distributed's
    worker environment without ``WORKER_ENV_DROPPED`` (the BLAS/OpenMP thread limits stay).
    ``kwargs`` go to ``LocalCluster``. For a cluster made elsewhere (e.g. dask-jobqueue), set
    ``distributed.nanny.pre-spawn-environ`` likewise (docs/scale-out.md)."""
    import dask
    import distributed

    env = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
           if k not in WORKER_ENV_DROPPED}
    options = {"threads_per_worker": 1, "processes": True, "dashboard_address": None} | kwargs
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return distributed.LocalCluster(n_workers=n_workers, **options)


#: Why a LocalCluster fails when ``fit_series`` runs at a script's top level, and the two fixes.
UNGUARDED = (
    "fit_series could not start its local cluster's worker processes: each worker re-imports the "
    "script that called it, and a call at the script's top level starts the cluster again inside "
    "every worker. Put the call under `if __name__ == \"__main__\":` (docs/scale-out.md), or pass "
    "client=\"threads\" to fit in this process"
)


def _client_of(client, n_tasks: int):
    """(executor kind, client or None, owned): ``client`` None → a LocalCluster when distributed is
    installed, else threads; "threads"/"sequential"; an address; or a Client."""
    if client in ("threads", "sequential"):
        return client, None, None
    if client is None:
        try:
            import distributed
        except ImportError:
            return "threads", None, None
        try:
            cluster = local_cluster(max(1, min(n_tasks, os.cpu_count() or 1)))
        except Exception as err:  # noqa: BLE001 - distributed says only "Nanny failed to start"
            main = sys.modules.get("__main__")
            if getattr(main, "__file__", None) is None:  # not a script: no re-import to blame
                raise
            raise RuntimeError(f"{UNGUARDED} (distributed: {err})") from err
        return "distributed", distributed.Client(cluster), cluster
    if isinstance(client, str):
        import distributed

        return "distributed", distributed.Client(client), None
    return "distributed", client, None


def fit_series(
    volumes,
    crystal,
    *,
    dim: str = "temperature",
    coords: Sequence | None = None,
    store=None,
    client=None,
    progress: bool = True,
    **fit_kwargs,
) -> xr.Dataset:
    """Fit every volume of a series, as parallel tasks (module docstring).

    Parameters
    ----------
    volumes
        Paths of volume files (NeXus, zarr, netCDF: :func:`xtds.open_volume`) or Datasets, one per
        member of the series; or one Dataset with the series dimension ``dim`` (it is split along
        it, each member keeping its coordinate as ``attrs[dim]``, e.g. its temperature).
    crystal
        As :func:`xtds.fit` (a Crystal, a preset name, a CIF path, or an IFCModel).
    dim, coords
        The series dimension of the result and its coordinate values (default: the members'
        ``attrs[dim]`` where they all have one, else 0, 1, …).
    store
        A zarr path: each fit's result is appended there as it finishes, and a rerun with the same
        settings fits only the volumes the store does not hold yet.
    client
        None (a LocalCluster with one single-threaded worker process per volume, at most the CPU
        count, when ``distributed`` is installed; else ``"threads"``), ``"threads"``,
        ``"sequential"``, a scheduler address, or a ``distributed.Client``. A LocalCluster starts
        worker processes: a script that calls this at its top level must guard it with
        ``if __name__ == "__main__":`` (or pass ``client="threads"``).
    progress
        A progress bar over the volumes (each fit runs without its own).
    fit_kwargs
        Passed to :func:`xtds.fit` for every volume (``shells``, ``initial``, ``temperature``,
        ``prepare``, ``model``, …; with ``temperature`` unset each volume's own is used).

    Returns
    -------
    ``xr.Dataset`` with :data:`SERIES_VARIABLES` concatenated along ``dim``, the volume of each
    entry (``volume``), whether it was fitted (``fitted``: a member whose fit failed keeps its place,
    with NaN constants, named in ``attrs["failed"]``) or loaded from the store (``from_store``), the loss,
    iterations, time (``fit_time``, s) and minimization time (``minimize_time``, s) of each
    fit, and ``attrs["failed"]`` (JSON: volume → error) and ``attrs["store"]``. Raises
    ``RuntimeError`` naming every failure when no volume could be fitted.
    """
    if client is None and getattr(multiprocessing.current_process(), "_inheriting", False):
        # a worker process re-running the script that started it (spawn imports __main__): stop at once
        raise RuntimeError(UNGUARDED)
    volumes, coords = _members(volumes, dim, coords)
    names = [_name_of(v, i) for i, v in enumerate(volumes)]
    fingerprint = _fingerprint(crystal, fit_kwargs)
    st = _Store(store, fingerprint) if store is not None else None
    got = _Results(names, [_identity(v) for v in volumes], st, progress, dim)
    results, loaded, failed, t0 = got.results, set(got.results), got.failed, got.t0
    todo = [i for i in range(len(volumes)) if i not in results]
    try:
        kind = _run(todo, volumes, crystal, fit_kwargs, client, fingerprint, got.finish)
    finally:
        got.bar.close()
    if not results:
        raise RuntimeError("no volume of the series could be fitted: "
                           + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    out = _concatenated(results, coords, names, loaded, dim)
    out.attrs.update(failed=json.dumps(failed), store=str(store) if store is not None else "",
                     scheduler=kind, n_fitted=len(results) - len(loaded & set(results)), n_loaded=len(loaded),
                     wall_time_s=float(time.perf_counter() - t0))
    if failed:
        log.warning("fit_series: %d of %d volumes failed: %s", len(failed), len(volumes), ", ".join(failed))
    return out


class _Results:
    """A series run's results as they come (by volume index; those the store holds first) and its
    failures (by volume name), with the progress bar and the store's appends."""

    def __init__(self, names, identities, store, progress: bool, dim: str):
        from tqdm.auto import tqdm

        self.names, self.identities, self.store = names, identities, store
        self.results = {} if store is None else store.finished(identities)
        self.failed: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=len(names), initial=len(self.results), desc=f"fits along {dim}", disable=not progress)

    def finish(self, i: int, res=None, err=None) -> None:
        if err is not None:
            self.failed[self.names[i]] = f"{type(err).__name__}: {err}"
            log.warning("fit_series: %s failed: %s", self.names[i], self.failed[self.names[i]])
        else:
            res.attrs["series_wall_time_s"] = float(time.perf_counter() - self.t0)
            if self.store is not None:
                self.store.save(i, self.identities[i], res)
            self.results[i] = res
        self.bar.update(1)


def _fingerprint(crystal, fit_kwargs: dict) -> str:
    """What a store's entries must share with this run: the crystal (or IFC model) and every fit
    setting (:func:`~xtds.observables.base.describe`)."""
    which = describe(crystal) if isinstance(crystal, IFCModel) else repr(as_crystal(crystal))
    return hashlib.sha256(json.dumps({"fit": describe(fit_kwargs), "crystal": which}, default=str,
                                     sort_keys=True).encode()).hexdigest()[:16]


def _members(volumes, dim: str, coords):
    """(the members as a list, their coordinates): a Dataset with ``dim`` split along it."""
    if isinstance(volumes, xr.Dataset):
        if dim not in volumes.dims:
            raise ValueError(f"the Dataset has no series dimension {dim!r} (its dimensions: {list(volumes.dims)}); "
                             "pass dim=")
        values = volumes[dim].values if dim in volumes.coords else np.arange(volumes.sizes[dim])
        members = []
        for j, v in enumerate(values):
            m = volumes.isel({dim: j})
            m = m.drop_vars(dim) if dim in m.coords else m
            m.attrs = {**volumes.attrs, dim: v.item() if hasattr(v, "item") else v}
            members.append(m)
        volumes = members
        coords = values if coords is None else coords
    volumes = list(volumes)
    if not volumes:
        raise ValueError("give at least one volume")
    if coords is None:  # each readable member's own value; an unreadable one keeps its place (NaN)
        found = [_attr_of(v, dim) for v in volumes]
        readable = [f for f in found if f is not _UNREADABLE]
        if readable and all(f is not None for f in readable):
            coords = [np.nan if f is _UNREADABLE else f for f in found]
        else:
            coords = list(range(len(volumes)))
    if len(coords) != len(volumes):
        raise ValueError(f"{len(coords)} coordinate values for {len(volumes)} volumes")
    return volumes, coords


def _run(todo, volumes, crystal, fit_kwargs, client, fingerprint, finish) -> str:
    """Fit the volumes ``todo`` on the executor ``client`` names, calling ``finish(i, result)`` or
    ``finish(i, err=error)`` for each as it ends; returns the executor's kind."""
    kind, cl, owned = _client_of(client, len(todo)) if todo else ("sequential", None, None)

    def collect(done_iter, futures):  # each (future, volume index) as it finishes
        for fut in done_iter:
            try:
                finish(futures[fut], fut.result())
            except Exception as err:  # noqa: BLE001 - reported by name, the series goes on
                finish(futures[fut], err=err)

    try:
        if kind == "sequential":
            for i in todo:
                try:
                    finish(i, _fit_one(volumes[i], crystal, fit_kwargs))
                except Exception as err:  # noqa: BLE001 - reported by name, the series goes on
                    finish(i, err=err)
        elif kind == "threads":
            from concurrent.futures import ThreadPoolExecutor, as_completed

            with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
                futures = {pool.submit(_fit_one, volumes[i], crystal, fit_kwargs): i for i in todo}
                collect(as_completed(futures), futures)
        else:
            from distributed import as_completed

            futures = {cl.submit(_fit_one, volumes[i], crystal, fit_kwargs, key=f"xtds-fit-{fingerprint}-{i}"): i
                       for i in todo}
            collect(as_completed(list(futures)), futures)
    finally:
        if owned is not None:
            cl.close()
            owned.close()
    return kind


def _concatenated(results: dict, coords, names, loaded: set, dim: str) -> xr.Dataset:
    """:data:`SERIES_VARIABLES` of every member along ``dim`` in the series' order, with the
    provenance; a member whose fit failed keeps its place with NaN (``fitted`` False)."""
    parts = {}
    for i, r in results.items():
        keep = r[[v for v in SERIES_VARIABLES if v in r]]
        keep = keep.assign(loss=float(r["loss"].values[-1]), iterations=int(r.attrs.get("iterations", 0)),
                           fit_time=float(r.attrs.get("wall_time_s", np.nan)),
                           minimize_time=float(r.attrs.get("minimize_time_s", np.nan)))
        keep.attrs = {}
        parts[i] = keep
    blank = next(iter(parts.values())).astype(float) * np.nan
    blank["iterations"] = blank["iterations"].fillna(-1).astype(int)
    every = range(len(names))
    out = xr.concat([parts.get(i, blank) for i in every], dim=dim, join="outer", coords="minimal",
                    compat="override")
    out = out.assign_coords({dim: np.asarray([coords[i] for i in every])})
    out["volume"] = (dim, list(names))
    out["fitted"] = (dim, [i in results for i in every])
    out["from_store"] = (dim, [i in loaded for i in every])
    return out
