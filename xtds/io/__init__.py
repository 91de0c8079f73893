"""Reading and writing reciprocal-space volumes: NeXus (NXrefine), zarr and netCDF.

- :func:`open_volume`: any of the three formats → a lazy (dask) ``xr.Dataset`` with
  ``intensity`` (and ``weights``/``mask`` where present) on dims ``H, K, L`` (r.l.u.).
- :func:`write_volume`: a Dataset → zarr (``.zarr``), NeXus (``.nxs``) or netCDF (``.nc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings

import numpy as np
import xarray as xr

from xtds._version import __version__
from xtds.io.nexus import NEXUS_EXTENSIONS
from xtds.volume.schema import check_crystal, check_volume, crystal_attrs
from xtds.volume.sources import lazy_sources, reading
from xtds.volume.symmetrize import symmetric_chunks

__all__ = ["open_volume", "write_volume", "open_dataset_file", "check_volume", "crystal_attrs", "format_of"]



#: Attributes of a zarr store that xtds writes last: the chunk files of each variable. A store
#: that has the first but not this one was not completely written.
ZARR_WRITER_ATTR = "xtds_writer"
ZARR_COMPLETE_ATTR = "xtds_complete"

_ZARR_META = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def _is_zarr_store(p: str) -> bool:
    return os.path.isdir(p) and any(os.path.exists(os.path.join(p, n)) for n in ("zarr.json", ".zgroup", ".zarray"))


def _foreign_entries(store: str) -> list[str]:
    """The entries of a zarr store's folder that are no part of a zarr store (a user's notes, other
    files put there): its metadata files and its arrays' or groups' folders are; anything else is."""
    out = []
    for name in sorted(os.listdir(store)):
        full = os.path.join(store, name)
        if name in _ZARR_META or (os.path.isdir(full) and not os.path.islink(full) and _is_zarr_store(full)):
            continue
        out.append(name)
    return out


def format_of(path, writing: bool = False) -> str:
    """'nexus', 'zarr' or 'netcdf' from the name and, for an existing file, its first bytes."""
    p = os.fspath(path).rstrip("/")
    ext = os.path.splitext(p)[1].lower()
    if ext == ".zarr" or _is_zarr_store(p):
        return "zarr"
    if ext not in (".nc", ".nc4", ".cdf") + NEXUS_EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {path!r} from its name: use .nxs/.h5 (NeXus), .zarr or .nc, or pass "
            "format='nexus', 'zarr' or 'netcdf'"
        )
    if not writing and os.path.isfile(p):
        head = _head(p)
        if head.startswith(b"CDF"):
            return "netcdf3"
        if head.startswith(b"\x89HDF"):
            import h5py

            try:
                with h5py.File(p, "r") as f:
                    if "_NCProperties" in f.attrs:
                        return "netcdf"
                    if any("NX_class" in f[k].attrs for k in f):
                        return "nexus"
            except OSError:
                pass  # reported by the reader, with the file's name
    return "netcdf" if ext in (".nc", ".nc4", ".cdf") else "nexus"


def _head(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read(8)


def _check_readable(path: str, fmt: str) -> None:
    """Errors that name the file and the fix, before any library sees it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or store: {path}")
    if fmt == "zarr":
        if not _is_zarr_store(path):
            raise ValueError(f"{path} is not a zarr store (no zarr.json or .zgroup inside): check the path")
        return
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a {fmt} file: a zarr store is a folder (name it .zarr)")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): the file was not written completely; copy or write it again")
    head = _head(path)
    if fmt in ("nexus", "netcdf") and not head.startswith(b"\x89HDF"):
        raise ValueError(
            f"{path} is not an HDF5 file (it starts with {head!r}), so not {fmt}: check that the file is complete "
            "and of the format its name says (NeXus .nxs/.h5, netCDF4 .nc)"
        )


def open_dataset_file(path) -> xr.Dataset:
    """A netCDF (4 or classic) or zarr file as a Dataset, lazily, with the checks of
    :func:`open_volume` (existence, an empty or truncated file, a file that is not of its format, a
    zarr store written by xtds with chunk files missing) and errors that name the file: for
    Datasets that are not volumes, such as fit results (:func:`xtds.open_fit`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or store: {path}")
    fmt = format_of(path)
    if fmt == "nexus":
        raise ValueError(f"{path} is a NeXus file: open volumes with xtds.open_volume; results are .nc or .zarr")
    _check_readable(path, fmt)
    try:
        if fmt == "zarr":
            ds = xr.open_zarr(path)
            _check_zarr_complete(path, ds.attrs)
            return ds
        return xr.open_dataset(path, engine="scipy" if fmt == "netcdf3" else "h5netcdf")
    except (OSError, RuntimeError, KeyError) as err:
        raise OSError(f"cannot read {path} as {fmt}: {type(err).__name__}: {err}; the file is truncated, corrupt "
                      "or of another format") from err


def _check_zarr_complete(path: str, attrs: dict) -> None:
    """A store written by xtds must carry its completeness record and every chunk file it lists."""
    if ZARR_WRITER_ATTR not in attrs:
        return
    if ZARR_COMPLETE_ATTR not in attrs:
        raise ValueError(f"{path} was not completely written (no completion record): write it again")
    expected = json.loads(attrs[ZARR_COMPLETE_ATTR])
    for name, n in expected.items():
        have = _chunk_files(os.path.join(path, name))
        if have < n:
            raise ValueError(
                f"{path}: variable {name!r} has {have} of its {n} chunk files; {n - have} are missing (deleted or not "
                "copied), and they would read as NaN: copy the store again or rewrite it"
            )


def _chunk_files(folder: str) -> int:
    return sum(1 for _, _, files in os.walk(folder) for f in files if f not in _ZARR_META)


def _attach_crystal(ds: xr.Dataset, crystal) -> xr.Dataset:
    if crystal is None:
        return ds
    check_crystal(ds, crystal)
    out = ds.copy()
    out.attrs.update(crystal_attrs(crystal))
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
        ``"auto"``: the file's own chunks (dask), for NeXus merged along the two faster axes into
        blocks of about 4 M voxels (whole file chunks, so each is read once; far fewer file
        accesses and tasks); ``"symmetric"``: equal chunks mirrored about the
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
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or store: {path}")
    fmt = format or format_of(path)
    if fmt not in ("nexus", "zarr", "netcdf", "netcdf3"):
        raise ValueError(f"format must be 'nexus', 'zarr' or 'netcdf', got {fmt!r}")
    _check_readable(path, fmt)
    ck = {} if chunks in ("auto", "symmetric") else chunks
    try:
        if fmt == "nexus":
            ds = xr.open_dataset(path, engine="xtds", chunks=ck, group=group, axis_units=axis_units)
        elif fmt == "zarr":
            with warnings.catch_warnings():  # a store without consolidated metadata is read without: fine
                warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
                ds = xr.open_zarr(path, chunks=_zarr_chunks(path, ck) if chunks in ("auto", "symmetric") else ck)
            _check_zarr_complete(path, ds.attrs)
        elif fmt == "netcdf3":  # classic netCDF: scipy reads it (not HDF5)
            ds = xr.open_dataset(path, engine="scipy", chunks=ck)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf", chunks=ck)
    except FileNotFoundError:
        raise
    except ValueError as err:
        if path in str(err):
            raise
        raise ValueError(f"{path}: {err}") from err
    except (OSError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"cannot read {path} as {fmt}: {type(err).__name__}: {err}. Check that the file is complete and of "
            "this format (pass format= or group= to choose)"
        ) from err
    for key in (ZARR_WRITER_ATTR, ZARR_COMPLETE_ATTR):
        ds.attrs.pop(key, None)
    try:
        ds = check_volume(ds.transpose("H", "K", "L", ...))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    if chunks == "symmetric":
        ds = _symmetric(ds, fmt, path, group, axis_units)
    elif chunks == "auto" and fmt == "nexus":
        ds = _merged(ds, path, group, axis_units)
    if "mask" in ds:
        ds["mask"] = ds["mask"].astype(bool)
    ds.attrs["source"] = os.path.abspath(path)  # where this Dataset comes from, whatever the file says
    return _attach_crystal(ds, crystal)


#: The most voxels a volume may declare (a few TB of float32: beyond any detector's volume; a larger
#: declaration is an error in the file, which would otherwise end in a MemoryError minutes later).
MAX_VOXELS = 10**12

#: The largest chunk (bytes) xtds reads at once: a store whose chunks are larger cannot be read
#: block by block (a single 1e4³ chunk asked for 931 GiB).
MAX_CHUNK_BYTES = 2 * 2**30


def _zarr_chunks(path: str, requested):
    """The dask chunks to open a zarr volume with: the store's own, merged into blocks of about
    :data:`AUTO_BLOCK_VOXELS` when they are small (a store of (1, 1, 1) chunks took minutes as one
    task each); a ``ValueError`` naming the store when it declares more than :data:`MAX_VOXELS`
    voxels or chunks over :data:`MAX_CHUNK_BYTES`, before any task graph is built."""
    import zarr

    try:
        arr = zarr.open_group(path, mode="r")["intensity"]
        shape, store_chunks, itemsize = tuple(arr.shape), tuple(arr.chunks), np.dtype(arr.dtype).itemsize
    except Exception:  # noqa: BLE001 - the reader below reports what is wrong with the store
        return requested
    if len(shape) != 3 or len(store_chunks) != 3:
        return requested
    if any(int(c) < 1 for c in store_chunks):
        raise ValueError(f"{path} declares chunks of {store_chunks} for its intensity: every chunk side must be at "
                         "least 1; the store's metadata is wrong, write it again")
    if np.prod(shape, dtype=float) > MAX_VOXELS:
        raise ValueError(f"{path} declares an intensity of {shape} = {np.prod(shape, dtype=float):.3g} voxels, more "
                         f"than any volume ({MAX_VOXELS:.0e}): the store's metadata is wrong; write it again")
    chunk_bytes = np.prod(store_chunks, dtype=float) * itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise ValueError(f"{path} stores its intensity in chunks of {store_chunks} ({chunk_bytes / 2**30:.3g} GiB "
                         f"each), more than xtds reads at once ({MAX_CHUNK_BYTES / 2**30:g} GiB): rechunk the store "
                         "(e.g. with zarr or xarray, chunks of about 100³)")
    named = dict(arr.attrs).get("_ARRAY_DIMENSIONS") or getattr(arr.metadata, "dimension_names", None)
    dims = tuple(str(d) for d in named) if named and len(named) == 3 else ("H", "K", "L")
    if set(dims) != {"H", "K", "L"}:
        return requested
    block = dict(zip(dims, store_chunks, strict=True))
    sizes = dict(zip(dims, shape, strict=True))
    while np.prod(list(block.values())) * 8 <= AUTO_BLOCK_VOXELS:  # double the smallest axis (whole chunks)
        small = [d for d in sorted(block, key=block.get) if block[d] < sizes[d]]
        if not small:
            break
        block[small[0]] = min(sizes[small[0]], 2 * block[small[0]])
    return block


#: Voxels per dask block that :func:`open_volume` aims at (``chunks="auto"``, NeXus): the file's
#: chunks merged along the faster axes. Small blocks cost a file access and a few dask tasks each
#: (1.2 s against 0.25 s to read 50 planes of a 1001² volume in 50³ and 50 × 250² blocks).
AUTO_BLOCK_VOXELS = 4_000_000


def _merged(ds, path, group, axis_units):
    """The file's chunks along its slowest axis, merged along the other two up to about
    ``AUTO_BLOCK_VOXELS`` per block (whole file chunks: each is still read by one block)."""
    enc = ds["intensity"].encoding
    disk, pref = enc.get("disk_dims"), enc.get("preferred_chunks")
    if not disk or not pref:
        return ds
    base = int(np.prod([pref[d] for d in "HKL"]))
    m = max(1, int(np.sqrt(AUTO_BLOCK_VOXELS / max(base, 1))))
    if m == 1:
        return ds
    target = {d: (pref[d] if d == disk[0] else min(ds.sizes[d], m * pref[d])) for d in "HKL"}
    lazy = xr.open_dataset(path, engine="xtds", chunks=None, group=group, axis_units=axis_units)
    out = check_volume(lazy.transpose("H", "K", "L", ...)).chunk(target)
    for name in out.data_vars:
        out[name].encoding.update(ds[name].encoding if name in ds else {})
    out.attrs = ds.attrs
    return out


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
            try:
                arr = np.asarray(v)
            except ValueError:  # ragged: not an array
                arr = None
            if arr is not None and arr.ndim <= 1 and arr.dtype.kind in "biuf":
                out[k] = arr.tolist()
            elif arr is not None and arr.ndim == 1 and arr.dtype.kind in "US":
                out[k] = [str(x) for x in v]
            else:  # nested or ragged: as JSON text (what the formats' attributes can hold)
                out[k] = json.dumps(arr.tolist() if arr is not None else v, default=str)
        elif isinstance(v, dict):
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

    Safe by construction (see ``docs/reliability.md``):

    - the data go to a temporary sibling (``.NAME.xtds-tmp-…``) that replaces ``path`` in one
      atomic rename at the end, so a killed write leaves the old file (or nothing) behind, never
      a half-written one;
    - an existing ``path`` is replaced only with ``overwrite=True``, never when the Dataset still
      reads from it lazily (``ds.load()`` first, or write elsewhere), and never when it is a folder
      that is not a zarr store (or a folder where a file is expected);
    - a zarr store records its chunk files last; :func:`open_volume` refuses a store whose
      record is missing or whose chunks are not all there.

    Dask-backed data is streamed chunk by chunk (NeXus: computed in this process and written
    block by block, so it works under a ``dask.distributed`` Client). NeXus output is the
    NXrefine layout (``entry/data`` with ``data``, ``weights``, ``Ql``/``Qk``/``Qh``), holding
    ``intensity`` and ``weights`` only; masked voxels get weight 0. The ``source`` attribute is
    not written: :func:`open_volume` sets it to the file it opens.
    """
    path = os.fspath(path)
    fmt = format or format_of(path, writing=True)
    if fmt not in ("nexus", "zarr", "netcdf"):
        raise ValueError(f"format must be 'nexus', 'zarr' or 'netcdf', got {fmt!r}")
    _check_target(ds, path, fmt, overwrite)
    out = ds.copy()
    out.attrs = _serializable_attrs({k: v for k, v in ds.attrs.items() if k != "source"})
    for name in list(out.variables):
        out[name].attrs = _serializable_attrs(out[name].attrs)
        out[name].encoding = {}
        if out[name].dtype == bool and name != "mask":  # netCDF has no booleans
            out[name] = out[name].astype("u1")
        if out[name].dtype.kind == "U" and fmt == "zarr":  # zarr v3 specifies variable-length strings only
            out[name] = out[name].astype(object)
    if fmt == "nexus":
        check_volume(out)
        if "mask" in out:  # NXrefine has no mask: masked voxels get weight 0
            w = out["weights"] if "weights" in out else xr.ones_like(out["intensity"], dtype=float)
            out["weights"] = w.where(~out["mask"].astype(bool), 0.0)
    elif "mask" in out:
        out["mask"] = out["mask"].astype("u1")
    try:
        with _atomic(path, fmt) as tmp, reading(ds, f"writing {path}"):
            if fmt == "zarr":
                _write_zarr(_regular_chunks(out), tmp)
            elif fmt == "netcdf":
                out.to_netcdf(tmp, engine="h5netcdf", mode="w")
            else:
                from xtds.io.nexus import write_nexus

                write_nexus(out, tmp, mode="w")
    except Exception as err:  # the HDF5 library may raise at close, the full disk's error as its context
        if _full(err):
            raise OSError(f"writing {path} failed: the disk is full or a file-size limit was reached; {path} is as "
                          "it was (nothing written there). Free space, or write elsewhere") from err
        raise
    return path


def _full(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) says the disk or a size limit is full."""
    import errno

    while err is not None:
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
                w in str(err).lower() for w in ("no space left", "file too large", "disk quota")):
            return True
        err = err.__cause__ or err.__context__
    return False


def _check_target(ds: xr.Dataset, path: str, fmt: str, overwrite: bool) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of {path} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: its folder {folder} is not writable")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it, or another path")
    if fmt == "zarr" and not _is_zarr_store(path):
        raise ValueError(
            f"{path} exists and is not a zarr store: xtds does not delete it to write one there; choose another path"
        )
    if fmt == "zarr" and (foreign := _foreign_entries(path)):
        raise ValueError(
            f"{path} holds files that are no part of its zarr store ({', '.join(foreign[:5])}"
            f"{', …' if len(foreign) > 5 else ''}): replacing the store would delete them; move them out or choose "
            "another path"
        )
    if fmt != "zarr" and os.path.isdir(path):
        raise ValueError(f"{path} is a folder: xtds does not delete a folder to write a {fmt} file; "
                         "choose another path")
    if os.path.realpath(path) in lazy_sources(ds):
        raise ValueError(
            f"{path} is the file this Dataset is still reading from (lazily): replacing it would destroy the data "
            "while they are written. Write to another path, or load the data first (ds = ds.load())"
        )


@contextlib.contextmanager
def _atomic(path: str, fmt: str):
    """A temporary sibling of ``path`` to write; renamed over ``path`` on success, removed on failure."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.xtds-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if fmt == "zarr" and os.path.lexists(path):  # a folder cannot be replaced atomically: swap, then delete
        old = os.path.join(folder, f".{stem}.xtds-old-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def _remove(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    elif os.path.lexists(p):
        os.remove(p)


def _write_zarr(out: xr.Dataset, tmp: str) -> None:
    """The store, then (last) the record of its chunk files that :func:`open_volume` checks."""
    import zarr

    out.attrs[ZARR_WRITER_ATTR] = f"xtds {__version__}"
    out.to_zarr(tmp, mode="w", write_empty_chunks=True, consolidated=False)
    record = {name: _chunk_files(os.path.join(tmp, name)) for name in out.variables}
    zarr.open_group(tmp, mode="r+").attrs[ZARR_COMPLETE_ATTR] = json.dumps(record)
    zarr.consolidate_metadata(tmp)  # readers find every array's metadata, the record included, in one file
