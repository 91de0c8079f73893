"""NeXus (HDF5) volumes in the NXrefine layout: lazy reading and streaming writing (h5py).

NXrefine writes reciprocal-space volumes as NXdata groups named ``transform``,
``masked_transform``, ``symm_transform`` and ``masked_symm_transform`` in the root entry and in
the per-scan subentries (``f1``, ``f2``, …), with

- ``@signal = "data"`` and ``@axes = ["Ql", "Qk", "Qh"]``: the array is stored L-first,
  shape (nL, nK, nH), and the axes are 1-D r.l.u. coordinates;
- ``weights`` beside ``data``: the intensity is data/weights where weights > 0;
- ``data`` often an external link to a per-scan file (``…/f1_transform.nxs``);
- the sample in ``entry/sample``: ``unit_cell`` (a, b, c, α, β, γ) or ``unitcell_a`` … and
  ``unit_cell_abc``/``unit_cell_alphabetagamma``, ``space_group``, ``temperature``; the
  wavelength in ``instrument/monochromator/wavelength``.

The arrays are exposed as xarray lazily indexed arrays in (H, K, L) order; nothing is read until
a value is needed, and every read opens the file afresh (safe for threads and processes).
"""

from __future__ import annotations

import os

import numpy as np

from xtds.volume.schema import is_rlu

__all__ = ["NEXUS_EXTENSIONS", "NXREFINE_GROUPS", "find_nxdata", "read_nxdata", "write_nexus", "sample_attrs"]

#: File name extensions read and written as NeXus/HDF5.
NEXUS_EXTENSIONS = (".nxs", ".nx5", ".nxspe", ".h5", ".hdf5", ".hdf")

#: The NXdata group names NXrefine writes, in the order xtds prefers them.
NXREFINE_GROUPS = ("masked_transform", "transform", "masked_symm_transform", "symm_transform")

_AXIS_NAMES = {
    "qh": "H", "h": "H", "qk": "K", "k": "K", "ql": "L", "l": "L",
}


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _axes_attr(value) -> list[str]:
    if isinstance(value, (str, bytes)):
        return [a.strip() for a in _text(value).split(":") if a.strip()]
    return [_text(a) for a in np.atleast_1d(value)]


def _nx_class(obj) -> str:
    return _text(obj.attrs.get("NX_class", ""))


def _list_nxdata(f) -> list[str]:
    """Paths of every NXdata group with a @signal, entry by entry."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and _nx_class(obj) == "NXdata" and "signal" in obj.attrs:
            found.append(name)

    # visititems does not follow external links; NXdata groups themselves live in the main file
    f.visititems(visit)
    return found


def find_nxdata(f, group: str | None) -> str:
    """The path of the NXdata group to read from the open file ``f``.

    With ``group`` None: the root entry's NXrefine groups in :data:`NXREFINE_GROUPS` order, then
    any NXdata named by ``@default`` attributes, then the only 3-D NXdata of the file.
    """
    if group is not None:
        for cand in (group, f"entry/{group}"):
            if cand in f and _nx_class(f[cand]) == "NXdata":
                return cand
        raise ValueError(
            f"no NXdata group {group!r} in {f.filename}; its NXdata groups are {_list_nxdata(f)}: "
            "pass one of them as group=..."
        )
    entries = [k for k in f if _nx_class(f[k]) == "NXentry"]
    if "entry" in entries:
        entries = ["entry"] + [e for e in entries if e != "entry"]
    for e in entries:
        for g in NXREFINE_GROUPS:
            if g in f[e] and _nx_class(f[e][g]) == "NXdata":
                return f"{e}/{g}"
    node, path = f, ""
    while "default" in node.attrs:
        path = f"{path}/{_text(node.attrs['default'])}".strip("/")
        if path not in f:
            break
        node = f[path]
        if _nx_class(node) == "NXdata":
            return path
    cands = [p for p in _list_nxdata(f) if _signal_ndim(f[p]) == 3]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise ValueError(
            f"{f.filename} has no 3-D NXdata group with a @signal attribute: xtds reads reciprocal-space "
            "volumes (NXdata with @signal and @axes naming three 1-D axes)"
        )
    raise ValueError(f"{f.filename} has several 3-D NXdata groups {cands}: pass group=... to choose one")


def _signal_ndim(g) -> int:
    name = _text(g.attrs["signal"])
    try:
        return g[name].ndim if name in g else 0
    except (KeyError, OSError):
        return 0


def _inside(folder: str, target: str) -> bool:
    """Whether ``target`` (a path, relative to ``folder`` if not absolute) lies in ``folder`` or below."""
    full = os.path.realpath(os.path.join(folder, target))
    return os.path.commonpath([full, os.path.realpath(folder)]) == os.path.realpath(folder)


def _check_storage(g, name: str, dset, filename: str) -> None:
    """A ``ValueError`` when a field's bytes come from outside the NeXus file's folder: an external
    link, HDF5 external raw storage or a virtual dataset's sources pointing elsewhere (such a file
    reads any file's bytes, a system file's too, as intensities)."""
    folder = os.path.dirname(os.path.abspath(filename))
    link = g.get(name, getlink=True)
    outside = []
    target = getattr(link, "filename", None)
    if target is not None and not _inside(folder, target):
        outside.append(f"an external link to {target!r}")
    for entry in dset.external or ():
        if not _inside(folder, entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])):
            outside.append(f"external raw storage in {entry[0]!r}")
    if dset.is_virtual:
        for src in dset.virtual_sources():
            if src.file_name not in (".", "") and not _inside(folder, src.file_name):
                outside.append(f"a virtual source in {src.file_name!r}")
    if outside:
        raise ValueError(
            f"{g.name}/{name} in {filename} reads its data from outside the file's folder ({'; '.join(outside)}): "
            "xtds reads a volume's data only from its own folder; copy the data files beside it"
        )


def _open_link(g, name: str, filename: str):
    try:
        dset = g[name]
    except KeyError as err:
        link = g.get(name, getlink=True)
        target = getattr(link, "filename", None)
        if target is not None:
            where = os.path.join(os.path.dirname(os.path.abspath(filename)), target)
            raise FileNotFoundError(
                f"{g.name}/{name} is an external link to {target!r} ({link.path}), which cannot be opened "
                f"(looked beside the file: {where}). Copy the per-scan files along with {os.path.basename(filename)} "
                "or set HDF5_EXT_PREFIX to their folder"
            ) from err
        raise
    _check_storage(g, name, dset, filename)
    return dset


def read_nxdata(filename: str, path: str, axis_units: str | None = None):
    """Describe the NXdata group ``path`` of ``filename``: a dict with the signal's path, the
    weights' path (or None), the disk order of the axes, the H, K, L coordinates and their attrs.

    Raises ``ValueError`` for a missing signal, axes that do not match the data, or axes whose
    units are unknown (pass ``axis_units="rlu"`` if they are r.l.u.).
    """
    import h5py

    with h5py.File(filename, "r") as f:
        g = f[path]
        if "signal" not in g.attrs:
            raise ValueError(f"{path} in {filename} has no @signal attribute: name the intensity field with @signal")
        sig_name = _text(g.attrs["signal"])
        if sig_name not in g:
            raise ValueError(f"{path}/@signal names {sig_name!r}, which is not in the group (it has {list(g)})")
        sig = _open_link(g, sig_name, filename)
        if sig.ndim != 3:
            raise ValueError(f"{path}/{sig_name} has {sig.ndim} dimensions; xtds reads 3-D (H, K, L) volumes")
        if "axes" not in g.attrs:
            raise ValueError(f"{path} has no @axes attribute: name the three axis fields, e.g. ['Ql', 'Qk', 'Qh']")
        axes = _axes_attr(g.attrs["axes"])
        if any(a in (".", "", "/") for a in axes):
            raise ValueError(
                f"{path}/@axes = {axes} in {filename} holds placeholders ('.'), not axis names: write the names of "
                "the three axis fields, e.g. ['Ql', 'Qk', 'Qh'] (NXrefine's order)"
            )
        if len(axes) != 3 or any(a not in g for a in axes):
            raise ValueError(
                f"{path}/@axes = {axes} does not name three axis fields of the group (it has {list(g)})"
            )
        dims, coords, coord_attrs = [], {}, {}
        for i, a in enumerate(axes):
            values = np.asarray(g[a][()], dtype=float)
            if values.ndim != 1:
                raise ValueError(f"axis {a!r} must be 1-D, got shape {values.shape}")
            if len(values) == sig.shape[i] + 1:  # bin edges → centres
                values = 0.5 * (values[1:] + values[:-1])
            if len(values) != sig.shape[i]:
                raise ValueError(
                    f"axis {a!r} has {len(values)} values but dimension {i} of {sig_name} has {sig.shape[i]}: "
                    "@axes must list the axes in the order of the array's dimensions (NXrefine: Ql, Qk, Qh)"
                )
            dim = _AXIS_NAMES.get(a.lower())
            units = _text(g[a].attrs.get("units", "")).strip()
            if dim is None:
                raise ValueError(
                    f"axis {a!r} is not one of Qh/Qk/Ql or H/K/L: xtds needs reciprocal-lattice axes; rename the "
                    "axes or write the volume with H, K, L coordinates"
                )
            if units and not is_rlu(units):  # Qh/Qk/Ql too: NXrefine's are r.l.u., with no units or 'rlu'
                raise ValueError(
                    f"axis {a!r} of {path} in {filename} has units {units!r}: xtds reads H, K, L volumes in reciprocal "
                    "lattice units, and does not relabel Å⁻¹ (or any other unit) as r.l.u.; convert the axes to r.l.u. "
                    "(H = q·a/2π along each axis for an orthogonal cell) or write @units='rlu' if they are r.l.u."
                )
            if not units and a.lower() not in ("qh", "qk", "ql") and not is_rlu(axis_units):
                raise ValueError(
                    f"axis {a!r} has no units attribute: say that it is in reciprocal lattice units with "
                    "axis_units='rlu' (or write @units='rlu' on the axis)"
                )
            dims.append(dim)
            coords[dim] = values
            attrs = {"units": "rlu", "long_name": f"{dim} (r.l.u.)"}
            if "scaling_factor" in g[a].attrs:
                attrs["nexus_scaling_factor"] = float(np.asarray(g[a].attrs["scaling_factor"]).ravel()[0])
            coord_attrs[dim] = attrs
        if sorted(dims) != ["H", "K", "L"]:
            raise ValueError(f"the axes {axes} must be one each of H, K and L")
        weights = None
        if "weights" in g:
            w = _open_link(g, "weights", filename)
            if w.shape != sig.shape:
                raise ValueError(f"{path}/weights has shape {w.shape}, but {sig_name} has {sig.shape}")
            weights = f"/{path}/weights"
        chunks = sig.chunks
        info = {
            "signal": f"/{path}/{sig_name}",
            "weights": weights,
            "disk_dims": tuple(dims),
            "shape": sig.shape,
            "dtype": sig.dtype,
            "chunks": chunks,
            "coords": coords,
            "coord_attrs": coord_attrs,
            "signal_attrs": {k: _text(v) for k, v in sig.attrs.items() if k in ("units", "long_name")},
            "attrs": sample_attrs(f, path),
        }
    return info


def _first(f, paths):
    for p in paths:
        if p in f:
            return np.asarray(f[p][()])
    return None


def _numbers(value, field: str, unit: str = "") -> np.ndarray:
    """The numbers of a NeXus field, read also when written as text ('300', b'300', '300 K' when
    ``unit`` is 'K'); a ``ValueError`` naming the field otherwise."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return arr.astype(float).ravel()
    texts = [x.decode() if isinstance(x, bytes) else str(x) for x in np.ravel(arr)]
    out = []
    for t in texts:
        parts = t.strip().split()
        try:
            if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1] != unit):
                raise ValueError
            out.append(float(parts[0]))
        except ValueError:
            raise ValueError(f"{field} holds {t!r}, not a number{f' of {unit}' if unit else ''}: write it as a number "
                             "(or correct the file)") from None
    return np.asarray(out)


def sample_attrs(f, path: str) -> dict:
    """Unit cell, space group, temperature and wavelength from the entry of ``path`` (or 'entry'), and
    the statistics of a volume xtds simulated (``quantum``, from the NXdata's ``xtds_quantum``)."""
    entry = path.split("/")[0]
    roots = [entry, "entry"] if entry != "entry" else ["entry"]
    out = {}
    for r in roots:
        s = f"{r}/sample"
        cell = _first(f, [f"{s}/unit_cell", f"{s}/unitcell"])
        if cell is None:
            abc = _first(f, [f"{s}/unit_cell_abc", f"{s}/unitcell_abc"])
            ang = _first(f, [f"{s}/unit_cell_alphabetagamma", f"{s}/unitcell_alphabetagamma"])
            if abc is not None and ang is not None:
                cell = np.concatenate([np.ravel(abc), np.ravel(ang)])
        if cell is None:
            names = ("a", "b", "c", "alpha", "beta", "gamma")
            parts = [_first(f, [f"{s}/unitcell_{x}", f"{s}/unit_cell_{x}"]) for x in names]
            if all(p is not None for p in parts):
                cell = np.array([_numbers(p, f"{s}/unit_cell_{x}")[0] for p, x in zip(parts, names, strict=True)])
        if cell is not None and "unit_cell" not in out:
            cell = _numbers(cell, f"{s}/unit_cell")
            if len(cell) != 6:
                raise ValueError(f"{s}/unit_cell must hold a, b, c (Å), alpha, beta, gamma (degrees); got {cell}")
            out["unit_cell"] = cell
        sg = _first(f, [f"{s}/space_group"])
        if sg is not None and "space_group" not in out:
            out["space_group"] = _text(sg)
        T = _first(f, [f"{s}/temperature"])
        if T is not None and "temperature" not in out:
            out["temperature"] = float(np.mean(_numbers(T, f"{s}/temperature", "K")))
        wl = _first(f, [f"{r}/instrument/monochromator/wavelength"])
        if wl is not None and "wavelength" not in out:
            out["wavelength"] = float(_numbers(wl, f"{r}/instrument/monochromator/wavelength")[0])
    if path in f and "xtds_quantum" in f[path].attrs:  # a volume xtds simulated: its statistics
        out["quantum"] = int(np.ravel(f[path].attrs["xtds_quantum"])[0])
    if path in f and "xtds_geometry" in f[path].attrs:  # ... and the geometry it was simulated on
        g = f[path].attrs["xtds_geometry"]
        out["geometry"] = g.decode() if isinstance(g, bytes) else str(g)
    return out


def write_nexus(ds, filename: str, chunks=(50, 50, 50), mode: str = "w-", group: str = "data") -> None:
    """Write a volume Dataset (``intensity``, optional ``weights``, coords H, K, L) as NXrefine-layout
    NeXus: ``entry/<group>`` (NXdata, L-first, ``@axes = [Ql, Qk, Qh]``), and ``entry/sample``.

    Dask arrays are streamed block by block. ``mode="w-"`` refuses to overwrite an existing file.
    """
    import dask.array as da
    import h5py

    if "intensity" not in ds:
        raise ValueError("the Dataset has no 'intensity' variable to write")
    inten = ds["intensity"].transpose("L", "K", "H")
    shape = inten.shape
    ck = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    try:
        f = h5py.File(filename, mode)
    except FileExistsError as err:
        raise FileExistsError(f"{filename} exists; pass mode='w' to overwrite it") from err
    with f:
        f.attrs["default"] = "entry"
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        e.attrs["default"] = group
        s = e.create_group("sample")
        s.attrs["NX_class"] = "NXsample"
        for key in ("unit_cell", "space_group", "temperature"):
            if key in ds.attrs:
                s[key] = ds.attrs[key]
        if "temperature" in ds.attrs:
            s["temperature"].attrs["units"] = "K"
        if "wavelength" in ds.attrs:
            m = e.create_group("instrument").create_group("monochromator")
            m.parent.attrs["NX_class"] = "NXinstrument"
            m.attrs["NX_class"] = "NXmonochromator"
            m["wavelength"] = ds.attrs["wavelength"]
            m["wavelength"].attrs["units"] = "angstrom"
        g = e.create_group(group)
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "data"
        g.attrs["axes"] = np.array(["Ql", "Qk", "Qh"], dtype=h5py.string_dtype())
        if "quantum" in ds.attrs:  # the statistics of a simulated volume, which fits follow
            g.attrs["xtds_quantum"] = int(ds.attrs["quantum"])
        if "geometry" in ds.attrs:  # the geometry of a simulated volume, which geometry="auto" follows
            g.attrs["xtds_geometry"] = str(ds.attrs["geometry"])
        for dim, name in (("H", "Qh"), ("K", "Qk"), ("L", "Ql")):
            g[name] = np.asarray(ds[dim].values, dtype=float)
            g[name].attrs["units"] = "rlu"
        has_w = "weights" in ds
        if has_w:  # NXrefine stores the weighted sum: a non-finite voxel is an invalid one (weight 0), never
            # a huge finite number (nan_to_num made +inf 1.8e308, which the invalid mask then kept)
            ok = da.isfinite(da.asarray(inten.data))
            w = da.where(ok, ds["weights"].transpose("L", "K", "H").data, 0.0)
            data = da.where(w > 0, da.where(ok, da.asarray(inten.data), 0.0) * w, 0.0)
        else:
            data = inten.data
        for name, arr in (("data", data),) + ((("weights", w),) if has_w else ()):
            arr = da.asarray(arr)
            dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
            dset = g.create_dataset(name, shape=shape, dtype=dtype, chunks=ck)
            _store_blocks(arr.rechunk(ck), dset)


#: Bytes of blocks computed together when writing NeXus (bounds the memory of a write).
WRITE_BATCH_BYTES = 64 * 2**20


def _store_blocks(arr, dset) -> None:
    """Compute the blocks of ``arr`` a batch at a time with the current dask scheduler (threads, or
    a distributed Client) and write them here: the h5py dataset never leaves this process."""
    import dask
    from dask.array.core import slices_from_chunks

    slices = slices_from_chunks(arr.chunks)
    block_bytes = max(1, int(np.prod([max(c) for c in arr.chunks])) * arr.dtype.itemsize)
    batch = max(1, WRITE_BATCH_BYTES // block_bytes)
    for start in range(0, len(slices), batch):
        part = slices[start : start + batch]
        for sl, value in zip(part, dask.compute(*[arr[s] for s in part]), strict=True):
            dset[sl] = np.asarray(value, dtype=dset.dtype)
