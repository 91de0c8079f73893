"""Self-consistency of the ARCS Al fits: two independent estimates of one crystal's constants, from
two halves of one spectrum, must agree within their reported errors (issue 31).

    python benchmarks/al_arcs_consistency.py [--temperature 280] [--split 4.0] [--halves q|e]
        [--resolution chopper:40,20 | resins:ARCS-100-1.5-AST:600] [--linewidths] [--mesh 12]

The spectrum's valid pixels are split at |Q| = ``--split`` Å⁻¹ (``--halves q``) or at the median
energy transfer (``--halves e``); each half is fitted alone (the model, resolution and nuisance terms
of ``benchmarks/al_arcs.py``: χ² with σ 0.05 or the noise map (``--sigma map``), a free scale and
constant, the options' angle and energy backgrounds, errors scaled by χ²ᵣ where
it exceeds 1, and the robust errors beside them). Printed: each constant from each half with its
error, and z = (a − b)/√(σ_a² + σ_b²) with both kinds of error.
"""

from __future__ import annotations

import argparse

import numpy as np
from al_arcs import (
    add_nuisance_arguments,
    background_of,
    constraints_of,
    model_and_start,
    resolution_of,
    screened,
    sigma_of,
)

from xtds.datasets import al_arcs
from xtds.fitting import LM
from xtds.fitting.fit import fit_problems
from xtds.fitting.problem import Problem
from xtds.observables.neutron.powder import PowderSpectrum


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--temperature", type=float, default=280.0)
    ap.add_argument("--split", type=float, default=4.0, help="|Q| (Å⁻¹) between the halves")
    ap.add_argument("--halves", default="q", choices=("q", "e"))
    ap.add_argument("--resolution", default="chopper:40,20")
    ap.add_argument("--linewidths", nargs="?", const="1", default=None, metavar="POWERS",
                    help="linewidth powers of ε as in al_arcs.py (default 1)")
    ap.add_argument("--q-resolution", type=float, default=None)
    ap.add_argument("--mesh", type=int, default=12)
    ap.add_argument("--shells", type=int, default=2, help="neighbour shells of the Born–von Kármán model")
    add_nuisance_arguments(ap)
    args = ap.parse_args(argv)
    ds = al_arcs()
    valid = ds["valid"].values
    model, start = model_and_start(args.linewidths, args.shells, args.linewidth_law, args.linewidth_branches)
    chi = ds["chi"].sel(temperature=args.temperature).values
    Q, E = ds["Q"].values, ds["E"].values
    valid, clipped = screened(args, chi, valid, E, Q)
    if args.halves == "q":
        parts = {"low |Q|": valid & (Q < args.split)[None, :], "high |Q|": valid & (Q >= args.split)[None, :]}
    else:
        cut = float(np.median(np.broadcast_to(E[:, None], valid.shape)[valid]))
        parts = {"low E": valid & (E < cut)[:, None], "high E": valid & (E >= cut)[:, None]}
    out = {}
    for name, mask in parts.items():
        obs = PowderSpectrum(model, Q, E, args.temperature, mask=mask, resolution=resolution_of(args), mesh=args.mesh,
                             normalize=False, q_resolution=args.q_resolution)
        data = chi[mask]
        sigma = np.full(valid.shape, np.nan)
        sigma[valid] = sigma_of(args, chi, valid, clipped)  # the whole spectrum's noise, each half's pixels
        prob = Problem(obs, data, sigma=sigma[mask], loss="chi2", background=background_of(args, ds.attrs),
                       censored=-clipped[mask].astype(int))
        res = fit_problems([prob], start, optimizer=LM(progress=False), constraints=constraints_of(args, model))
        names = list(model.names)
        out[name] = (res["ifc"].sel(constant=names).values, res["ifc_stderr"].sel(constant=names).values,
                     res["ifc_stderr_robust"].sel(constant=names).values if "ifc_stderr_robust" in res else None,
                     float(np.mean((data - res["model_intensity"].values)[~clipped[mask]] ** 2)), int(mask.sum()))
    (a, sa, ra, la, na), (b, sb, rb, lb, nb) = out.values()
    how = f"|Q| at {args.split:g} Å⁻¹" if args.halves == "q" else "energy"
    print(f"{args.temperature:g} K, halves by {how}, "
          f"resolution {args.resolution}{', linewidths' if args.linewidths else ''}")
    print(f"  {list(out)[0]}: {na} pixels, mean squared residual {la:.5f}; {list(out)[1]}: {nb} pixels, {lb:.5f}")
    print(f"  {'':7s} {list(out)[0]:>18s} {list(out)[1]:>18s} {'z':>6s} {'z robust':>9s}")
    zs, zr = [], []
    for i, n in enumerate(model.names):
        z = (a[i] - b[i]) / np.hypot(sa[i], sb[i])
        r = (a[i] - b[i]) / np.hypot(ra[i], rb[i]) if ra is not None else np.nan
        zs.append(z)
        zr.append(r)
        print(f"  {n:7s} {a[i]:+.4f} ± {sa[i]:.4f}  {b[i]:+.4f} ± {sb[i]:.4f} {z:6.1f} {r:9.1f}")
    print(f"  max |z| {np.max(np.abs(zs)):.1f} (robust errors: {np.nanmax(np.abs(zr)):.1f})")
    return zs, zr


if __name__ == "__main__":
    main()
