"""Forward+backward timings of the TDS models on the paper's Ni set-up.

Ni (Target IFCs, 5 shells), 5×5×5 cubic supercell = 500 atoms, the 81³ grid n ∈ [−40, 40]³,
300 K; the loss is the paper's Var[log I]. Prints the median of ``--repeats`` runs of

- ``exact`` on the full grid (Laue-reduced: the set-up is timed apart, once per q-set);
- ``sampled`` with 15 configurations, ``dense`` and ``kspace`` solvers, and their ratio;
- the sampling step alone (Cholesky + solves + backward, no intensities), dense vs kspace;
- ``sampled/kspace`` with 15 configurations at 32,000 atoms (20×20×20 cubic cells; its own 81³ grid n ∈ [−40, 40]³, i.e. |q| ≤ 3.6 Å⁻¹
  along the axes).

    python benchmarks/forward.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

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
    ap.add_argument("--skip-large", action="store_true", help="skip the 32,000-atom run")
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
            dx = sample_displacements(model, phi, 300.0, 5, 15, solver=solver, generator=torch.Generator().manual_seed(0))
            (dx**2).sum().backward()
        return run

    rows = []
    for name, fn in [
        ("exact, full 81³ grid", exact),
        ("sampled/dense, 15 configurations", sampled("dense")),
        ("sampled/kspace, 15 configurations", sampled("kspace")),
        ("sampling only/dense (Cholesky + solves + backward)", sampling_only("dense")),
        ("sampling only/kspace", sampling_only("kspace")),
    ]:
        fn()  # warm-up
        med, all_t = timed(fn, args.repeats)
        rows.append((name, med))
        print(f"{name:<55s} median {med:8.3f} s   runs {', '.join(f'{t:.3f}' for t in all_t)}")
    d = dict(rows)
    print(f"ratio sampled dense/kspace (forward+backward): {d['sampled/dense, 15 configurations'] / d['sampled/kspace, 15 configurations']:.2f}×")
    print(f"ratio sampling-only dense/kspace: {d['sampling only/dense (Cholesky + solves + backward)'] / d['sampling only/kspace']:.1f}×")
    print(f"ratio sampled/kspace / exact: {d['sampled/kspace, 15 configurations'] / d['exact, full 81³ grid']:.1f}×")
    if not args.skip_large:
        big = sampled("kspace", repeats=20)
        med, all_t = timed(big, max(1, args.repeats - 1))
        print(f"{'sampled/kspace, 32,000 atoms, 15 configurations':<55s} median {med:8.3f} s   runs "
              f"{', '.join(f'{t:.3f}' for t in all_t)}")


if __name__ == "__main__":
    main()
