"""Forward+backward timings of the TDS models on the paper's Ni set-up.

Ni (Target IFCs, 5 shells), 5×5×5 cubic supercell = 500 atoms, the 81³ grid n ∈ [−40, 40]³,
300 K; the loss is the paper's Var[log I]. Prints the median of ``--repeats`` runs of

- ``exact`` on the full grid (Laue-reduced: the set-up is timed apart, once per q-set);
- ``sampled`` with 15 configurations, ``dense`` and ``kspace`` solvers, and their ratio;
- its two parts apart: the sampling step (Cholesky + solves + backward, no intensities), dense vs
  kspace, and the intensity step both solvers share (NUFFT pair sums of 15 configurations,
  forward + backward), which bounds the end-to-end ratio;
- ``sampled`` dense vs kspace at 2,048 atoms (8×8×8 cells, about the dense solver's validation
  limit; its own 81³ grid n ∈ [−40, 40]³), where the factorization dominates;
- ``sampled/kspace`` with 15 configurations at 32,000 atoms (20×20×20 cubic cells; its own 81³ grid,
  i.e. |q| ≤ 3.6 Å⁻¹ along the axes).

    python benchmarks/forward.py [--repeats 3] [--threads N] [--skip-large]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.model import (
    PeriodicSupercell,
    irreducible_q,
    sample_displacements,
    supercell_q_grid,
    tds_intensity,
)
from xtds.model.nufft import ModeBox, pair_sums


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-large", action="store_true", help="skip the 2,048- and 32,000-atom runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = xtds.IFCModel(xtds.Crystal.preset("Ni"), shells=5)
    target = paper_ni_ifcs("target")
    q = supercell_q_grid(model.crystal, 5, 40)
    geo = PeriodicSupercell(5)
    t0 = time.perf_counter()
    irr = irreducible_q(model, q)
    t_setup = time.perf_counter() - t0
    print(f"q-grid {len(q)} points, {len(irr.q)} irreducible ({irr.reduction:.1f}×); set-up {t_setup:.2f} s (once)")

    def loss_of(intensity):
        return torch.log(intensity).var()

    def exact():
        phi = model.vector(target).requires_grad_(True)
        loss_of(tds_intensity(model, phi, q, 300.0, geometry=geo, irreducible_set=irr)).backward()

    def sampled(solver, repeats=5, n=15):
        qs = q if repeats == 5 else supercell_q_grid(model.crystal, repeats, 40)  # 81³ modes

        def run():
            phi = model.vector(target).requires_grad_(True)
            I = tds_intensity(model, phi, qs, 300.0, method="sampled", geometry=PeriodicSupercell(repeats),
                              n_samples=n, solver=solver, seed=0)
            loss_of(I).backward()
        return run

    def sampling_only(solver):
        def run():
            phi = model.vector(target).requires_grad_(True)
            gen = torch.Generator().manual_seed(0)
            dx = sample_displacements(model, phi, 300.0, 5, 15, solver=solver, generator=gen)
            (dx**2).sum().backward()
        return run

    sc = xtds.Supercell.from_crystal(model, 5)
    with torch.no_grad():
        dx = sample_displacements(model, model.vector(target), 300.0, 5, 15, generator=torch.Generator().manual_seed(0))
    frac0 = (torch.as_tensor(np.array(sc.positions)) + dx) @ torch.as_tensor(np.linalg.inv(sc.lattice))
    box, flat = ModeBox.covering(geo.grid_indices(model.crystal, q))
    group = np.zeros(sc.n_atoms, dtype=int)

    def intensities_only():
        frac = frac0.clone().requires_grad_(True)
        s1, _ = pair_sums(frac, group, box, moments=False)  # as tds_intensity without return_stderr
        loss_of(s1.reshape(-1)[torch.as_tensor(flat)]).backward()

    rows = {}
    for name, fn in [
        ("exact, full 81³ grid", exact),
        ("sampled/dense, 15 configurations", sampled("dense")),
        ("sampled/kspace, 15 configurations", sampled("kspace")),
        ("  sampling step/dense (Cholesky + solves + backward)", sampling_only("dense")),
        ("  sampling step/kspace", sampling_only("kspace")),
        (f"  intensity step (NUFFT on {box.shape[0]}×{box.shape[1]}×{box.shape[2]} modes, both)", intensities_only),
    ]:
        fn()  # warm-up (FFTW planning happens once per transform size)
        med, all_t = timed(fn, args.repeats)
        rows[name.split(" (")[0].strip()] = med
        print(f"{name:<62s} median {med:8.3f} s   runs {', '.join(f'{t:.3f}' for t in all_t)}")
    d = rows
    dense, kspace = d["sampled/dense, 15 configurations"], d["sampled/kspace, 15 configurations"]
    s_dense, s_kspace, inten = d["sampling step/dense"], d["sampling step/kspace"], d["intensity step"]
    print(f"ratio sampled dense/kspace (forward+backward, 500 atoms): {dense / kspace:.2f}×")
    print(f"ratio sampling step dense/kspace: {s_dense / s_kspace:.1f}×")
    print(f"bound on the end-to-end ratio from the shared intensity step: "
          f"(dense step + intensities)/(kspace step + intensities) = {(s_dense + inten) / (s_kspace + inten):.2f}×")
    print(f"ratio sampled/kspace / exact: {kspace / d['exact, full 81³ grid']:.1f}×")
    if not args.skip_large:
        r = max(1, args.repeats - 1)
        big = {}
        for solver in ("dense", "kspace"):
            fn = sampled(solver, repeats=8)
            fn()
            med, all_t = timed(fn, r)
            big[solver] = med
            print(f"{'sampled/' + solver + ', 2,048 atoms, 15 configurations':<62s} median {med:8.3f} s   runs "
                  f"{', '.join(f'{t:.3f}' for t in all_t)}")
        print(f"ratio sampled dense/kspace (forward+backward, 2,048 atoms): {big['dense'] / big['kspace']:.1f}×")
        fn = sampled("kspace", repeats=20)
        fn()
        med, all_t = timed(fn, r)
        print(f"{'sampled/kspace, 32,000 atoms, 15 configurations':<62s} median {med:8.3f} s   runs "
              f"{', '.join(f'{t:.3f}' for t in all_t)}")


if __name__ == "__main__":
    main()
