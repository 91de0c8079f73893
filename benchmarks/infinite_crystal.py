"""The fast infinite-crystal model (xtds.observables.tds.infinite): speed, convergence, and fits of real grids.

Prints, on the machine it runs on:

1. forward + backward of the paper's 81³ Ni grid (irreducible points, 5 shells, default mesh):
   median of ``--repeats`` runs;
2. mesh convergence: the model at meshes 32, 40, 48, 64 against 128 on Ni points ≥ 0.15 r.l.u.
   from Bragg peaks (a few minutes: the 128³ mesh sums 52,774 pairs);
3. fits of synthetic "measured" volumes (infinite-crystal model, 0.5 % Gaussian noise, no
   ``attrs['geometry']``) on a 0.05 r.l.u. grid, Bragg peaks masked (0.1 r.l.u.): Ni (2 shells) and
   Si (2 shells), each constant's deviation from the truth in units of its reported σ, and the time.

4. with ``--sigma-seeds N`` instead: N noise seeds of a smaller Ni case (|H|,|K|,|L| ≤ 1), each
   constant's (fit − truth)/σ, to check that the reported σ are honest.

5. with ``--full-range`` instead: Ni and Si over the paper's range (|H|,|K|,|L| ≤ 8) on a 0.05 r.l.u.
   grid (321³ voxels, ~690,000 irreducible points), the truth made on a finer mesh than the fit's
   (so that any mesh bias shows), Bragg peaks masked; fitted with ``max_points`` (a random subset of
   the irreducible points) once noise-free — (fit − truth)/σ is then the model's bias in units of
   the reported σ — and once with 0.5 % noise; fit times.

    python benchmarks/infinite_crystal.py [--repeats 5] [--h-max 1.5]
    python benchmarks/infinite_crystal.py --sigma-seeds 5
    python benchmarks/infinite_crystal.py --full-range [--max-points 3000] [--truth-mesh 40] [--cache DIR]
        [--crystals Ni,Si]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import torch
import xarray as xr

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.observables import InfiniteCrystal, supercell_q_grid
from xtds.observables.tds.intensity import TDSIntensity
from xtds.thermal.covariance import is_gamma


def paper_grid_timing(repeats):
    ni = xtds.datasets.paper_ni_crystal()
    m = xtds.IFCModel(ni, shells=5)
    q = supercell_q_grid(ni, 5, 40)
    t = time.perf_counter()
    obs = TDSIntensity(m, q[~is_gamma(m.primitive, q)], 300.0, geometry=InfiniteCrystal())
    setup = time.perf_counter() - t
    phi0 = m.vector(paper_ni_ifcs("target"))

    def step():
        phi = phi0.clone().requires_grad_(True)
        torch.log(obs(phi)).var().backward()

    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"paper grid: {len(obs.q)} points, {len(obs.orbits.index)} irreducible, {obs.geometry}, "
          f"{len(obs.plan)} pairs; set-up {setup:.1f} s; forward+backward median {statistics.median(times):.3f} s "
          f"({', '.join(f'{x:.3f}' for x in times)})")


def convergence(meshes=(32, 40, 48, 64, 128)):
    """The model at each mesh against the finest, on 400 random Ni points with |H|,|K|,|L| ≤ 8 that
    are ≥ 0.15 r.l.u. from Bragg peaks (5 shells, 300 K), by distance from the nearest peak."""
    ni = xtds.datasets.paper_ni_crystal()
    m = xtds.IFCModel(ni, shells=5)
    phi = m.vector(paper_ni_ifcs("target"))
    h = np.random.default_rng(0).uniform(-8, 8, size=(400, 3))
    near = []
    for x in h:  # distance to the nearest allowed fcc reflection
        c = np.stack(np.meshgrid(*[np.arange(np.floor(v) - 1, np.ceil(v) + 2) for v in x], indexing="ij"), -1)
        c = c.reshape(-1, 3)
        c = c[np.all(c % 2 == c[:, :1] % 2, axis=1)]
        near.append(np.linalg.norm(c - x, axis=1).min())
    near = np.array(near)
    keep = near >= 0.15
    near, q = near[keep], ni.rlu_to_cartesian(h[keep])
    vals = {}
    for M in meshes:
        t = time.perf_counter()
        vals[M] = TDSIntensity(m, q, 300.0, geometry=InfiniteCrystal(M), laue_reduce=False)(phi).detach().numpy()
        print(f"mesh {M}³: {time.perf_counter() - t:.0f} s", flush=True)
    ref = meshes[-1]
    for M in meshes[:-1]:
        rel = np.abs(vals[M] - vals[ref]) / vals[ref]
        cells = []
        for lo, hi in ((0.15, 0.3), (0.3, 0.6), (0.6, 2.0)):
            sel = (near >= lo) & (near < hi)
            cells.append(f"{lo}–{hi} r.l.u. ({sel.sum()}): median {np.median(rel[sel]):.1e} max {rel[sel].max():.1e}")
        print(f"mesh {M} vs {ref}: " + "; ".join(cells) + f"; all: median {np.median(rel):.1e}, "
              f"90th percentile {np.percentile(rel, 90):.1e}, max {rel.max():.1e}", flush=True)


def fit_case(name, crystal, true, start, h_max):
    c = np.round(np.arange(-h_max, h_max + 1e-9, 0.05), 6)
    ds = xr.Dataset(coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    t = time.perf_counter()
    truth = xtds.simulate(ds, crystal, true, shells=2, model=xtds.TDSModel(geometry="auto"))
    t_sim = time.perf_counter() - t
    I = truth["intensity"].values
    rng = np.random.default_rng(1)
    truth["sigma"] = (("H", "K", "L"), 0.005 * I)
    truth["intensity"] = (("H", "K", "L"), I * (1 + 0.005 * rng.standard_normal(I.shape)))
    truth.attrs.pop("geometry")
    t = time.perf_counter()
    res = truth.tds.fit(crystal, shells=2, initial=start, loss="chi2", background="constant",
                        prepare=xtds.Preparation(bragg=0.1), optimizer=xtds.LM(progress=False))
    t_fit = time.perf_counter() - t
    z = {k: (float(res["ifc"].sel(constant=k)) - v) / float(res["ifc_stderr"].sel(constant=k)) for k, v in true.items()}
    conv = json.loads(res.attrs["mesh_convergence"])[0]
    print(f"{name}: {truth.sizes['H']}³ voxels at 0.05 r.l.u. (|H|,|K|,|L| ≤ {h_max}), {res.attrs['n_points']} "
          f"irreducible points; simulate {t_sim:.1f} s, fit: the user waits {t_fit:.1f} s, the minimization "
          f"{res.attrs['minimize_time_s']:.1f} s; {res.attrs['geometry']}")
    print("   (fit − truth)/σ: " + ", ".join(f"{k} {v:+.2f}" for k, v in z.items()))
    print(f"   mesh {conv['mesh']} vs {conv['finer_mesh']}: median {conv['median_rel_change']:.1e}, "
          f"max {conv['max_rel_change']:.1e}")


def sigma_check(seeds):
    ni = xtds.datasets.paper_ni_crystal()
    true = {"b0": -1.0, "b1": 0.06, "b2": -1.05, "c0": 0.13, "c1": -0.01}
    start = {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}
    c = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.05), 6)
    grid = xr.Dataset(coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    clean = xtds.simulate(grid, ni, true, shells=2)
    clean.attrs.pop("geometry")
    zs = []
    for seed in range(1, seeds + 1):
        ds = clean.copy()
        I = clean["intensity"].values
        ds["sigma"] = (("H", "K", "L"), 0.005 * I)
        ds["intensity"] = (("H", "K", "L"), I * (1 + 0.005 * np.random.default_rng(seed).standard_normal(I.shape)))
        res = ds.tds.fit(ni, shells=2, initial=start, loss="chi2", background="constant",
                         prepare=xtds.Preparation(bragg=0.1), optimizer=xtds.LM(progress=False))
        z = [(float(res["ifc"].sel(constant=k)) - v) / float(res["ifc_stderr"].sel(constant=k))
             for k, v in true.items()]
        zs += z
        print(f"seed {seed}: (fit − truth)/σ = " + ", ".join(f"{x:+.2f}" for x in z), flush=True)
    zs = np.array(zs)
    print(f"{len(zs)} values: max |z| {np.abs(zs).max():.2f}, rms {np.sqrt((zs**2).mean()):.2f} (1 if σ is honest)")


def full_range_case(name, crystal, true, start, h_max, truth_mesh, max_points, cache=None, fit_mesh=None):
    c = np.round(np.arange(-h_max, h_max + 1e-9, 0.05), 6)
    ds = xr.Dataset(coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    path = None if cache is None else pathlib.Path(cache) / f"{name}_{h_max}_{truth_mesh}.nc"
    t = time.perf_counter()
    if path is not None and path.exists():
        clean = xr.load_dataset(path)
    else:
        clean = xtds.simulate(ds, crystal, true, shells=2, model=xtds.TDSModel(geometry=InfiniteCrystal(truth_mesh)))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            clean.to_netcdf(path)
    t_sim = time.perf_counter() - t
    clean.attrs.pop("geometry", None)  # a measured volume does not say how it was made
    I = clean["intensity"].values
    print(f"{name}: {clean.sizes['H']}³ voxels at 0.05 r.l.u. (|H|,|K|,|L| ≤ {h_max}); truth on mesh {truth_mesh}³ "
          f"in {t_sim:.0f} s", flush=True)
    for label, noise in (("noise-free", 0.0), ("0.5 % noise", 0.005)):
        vol = clean.copy()
        vol["sigma"] = (("H", "K", "L"), 0.005 * I)
        if noise:
            vol["intensity"] = (("H", "K", "L"), I * (1 + noise * np.random.default_rng(1).standard_normal(I.shape)))
        t = time.perf_counter()
        res = vol.tds.fit(crystal, shells=2, initial=start, loss="chi2", background="constant",
                          prepare=xtds.Preparation(bragg=0.1, max_points=max_points),
                          model=xtds.TDSModel(geometry="auto" if fit_mesh is None else InfiniteCrystal(fit_mesh)),
                          optimizer=xtds.LM(progress=False))
        t_fit = time.perf_counter() - t
        prep = json.loads(res.attrs["preparation"])
        z = {k: (float(res["ifc"].sel(constant=k)) - v) / float(res["ifc_stderr"].sel(constant=k))
             for k, v in true.items()}
        conv = json.loads(res.attrs["mesh_convergence"])[0]
        print(f"   {label}: fit {t_fit:.1f} s as the user waits, the minimization "
              f"{res.attrs['minimize_time_s']:.1f} s ({prep['n_points_fitted']} irreducible points drawn from "
              f"{prep['n_valid_voxels']} valid voxels, {res.attrs['geometry']}); (fit − truth)/σ: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in z.items()), flush=True)
        print("      σ (relative to |truth|, in eV/Å² where the truth is 0): " + ", ".join(
            f"{k} {float(res['ifc_stderr'].sel(constant=k)) / (abs(v) or 1.0):.1e}" for k, v in true.items())
              + f"; mesh {conv['mesh']} vs {conv['finer_mesh']}: median {conv['median_rel_change']:.1e}, "
              f"max {conv['max_rel_change']:.1e}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--h-max", type=float, default=1.5)
    ap.add_argument("--sigma-seeds", type=int, default=0, help="only the σ check, with this many seeds")
    ap.add_argument("--full-range", action="store_true", help="only the fits over the paper's range")
    ap.add_argument("--max-points", type=int, default=3000)
    ap.add_argument("--truth-mesh", type=int, default=40)
    ap.add_argument("--cache", default=None, help="folder to keep the simulated truth volumes in (netCDF)")
    ap.add_argument("--range", type=float, default=8.0, help="|H|,|K|,|L| ≤ this (r.l.u.) with --full-range")
    ap.add_argument("--crystals", default="Ni,Si", help="which of Ni, Si to fit with --full-range")
    ap.add_argument("--fit-mesh", type=int, default=None, help="fit on this k-mesh instead of geometry='auto'")
    args = ap.parse_args()
    if args.sigma_seeds:
        sigma_check(args.sigma_seeds)
        return
    if args.full_range:
        which = {c.strip() for c in args.crystals.split(",")}
        ni = xtds.datasets.paper_ni_crystal()
        if "Ni" in which:
            full_range_case("Ni", ni, {"b0": -1.0, "b1": 0.06, "b2": -1.05, "c0": 0.13, "c1": -0.01},
                            {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}, args.range, args.truth_mesh,
                            args.max_points, args.cache, args.fit_mesh)
        if "Si" not in which:
            return
        si = xtds.Crystal.preset("Si")
        msi = xtds.IFCModel(si, shells=2)
        true_si = dict(zip(msi.names, msi.central_force({1: 6.0, 2: 1.0}), strict=True))
        full_range_case("Si", si, true_si, {k: 0.9 * v for k, v in true_si.items()}, args.range,
                        args.truth_mesh, args.max_points, args.cache, args.fit_mesh)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    paper_grid_timing(args.repeats)
    convergence()
    fit_case("Ni", xtds.datasets.paper_ni_crystal(), {"b0": -1.0, "b1": 0.06, "b2": -1.05, "c0": 0.13, "c1": -0.01},
             {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}, args.h_max)
    si = xtds.Crystal.preset("Si")
    msi = xtds.IFCModel(si, shells=2)
    true_si = dict(zip(msi.names, msi.central_force({1: 6.0, 2: 1.0}), strict=True))
    start_si = {k: 0.9 * v for k, v in true_si.items()}
    fit_case("Si", si, true_si, start_si, args.h_max)


if __name__ == "__main__":
    main()
