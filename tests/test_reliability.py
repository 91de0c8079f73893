"""Nothing lost, nothing silently wrong: each case of the reliability issue as a test.

Writes are atomic and refuse to destroy what they read; fits refuse data that cannot determine
their parameters; every error names the file or argument and the fix. Real SIGKILLs of a writer
and of a fitting subprocess, and a distributed LocalCluster (processes) run end to end.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.datasets import paper_ni_ifcs, paper_ni_volume

NI = xtds.datasets.paper_ni_crystal()
START = paper_ni_ifcs("starting")
FORMATS = ("nxs", "zarr", "nc")


@pytest.fixture(scope="module")
def small():
    ds = paper_ni_volume(n_max=4)  # 9³ voxels on the 5×5×5 supercell grid
    ds["weights"] = xr.ones_like(ds["intensity"])
    return ds


def written(ds, folder, ext, name="v"):
    path = os.path.join(folder, f"{name}.{ext}")
    xtds.write_volume(ds, path)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "xtds.cli", *args], capture_output=True, text=True, timeout=300)


def call_cli(capsys, *args):
    """``xtds`` in this process (``xtds.cli.main``): exit code and output as :func:`run_cli` gives
    them, without a new interpreter's imports (seconds each)."""
    from types import SimpleNamespace

    from xtds.cli import main

    message = ""
    try:
        code = main(list(args))
    except SystemExit as done:  # as the interpreter turns it into an exit status and a message
        code = done.code
        if isinstance(code, str):
            code, message = 1, code + "\n"
        code = 0 if code is None else code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err + message)


# ---------------------------------------------------------------- data loss
@pytest.mark.parametrize("ext", FORMATS)
def test_overwriting_the_file_being_read_is_refused(small, tmp_path, ext):
    path = written(small, tmp_path, ext)
    lazy = xtds.open_volume(path).tds.mask(bragg=0.1, crystal=NI)
    with pytest.raises(ValueError, match="still reading from"):
        xtds.write_volume(lazy, path, overwrite=True)
    back = xtds.open_volume(path)
    np.testing.assert_allclose(back["intensity"].values, small["intensity"].values)
    xtds.write_volume(lazy.load(), path, overwrite=True)  # loaded first: allowed
    again = xtds.open_volume(path)
    keep = ~lazy["mask"].values
    np.testing.assert_allclose(again["intensity"].values[keep], small["intensity"].values[keep])
    assert again.tds.masked_fraction() == pytest.approx(1 - keep.mean())


def test_a_netcdf3_file_being_read_is_not_overwritten(small, tmp_path):
    """netCDF3 (classic) files are read lazily by scipy: protected like the others."""
    path = str(tmp_path / "classic.nc")
    small.to_netcdf(path, format="NETCDF3_64BIT", engine="scipy")
    lazy = xtds.open_volume(path)
    with pytest.raises(ValueError, match="still reading from"):
        xtds.write_volume(lazy, path, overwrite=True)
    np.testing.assert_allclose(xtds.open_volume(path)["intensity"].values, small["intensity"].values)


WRITER = textwrap.dedent("""
    import sys, time, dask.array as da, numpy as np, xarray as xr, xtds
    path = sys.argv[1]
    def slow(block):
        time.sleep(0.05)
        return block + 7.0
    I = da.ones((60, 60, 60), chunks=10).map_blocks(slow, dtype=float)
    c = np.linspace(-3, 3, 60)
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I), "weights": (("H", "K", "L"), da.ones_like(I))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"})
    xtds.write_volume(ds, path, overwrite=True)
    print("finished")
""")


@pytest.mark.heavy
@pytest.mark.parametrize("ext", FORMATS)
def test_a_killed_overwrite_leaves_the_old_file(small, tmp_path, ext):
    path = written(small, tmp_path, ext)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not glob.glob(str(tmp_path / ".v.xtds-tmp-*")):
        time.sleep(0.02)
    assert glob.glob(str(tmp_path / ".v.xtds-tmp-*")), "the writer never started its temporary file"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert b"finished" not in proc.stdout.read()
    back = xtds.open_volume(path)  # the previous file, whole
    np.testing.assert_allclose(back["intensity"].values, small["intensity"].values)


def test_overwrite_refuses_to_delete_a_folder_that_is_not_a_store(small, tmp_path):
    folder = tmp_path / "results.zarr"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a zarr store"):
        xtds.write_volume(small, folder, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "precious"
    with pytest.raises(ValueError, match="is a folder"):
        xtds.write_volume(small, folder, format="netcdf", overwrite=True)


def chunk_files(store, var="intensity"):
    return [f for f in glob.glob(os.path.join(store, var, "**"), recursive=True)
            if os.path.isfile(f) and os.path.basename(f) != "zarr.json"]


def test_missing_and_corrupt_zarr_chunks_are_errors(small, tmp_path):
    store = written(small.chunk({"H": 4}), tmp_path, "zarr")
    damaged = str(tmp_path / "damaged.zarr")
    shutil.copytree(store, damaged)
    os.remove(chunk_files(damaged)[0])
    with pytest.raises(ValueError, match="chunk files; 1 are missing"):
        xtds.open_volume(damaged)
    corrupt = str(tmp_path / "corrupt.zarr")
    shutil.copytree(store, corrupt)
    with open(chunk_files(corrupt)[0], "wb") as f:
        f.write(b"not a chunk" * 20)
    ds = xtds.open_volume(corrupt)
    with pytest.raises(OSError, match=r"corrupt\.zarr.*intensity chunk \("):
        ds.tds.to_points(crystal=NI)
    # a store written by xtds but never finished (no completion record)
    import zarr

    unfinished = str(tmp_path / "unfinished.zarr")
    shutil.copytree(store, unfinished)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(unfinished, mode="r+")
        del g.attrs["xtds_complete"]
        zarr.consolidate_metadata(unfinished)
    with pytest.raises(ValueError, match="not completely written"):
        xtds.open_volume(unfinished)


def test_masks_become_zero_weights_in_nexus(small, tmp_path):
    masked = small.tds.mask(bragg=0.15, crystal=NI)
    path = written(masked, tmp_path, "nxs")
    back = xtds.open_volume(path)
    m = masked["mask"].values
    assert m.sum() > 0
    assert np.all(back["weights"].values[m] == 0) and np.all(back["weights"].values[~m] == 1)
    assert back.tds.masked_fraction() == pytest.approx(m.mean())


def test_source_follows_the_file(small, tmp_path):
    nxs = written(small, tmp_path, "nxs")
    ds = xtds.open_volume(nxs)
    assert ds.attrs["source"] == os.path.abspath(nxs)
    zarr_path = str(tmp_path / "copy.zarr")
    xtds.write_volume(ds, zarr_path)
    copy = xtds.open_volume(zarr_path)
    assert copy.attrs["source"] == os.path.abspath(zarr_path)
    res = copy.tds.fit(NI, shells=2, initial={k: START[k] for k in ("b0", "b1", "b2", "c0", "c1")},
                       optimizer=xtds.LM(max_iter=2, progress=False))
    assert res.attrs["source"] == os.path.abspath(zarr_path)


# ---------------------------------------------------------------- silently wrong results
@pytest.mark.parametrize("wrong", [xtds.Crystal.preset("Cu"), xtds.Crystal.fcc("Ni", a=4.0)])
def test_fit_checks_the_crystal_against_the_volume(small, wrong):
    with pytest.raises(ValueError, match="unit cell"):
        small.tds.fit(wrong, shells=5, initial=START, optimizer=xtds.LM(progress=False))


@pytest.mark.parametrize("cell", [[3.52, 3.52, 3.52], "abc", [float("nan")] * 6, [3.52, 3.52, 3.52, 90, 90, 180]])
def test_a_unit_cell_that_is_not_six_numbers_is_named(small, cell):
    from xtds.volume.schema import unit_cell_of

    with pytest.raises(ValueError, match=r"attrs\['unit_cell'\] = .*(six finite numbers|between 0 and 180)"):
        small.assign_attrs(unit_cell=cell).tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    np.testing.assert_array_equal(unit_cell_of("3.52, 3.52 3.52 90 90 90"), [3.52] * 3 + [90.0] * 3)  # as text


def test_fit_checks_the_space_group(small):
    bcc = xtds.Crystal.preset("Fe")
    ds = small.assign_attrs(unit_cell=list(bcc.parameters))
    with pytest.raises(ValueError, match="space group"):
        ds.tds.fit(bcc, shells=2, initial={"b0": -1.0}, optimizer=xtds.LM(progress=False))


def test_underdetermined_fits_are_refused(small):
    one = small.isel(H=[4], K=[4], L=[5])
    with pytest.raises(ValueError, match="cannot determine 16 parameters"):
        one.tds.fit(NI, shells=5, initial=START, prepare=xtds.Preparation(symmetrize=False),
                    optimizer=xtds.LM(progress=False))
    cube = small.isel(H=slice(3, 6), K=slice(3, 6), L=slice(3, 6))  # 3³ voxels: 4 orbits
    with pytest.raises(ValueError, match="4 data points cannot determine 16"):
        cube.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    c = np.arange(-4, 5) / 2.0  # the 2×2×2 supercell's grid: 7.04 Å across
    coarse = xr.Dataset({"intensity": (("H", "K", "L"), np.ones((9, 9, 9)))},
                        coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                        attrs={"temperature": 300.0, "geometry": "PeriodicSupercell(repeats=(2, 2, 2))",
                               "unit_cell": list(NI.parameters)})
    with pytest.raises(ValueError, match=r"reach 5.566 Å, beyond half the \(2, 2, 2\) supercell \(3.520 Å\)"):
        coarse.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))


class Blind(xtds.Observable):
    """An observable that cannot see b1: the fit must refuse it, naming b1."""

    def __init__(self, model, q):
        self.model, self.inner = model, xtds.TDSIntensity(model, q, 300.0, geometry=xtds.PeriodicSupercell(5))

    def __call__(self, phi, epoch=0):
        phi = phi.clone()
        phi[1] = 0.06
        return self.inner(phi)

    def __len__(self):
        return len(self.inner)

    def stability_k(self):
        return self.inner.stability_k()


def test_a_parameter_the_data_do_not_see_is_named():
    model = xtds.IFCModel(NI, shells=2)
    q = xtds.observables.supercell_q_grid(NI, 5, 3)[::7]
    obs = Blind(model, q)
    with torch.no_grad():
        data = obs(model.vector({"b0": -1.0, "b1": 0.06, "b2": -1.04, "c0": 0.14, "c1": -0.01}))
    problem = xtds.Problem(obs, data.numpy())
    with pytest.raises(ValueError, match=r"rank 4 of 5 \(unconstrained: .*b1"):
        xtds.fit_problems(problem, {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0},
                          optimizer=xtds.LM(progress=False))


def test_one_grid_tolerance_and_the_geometry_is_reported(small, caplog):
    jittered = small.assign_coords(H=small["H"] + 1e-5)
    jittered["H"].attrs["units"] = "rlu"
    sym = jittered.tds.symmetrize(crystal=NI)  # accepted: 1e-5 r.l.u. is 5e-5 of the 0.2 step
    with caplog.at_level("INFO", logger="xtds"):
        res = sym.tds.fit(NI, shells=2, initial={k: START[k] for k in ("b0", "b1", "b2", "c0", "c1")},
                          prepare=xtds.Preparation(symmetrize=False), optimizer=xtds.LM(max_iter=3, progress=False))
    assert res.attrs["geometry"] == "PeriodicSupercell(repeats=(5, 5, 5))"
    assert "chose PeriodicSupercell" in caplog.text
    assert res.attrs["jacobian_rank"] == res.attrs["n_parameters"] == 5


@pytest.mark.heavy
def test_cli_rejects_a_zero_wedge(small, tmp_path):
    path = written(small, tmp_path, "nxs")
    res = run_cli("fit", path, "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--wedge", "0", "--quiet")
    assert res.returncode == 2 and "half-angle must be in (0, 90]" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- scale-out and performance
def test_to_points_reads_the_file_once(small, tmp_path):
    from xtds.io import xarray_backend as backend
    from xtds.io.nexus import write_nexus

    path = str(tmp_path / "chunked.nxs")
    write_nexus(small, path, chunks=(9, 9, 3))  # (L, K, H) on disk: 3 blocks along H
    assert xtds.open_volume(path, chunks={})["intensity"].data.npartitions == 3  # the file's own chunks
    ds = xtds.open_volume(path)  # "auto": whole file chunks merged along the faster axes
    n = ds["intensity"].data.npartitions
    calls = []
    original = backend._NXVolumeArray._raw

    def counting(self, key):
        calls.append(self.kind)
        return original(self, key)

    backend._NXVolumeArray._raw = counting
    try:
        ds.tds.to_points(crystal=NI)
        assert sorted(calls) == ["intensity"] * n + ["weights"] * n  # each block of each variable once
        calls.clear()
        ds.tds.masked_fraction()
        assert len(calls) == 2 * n
    finally:
        backend._NXVolumeArray._raw = original


@pytest.mark.heavy
def test_distributed_cluster_end_to_end(small, tmp_path):
    distributed = pytest.importorskip("distributed")
    src = written(small.chunk({"H": 3}), tmp_path, "nxs", name="source")
    start = {k: START[k] for k in ("b0", "b1", "b2", "c0", "c1")}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl):
        ds = xtds.open_volume(src)
        prepared = ds.tds.mask(bragg=0.1, crystal=NI).tds.symmetrize()
        for ext in FORMATS:
            out = str(tmp_path / f"out.{ext}")
            xtds.write_volume(prepared, out)
            back = xtds.open_volume(out)
            ref = prepared["intensity"].values
            got = back["intensity"].values
            np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-12)
        res = xtds.open_volume(str(tmp_path / "out.zarr")).tds.fit(NI, shells=2, initial=start,
                                                                   optimizer=xtds.LM(max_iter=3, progress=False))
    assert res.attrs["iterations"] >= 1 and np.all(np.isfinite(res["ifc"].values))


# ---------------------------------------------------------------- a killed fit resumes
FITTER = textwrap.dedent("""
    import sys, time, xtds
    from xtds.datasets import paper_ni_ifcs, paper_ni_volume
    pts = paper_ni_volume(n_max=6).tds.symmetrize(crystal=xtds.datasets.paper_ni_crystal()).tds.to_points()
    xtds.fit_points(pts, "Ni", 300.0, shells=5, initial=paper_ni_ifcs("starting"),
                    optimizer=xtds.LM(checkpoint=sys.argv[1], callback=lambda it, x, loss: time.sleep(2.0),
                                      progress=False))
    print("finished")
""")


@pytest.mark.heavy
def test_a_killed_fit_resumes_from_its_checkpoint(tmp_path):
    ck = tmp_path / "fit.ckpt"
    script = tmp_path / "fitter.py"
    script.write_text(FITTER)
    proc = subprocess.Popen([sys.executable, str(script), str(ck)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not ck.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert ck.exists(), proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert b"finished" not in proc.stdout.read()
    pts = paper_ni_volume(n_max=6).tds.symmetrize(crystal=NI).tds.to_points()
    resumed = xtds.fit_points(pts, NI, 300.0, shells=5, initial=START,
                              optimizer=xtds.LM(checkpoint=ck, progress=False))
    full = xtds.fit_points(pts, NI, 300.0, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    assert resumed.attrs["resumed_from"] >= 1
    np.testing.assert_allclose(resumed["ifc"].values, full["ifc"].values, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- messages
def test_unreadable_files_are_named(tmp_path, small):
    cases = {"garbage.nxs": b"this is no HDF5 file", "empty.nxs": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    good = written(small, tmp_path, "nxs", name="good")
    with open(good, "rb") as f:
        (tmp_path / "truncated.nxs").write_bytes(f.read()[:3000])
    (tmp_path / "folder.nxs").mkdir()
    for name, pattern in [("garbage.nxs", "not an HDF5 file"), ("empty.nxs", "is empty"),
                          ("truncated.nxs", "cannot read .*truncated.nxs"), ("folder.nxs", "is a folder")]:
        with pytest.raises(ValueError, match=pattern) as err:
            xtds.open_volume(tmp_path / name)
        assert name in str(err.value)
    # a NeXus file named .nc is read as NeXus; a netCDF3 classic file is read (scipy)
    shutil.copy(good, tmp_path / "nexus.nc")
    assert xtds.open_volume(tmp_path / "nexus.nc").sizes["H"] == 9
    small.to_netcdf(tmp_path / "classic.nc", format="NETCDF3_64BIT", engine="scipy")
    np.testing.assert_allclose(xtds.open_volume(tmp_path / "classic.nc")["intensity"].values,
                               small["intensity"].values)


def test_placeholder_axes_are_named(tmp_path, small):
    import h5py

    path = written(small, tmp_path, "nxs")
    with h5py.File(path, "r+") as f:
        f["entry/data"].attrs["axes"] = np.array([".", ".", "."], dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match="placeholders"):
        xtds.open_volume(path)


def test_a_series_volume_names_its_extra_dimension(small, tmp_path):
    series = xr.concat([small, small], dim="T").assign_coords(T=[100.0, 200.0])
    path = str(tmp_path / "series.nc")
    series.to_netcdf(path, engine="h5netcdf")
    with pytest.raises(ValueError, match=r"select one along \['T'\]"):
        xtds.open_volume(path)


def test_bad_fit_arguments_say_what_to_do(small):
    with pytest.raises(ValueError, match="geometry must be"):
        small.tds.fit(NI, shells=5, initial=START, model=xtds.TDSModel(geometry="bogus"),
                      optimizer=xtds.LM(progress=False))
    with pytest.raises(ValueError, match="temperature must be a number"):
        small.tds.fit(NI, temperature="300 K", shells=5, initial=START, optimizer=xtds.LM(progress=False))
    with pytest.raises(ValueError, match="positive and finite"):
        small.tds.fit(NI, temperature=float("inf"), shells=5, initial=START, optimizer=xtds.LM(progress=False))
    with pytest.raises(ValueError, match="NaN or inf"):
        small.tds.fit(NI, shells=5, initial={**START, "b0": float("nan")}, optimizer=xtds.LM(progress=False))
    with pytest.raises(ValueError, match="max_iter"):
        xtds.LM(max_iter=0)
    with pytest.raises(TypeError, match="preset name"):
        small.tds.fit(3.52, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    res = small.tds.fit("Ni", shells=5, initial=START, optimizer=xtds.LM(max_iter=1, progress=False))  # a preset name
    assert res.attrs["iterations"] == 1


def test_checkpoints_that_cannot_be_used_are_named(small, tmp_path):
    for content in ("", "{not json"):
        ck = tmp_path / "bad.ckpt"
        ck.write_text(content)
        with pytest.raises(ValueError, match="bad.ckpt is not a readable xtds checkpoint"):
            small.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(checkpoint=ck, progress=False))
    iterations = []
    with pytest.raises(FileNotFoundError, match="folder of the checkpoint"):
        small.tds.fit(NI, shells=5, initial=START,
                      optimizer=xtds.LM(checkpoint=tmp_path / "missing" / "fit.ckpt", progress=False,
                                        callback=lambda it, x, loss: iterations.append(it)))
    assert iterations == []  # refused before the fit, not when saving after its first iteration


@pytest.mark.heavy
def test_cli_errors_are_one_line_and_outputs_are_checked_first(small, tmp_path, capsys):
    """The installed entry point (a new interpreter) for the first two calls; the rest in this
    process, through the same ``main``."""
    bad = tmp_path / "bad.nxs"
    bad.write_bytes(b"garbage")
    res = run_cli("info", str(bad))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "bad.nxs" in res.stderr
    assert "Traceback" in run_cli("--debug", "info", str(bad)).stderr
    path = written(small, tmp_path, "nxs")
    (tmp_path / "exists.nc").write_text("an earlier result")
    for out, message in [("exists.nc", "--overwrite"), ("result.txt", ".nc or .zarr"), ("result.nxs", "not NeXus")]:
        res = call_cli(capsys, "fit", path, "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--quiet",
                       "--out", str(tmp_path / out))
        assert res.returncode != 0 and message in res.stderr, res.stderr
        assert "b2" not in res.stdout and "iterations" not in res.stdout  # checked before the fit: no table
    assert (tmp_path / "exists.nc").read_text() == "an earlier result"
    assert call_cli(capsys, "--version").stdout.strip() == f"xtds {xtds.__version__}"
    res = call_cli(capsys, "plot", path)
    assert res.returncode != 0 and "not a fit result" in res.stderr
    res = call_cli(capsys, "fit", path, "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--quiet",
                   "--max-iter", "2", "--out", str(tmp_path / "fit.zarr"))
    assert res.returncode == 0, res.stderr
    assert xr.open_zarr(tmp_path / "fit.zarr").attrs["iterations"] == 2
    assert json.loads(xr.open_zarr(tmp_path / "fit.zarr").attrs["settings"])["optimizer"]["max_iter"] == 2
    # the optimizer by name, through the optimizer interface; a setting it has not, refused before the fit
    res = call_cli(capsys, "fit", path, "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--quiet",
                   "--optimizer", "lm", "--epochs", "3")
    assert res.returncode != 0 and "has no setting ['epochs']" in res.stderr and "iterations" not in res.stdout
    res = call_cli(capsys, "fit", path, "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--quiet",
                   "--optimizer", "bfgs")
    assert res.returncode != 0 and "no optimizer named 'bfgs'" in res.stderr


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
def test_the_cli_never_writes_over_its_own_input(small, tmp_path, capsys, fmt):
    """``xtds fit v --out v --overwrite`` and ``xtds simulate --like v --out v --overwrite`` are
    refused before any work, whatever name the output gives the input (a link, ./, a trailing /)."""
    path = written(small, tmp_path, fmt)
    before = xr.open_dataset(path, engine="h5netcdf").load() if fmt == "nc" else xr.open_zarr(path).load()
    link = tmp_path / f"link.{fmt}"
    link.symlink_to(path)
    for out in (path, str(link), path + "/", os.path.relpath(path)):
        res = call_cli(capsys, "fit", path, "--crystal", "Ni", "--shells", "2", "--initial", "starting", "--quiet",
                       "--out", out, "--overwrite", "--plots", str(tmp_path / "p"))
        assert res.returncode != 0 and "input volume" in res.stderr and "iterations" not in res.stdout, res.stderr
        res = call_cli(capsys, "simulate", "--like", path, "--crystal", "Ni", "--shells", "2", "--ifc", "target",
                       "--out", out, "--overwrite")
        assert res.returncode != 0 and "input volume" in res.stderr, res.stderr
    after = xr.open_dataset(path, engine="h5netcdf").load() if fmt == "nc" else xr.open_zarr(path).load()
    xr.testing.assert_identical(before, after)


def test_cli_argument_files_and_pairs_are_named_and_exit_2(small, tmp_path, capsys):
    """A JSON file that is not named numbers, a chopper or temperature pair that is not two numbers:
    one line naming the option and the file, exit status 2 (as docs/reliability.md says), no work."""
    path = written(small, tmp_path, "nc")
    cases = {"broken.json": '{"b0": -0.99,', "list.json": "[-0.99, 0.1]", "text.json": '{"b0": "-0.99 eV"}',
             "nested.json": '{"b0": [-0.99]}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        for command in (["fit", path, "--initial"], ["simulate", "--like", path, "--out", str(tmp_path / "m.nc"),
                                                    "--ifc"]):
            res = call_cli(capsys, *command, str(tmp_path / name), "--crystal", "Ni", "--shells", "2")
            assert res.returncode == 2, (name, res.stderr)
            assert f"--ifc/--initial {tmp_path / name}" in res.stderr and "eV/Å²" in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "m.nc").exists()
    ref = tmp_path / "ref.json"
    ref.write_text('{"b0": -0.99}')
    for option, value, message in [("--chopper", "1", "--chopper '1': give two numbers"),
                                   ("--chopper", "40,inf", "timing widths must be non-negative"),
                                   ("--temperatures", "300", "--temperatures '300': give two numbers")]:
        res = call_cli(capsys, "amortize", "simulate", "--crystal", "Al", "--shells", "2", "--reference", str(ref),
                       "--n", "4", "--store", str(tmp_path / "set.zarr"), option, value)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert not (tmp_path / "set.zarr").exists()
    with pytest.raises(ValueError, match=r"force constants \['b0'\] are not single numbers"):
        xtds.IFCModel(NI, shells=1).vector({"b0": "-0.99", "b1": 0.1, "b2": 0.0})


def test_cli_checkpoint_and_plots_never_take_the_input_or_the_output(small, tmp_path, capsys):
    """``--checkpoint r.nc --out r.nc`` left the checkpoint where the result was then refused (the
    fit lost); ``--plots`` on the input store or a file, ``plot --out`` on the result: all refused
    before any work, the files untouched."""
    path = written(small, tmp_path, "zarr")
    fit = ["fit", path, "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--quiet"]
    result = str(tmp_path / "r.nc")
    note = tmp_path / "note.txt"
    note.write_text("keep")
    for extra, message in [(["--checkpoint", result, "--out", result], "--checkpoint .*r.nc is also --out"),
                           (["--checkpoint", path + "/"], "is also the input volume"),
                           (["--plots", path], "--plots .* is also the input volume"),
                           (["--plots", result, "--out", result], "--plots .* is also --out"),
                           (["--plots", str(note)], "note.txt is a file: give a folder"),
                           (["--plots", str(tmp_path / "p"), "--checkpoint", str(tmp_path / "p")], "also --plots")]:
        res = call_cli(capsys, *fit, *extra)
        assert res.returncode == 2 and re.search(message, res.stderr), (extra, res.stderr)
        assert "iterations" not in res.stdout
    assert not os.path.exists(result) and note.read_text() == "keep"
    (tmp_path / "again").mkdir()
    assert sorted(os.listdir(path)) == sorted(os.listdir(written(small, tmp_path / "again", "zarr")))
    for out, message in [(path, "is the file to plot"), (str(note), "is a file")]:
        res = call_cli(capsys, "plot", path, "--out", out)
        assert res.returncode == 2 and message in res.stderr, res.stderr
    assert note.read_text() == "keep"


def test_overwriting_a_zarr_store_keeps_files_that_are_not_zarr(small, tmp_path):
    store = tmp_path / "store.zarr"
    xtds.write_volume(small, str(store))
    (store / "notes.txt").write_text("beamtime notes")
    with pytest.raises(ValueError, match=r"no part of its zarr store \(notes.txt\)"):
        xtds.write_volume(small, str(store), overwrite=True)
    assert (store / "notes.txt").read_text() == "beamtime notes"
    (store / "notes.txt").unlink()
    xtds.write_volume(small, str(store), overwrite=True)  # a store of its own alone is replaced


@pytest.mark.parametrize("ext", ["nc", "nxs"])
def test_a_write_past_a_file_size_limit_names_the_file_and_leaves_nothing(tmp_path, ext):
    """A full disk or a file-size limit (here RLIMIT_FSIZE in a child process): an OSError that
    names the target and says why; no file, no temporary sibling left."""
    target = tmp_path / f"big.{ext}"
    code = textwrap.dedent(f"""
        import resource, signal, xtds
        from xtds.datasets import paper_ni_volume
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        ds = paper_ni_volume(n_max=14)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        try:
            xtds.write_volume(ds, {str(target)!r})
        except OSError as err:
            print("caught:", err)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert f"caught: writing {target} failed: the disk is full or a file-size limit" in res.stdout, res.stderr
    assert not target.exists() and not list(tmp_path.glob(".big*"))
