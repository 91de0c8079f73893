"""A volume larger than the memory it may use: open, mask, symmetrize and write a 1001³ float32 volume.

Generates (once) an NXrefine-layout NeXus file of n³ float32 voxels (n = 1001: about 4 GB) with
50³ chunks, a Ni-like FCC diffuse pattern with Bragg peaks and a few bad voxels; then, timed:
``xtds.open_volume`` (lazy) → ``mask`` (invalid voxels, Bragg spheres of 0.1 r.l.u., |q| ≤ 14 Å⁻¹)
→ ``symmetrize`` (m-3m, 48 operations) → ``write_volume`` to zarr (float32 intensity and weights).
Prints the wall time, the throughput (input MB/s) and the peak resident memory of this process.

    python benchmarks/large_volume.py [--n 1001] [--dir /tmp/xtds-large] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

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
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"volume_{args.n}.nxs")
    if not os.path.exists(src):
        t = time.perf_counter()
        generate(src, args.n)
        print(f"generated {src}: {os.path.getsize(src) / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s")
    out = os.path.join(args.dir, "symmetrized.zarr")
    shutil.rmtree(out, ignore_errors=True)
    ni = xtds.Crystal.fcc("Ni", a=3.52)
    mb = args.n**3 * 4 / 1e6
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        ds = xtds.open_volume(src, crystal=ni, chunks="symmetric")
        prepared = ds.tds.mask(bragg=0.1, crystal=ni, q_max=14.0).tds.symmetrize()
        prepared["intensity"] = prepared["intensity"].astype(np.float32)
        prepared["weights"] = prepared["weights"].astype(np.float32)
        t_graph = time.perf_counter() - t0
        xtds.write_volume(prepared[["intensity", "weights"]], out)
        wall = time.perf_counter() - t0
    back = xtds.open_volume(out)
    print(f"volume {args.n}³ float32 = {mb:.0f} MB; graph built in {t_graph:.1f} s")
    print(f"open + mask + symmetrize (m-3m) + write zarr: {wall:.1f} s, {mb / wall:.1f} MB/s of input")
    print(f"peak RSS {rss.peak / 1e9:.2f} GB (goal ≤ 2.5 GB)")
    print(f"output {back['intensity'].shape}, chunks {back['intensity'].data.chunksize}")
    if not args.keep:
        os.remove(src)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
