"""Every GPU path against the CPU, with timings, in one short run (the device machine's script).

For each path: the largest difference between the GPU and the CPU result (relative to the
largest CPU value) and the median wall time of ``--repeats`` runs on each side, measured in this
one process:

- the TDS models on the paper's Ni set-up (5 shells, 5×5×5 supercell, 300 K, classical), forward
  + backward of Var[log I]: ``exact`` on the 81³ grid (Laue-reduced), ``one_phonon`` and the
  infinite crystal (``exact`` with :class:`~xtds.thermal.geometry.InfiniteCrystal`) on its
  irreducible points, ``sampled`` (15 configurations, cufinufft) on them;
- the powder spectrum of the measured ARCS grid (Al, 150 K, multiphonon): value and the exact
  Jacobian (forward mode);
- the volume kernels on a 201³ volume: mask + symmetrize (m-3m) with cupy against numpy, and
  ``to_points`` of a lazy cupy volume;
- the paper's Table 1 fit (exact model, LM) on the GPU (``--fit``; ``--cpu-fit`` also on the CPU).

Without a CUDA device it says so and exits 0. Run ``XTDS_REQUIRE_GPU=1 python -m pytest
tests/test_gpu.py`` beside it for the pass/fail tests.

    python benchmarks/gpu_check.py [--repeats 5] [--n-max 40] [--fit] [--cpu-fit]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import xtds
from xtds.datasets import paper_ni_ifcs


def timed(fn, repeats: int, sync: bool) -> tuple[float, object]:
    """Median wall time (s) of ``repeats`` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def to_numpy(x):
    if isinstance(x, (tuple, list)):
        return [to_numpy(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)


def compare(name: str, make, repeats: int) -> None:
    """``make(device)`` returns a function of no arguments to time; its results are compared."""
    rows = {}
    for dev in ("cpu", "cuda"):
        try:
            rows[dev] = timed(make(dev), repeats, sync=dev == "cuda")
        except Exception as err:  # noqa: BLE001 - report and go on with the next path
            print(f"{name:58s} {dev}: FAILED ({type(err).__name__}: {err})", flush=True)
            return
    a, b = (np.concatenate([np.ravel(v) for v in (x if isinstance(x, list) else [x])])
            for x in (to_numpy(rows["cuda"][1]), to_numpy(rows["cpu"][1])))
    diff = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))
    t_cpu, t_gpu = rows["cpu"][0], rows["cuda"][0]
    print(f"{name:58s} GPU−CPU {diff:8.1e}   CPU {t_cpu:8.3f} s   GPU {t_gpu:8.3f} s   {t_cpu / t_gpu:6.1f}×",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-max", type=int, default=40, help="the Ni grid n ∈ [−n_max, n_max]³ (40: the paper's)")
    ap.add_argument("--fit", action="store_true", help="also the paper's Table 1 fit on the GPU")
    ap.add_argument("--cpu-fit", action="store_true", help="and the same fit on the CPU")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the GPU tests skip likewise)")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {torch.get_num_threads()} CPU threads")
    for mod in ("cupy", "cufinufft", "finufft"):
        try:
            print(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            print(f"{mod}: not installed (its paths are reported as failed)")
    r = args.repeats
    models(args.n_max, r)
    powder(r)
    volumes(r)
    if args.fit:
        fit(args.n_max, args.cpu_fit)
    return 0


def models(n_max: int, r: int) -> None:
    from xtds.observables import TDSIntensity
    from xtds.thermal.geometry import InfiniteCrystal, PeriodicSupercell, supercell_q_grid

    model = xtds.IFCModel(xtds.datasets.paper_ni_crystal(), shells=5)
    target = paper_ni_ifcs("target")
    q = supercell_q_grid(model.crystal, 5, n_max)
    irr = TDSIntensity(model, q, 300.0, geometry=PeriodicSupercell(5), quantum=False).orbits
    q_irr = q[irr.index][1:]  # the irreducible points but q = 0
    q_off = q_irr[: min(len(q_irr), 20_000)] + np.array([0.011, 0.007, 0.003])  # off the supercell grid

    def case(qs, **kw):
        def make(dev):
            obs = TDSIntensity(model, qs, 300.0, device=dev, **kw)

            def run():
                phi = model.vector(target, device=dev).requires_grad_(True)
                intensity = obs(phi)
                torch.log(intensity).var().backward()
                return intensity, phi.grad
            return run
        return make

    side = 2 * n_max + 1
    compare(f"exact, {side}³ grid (Laue-reduced), value+gradient", case(q, quantum=False), r)
    compare(f"one_phonon, {len(q_off):,} points off the grid", case(q_off, method="one_phonon"), r)
    compare(f"exact, infinite crystal, {len(q_off):,} points", case(q_off, geometry=InfiniteCrystal()), r)
    compare(f"sampled (15 configurations), {len(q_irr):,} irreducible points",
            case(q_irr, method="sampled", quantum=False, seed=0), r)


def powder(r: int) -> None:
    from xtds.datasets import al_arcs
    from xtds.observables import PowderSpectrum
    from xtds.observables.neutron.sqe import chopper_resolution

    ds = al_arcs()
    model = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=2)
    phi0 = {"b0": -0.61, "b1": 0.10, "b2": -0.71, "c0": -0.155, "c1": 0.032}

    def make(jac):
        def inner(dev):
            obs = PowderSpectrum(model, ds["Q"].values, ds["E"].values, 150.0, mask=ds["valid"].values,
                                 resolution=chopper_resolution(50.0, 40, 20), device=dev)
            p = model.vector(phi0, device=dev)
            obs.mean(p)  # fixes the adaptive widths
            return (lambda: torch.func.jacfwd(obs.mean)(p)) if jac else (lambda: obs.mean(p + 0.0))
        return inner

    compare("ARCS powder spectrum (mesh 12, multiphonon), value", make(False), r)
    compare("ARCS powder spectrum, exact Jacobian (forward mode)", make(True), r)


def volumes(r: int) -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        print("volume kernels: cupy not installed, skipped")
        return
    import xarray as xr

    ni = xtds.Crystal.fcc("Ni", a=3.52)
    n = 201
    rng = np.random.default_rng(0)
    c = np.round(np.linspace(-5, 5, n), 9)
    I = (rng.random((n,) * 3) + 0.5).astype(np.float32)
    I[rng.random(I.shape) < 1e-3] = np.nan
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I)}, coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={"unit_cell": [3.52, 3.52, 3.52, 90.0, 90.0, 90.0]})

    def sym(dev):
        src = ds.tds.as_backend("cupy") if dev == "cuda" else ds
        return lambda: src.tds.mask(bragg=0.1, crystal=ni, q_max=14.0).tds.symmetrize()["intensity"].data

    def points(dev):
        src = ds.chunk({"H": 25})
        src = src.tds.as_backend("cupy") if dev == "cuda" else src
        return lambda: src.tds.mask(bragg=0.1, crystal=ni, q_max=14.0).tds.to_points(crystal=ni)["intensity"].values

    compare(f"mask + symmetrize (m-3m), {n}³ float32, cupy vs numpy", sym, r)
    compare(f"to_points of a lazy {n}³ volume (one read, folded), cupy vs numpy", points, r)


def fit(n_max: int, cpu: bool) -> None:
    from xtds.datasets import paper_ni_volume

    ni = xtds.datasets.paper_ni_crystal()
    vol = paper_ni_volume(n_max=n_max)
    start = paper_ni_ifcs("starting")
    for dev in (("cuda", "cpu") if cpu else ("cuda",)):
        t = time.perf_counter()
        res = vol.tds.fit(ni, shells=5, initial=start, model=xtds.TDSModel(quantum=False, device=dev),
                          optimizer=xtds.LM(progress=False))
        wall = time.perf_counter() - t
        err = np.max(np.abs(res["ifc"].sel(constant=list(res["constant"].values)).values
                            - np.array([paper_ni_ifcs("target").get(k, np.nan) for k in res["constant"].values])))
        print(f"Table 1 fit on {dev}: {wall:.1f} s, {res.attrs['iterations']} iterations, largest |φ − target| "
              f"{err:.2e} eV/Å² ({res.attrs['message']})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
