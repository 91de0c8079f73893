"""A volume larger than the memory it may use: open, mask and reduce a 1001³ float32 volume.

Generates (once) an NXrefine-layout NeXus file of n³ float32 voxels (n = 1001: about 4 GB) with
50³ chunks, a Ni-like FCC diffuse pattern with Bragg peaks and a few bad voxels; then, timed:
``xtds.open_volume`` (lazy) → ``mask`` (invalid voxels, Bragg spheres of 0.1 r.l.u., |q| ≤ 14 Å⁻¹)
→ ``to_points`` (m-3m: the orbit means of the irreducible points, one read of the file,
:mod:`xtds.volume.reduce`), optionally ``--max-points N`` of them. Prints the wall time, the
throughput (input MB/s) and the peak resident memory of this process; with ``--cluster N`` on a
``LocalCluster`` of N worker processes (one thread each), also each worker's peak.
``--scheduler`` picks dask's local scheduler (threads, the default; synchronous; processes).
``--full-volume`` instead symmetrizes the whole volume and writes it to zarr (the older route).

    python benchmarks/large_volume.py [--n 1001] [--dir /tmp/xtds-large] [--keep] [--max-points N]
        [--cluster 2 | --scheduler threads|synchronous|processes] [--full-volume]
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

import dask
import h5py
import numpy as np
import psutil

import xtds


class PeakRSS:
    """Samples this process's resident memory every 50 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._proc = psutil.Process()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def generate(path: str, n: int, span: float = 5.0, chunk: int = 50) -> None:
    """Write the synthetic volume slab by slab (L-first on disk, as NXrefine does)."""
    c = np.linspace(-span, span, n)
    with h5py.File(path, "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        s = e.create_group("sample")
        s.attrs["NX_class"] = "NXsample"
        s["unit_cell"] = [3.52, 3.52, 3.52, 90.0, 90.0, 90.0]
        s["space_group"] = "Fm-3m"
        s["temperature"] = 300.0
        g = e.create_group("masked_transform")
        g.attrs.update(NX_class="NXdata", signal="data")
        g.attrs["axes"] = np.array(["Ql", "Qk", "Qh"], dtype=h5py.string_dtype())
        for name in ("Ql", "Qk", "Qh"):
            g[name] = c
        d = g.create_dataset("data", shape=(n, n, n), dtype=np.float32, chunks=(chunk,) * 3)
        hh, kk = np.meshgrid(c, c, indexing="ij")
        rng = np.random.default_rng(0)
        for start in range(0, n, chunk):
            ll = c[start : start + chunk][:, None, None]
            dist = (np.sin(np.pi * hh) ** 2 + np.sin(np.pi * kk) ** 2 + np.sin(np.pi * ll) ** 2).astype(np.float32)
            slab = (1.0 / (0.01 + dist)).astype(np.float32)
            slab[rng.random(slab.shape) < 1e-4] = np.nan
            d[start : start + chunk] = slab


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1001)
    ap.add_argument("--dir", default="/tmp/xtds-large")
    ap.add_argument("--keep", action="store_true", help="keep the generated input for the next run")
    ap.add_argument("--max-points", type=int, default=None, help="keep this many irreducible points (random)")
    ap.add_argument("--cluster", type=int, default=0, help="run on a LocalCluster of this many worker processes")
    ap.add_argument("--scheduler", default="threads", choices=["threads", "synchronous", "processes"],
                    help="dask's local scheduler (without --cluster)")
    ap.add_argument("--full-volume", action="store_true",
                    help="symmetrize the whole volume and write it to zarr instead of reducing it to points")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"volume_{args.n}.nxs")
    if not os.path.exists(src):
        t = time.perf_counter()
        generate(src, args.n)
        print(f"generated {src}: {os.path.getsize(src) / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s")
    mb = args.n**3 * 4 / 1e6
    client = None
    if args.cluster:
        from distributed import Client

        from xtds.fitting.series import local_cluster

        client = Client(local_cluster(args.cluster, memory_limit="4GB"))
    workers = WorkerPeaks(client) if client else None
    try:
        with PeakRSS() as rss, dask.config.set(scheduler=None if client else args.scheduler):
            if workers:
                workers.start()
            t0 = time.perf_counter()
            what = full_volume(src, args.dir) if args.full_volume else points(src, args.max_points)
            wall = time.perf_counter() - t0
            if workers:
                workers.stop()
    finally:
        if client:
            client.close()
    print(f"volume {args.n}³ float32 = {mb:.0f} MB: {what}")
    print(f"open + mask + {'symmetrize + write zarr' if args.full_volume else 'points'}: {wall:.1f} s, "
          f"{mb / wall:.1f} MB/s of input")
    print(f"scheduler: {f'LocalCluster({args.cluster})' if client else args.scheduler}; "
          f"peak RSS of this process {rss.peak / 1e9:.2f} GB")
    if workers:
        print("peak RSS per worker: " + ", ".join(f"{p / 1e9:.2f} GB" for p in workers.peaks.values()))
    if not args.keep:
        os.remove(src)


NI = xtds.Crystal.fcc("Ni", a=3.52)


def points(src, max_points):
    ds = xtds.open_volume(src, crystal=NI)
    pts = ds.tds.mask(bragg=0.1, crystal=NI, q_max=14.0).tds.to_points(crystal=NI, max_points=max_points,
                                                                        progress=False)
    return (f"{pts.sizes['point']:,} irreducible points of {pts.attrs['n_points_available']:,} "
            f"({pts.attrs['n_valid_voxels']:,} valid voxels)")


def full_volume(src, folder):
    out = os.path.join(folder, "symmetrized.zarr")
    shutil.rmtree(out, ignore_errors=True)
    ds = xtds.open_volume(src, crystal=NI, chunks="symmetric")
    prepared = ds.tds.mask(bragg=0.1, crystal=NI, q_max=14.0).tds.symmetrize()
    prepared["intensity"] = prepared["intensity"].astype(np.float32)
    prepared["weights"] = prepared["weights"].astype(np.float32)
    xtds.write_volume(prepared[["intensity", "weights"]], out)
    back = xtds.open_volume(out)
    shape = back["intensity"].shape
    shutil.rmtree(out, ignore_errors=True)
    return f"symmetrized volume {shape} written to zarr"


class WorkerPeaks:
    """Samples the resident memory of every worker of a distributed Client every 0.2 s."""

    def __init__(self, client):
        self.client, self.peaks, self._stop = client, {}, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            try:
                now = self.client.run(lambda: psutil.Process().memory_info().rss)
            except Exception:  # noqa: BLE001 - a worker busy or going: sample again
                now = {}
            for w, v in now.items():
                self.peaks[w] = max(self.peaks.get(w, 0), v)
            time.sleep(0.2)

    def start(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def stop(self):
        self._stop.set()
        self._t.join()


if __name__ == "__main__":
    main()
