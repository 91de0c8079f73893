"""The fast infinite-crystal model (xtds.model.infinite): speed, convergence, and fits of real grids.

Prints, on the machine it runs on:

1. forward + backward of the paper's 81³ Ni grid (irreducible points, 5 shells, default mesh):
   median of ``--repeats`` runs;
2. mesh convergence: the model at meshes 32, 48, 64 on Ni points ≥ 0.15 r.l.u. from Bragg peaks;
3. fits of synthetic "measured" volumes (infinite-crystal model, 0.5 % Gaussian noise, no
   ``attrs['geometry']``) on a 0.05 r.l.u. grid, Bragg peaks masked (0.1 r.l.u.): Ni (2 shells) and
   Si (2 shells), each constant's deviation from the truth in units of its reported σ, and the time.

4. with ``--sigma-seeds N`` instead: N noise seeds of a smaller Ni case (|H|,|K|,|L| ≤ 1), each
   constant's (fit − truth)/σ, to check that the reported σ are honest.

    python benchmarks/infinite_crystal.py [--repeats 5] [--h-max 1.5]
    python benchmarks/infinite_crystal.py --sigma-seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import xarray as xr

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.model import InfiniteCrystal, supercell_q_grid
from xtds.model.covariance import is_gamma
from xtds.model.observable import TDSIntensity


def paper_grid_timing(repeats):
    ni = xtds.Crystal.preset("Ni")
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


def convergence():
    ni = xtds.Crystal.preset("Ni")
    m = xtds.IFCModel(ni, shells=5)
    phi = m.vector(paper_ni_ifcs("target"))
    rng = np.random.default_rng(0)
    h = rng.uniform(-8, 8, size=(400, 3))
    G = np.round(h)
    G = G[np.newaxis].repeat(1, 0)[0]
    near = []
    for x in h:  # distance to the nearest allowed fcc reflection
        c = np.stack(np.meshgrid(*[np.arange(np.floor(v) - 1, np.ceil(v) + 2) for v in x], indexing="ij"), -1)
        c = c.reshape(-1, 3)
        c = c[np.all(c % 2 == c[:, :1] % 2, axis=1)]
        near.append(np.linalg.norm(c - x, axis=1).min())
    near = np.array(near)
    q = ni.rlu_to_cartesian(h)
    vals = {M: TDSIntensity(m, q, 300.0, geometry=InfiniteCrystal(M), laue_reduce=False)(phi).detach().numpy()
            for M in (32, 48, 64)}
    for lo, hi in ((0.15, 0.3), (0.3, 0.6), (0.6, 2.0)):
        sel = (near >= lo) & (near < hi)
        for a, b in ((32, 64), (48, 64)):
            rel = np.abs(vals[a][sel] - vals[b][sel]) / vals[b][sel]
            print(f"mesh {a} vs {b}, {lo}–{hi} r.l.u. from Bragg ({sel.sum()} points): median {np.median(rel):.1e}, "
                  f"max {rel.max():.1e}")


def fit_case(name, crystal, true, start, h_max):
    c = np.round(np.arange(-h_max, h_max + 1e-9, 0.05), 6)
    ds = xr.Dataset(coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    t = time.perf_counter()
    truth = xtds.simulate(ds, crystal, true, shells=2, geometry="auto")
    t_sim = time.perf_counter() - t
    I = truth["intensity"].values
    rng = np.random.default_rng(1)
    truth["sigma"] = (("H", "K", "L"), 0.005 * I)
    truth["intensity"] = (("H", "K", "L"), I * (1 + 0.005 * rng.standard_normal(I.shape)))
    truth.attrs.pop("geometry")
    t = time.perf_counter()
    res = truth.tds.fit(crystal, shells=2, initial=start, bragg=0.1, loss="chi2", background="constant",
                        progress=False)
    t_fit = time.perf_counter() - t
    z = {k: (float(res["ifc"].sel(constant=k)) - v) / float(res["ifc_stderr"].sel(constant=k)) for k, v in true.items()}
    conv = json.loads(res.attrs["mesh_convergence"])[0]
    print(f"{name}: {truth.sizes['H']}³ voxels at 0.05 r.l.u. (|H|,|K|,|L| ≤ {h_max}), {res.attrs['n_points']} "
          f"irreducible points; simulate {t_sim:.1f} s, fit {t_fit:.1f} s; {res.attrs['geometry']}")
    print("   (fit − truth)/σ: " + ", ".join(f"{k} {v:+.2f}" for k, v in z.items()))
    print(f"   mesh {conv['mesh']} vs {conv['finer_mesh']}: median {conv['median_rel_change']:.1e}, "
          f"max {conv['max_rel_change']:.1e}")


def sigma_check(seeds):
    ni = xtds.Crystal.preset("Ni")
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
        res = ds.tds.fit(ni, shells=2, initial=start, bragg=0.1, loss="chi2", background="constant", progress=False)
        z = [(float(res["ifc"].sel(constant=k)) - v) / float(res["ifc_stderr"].sel(constant=k))
             for k, v in true.items()]
        zs += z
        print(f"seed {seed}: (fit − truth)/σ = " + ", ".join(f"{x:+.2f}" for x in z), flush=True)
    zs = np.array(zs)
    print(f"{len(zs)} values: max |z| {np.abs(zs).max():.2f}, rms {np.sqrt((zs**2).mean()):.2f} (1 if σ is honest)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--h-max", type=float, default=1.5)
    ap.add_argument("--sigma-seeds", type=int, default=0, help="only the σ check, with this many seeds")
    args = ap.parse_args()
    if args.sigma_seeds:
        sigma_check(args.sigma_seeds)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    paper_grid_timing(args.repeats)
    convergence()
    fit_case("Ni", xtds.Crystal.preset("Ni"), {"b0": -1.0, "b1": 0.06, "b2": -1.05, "c0": 0.13, "c1": -0.01},
             {"b0": -0.9, "b1": 0.0, "b2": -0.9, "c0": 0.1, "c1": 0.0}, args.h_max)
    si = xtds.Crystal.preset("Si")
    msi = xtds.IFCModel(si, shells=2)
    true_si = dict(zip(msi.names, msi.central_force({1: 6.0, 2: 1.0}), strict=True))
    start_si = {k: 0.9 * v for k, v in true_si.items()}
    fit_case("Si", si, true_si, start_si, args.h_max)


if __name__ == "__main__":
    main()
