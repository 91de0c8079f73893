"""Which files a lazy Dataset reads, and errors while reading them that name those files.

A Dataset opened lazily (dask, or xarray's lazily indexed arrays) reads its file only when values
are computed. :func:`lazy_sources` finds those files by walking the arrays' task graphs down to the
backend objects that hold a path (the NeXus reader's, xarray's zarr and netCDF wrappers); a writer
refuses to replace one of them. :func:`reading` turns a low-level failure during a computation
(a missing or corrupt chunk, a truncated file) into an ``OSError`` that names the files.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["lazy_sources", "reading"]

#: Attributes through which backend objects reach their file: tried in this order on each object.
_WRAPS = ("array", "_array", "datastore", "store", "_store", "_manager")
_PATHS = ("filename", "_filename", "root", "path", "_path")


def _attr(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a property that cannot be evaluated here holds no file
        return None


def _paths_in(obj, found: set, seen: set, depth: int = 0) -> None:
    if depth > 12 or obj is None or id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool)):
        return
    seen.add(id(obj))
    if isinstance(obj, (tuple, list)):
        for x in obj:
            _paths_in(x, found, seen, depth + 1)
        return
    if type(obj).__module__.startswith("numpy"):
        return
    for name in _PATHS:
        value = _attr(obj, name)
        if isinstance(value, (str, os.PathLike)) and os.path.isabs(os.fspath(value)) and \
                os.path.exists(os.fspath(value)):
            found.add(os.path.realpath(os.fspath(value)))
    args = _attr(obj, "_args")  # xarray's CachingFileManager (the scipy netCDF3 reader's) holds its path here
    if type(obj).__name__.endswith("FileManager") and isinstance(args, tuple):
        for value in args:
            if isinstance(value, (str, os.PathLike)) and os.path.exists(os.fspath(value)):
                found.add(os.path.realpath(os.fspath(value)))
    for name in _WRAPS:
        inner = _attr(obj, name)
        if inner is not None and not isinstance(inner, (str, os.PathLike)):
            _paths_in(inner, found, seen, depth + 1)
    if type(obj).__name__ in ("Task", "DataNode", "Alias", "List", "Dict"):  # dask's task objects
        _paths_in(_attr(obj, "args"), found, seen, depth + 1)
        _paths_in(_attr(obj, "value"), found, seen, depth + 1)


def lazy_sources(ds) -> set[str]:
    """The real paths of the files (or zarr stores) the variables of ``ds`` still read lazily.

    An in-memory Dataset has none; ``ds.load()`` detaches a Dataset from its files.
    """
    found: set[str] = set()
    seen: set[int] = set()
    for var in ds.variables.values():
        data = var._data  # the raw wrapper: a dask array, a lazily indexed backend array, or numpy
        graph = getattr(data, "__dask_graph__", None)
        if graph is not None and callable(graph):
            g = graph()
            if g is not None:
                for value in dict(g).values():
                    _paths_in(value, found, seen)
                continue
        _paths_in(data, found, seen)
    return found


@contextlib.contextmanager
def reading(ds, what: str = "computing the volume"):
    """Re-raise a failure of the storage layers while ``what`` as an ``OSError`` naming the
    Dataset's files (and, for zarr, the first chunk that cannot be read). xtds's own errors, and
    any error while no file is read, pass unchanged."""
    try:
        yield
    except Exception as err:
        sources = sorted(lazy_sources(ds)) if _from_storage(err) else []
        if not sources:
            raise
        detail = _bad_chunk(sources)
        raise OSError(
            f"reading {', '.join(sources)} failed while {what}: {type(err).__name__}: {err}"
            + (f" ({detail})" if detail else "")
            + ". The file may be truncated, or a chunk missing or corrupt: check the file (or rewrite it)"
        ) from err


def _from_storage(err: BaseException) -> bool:
    mod = type(err).__module__ or ""
    if mod.startswith("xtds"):
        return False
    text = str(err).lower()
    return isinstance(err, OSError) or any(m in mod for m in ("zarr", "numcodecs", "h5py", "netcdf")) or any(
        w in text for w in ("decompress", "codec", "chunk", "truncated", "hdf5", "zstd", "blosc")
    )


def _bad_chunk(sources) -> str:
    """The first zarr chunk of the sources that fails to decode, as 'store/variable chunk (i, j, k)'."""
    import itertools

    for src in sources:
        if not os.path.isdir(src):
            continue
        try:
            import zarr

            group = zarr.open_group(src, mode="r")
            for name, arr in group.arrays():
                grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks, strict=True)]
                for idx in itertools.product(*grid):
                    try:
                        arr.blocks[idx]
                    except Exception as err:  # noqa: BLE001 - any decoding failure names the chunk
                        return f"{src}/{name} chunk {idx} cannot be read: {type(err).__name__}"
        except Exception:  # noqa: BLE001 - the search is a courtesy; the original error stands
            continue
    return ""
