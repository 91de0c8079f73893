"""Anharmonic TDS against molecular dynamics (issue 32): MD truth, harmonic and anharmonic fits.

For each case (element, temperature) a Langevin MD of a 5×5×5 supercell of conventional cells
(500 atoms) with asap3's EMT (xtds.md.run_md), the exact mean intensity of its frames on the
paper's 81³ grid (xtds.md.md_intensity, finufft), the covariance-defined effective constants
k_BT C(k)⁻¹ on the 5-shell basis with their split-half errors (xtds.md.effective_constants, the
rms over three splits of the frames) and the cumulants measured from the frames
(xtds.md.measured_cumulants). Then the volume is fitted with the exact harmonic model and with
the anharmonic one (site K₄, K₄ of shells 1–4 and the cubic bond constants of shells 1–2),
both with 8 shells of harmonic constants (the fit must reach as far as the crystal's effective
constants do; the targets stay on the 5-shell basis and the first shells are compared by name),
side by side, and the table printed: each constant's effective value, both fits' bias (%) and
z = (fit − effective)/√(σ_fit² + σ_split²), the fitted and the measured cumulants, the times and
the nested-model comparison (Δχ², ΔBIC).

    python benchmarks/anharmonic_md.py [--cases Ni:300,Ni:1200,Cu:300,Cu:950] [--frames 3000]
        [--shells 8] [--target-shells 5] [--loss chi2] [--out out/anharmonic_md] [--paper-harmonic 40]

MD runs and volumes are cached in --out (delete them to rerun). About 5 minutes per case on a
2-core machine with 3000 frames (MD under 1 min, intensities 1.5 min, the fits 3 min; 20,000 frames
took 5, 9 and 3 min).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import xarray as xr

import xtds
from xtds import Anharmonic, AnharmonicIFC, IFCModel, TDSModel
from xtds.md import (
    Trajectory,
    effective_constants,
    equilibrium_lattice_constant,
    gaussian_intensity,
    md_intensity,
    measured_bond_constants,
    measured_cumulants,
    run_md,
)

SPLITS = 3
SHOWN = ("b0", "b1", "b2", "c0", "c1", "d0", "d1", "d2", "d3")


def case(element: str, T: float, frames: int, out: pathlib.Path, loss: str, shells: int, anh_shells: int,
         repeats: int = 5, n_max: int = 40, cubic_shells: int = 0, quartic_shells: int = 1,
         target_shells: int = 5) -> dict:
    tag = "" if (repeats, n_max) == (5, 40) else f"_L{repeats}_n{n_max}"
    tag += "" if frames == 3000 else f"_f{frames}"  # the cache is per run length too
    traj_path, vol_path = out / f"{element}{T:g}{tag}.npz", out / f"{element}{T:g}{tag}.nc"
    if traj_path.exists():
        traj = Trajectory.load(traj_path)
    else:
        a = equilibrium_lattice_constant(element)
        t = time.perf_counter()
        traj = run_md(xtds.Crystal.fcc(element, a=a), repeats, T, n_frames=frames, stride=20, seed=int(T),
                      progress=True)
        print(f"MD {element} {T:g} K: {time.perf_counter() - t:.0f} s")
        traj.save(traj_path)
    if vol_path.exists():
        ds = xr.open_dataset(vol_path).load()
    else:
        t = time.perf_counter()
        ds = md_intensity(traj, n_max, progress=True)
        print(f"intensities: {time.perf_counter() - t:.0f} s")
        ds.to_netcdf(vol_path)
    crystal = traj.crystal
    harm = IFCModel(crystal, shells=shells)
    # the targets on the basis (5 shells); the fits may reach further (their first shells
    # are compared by name): a fit whose shells stop short of the crystal's range absorbs the rest
    basis = harm if target_shells == shells else IFCModel(crystal, shells=target_shells)
    # split-half errors as the rms over three splits (halves; alternating quarters; eighths): a
    # single difference is itself uncertain by 75 %
    eff_force = effective_constants(traj, basis, splits=SPLITS)
    eff = effective_constants(traj, basis, metric="covariance", splits=SPLITS)
    on_fit_basis = eff_force if basis is harm else effective_constants(traj, harm)
    anh = AnharmonicIFC(crystal, shells=shells, anharmonic=Anharmonic(
        shells=anh_shells, quartic_shells=quartic_shells, cubic_shells=cubic_shells))
    cum = measured_cumulants(traj, anh)
    bond = measured_bond_constants(traj, anh)  # Ψ from every pair's K3 in the frames (first order)
    bond_residual = bond.pop("relative_residual", None)
    cum.update(bond)
    start = {n: 1.1 * v for n, v in on_fit_basis.as_dict().items()}  # 10 % off
    kw = dict(loss=loss, background=False) if loss == "chi2" else dict(loss=loss)
    fits, times = {}, {}
    for label, model in (("harmonic", harm), ("anharmonic", anh)):
        t = time.perf_counter()
        fits[label] = ds.tds.fit(model, initial=start, model=TDSModel(quantum=False), **kw)
        times[label] = time.perf_counter() - t
    cmp = xtds.compare_fits(fits["harmonic"], fits["anharmonic"])
    gauss = gaussian_reference(traj, ds, harm, start, kw)
    rows = []
    targets = {"force": eff_force, "cov": eff}
    for i, n in enumerate(basis.names):
        row = {"name": n, "effective": float(eff.phi[i]), "split_stderr": float(eff.stderr[i]),
               "effective_force": float(eff_force.phi[i]), "split_stderr_force": float(eff_force.stderr[i]),
               "gaussian": gauss[n]}
        for label, res in fits.items():
            v, s = float(res.ifc.sel(constant=n)), float(res.ifc_stderr.sel(constant=n))
            row[label] = v
            row[f"{label}_stderr"] = s
            for tname, tgt in targets.items():
                t, st = float(tgt.phi[i]), float(tgt.stderr[i])
                row[f"{label}_bias_pct_{tname}"] = 100 * (v / t - 1)
                row[f"{label}_z_{tname}"] = (v - t) / np.hypot(s, st)
                row[f"{label}_ok_{tname}"] = bool(abs(v - t) <= max(0.01 * abs(t), 2 * st)
                                                  and abs(row[f"{label}_z_{tname}"]) <= 3)
        rows.append(row)
    cumulants = {n: {"fit": float(fits["anharmonic"].ifc.sel(constant=n)),
                     "stderr": float(fits["anharmonic"].ifc_stderr.sel(constant=n)), "measured": cum[n]}
                 for n in anh.names[anh.n_harmonic :]}
    return {"element": element, "temperature": T, "frames": traj.n_frames, "shells": shells,
            "target_shells": target_shells,
            "lattice_constant": traj.crystal.parameters[0], "effective_residual": eff.residual,
            "effective_residual_force": eff_force.residual, "rows": rows, "cumulants": cumulants, "times": times,
            "bond_residual": bond_residual,
            "chi2_reduced": {k: json.loads(v.attrs["problems"])[0].get("chi2_reduced") for k, v in fits.items()},
            "comparison": {k: v for k, v in cmp.items() if k != "aic" and k != "bic"}}


def gaussian_reference(traj: Trajectory, ds: xr.Dataset, harm: IFCModel, start: dict, kw: dict) -> dict:
    """What a harmonic fit returns from a Gaussian crystal with the MD's own pair covariances
    (xtds.md.gaussian_intensity on the MD volume's grid, its σ), fitted like the MD volume. Its
    difference from the projected constants is the fit's truncation's, not anharmonicity's."""
    g = ds.copy()
    g["intensity"] = gaussian_intensity(traj, ds)["intensity"]
    res = g.tds.fit(harm, initial=start, model=TDSModel(quantum=False), **kw)
    return {n: float(res.ifc.sel(constant=n)) for n in harm.names}


def show(r: dict) -> str:
    lines = [f"\n### {r['element']} {r['temperature']:g} K ({r['frames']} frames, a = {r['lattice_constant']:.4f} Å; "
             f"fits with {r['shells']} shells, targets on {r['target_shells']}; "
             f"residual of the effective constants: {r['effective_residual']:.4f} in the pair covariances, "
             f"{r['effective_residual_force']:.3f} in k_BT C⁻¹)",
             "", "| constant | k_BT C(k)⁻¹ projected ± split (target A) | covariance-matched ± split (target B) | "
                 "Gaussian crystal with the MD's covariances, fitted | harmonic fit (bias % / z vs A; vs B) | "
                 "anharmonic fit (bias % / z vs A; vs B) |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if row["name"] not in SHOWN:
            continue
        cells = []
        for label in ("harmonic", "anharmonic"):
            mark = {t: "" if row[f"{label}_ok_{t}"] else " ✗" for t in ("force", "cov")}
            cells.append(f"{row[label]:.5f} ({row[f'{label}_bias_pct_force']:+.2f} % / {row[f'{label}_z_force']:+.1f}"
                         f"{mark['force']}; {row[f'{label}_bias_pct_cov']:+.2f} % / {row[f'{label}_z_cov']:+.1f}"
                         f"{mark['cov']})")
        lines.append(f"| {row['name']} | {row['effective_force']:.5f} ± {row['split_stderr_force']:.5f} | "
                     f"{row['effective']:.5f} ± {row['split_stderr']:.5f} | {row['gaussian']:.5f} | "
                     f"{cells[0]} | {cells[1]} |")
    shown = [row for row in r["rows"] if row["name"] in SHOWN]
    for label in ("harmonic", "anharmonic"):
        lines.append(f"\n{label}: within max(1 %, 2 split σ) with |z| ≤ 3 for "
                     f"{sum(row[f'{label}_ok_force'] for row in shown)} of {len(shown)} first-three-shell constants "
                     f"against A, {sum(row[f'{label}_ok_cov'] for row in shown)} against B (✗ marks the others).")
    lines += ["", "| cumulant | fitted | measured from the frames |", "|---|---|---|"]
    for n, c in r["cumulants"].items():
        lines.append(f"| {n} | {c['fit']:.3e} ± {c['stderr']:.1e} | {c['measured']:.3e} |")
    if r.get("bond_residual") is not None:
        lines += ["", "The measured p3 are the cubic bond constants whose first-order K3 best matches every "
                      f"pair's K3 in the frames; they leave {100 * r['bond_residual']:.1f} % of it (norm)."]
    t, c = r["times"], r["comparison"]
    lines += ["", f"Fit times: harmonic {t['harmonic']:.0f} s, anharmonic {t['anharmonic']:.0f} s "
                  f"(ratio {t['anharmonic'] / t['harmonic']:.2f}). {c['verdict']}."]
    if r.get("chi2_reduced"):
        x = r["chi2_reduced"]
        lines[-1] += f" Reduced χ²: harmonic {x['harmonic']:.2f}, anharmonic {x['anharmonic']:.2f}."
    return "\n".join(lines)


def paper_harmonic(n_max: int, anharmonic: Anharmonic) -> None:
    """The paper's noise-free (harmonic) Ni target fitted with the harmonic and the anharmonic model."""
    from xtds.datasets import paper_ni_ifcs, paper_ni_volume

    ds = paper_ni_volume(n_max)
    fits, times = {}, {}
    for label, settings in (("harmonic", TDSModel()), ("anharmonic", TDSModel(anharmonic=anharmonic))):
        t = time.perf_counter()
        fits[label] = ds.tds.fit("Ni", shells=5, initial=paper_ni_ifcs("starting"), model=settings)
        times[label] = time.perf_counter() - t
    h, a = fits["harmonic"], fits["anharmonic"]
    names = [str(n) for n in h.constant.values if not bool(h.derived.sel(constant=n))]
    diff = max(abs(float(a.ifc.sel(constant=n)) - float(h.ifc.sel(constant=n))) for n in names)
    cum = max(abs(float(a.ifc.sel(constant=n))) for n in a.constant.values if str(n)[:2] in ("k3", "k4", "p3"))
    print(f"\nThe paper's harmonic target (n_max {n_max}): constants anharmonic − harmonic at most {diff:.3g} eV/Å², "
          f"cumulants at most {cum:.3g}; fit times harmonic {times['harmonic']:.0f} s, anharmonic "
          f"{times['anharmonic']:.0f} s (ratio {times['anharmonic'] / times['harmonic']:.2f}). "
          f"{xtds.compare_fits(h, a)['verdict']}.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="Ni:300,Ni:1200,Cu:300,Cu:950")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--loss", default="chi2", choices=("chi2", "var_log"))
    ap.add_argument("--shells", type=int, default=8, help="shells of the fitted harmonic constants")
    ap.add_argument("--target-shells", type=int, default=5,
                    help="the basis of the effective constants (targets): the issue's 5 shells")
    ap.add_argument("--anharmonic-shells", type=int, default=0, help="shells with their own K3 tensors")
    ap.add_argument("--quartic-shells", type=int, default=4, help="shells with their own K4 tensors")
    ap.add_argument("--cubic-shells", type=int, default=2,
                    help="shells of cubic bond constants whose K3 reaches every pair (Anharmonic(cubic_shells=...))")
    ap.add_argument("--repeats", type=int, default=5, help="the supercell (5: 500 atoms of FCC)")
    ap.add_argument("--n-max", type=int, default=40, help="the grid reaches H = ±n_max/repeats")
    ap.add_argument("--paper-harmonic", type=int, default=None, metavar="N_MAX",
                    help="also fit the paper's noise-free harmonic target on this grid with both models")
    ap.add_argument("--out", default="out/anharmonic_md")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in filter(None, args.cases.split(",")):
        el, T = spec.split(":")
        r = case(el, float(T), args.frames, out, args.loss, args.shells, args.anharmonic_shells, args.repeats,
                 args.n_max, args.cubic_shells, args.quartic_shells, min(args.target_shells, args.shells))
        print(show(r), flush=True)
        results.append(r)
    if results:  # one file per setting and case list (n_max too), so that runs do not overwrite each other
        cases = args.cases.replace(":", "").replace(",", "-") + ("" if args.frames == 3000 else f"_f{args.frames}")
        tag = (f"{cases}_n{args.n_max}_{args.loss}_s{args.shells}_k{args.anharmonic_shells}_q{args.quartic_shells}"
               f"_p{args.cubic_shells}")
        (out / f"results_{tag}.json").write_text(json.dumps(results, indent=1, default=float))
        (out / f"table_{tag}.md").write_text("\n".join(show(r) for r in results) + "\n")
    if args.paper_harmonic is not None:
        settings = Anharmonic(shells=args.anharmonic_shells, quartic_shells=args.quartic_shells,
                              cubic_shells=args.cubic_shells)
        paper_harmonic(args.paper_harmonic, settings)


if __name__ == "__main__":
    main()
