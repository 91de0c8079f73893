"""Series of volumes (xtds.fit_series): one fit per volume as tasks, failures named, results in a
zarr store as they finish, a rerun fitting only what is missing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

import xtds
from xtds.datasets import paper_ni_ifcs, paper_ni_volume

NI = xtds.datasets.paper_ni_crystal()
START = {k: v for k, v in paper_ni_ifcs("starting").items() if k in ("b0", "b1", "b2", "c0", "c1")}
FIT = {"shells": 2, "initial": START, "optimizer": xtds.LM(max_iter=3, progress=False)}


@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    """Three small synthetic Ni volumes at 200, 300, 400 K as NeXus files."""
    folder = tmp_path_factory.mktemp("series")
    paths = []
    for T in (200.0, 300.0, 400.0):
        ds = paper_ni_volume(n_max=4, temperature=T)
        paths.append(xtds.write_volume(ds, str(folder / f"ni_{T:.0f}K.nxs")))
    return paths


@pytest.fixture(scope="module")
def sequential(series_files):
    return xtds.fit_series(series_files, NI, client="sequential", progress=False, **FIT)


@pytest.mark.heavy
def test_each_member_equals_its_own_fit(series_files, sequential):
    """Sequential and threaded runs give, member by member, the constants of xtds.fit on that
    file, at each file's own temperature (the coordinate)."""
    seq = sequential
    thr = xtds.fit_series(series_files, NI, client="threads", progress=False, **FIT)
    assert list(seq["temperature"].values) == [200.0, 300.0, 400.0]
    alone = xtds.fit(xtds.open_volume(series_files[1]), NI, **FIT)
    np.testing.assert_allclose(seq["ifc"].isel(temperature=1).values, alone["ifc"].values, rtol=1e-12)
    np.testing.assert_allclose(thr["ifc"].values, seq["ifc"].values, rtol=1e-12)
    assert seq.attrs["scheduler"] == "sequential" and json.loads(seq.attrs["failed"]) == {}
    assert seq["ifc_stderr"].dims == ("temperature", "constant") and seq["volume"].values[1] == series_files[1]
    assert not np.allclose(seq["ifc"].isel(temperature=0), seq["ifc"].isel(temperature=2))


def test_a_corrupt_file_is_named_and_the_others_finish(series_files, tmp_path):
    bad = tmp_path / "ni_250K.nxs"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"not a NeXus file" * 10)
    files = [series_files[0], str(bad), series_files[2]]
    res = xtds.fit_series(files, NI, client="threads", progress=False, coords=[200.0, 250.0, 400.0], **FIT)
    failed = json.loads(res.attrs["failed"])
    assert list(failed) == [str(bad)] and failed[str(bad)]
    assert list(res["temperature"].values) == [200.0, 250.0, 400.0]  # the failed one keeps its place
    assert list(res["fitted"].values) == [True, False, True] and np.isnan(res["ifc"].sel(temperature=250.0)).all()
    # without coords, each readable volume's own temperature labels it, not its index
    own = xtds.fit_series(files, NI, client="sequential", progress=False, **FIT)
    np.testing.assert_array_equal(own["temperature"].values, [200.0, np.nan, 400.0])
    np.testing.assert_array_equal(own["ifc"].isel(temperature=[0, 2]).values, res["ifc"].isel(temperature=[0, 2]))
    with pytest.raises(RuntimeError, match="no volume of the series could be fitted"):
        xtds.fit_series([str(bad)], NI, client="sequential", progress=False, **FIT)


@pytest.mark.heavy
def test_a_rerun_fits_only_what_the_store_lacks(series_files, sequential, tmp_path):
    """A store with all three finished: a rerun loads them (no fit); with one entry gone (a run
    killed before it finished) or unfinished (killed while writing), only that one is refitted;
    other settings refit."""
    store = str(tmp_path / "series.zarr")
    first = xtds.fit_series(series_files, NI, client="sequential", store=store, progress=False, **FIT)
    assert first.attrs["n_fitted"] == 3 and not first["from_store"].any()
    xr.testing.assert_allclose(first["ifc"], sequential["ifc"], rtol=1e-14)
    again = xtds.fit_series(series_files, NI, client="sequential", store=store, progress=False, **FIT)
    assert again.attrs["n_fitted"] == 0 and again["from_store"].all()
    xr.testing.assert_allclose(again["ifc"], first["ifc"], rtol=1e-14)
    g = zarr.open_group(store, mode="r+")
    del g["v00001"]  # killed before the second finished
    zarr.open_group(store, mode="r+", path="v00002").attrs["series_complete"] = False  # killed while writing
    third = xtds.fit_series(series_files, NI, client="sequential", store=store, progress=False, **FIT)
    assert third.attrs["n_fitted"] == 2 and list(third["from_store"].values) == [True, False, False]
    xr.testing.assert_allclose(third["ifc"], first["ifc"], rtol=1e-12)
    other = xtds.fit_series(series_files[:1], NI, client="sequential", store=store, progress=False,
                            **{**FIT, "optimizer": xtds.LM(max_iter=2)})
    assert other.attrs["n_fitted"] == 1


def test_a_dataset_with_a_series_dimension(series_files, sequential):
    """ds.tds.fit_series(dim=...) splits along the dimension, each member at its coordinate."""
    members = [xtds.open_volume(p).load() for p in series_files[:2]]
    stacked = xr.concat(members, dim="temperature").assign_coords(temperature=[200.0, 300.0])
    res = stacked.tds.fit_series(NI, dim="temperature", client="sequential", progress=False, **FIT)
    np.testing.assert_allclose(res["ifc"].values, sequential["ifc"].values[:2], rtol=1e-12)
    with pytest.raises(ValueError, match="no series dimension 'pressure'"):
        stacked.tds.fit_series(NI, dim="pressure", client="sequential", progress=False, **FIT)


@pytest.mark.heavy
def test_on_a_local_cluster(series_files, sequential):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        res = xtds.fit_series(series_files[:2], NI, client=client, progress=False, **FIT)
    assert res.attrs["scheduler"] == "distributed"
    np.testing.assert_allclose(res["ifc"].values, sequential["ifc"].values[:2], rtol=1e-12)


def test_a_store_entry_is_not_reused_for_changed_data(series_files, tmp_path):
    """The store reuses a finished fit only for the same data: an in-memory Dataset whose values
    changed (sizes and attributes alike), and a zarr volume edited in place (one chunk rewritten:
    the folder's own size and time do not change), are fitted again."""
    store = str(tmp_path / "s.zarr")
    members = [xtds.open_volume(p).load() for p in series_files[:2]]
    xtds.fit_series(members, NI, client="sequential", store=store, progress=False, **FIT)
    again = xtds.fit_series(members, NI, client="sequential", store=store, progress=False, **FIT)
    assert again.attrs["n_fitted"] == 0
    edited = [members[0], members[1].copy(deep=True)]
    edited[1]["intensity"].values[3, 4, 5] *= 2
    redo = xtds.fit_series(edited, NI, client="sequential", store=store, progress=False, **FIT)
    assert redo.attrs["n_fitted"] == 1 and list(redo["from_store"].values) == [True, False]
    vol = str(tmp_path / "v.zarr")
    xtds.write_volume(members[0], vol)
    store2 = str(tmp_path / "s2.zarr")
    xtds.fit_series([vol], NI, client="sequential", store=store2, progress=False, **FIT)
    folder_time = os.stat(vol).st_mtime_ns
    z = zarr.open_group(vol, mode="r+")
    z["intensity"][3, 4, 5] = 2 * z["intensity"][3, 4, 5]
    os.utime(vol, ns=(folder_time, folder_time))  # the folder itself looks untouched
    redo = xtds.fit_series([vol], NI, client="sequential", store=store2, progress=False, **FIT)
    assert redo.attrs["n_fitted"] == 1


def test_a_store_path_that_cannot_hold_the_series_is_refused_before_any_fit(series_files, tmp_path, monkeypatch):
    """A file, or a folder of other files, as ``store=``: refused by name before the first fit
    (it was found only when saving the first result, the fit lost)."""
    import xtds.fitting.series as series

    def no_fit(*args, **kwargs):
        raise AssertionError("a fit ran before the store was checked")

    monkeypatch.setattr(series, "_run", no_fit)
    a_file = tmp_path / "results.nc"
    a_file.write_text("an earlier result")
    with pytest.raises(ValueError, match=r"series store .*results.nc is a file, not a zarr folder"):
        xtds.fit_series(series_files[:1], NI, client="sequential", store=str(a_file), progress=False, **FIT)
    folder = tmp_path / "beamtime"
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    with pytest.raises(ValueError, match=r"holds \['notes.txt'\] but no zarr store"):
        xtds.fit_series(series_files[:1], NI, client="sequential", store=str(folder), progress=False, **FIT)
    assert a_file.read_text() == "an earlier result" and (folder / "notes.txt").read_text() == "notes"
    volume = str(tmp_path / "v.zarr")  # a zarr store of something else: the results would go into it
    xtds.write_volume(xtds.open_volume(series_files[0]), volume)
    before = sorted(os.listdir(volume))
    with pytest.raises(ValueError, match=r"v.zarr is a zarr store of something else \(it holds \['H'"):
        xtds.fit_series(series_files[:1], NI, client="sequential", store=volume, progress=False, **FIT)
    assert sorted(os.listdir(volume)) == before
    with pytest.raises(OSError, match="cannot create or open the series store"):
        xtds.fit_series(series_files[:1], NI, client="sequential", store=str(a_file / "sub.zarr"), progress=False,
                        **FIT)


@pytest.mark.heavy
def test_an_unguarded_script_is_told_to_guard_its_call(series_files, tmp_path):
    """``fit_series`` with the default local cluster at a script's top level: the workers re-import
    the script; the error says to guard the call (distributed alone says "Nanny failed to start")."""
    pytest.importorskip("distributed")
    script = tmp_path / "unguarded.py"
    script.write_text(f"import xtds\nxtds.fit_series({series_files[:2]!r}, 'Ni', shells=2, initial={START!r}, "
                      "progress=False)\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: fit_series could not start") and '__name__ == "__main__"' in last, last
