"""Simulated powder spectra with known linewidths, incoherent scattering, instrument resolution and
background, fitted back over many noise draws: are the parameters recovered, and do the reported
68 % intervals hold the truth 68 % of the time? (issue 31)

    python benchmarks/simulated_recovery.py [--draws 100] [--element Ni] [--temperature 600]
        [--noise 0.02] [--mesh 8] [--out DIR]

The truth: a 2-shell fcc model (Ni by default: coherent and incoherent, σ_inc/σ_coh = 0.39), its
powder S(|Q|, E) with the incoherent one-phonon and the two- and three-phonon terms, phonon
linewidths Γ = γ₁ (ε/10 meV)(T/300 K), the ARCS resolution at Eᵢ = 50 meV from resins (PyChop's
model, package ARCS-100-1.5-AST at 600 Hz: not a resolution of xtds's own), ARCS's kinematic
coverage, an overall scale and a constant background. Each draw adds Gaussian noise (``--noise``
× the largest value, the same σ at every pixel) and fits the constants, γ₁, the scale and the
background from 5 % off the truth. Printed: the mean and spread of each parameter's z-score, the
fraction of draws whose 68 % interval (±1σ reported) holds the truth, and the fit time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import xtds
from xtds.fitting.fit import fit_problems
from xtds.fitting.problem import Problem
from xtds.observables.neutron.linewidth import LinewidthIFC, Linewidths
from xtds.observables.neutron.powder import PowderSpectrum
from xtds.observables.neutron.resolution import instrument_resolution
from xtds.observables.neutron.sqe import direct_geometry_coverage

SPRINGS = {"Ni": {1: 3.8, 2: 0.25}, "Cu": {1: 2.9, 2: 0.15}, "Al": {1: 1.6, 2: 0.3}}


def setup(element: str, temperature: float, mesh: int):
    """(observable, truth dict, names) of the simulated problem."""
    base = xtds.IFCModel(xtds.Crystal.preset(element), shells=2)
    model = LinewidthIFC.of(base, Linewidths())
    truth = dict(zip(base.names, base.central_force(SPRINGS[element]), strict=True))
    truth["gamma1"] = 0.25
    Q = np.arange(2.0, 7.01, 0.1)
    E = np.arange(5.0, 40.01, 0.5)
    mask = direct_geometry_coverage(50.0, E, Q)
    res = instrument_resolution("ARCS", 50.0, chopper_package="ARCS-100-1.5-AST", chopper_frequency=600)
    obs = PowderSpectrum(model, Q, E, temperature, mask=mask, resolution=res, mesh=mesh, kind="sqe",
                         normalize=False, multiphonon=(2, 3), multiphonon_mesh=8, reference=truth)
    return obs, truth, list(model.names)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--element", default="Ni", choices=sorted(SPRINGS))
    ap.add_argument("--temperature", type=float, default=600.0)
    ap.add_argument("--noise", type=float, default=0.02, help="noise σ as a fraction of the largest value")
    ap.add_argument("--mesh", type=int, default=8)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--background", type=float, default=0.05, help="constant, as a fraction of the largest value")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    obs, truth, names = setup(args.element, args.temperature, args.mesh)
    phi = obs.model.vector(truth)
    with torch.no_grad():
        clean0 = obs(phi).numpy()
    top = float(clean0.max())
    bg = args.background * top * args.scale
    clean = args.scale * clean0 + bg
    sigma = np.full(len(clean), args.noise * float(clean.max()))
    rng = np.random.default_rng(args.seed)
    start = {n: 0.95 * v for n, v in truth.items()}
    true_all = np.array([truth[n] for n in names] + [args.scale, bg])
    labels = names + ["scale", "background"]
    zs, times, chi2 = [], [], []
    for d in range(args.draws):
        data = clean + sigma * rng.standard_normal(len(clean))
        t0 = time.perf_counter()
        res = fit_problems([Problem(obs, data, sigma=sigma, loss="chi2", background="constant")], start,
                           optimizer=xtds.LM(progress=False))
        times.append(time.perf_counter() - t0)
        got = np.concatenate([res["ifc"].sel(constant=names).values,
                              [float(res["scale"]), float(res["background"])]])
        err = np.concatenate([res["ifc_stderr"].sel(constant=names).values,
                              [float(res["scale_stderr"]), float(res["background_stderr"])]])
        zs.append((got - true_all) / err)
        chi2.append(float(json.loads(res.attrs["problems"])[0].get("chi2_reduced", np.nan)))
        if d == 0:
            print("first draw:", {k: f"{g:.5g} ± {e:.2g} (truth {t:.5g})" for k, g, e, t
                                  in zip(labels, got, err, true_all, strict=True)})
    z = np.array(zs)
    cover = (np.abs(z) <= 1).mean(0)
    table = {k: {"z_mean": float(z[:, i].mean()), "z_std": float(z[:, i].std(ddof=1)) if len(z) > 1 else np.nan,
                 "coverage_68": float(cover[i]), "max_abs_z": float(np.abs(z[:, i]).max())}
             for i, k in enumerate(labels)}
    print(f"{args.element} {args.temperature:g} K, {args.draws} draws, noise {args.noise:g} of the peak, "
          f"{int(obs.mask.sum())} pixels; fit time median {np.median(times):.2f} s")
    print(f"{'parameter':>12} {'z mean':>8} {'z std':>7} {'68% cover':>10} {'max|z|':>7}")
    for k, v in table.items():
        print(f"{k:>12} {v['z_mean']:8.3f} {v['z_std']:7.3f} {v['coverage_68']:10.2f} {v['max_abs_z']:7.2f}")
    print(f"reduced chi2: median {np.nanmedian(chi2):.3f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "simulated_recovery.json").write_text(json.dumps(
            {"args": vars(args), "table": table, "fit_seconds_median": float(np.median(times)),
             "chi2_reduced_median": float(np.nanmedian(chi2))}, indent=1))
    return table


if __name__ == "__main__":
    main()
