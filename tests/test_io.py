"""Reading and writing volumes: NXrefine-layout NeXus (written with nexusformat), zarr, netCDF."""

import dask
import numpy as np
import pytest
import xarray as xr

import xtds

with np.printoptions():  # nexusformat changes numpy's print options at import; keep ours
    nexus = pytest.importorskip("nexusformat.nexus")

H = np.linspace(-1.0, 1.0, 5)
K = np.linspace(-1.5, 1.5, 7)
L = np.linspace(-2.0, 2.0, 9)


def truth(h, k, l):
    """A function whose value tells which of H, K, L each axis is."""
    return 1000.0 + 100.0 * h + 10.0 * k + 1.0 * l


class ComputeCounter:
    """A dask scheduler that counts computations and fails past ``limit``."""

    def __init__(self, limit=0):
        self.limit, self.count = limit, 0

    def __call__(self, dsk, keys, **kwargs):
        self.count += 1
        if self.count > self.limit:
            raise RuntimeError(f"dask computed {self.count} times, more than the {self.limit} allowed")
        return dask.get(dsk, keys, **kwargs)


def write_nxrefine(folder, weights=True, subentry=True):
    """An NXrefine-layout file: entry/masked_transform with data in an external scan file."""
    from nexusformat.nexus import NXdata, NXentry, NXfield, NXlink, NXroot, NXsample

    hh, kk, ll = np.meshgrid(H, K, L, indexing="ij")
    I = truth(hh, kk, ll)
    w = np.full(I.shape, 2.0)
    w[0, 0, 0] = 0.0  # a voxel no scan reached
    data_lkh = np.transpose(I * w, (2, 1, 0)).astype(np.float32)
    scan = NXroot(NXentry())
    scan.entry.data = NXdata(NXfield(data_lkh, name="data"))
    scan.save(str(folder / "f1_transform.nxs"), mode="w")
    root = NXroot()
    root.entry = NXentry()
    root.entry.sample = NXsample()
    root.entry.sample.unit_cell = NXfield([3.52, 3.52, 3.52, 90.0, 90.0, 90.0])
    root.entry.sample.space_group = NXfield("Fm-3m")
    root.entry.sample.temperature = NXfield(300.0, units="K")
    g = NXdata()
    g.data = NXlink(target="/entry/data/data", file="f1_transform.nxs")
    if weights:
        g.weights = NXfield(np.transpose(w, (2, 1, 0)).astype(np.float32))
    g.Ql = NXfield(L)
    g.Qk = NXfield(K)
    g.Qh = NXfield(H, scaling_factor=1.785)
    g.attrs["signal"] = "data"
    g.attrs["axes"] = ["Ql", "Qk", "Qh"]
    root.entry.masked_transform = g
    if subentry:
        root.f1 = NXentry()
        axes = [NXfield(L, name="Ql"), NXfield(K, name="Qk"), NXfield(H, name="Qh")]
        root.f1.transform = NXdata(NXfield(data_lkh, name="data"), axes)
    path = folder / "sample_300K.nxs"
    root.save(str(path), mode="w")
    return path, I, w


@pytest.fixture
def nxfile(tmp_path):
    return write_nxrefine(tmp_path)


def test_nxrefine_opens_lazily_with_right_orientation(nxfile):
    path, I, w = nxfile
    counter = ComputeCounter(limit=0)
    with dask.config.set(scheduler=counter):
        ds = xtds.open_volume(path)
        assert ds["intensity"].dims == ("H", "K", "L")
        assert ds["intensity"].chunks is not None
        assert ds.attrs["temperature"] == 300.0
        assert ds.attrs["space_group"] == "Fm-3m"
        assert ds.attrs["nexus_group"] == "entry/masked_transform"
        assert ds["H"].attrs["units"] == "rlu" and ds["H"].attrs["nexus_scaling_factor"] == pytest.approx(1.785)
    assert counter.count == 0
    got = ds["intensity"].values
    expect = np.where(w > 0, I, np.nan)
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert np.isnan(got[0, 0, 0])
    # a voxel picked by label: H = 0.5, K = -1.0, L = 1.5
    v = float(ds["intensity"].sel(H=0.5, K=-1.0, L=1.5))
    assert v == pytest.approx(truth(0.5, -1.0, 1.5), rel=1e-6)
    np.testing.assert_allclose(ds["weights"].values, w)


def test_xarray_engine_and_subentry(nxfile):
    path, I, w = nxfile
    ds = xr.open_dataset(path, engine="xtds", chunks={}, group="f1/transform")
    assert "weights" not in ds  # the subentry holds the raw signal only: intensity = data
    np.testing.assert_allclose(ds["intensity"].values, I * w, rtol=1e-6)
    assert ds["intensity"].isel(H=slice(1, 3), L=4).shape == (2, 7)


def test_missing_scan_file_names_it(nxfile, tmp_path):
    path, _, _ = nxfile
    (tmp_path / "f1_transform.nxs").unlink()
    with pytest.raises(FileNotFoundError, match="f1_transform.nxs"):
        xtds.open_volume(path)


def test_crystal_is_checked_against_the_file(nxfile):
    path, _, _ = nxfile
    ds = xtds.open_volume(path, crystal=xtds.Crystal.fcc("Ni", a=3.52))
    assert ds.attrs["unit_cell"][0] == pytest.approx(3.52)
    with pytest.raises(ValueError, match="differs from the crystal"):
        xtds.open_volume(path, crystal=xtds.Crystal.fcc("Al", a=4.05))


@pytest.mark.parametrize(("symbol", "ok"), [("Fm-3m", True), ("Fm-3m (225)", True), ("F m -3 m", True), ("225", True),
                                            ("P6_3/mmc", False), ("P63/mmc", False), ("Im-3m", False),
                                            ("Im-3m (229)", False), ("229", False), ("", True)])
def test_space_group_symbols_are_compared_in_any_notation(symbol, ok):
    """A volume's space group as a bare symbol (short or full, with or without spaces and
    underscores), a number, or 'symbol (number)' is compared with the crystal's; blank is no claim."""
    from xtds.volume.schema import check_crystal

    ni = xtds.datasets.paper_ni_crystal()
    ds = xr.Dataset(attrs={"unit_cell": list(ni.parameters), "space_group": symbol})
    if ok:
        check_crystal(ds, ni)
    else:
        with pytest.raises(ValueError, match="is not the crystal's"):
            check_crystal(ds, ni)


def test_an_unknown_space_group_symbol_says_so():
    from xtds.volume.schema import check_crystal

    ds = xr.Dataset(attrs={"space_group": "Fm3m-X"})
    with pytest.raises(ValueError, match=r"attrs\['space_group'\]: unknown space group 'Fm3m-X'"):
        check_crystal(ds, xtds.datasets.paper_ni_crystal())


def _generic(folder, **change):
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "generic.h5"
    with h5py.File(p, "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        g = e.create_group("vol")
        g.attrs["NX_class"] = "NXdata"
        if change.get("signal", True):
            g.attrs["signal"] = "counts"
        names = change.get("names", "HKL")
        g.attrs["axes"] = change.get("axes", list(names))
        g["counts"] = np.ones((5, 7, 9))
        for name, c in zip(names, (H, K, L), strict=True):
            g[name] = c if name != change.get("short") else c[:-1]
            if change.get("units", True):
                g[name].attrs["units"] = change.get("unit", "rlu")
    return p


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"signal": False}, "no 3-D NXdata group with a @signal"),
        ({"short": "K"}, "has 6 values but dimension 1"),
        ({"axes": ["H", "K"]}, "does not name three axis fields"),
        ({"units": False}, "axis_units='rlu'"),
        ({"names": ["Qh", "Qk", "Ql"], "unit": "1/angstrom"}, "does not relabel"),
        ({"names": ["Qh", "Qk", "Ql"], "unit": "Å^-1"}, "does not relabel"),
        ({"unit": "nm^-1"}, "does not relabel"),
    ],
)
def test_bad_nexus_inputs_name_the_fix(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        xtds.open_volume(_generic(tmp_path, **change))


def test_generic_nxdata_with_units(tmp_path):
    ds = xtds.open_volume(_generic(tmp_path))
    assert ds["intensity"].shape == (5, 7, 9)
    for units in ({"units": False}, {"unit": "rlu"}):  # NXrefine's Qh/Qk/Ql: r.l.u., with no units or 'rlu'
        qs = xtds.open_volume(_generic(tmp_path / str(len(units)) / next(iter(units)), names=["Qh", "Qk", "Ql"],
                                       **units))
        assert qs["H"].attrs["units"] == "rlu" and qs["intensity"].shape == (5, 7, 9)
    ds2 = xtds.open_volume(_generic(tmp_path / "no_units", units=False), axis_units="rlu")
    assert ds2["intensity"].shape == (5, 7, 9)


@pytest.mark.parametrize("fmt", ["zarr", "nc", "nxs"])
def test_round_trip(nxfile, tmp_path, fmt):
    path, I, w = nxfile
    ds = xtds.open_volume(path).tds.mask(invalid=True)
    out = tmp_path / f"out.{fmt}"
    xtds.write_volume(ds, out)
    back = xtds.open_volume(out)
    np.testing.assert_allclose(back["intensity"].values, ds["intensity"].values, rtol=1e-6)
    np.testing.assert_allclose(back["weights"].values, ds["weights"].values)
    for d in "HKL":
        np.testing.assert_allclose(back[d].values, ds[d].values)
    assert back.attrs["temperature"] == 300.0
    if fmt != "nxs":
        assert back["mask"].dtype == bool
        np.testing.assert_array_equal(back["mask"].values, ds["mask"].values)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        xtds.write_volume(ds, out)


def test_zarr_without_units_is_refused(tmp_path):
    ds = xr.Dataset({"intensity": (("H", "K", "L"), np.ones((2, 2, 2)))},
                    coords={"H": [0, 1], "K": [0, 1], "L": [0, 1]})
    ds.to_zarr(tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="attrs\\['units'\\] = 'rlu'"):
        xtds.open_volume(tmp_path / "x.zarr")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("fmt", ["nxs", "nc", "zarr"])
def test_a_non_finite_voxel_stays_invalid_through_a_file(tmp_path, bad, fmt):
    """A voxel with I = ±inf or NaN is invalid after a write and a read in every format (NeXus
    stores weighted sums: it was written as 1.8e308 with its weight, which the mask kept)."""
    hh, kk, ll = np.meshgrid(H, K, L, indexing="ij")
    I = truth(hh, kk, ll)
    I[2, 3, 4] = bad
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I), "weights": (("H", "K", "L"), np.ones_like(I))},
                    coords={"H": ("H", H, {"units": "rlu"}), "K": ("K", K, {"units": "rlu"}),
                            "L": ("L", L, {"units": "rlu"})}, attrs={"temperature": 300.0})
    back = xtds.open_volume(xtds.write_volume(ds, str(tmp_path / f"v.{fmt}"))).tds.mask(invalid=True)
    mask = back["mask"].values
    assert mask[2, 3, 4] and mask.sum() == 1
    valid = back["intensity"].values[~mask]
    assert np.all(np.isfinite(valid)) and valid.max() < 2e3


def test_zarr_volumes_of_tiny_huge_or_absurd_chunks(tmp_path):
    """A store of (1, 1, 1) chunks opens in blocks of many chunks (it took minutes as a task per
    voxel); one declaring 1e15 voxels or chunks of 931 GiB is refused at once, naming the store."""
    import time

    import zarr

    hh, kk, ll = np.meshgrid(H, K, L, indexing="ij")
    ds = xr.Dataset({"intensity": (("H", "K", "L"), truth(hh, kk, ll))},
                    coords={"H": ("H", H, {"units": "rlu"}), "K": ("K", K, {"units": "rlu"}),
                            "L": ("L", L, {"units": "rlu"})}, attrs={"temperature": 300.0})
    tiny = str(tmp_path / "tiny.zarr")
    ds.to_zarr(tiny, encoding={"intensity": {"chunks": (1, 1, 1)}}, consolidated=False)
    t = time.perf_counter()
    opened = xtds.open_volume(tiny)
    assert opened["intensity"].data.npartitions == 1  # 5 × 7 × 9 voxels in one block
    np.testing.assert_array_equal(opened["intensity"].values, ds["intensity"].values)
    assert time.perf_counter() - t < 10
    for name, shape, chunks, match in (("absurd.zarr", (100_000,) * 3, (100, 100, 100), "declares an intensity"),
                                       ("huge.zarr", (10_000,) * 3, (10_000,) * 3, "GiB each")):
        root = zarr.open_group(str(tmp_path / name), mode="w")
        root.create_array("intensity", shape=shape, chunks=chunks, dtype="float64", dimension_names=("H", "K", "L"))
        for d, n in zip("HKL", shape, strict=True):
            root.create_array(d, shape=(n,), chunks=(n,), dtype="float64", dimension_names=(d,))
            root[d].attrs["units"] = "rlu"
        t = time.perf_counter()
        with pytest.raises(ValueError, match=match):
            xtds.open_volume(str(tmp_path / name))
        assert time.perf_counter() - t < 5


@pytest.mark.parametrize("how", ["external_raw", "external_link", "virtual"])
def test_nexus_data_from_outside_the_files_folder_is_refused(tmp_path, how):
    """A NeXus signal whose bytes come from outside the file's folder (HDF5 external raw storage,
    an external link, a virtual dataset) would read any file, a system file's bytes too, as
    intensities: refused, naming the field; the same storage inside the folder is read."""
    import h5py

    outside, inside = tmp_path / "elsewhere", tmp_path / "beamtime"
    outside.mkdir()
    inside.mkdir()
    values = np.arange(5 * 7 * 9, dtype=float).reshape(5, 7, 9) + 1.0
    for folder in (outside, inside):
        values.tofile(folder / "raw.bin")
        with h5py.File(folder / "scan.h5", "w") as f:
            f["data"] = values
    for where, ok in ((outside, False), (inside, True)):
        p = inside / f"v_{how}_{ok}.nxs"
        with h5py.File(p, "w") as f:
            e = f.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            g = e.create_group("vol")
            g.attrs.update(NX_class="NXdata", signal="counts", axes=["H", "K", "L"])
            if how == "external_raw":
                g.create_dataset("counts", shape=values.shape, dtype=float,
                                 external=[(str(where / "raw.bin"), 0, values.nbytes)])
            elif how == "external_link":
                g["counts"] = h5py.ExternalLink(str(where / "scan.h5"), "/data")
            else:
                layout = h5py.VirtualLayout(shape=values.shape, dtype=float)
                layout[:] = h5py.VirtualSource(str(where / "scan.h5"), "data", shape=values.shape)
                g.create_virtual_dataset("counts", layout)
            for name, c in zip("HKL", (H, K, L), strict=True):
                g[name] = c
                g[name].attrs["units"] = "rlu"
        if ok:
            np.testing.assert_array_equal(xtds.open_volume(str(p))["intensity"].values, values)
        else:
            with pytest.raises(ValueError, match="outside the file's folder"):
                xtds.open_volume(str(p))


@pytest.mark.parametrize(("value", "expect"), [("300", 300.0), ("300 K", 300.0), (b"300", 300.0),
                                               ("warm", "holds 'warm', not a number of K"),
                                               ("300 C", "holds '300 C', not a number of K")])
def test_a_nexus_temperature_written_as_text(tmp_path, value, expect):
    import h5py

    from xtds.datasets import small_ni_nexus

    path = small_ni_nexus(str(tmp_path / "ni.nxs"), n_max=2)
    with h5py.File(path, "r+") as f:
        del f["entry/sample/temperature"]
        f["entry/sample/temperature"] = value
    if isinstance(expect, float):
        assert xtds.open_volume(path).attrs["temperature"] == expect
    else:
        with pytest.raises(ValueError, match=f"ni.nxs: entry/sample/temperature {expect}"):
            xtds.open_volume(path)
