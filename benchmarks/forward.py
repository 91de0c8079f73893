"""Forward+backward timings of the TDS models on the paper's Ni set-up.

Ni (Target IFCs, 5 shells), 5×5×5 cubic supercell = 500 atoms, the 81³ grid n ∈ [−40, 40]³,
300 K; the loss is the paper's Var[log I]. Prints the median of ``--repeats`` runs of

- ``exact`` on the full grid (Laue-reduced: the set-up is timed apart, once per q-set);
- ``sampled`` with 15 configurations, ``dense`` and ``kspace`` solvers, and their ratio;
- its two parts apart: the sampling step (Cholesky + solves + backward, no intensities), dense vs
  kspace, and the intensity step both solvers share (NUFFT pair sums of 15 configurations,
  forward + backward), which bounds the end-to-end ratio;
- a sampled fit's epoch on the irreducible points, per-point and orbit-averaged, and how much
  orbit averaging lowers the Monte-Carlo standard error (40 configurations);
- ``sampled`` dense vs kspace at 2,048 atoms (8×8×8 cells, about the dense solver's validation
  limit; its own grid n ∈ [−40, 40]³), where the factorization dominates;
- ``sampled/kspace`` at 32,000 atoms (20×20×20 cubic cells; its own grid, i.e. |q| ≤ 3.6 Å⁻¹
  along the axes).

    python benchmarks/forward.py [--repeats 3] [--threads N] [--skip-large] [--cells 5 --n-max 40]

``--cells`` and ``--n-max`` set the supercell and the grid (small values make a quick smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.observables import (
    PeriodicSupercell,
    sample_displacements,
    sampled_intensity,
    supercell_q_grid,
    tds_intensity,
)
from xtds.observables.tds.intensity import TDSIntensity
from xtds.observables.tds.nufft import ModeBox, pair_sums

N_CONFIGS = 15  # the paper's configurations per epoch


def timed(fn, repeats):
    """Median and all wall times (s) of ``repeats`` calls, after one warm-up call (FFTW planning
    happens once per transform size)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def report(name, fn, repeats) -> float:
    med, all_t = timed(fn, repeats)
    print(f"{name:<66s} median {med:8.3f} s   runs {', '.join(f'{t:.3f}' for t in all_t)}", flush=True)
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cells", type=int, default=5, help="supercell repeats L (L×L×L cubic cells)")
    ap.add_argument("--n-max", type=int, default=40, help="the grid n ∈ [−n_max, n_max]³")
    ap.add_argument("--skip-large", action="store_true", help="skip the 2,048- and 32,000-atom runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = xtds.IFCModel(xtds.datasets.paper_ni_crystal(), shells=5)
    target = paper_ni_ifcs("target")
    L, n_max = args.cells, args.n_max
    side = 2 * n_max + 1
    q = supercell_q_grid(model.crystal, L, n_max)
    geo = PeriodicSupercell(L)
    sc = xtds.Supercell.from_crystal(model, L)
    t0 = time.perf_counter()
    # the paper: classical statistics; the Laue reduction is computed here, once
    observable = TDSIntensity(model, q, 300.0, geometry=geo, quantum=False)
    irr = observable.orbits
    q_irr = q[irr.index]
    t_setup = time.perf_counter() - t0
    print(f"{sc.n_atoms} atoms; q-grid {side}³ = {len(q)} points, {len(irr.index)} irreducible ({irr.reduction:.1f}×); "
          f"set-up {t_setup:.2f} s (once)")

    def loss_of(intensity):
        return torch.log(intensity).var()

    def exact():
        phi = model.vector(target).requires_grad_(True)
        loss_of(observable(phi)).backward()

    def sampled(solver, cells=L, qs=q, orbit=False):
        def run():
            phi = model.vector(target).requires_grad_(True)
            intensity = tds_intensity(model, phi, qs, 300.0, method="sampled", quantum=False,
                                      geometry=PeriodicSupercell(cells),
                                      n_samples=N_CONFIGS, solver=solver, seed=0, orbit_average=orbit)
            loss_of(intensity).backward()
        return run

    def sampling_only(solver):
        def run():
            phi = model.vector(target).requires_grad_(True)
            gen = torch.Generator().manual_seed(0)
            dx = sample_displacements(model, phi, 300.0, L, N_CONFIGS, solver=solver, generator=gen)
            (dx**2).sum().backward()
        return run

    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        dx = sample_displacements(model, model.vector(target), 300.0, L, N_CONFIGS, generator=gen)
    frac0 = (torch.as_tensor(np.array(sc.positions)) + dx) @ torch.as_tensor(np.linalg.inv(sc.lattice))
    box, flat = ModeBox.covering(geo.grid_indices(model.crystal, q))
    group = np.zeros(sc.n_atoms, dtype=int)

    def intensities_only():
        frac = frac0.clone().requires_grad_(True)
        s1, _ = pair_sums(frac, group, box)  # as tds_intensity without return_stderr
        loss_of(s1.reshape(-1)[torch.as_tensor(flat)]).backward()

    r = args.repeats
    t_exact = report(f"exact, full {side}³ grid", exact, r)
    dense = report(f"sampled/dense, {N_CONFIGS} configurations", sampled("dense"), r)
    kspace = report(f"sampled/kspace, {N_CONFIGS} configurations", sampled("kspace"), r)
    s_dense = report("  sampling step/dense (Cholesky + solves + backward)", sampling_only("dense"), r)
    s_kspace = report("  sampling step/kspace", sampling_only("kspace"), r)
    inten = report(f"  intensity step (NUFFT on {'×'.join(map(str, box.shape))} modes, both)", intensities_only, r)
    print(f"ratio sampled dense/kspace (forward+backward, {sc.n_atoms} atoms): {dense / kspace:.2f}×")
    print(f"ratio sampling step dense/kspace: {s_dense / s_kspace:.1f}×")
    print("bound on the end-to-end ratio from the shared intensity step: "
          f"(dense step + intensities)/(kspace step + intensities) = {(s_dense + inten) / (s_kspace + inten):.2f}×")
    print(f"ratio sampled/kspace / exact: {kspace / t_exact:.1f}×")

    # a sampled fit's epoch: the irreducible points, per-point estimator or orbit-averaged
    for orbit in (False, True):
        how = "orbit-averaged" if orbit else "per point"
        report(f"sampled/kspace at the {len(q_irr)} irreducible points, {how}",
               sampled("kspace", qs=q_irr, orbit=orbit), r)
    with torch.no_grad():
        phi = model.vector(target)
        _, se_point = sampled_intensity(model, phi, q_irr, 300.0, L, n_samples=40, seed=1)
        _, se_orbit = sampled_intensity(model, phi, q_irr, 300.0, L, n_samples=40, seed=1, orbit_average=True)
    size = np.bincount(irr.inverse)
    ratio = (se_orbit / se_point).numpy()
    for lo, hi in ((2, 8), (9, 24), (25, 48)):
        sel = (size >= lo) & (size <= hi) & np.isfinite(ratio)
        if sel.any():
            print(f"orbit averaging, orbits of {lo}–{hi} members ({sel.sum()} points): median standard error "
                  f"{np.median(ratio[sel]):.3f} of the per-point estimator's (1/√members: "
                  f"{np.median(1 / np.sqrt(size[sel])):.3f})")

    if not args.skip_large:
        rl = max(1, r - 1)
        q8 = supercell_q_grid(model.crystal, 8, 40)
        big = {s: report(f"sampled/{s}, 2,048 atoms, {N_CONFIGS} configurations", sampled(s, 8, q8), rl)
               for s in ("dense", "kspace")}
        print(f"ratio sampled dense/kspace (forward+backward, 2,048 atoms): {big['dense'] / big['kspace']:.1f}×")
        q20 = supercell_q_grid(model.crystal, 20, 40)
        report(f"sampled/kspace, 32,000 atoms, {N_CONFIGS} configurations", sampled("kspace", 20, q20), rl)


if __name__ == "__main__":
    main()
