"""A temperature series of synthetic Ni volumes: a cluster against one process, and the softening law.

Eight volumes (T = 100 … 800 K) of the paper's Ni set-up (exact TDS, 5×5×5 supercell grid,
classical statistics), their constants softened by a known linear law
φ(T) = φ_Target · (1 − r (T − 450 K)) (r = ``--rate`` per K), are written as NeXus files and fitted
(5 shells, from the paper's starting constants):

1. by :func:`xtds.fit_series` on a ``distributed.LocalCluster`` (``--workers`` single-threaded
   processes) and sequentially in this process, in one run: both wall times and the speed-up;
2. killed after the first volumes finish and rerun on the same store: the rerun fits only the
   missing ones;
3. jointly (:func:`xtds.fitting.fit_joint_series`, constants linear in T): the law's intercept
   and slope against the truth (largest relative error).

    python benchmarks/series.py [--n-max 16] [--workers 2] [--dir DIR]

``--n-max 40`` is the paper's 81³ grid (slow: minutes per fit on two cores).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

import xtds
from xtds.datasets import paper_ni_ifcs, paper_ni_volume

NI = xtds.datasets.paper_ni_crystal()
T0 = 450.0


def law(T: float, rate: float) -> dict:
    return {k: v * (1 - rate * (T - T0)) for k, v in paper_ni_ifcs("target").items() if k != "a0"}


KILLED = textwrap.dedent("""
    import sys, xtds
    from xtds.datasets import paper_ni_ifcs
    files = sys.argv[3:]
    done = []
    import xtds.fitting.series as s
    save = s._Store.save
    def saving(self, i, identity, res):
        save(self, i, identity, res)
        done.append(i)
        if len(done) >= 2:
            raise SystemExit(0)
    s._Store.save = saving  # the run dies after its second volume has been stored
    xtds.fit_series(files, "Ni", client="sequential", store=sys.argv[1], shells=5,
                    initial=paper_ni_ifcs("starting"), optimizer=xtds.LM(max_iter=int(sys.argv[2])), progress=False)
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-max", type=int, default=16, help="grid n ∈ [−n_max, n_max]³ of the supercell (40: paper)")
    ap.add_argument("--temperatures", default="100,200,300,400,500,600,700,800")
    ap.add_argument("--rate", type=float, default=2e-4, help="relative softening per K of every constant")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--dir", default=None, help="folder for the volumes and stores (default: a temporary one)")
    args = ap.parse_args()
    folder = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="xtds_series_"))
    folder.mkdir(parents=True, exist_ok=True)
    temps = [float(t) for t in args.temperatures.split(",")]
    files = []
    t = time.perf_counter()
    for T in temps:
        path = folder / f"ni_{T:.0f}K.nxs"
        if not path.exists():
            xtds.write_volume(paper_ni_volume(n_max=args.n_max, temperature=T, ifcs=law(T, args.rate)), str(path))
        files.append(str(path))
    print(f"{len(files)} volumes of {(2 * args.n_max + 1)}³ voxels in {folder} ({time.perf_counter() - t:.1f} s)")
    fit = {"shells": 5, "initial": paper_ni_ifcs("starting"), "optimizer": xtds.LM(max_iter=args.max_iter)}

    t = time.perf_counter()
    seq = xtds.fit_series(files, NI, client="sequential", progress=False, **fit)
    t_seq = time.perf_counter() - t
    import distributed

    from xtds.fitting.series import local_cluster

    with local_cluster(args.workers) as cluster, distributed.Client(cluster) as client:
        client.run(lambda: __import__("xtds.fitting") and None)  # the workers are up and have xtds imported
        t = time.perf_counter()
        par = xtds.fit_series(files, NI, client=client, progress=False, **fit)
        t_par = time.perf_counter() - t
    same = float(np.abs(par["ifc"].values - seq["ifc"].values).max())
    print(f"sequential: {t_seq:.1f} s; LocalCluster({args.workers} workers): {t_par:.1f} s; speed-up "
          f"{t_seq / t_par:.2f}×; largest difference of the constants {same:.1e} eV/Å²; the fits' own "
          f"minimizations {float(seq['minimize_time'].sum()):.1f} s of their {float(seq['fit_time'].sum()):.1f} s "
          "(the rest of each fit: preparing the volume, building the result)")

    store = str(folder / "killed.zarr")
    import shutil

    shutil.rmtree(store, ignore_errors=True)  # a store left by an earlier run in the same --dir
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", KILLED, store, str(args.max_iter), *files], check=True, env=env)
    t = time.perf_counter()
    rerun = xtds.fit_series(files, NI, client="sequential", store=store, progress=False, **fit)
    print(f"killed after 2 of {len(files)} volumes; the rerun loaded {rerun.attrs['n_loaded']} and fitted "
          f"{rerun.attrs['n_fitted']} in {time.perf_counter() - t:.1f} s")

    from xtds.fitting import fit_joint_series
    from xtds.fitting.tds import points_problem

    model = xtds.IFCModel(NI, shells=5)
    members = [points_problem(xtds.open_volume(path).tds.symmetrize(crystal=NI).tds.to_points(), model, T,
                              name=f"T{T:.0f}",
                              model=xtds.TDSModel(geometry=xtds.PeriodicSupercell(5), quantum=False))
               for path, T in zip(files, temps, strict=True)]
    t = time.perf_counter()
    joint = fit_joint_series(members, temps, paper_ni_ifcs("starting"), degree=1, center=T0,
                             optimizer=xtds.LM(progress=False))
    truth0 = np.array([law(T0, args.rate)[n] for n in joint["constant"].values])
    truth1 = -args.rate * np.array([paper_ni_ifcs("target")[n] for n in joint["constant"].values])
    a0 = joint["coefficient"].sel(power=0).values
    a1 = joint["coefficient"].sel(power=1).values
    print(f"joint fit (linear in T, {len(members)} volumes) in {time.perf_counter() - t:.1f} s, "
          f"{joint.attrs['iterations']} iterations: largest relative error of a0 "
          f"{np.max(np.abs(a0 / truth0 - 1)):.1e}, of the slope a1 {np.max(np.abs(a1 / truth1 - 1)):.1e}")


if __name__ == "__main__":
    main()
