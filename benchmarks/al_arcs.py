"""Force constants of aluminium from the measured ARCS powder spectra (xtds.datasets.al_arcs).

For each temperature: the gradient (Levenberg–Marquardt) fit of the five constants of a 2-shell
Born–von Kármán model (b0, b1, b2, c0, c1) to χ''(|Q|, E) at the 4,144 valid pixels (coherent
one phonon from a k-mesh, multiphonon n = 2…6 unless ``--no-multiphonon``), with a free scale and
constant (the data are normalized by the source; ``--normalize`` instead applies the source's
normalization to the model), from the published constants of Gilat & Nicklow (1966, 300 K); then,
with ``--nelder-mead N``, a Nelder–Mead fit (scipy) of the same model and loss (scale and constant
profiled out by least squares) from the same start with at most N evaluations, side by side: loss,
evaluations, wall time. Prints the constants against temperature with their errors and the X and
L frequencies against the measured ones.

    python benchmarks/al_arcs.py [--temperatures 50,150,280,450,640] [--mesh 12] [--nelder-mead 300]
        [--no-multiphonon] [--normalize] [--fwhm 2.0]

Not yet in the model: an instrument resolution from a documented source (a constant FWHM,
``--fwhm`` meV, stands in).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import xtds
from xtds import dynamics
from xtds.datasets import al_arcs
from xtds.fitting import LM
from xtds.fitting.core import fit_problems
from xtds.fitting.problem import Problem
from xtds.model.powder import PowderSpectrum

#: 1 N/m in eV/Å².
EV_PER_A2_PER_N_PER_M = 0.0624150907

#: Gilat & Nicklow 1966 (300 K), N/m, in their sign convention (stiff springs positive), and the
#: measured frequencies (THz), as in the data's README (../shared/data).
GILAT_NICKLOW = {"1NN xx": 9.808, "1NN zz": -1.616, "1NN xy": 11.424, "2NN xx": 2.494, "2NN yy": -0.515}
MEASURED_THZ = {"X T": 5.78, "X L": 9.69, "L T": 4.19, "L L": 9.69}

#: Pixel σ of the normalized spectra used in χ² (a uniform weight: the source gives no errors).
SIGMA = 0.05


def start_constants() -> dict:
    g, f = GILAT_NICKLOW, EV_PER_A2_PER_N_PER_M
    return {"b0": -g["1NN xx"] * f, "b1": -g["1NN zz"] * f, "b2": -g["1NN xy"] * f, "c0": -g["2NN xx"] * f,
            "c1": -g["2NN yy"] * f}


def x_and_l(model, phi) -> dict:
    a = float(model.crystal.lattice[0][0])
    X = np.array([[2 * np.pi / a, 0, 0]])
    L = np.array([[np.pi / a] * 3])
    fx, fl = (dynamics.frequencies(model, torch.as_tensor(phi), k).detach().numpy()[0] for k in (X, L))
    return {"X T": fx[0], "X L": fx[2], "L T": fl[0], "L L": fl[2]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--temperatures", default="50,150,280,450,640")
    ap.add_argument("--mesh", type=int, default=12)
    ap.add_argument("--fwhm", type=float, default=2.0, help="energy resolution FWHM, meV (constant)")
    ap.add_argument("--nelder-mead", type=int, default=0, help="also fit by Nelder–Mead with at most N evaluations")
    ap.add_argument("--no-multiphonon", action="store_true", help="leave out the n ≥ 2 terms")
    ap.add_argument("--normalize", action="store_true", help="normalize the model as the source (no scale, constant)")
    ap.add_argument("--max-iter", type=int, default=50, help="Levenberg–Marquardt iterations at most")
    ap.add_argument("--plot", default=None, help="folder for figures: measured vs fitted spectra, constants vs T")
    args = ap.parse_args()
    ds = al_arcs()
    valid = ds["valid"].values
    model = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=2)
    start = start_constants()
    rows = []
    for T in (float(t) for t in args.temperatures.split(",")):
        data = ds["chi"].sel(temperature=T).values[valid]
        obs = PowderSpectrum(model, ds["Q"].values, ds["E"].values, T, mask=valid, resolution=args.fwhm,
                             mesh=args.mesh, normalize=args.normalize,
                             multiphonon=() if args.no_multiphonon else (2, 3, 4, 5, 6))
        prob = Problem(obs, data, sigma=np.full(len(data), SIGMA), loss="chi2",
                       background=None if args.normalize else "constant")

        def fitted_of(x, obs=obs, data=data):
            with torch.no_grad():
                y = obs(torch.as_tensor(x, dtype=torch.float64)).numpy()
            if np.all(np.isfinite(y)) and not args.normalize:  # the best scale and constant, by least squares
                A = np.stack([y, np.ones_like(y)], 1)
                y = A @ np.linalg.lstsq(A, data, rcond=None)[0]
            return y

        def loss_of(x, data=data, fitted_of=fitted_of):
            y = fitted_of(x)
            return float(((y - data) ** 2).sum()) if np.all(np.isfinite(y)) else 1e6

        calls = [0]
        spectrum = obs.spectrum

        def counted(phi, calls=calls, spectrum=spectrum):
            calls[0] += 1
            return spectrum(phi)

        obs.spectrum = counted
        t = time.perf_counter()
        res = fit_problems([prob], start, optimizer=LM(max_iter=args.max_iter), progress=False)
        t_fit = time.perf_counter() - t
        obs.spectrum = spectrum
        phi = res["ifc"].sel(constant=list(model.names)).values
        loss = loss_of(phi)
        row = {"T": T, "phi": phi, "err": res["ifc_stderr"].sel(constant=list(model.names)).values, "loss": loss,
               "time": t_fit, "freq": x_and_l(model, phi), "fitted": fitted_of(phi), "data": data}
        print(f"{T:5.0f} K  gradient: loss {loss:.4f} (sum of squares) in {t_fit:.1f} s, "
              f"{calls[0]} model evaluations, {res.attrs['iterations']} iterations; "
              + ", ".join(f"{n} {v:+.4f}±{e:.4f}" for n, v, e in zip(model.names, row["phi"], row["err"], strict=True)),
              flush=True)
        print("        X, L (THz): " + ", ".join(f"{k} {v:.2f} (measured {MEASURED_THZ[k]})"
                                                  for k, v in row["freq"].items()), flush=True)
        if args.nelder_mead:
            from scipy.optimize import minimize

            n_eval = [0]

            def f(x, n_eval=n_eval, loss_of=loss_of):
                n_eval[0] += 1
                return loss_of(x)

            x0 = model.vector(start).numpy()
            t = time.perf_counter()
            try:
                nm = minimize(f, x0, method="Nelder-Mead", options={"maxfev": args.nelder_mead, "xatol": 1e-5,
                                                                   "fatol": 1e-8})
                nm_loss, nm_x = nm.fun, nm.x
            except xtds.UnstableError:
                nm_loss, nm_x = float("nan"), x0
            t_nm = time.perf_counter() - t
            row.update(nm_loss=nm_loss, nm_time=t_nm, nm_evals=n_eval[0])
            print(f"        Nelder–Mead: loss {nm_loss:.4f} after {n_eval[0]} evaluations in {t_nm:.1f} s "
                  f"(gradient fit {t_nm / t_fit:.1f}× faster); constants " + ", ".join(f"{v:+.4f}" for v in nm_x),
                  flush=True)
        rows.append(row)
    if args.plot:
        plot(rows, ds, model.names, args.plot)
    print("\nT (K) | " + " | ".join(model.names) + " | loss")
    for r in rows:
        print(f"{r['T']:.0f} | " + " | ".join(f"{v:+.4f}±{e:.4f}" for v, e in zip(r["phi"], r["err"], strict=True))
              + f" | {r['loss']:.4f}")


def plot(rows, ds, names, folder):
    """measured vs fitted spectra (one row per temperature) and the constants against T."""
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    valid = ds["valid"].values
    extent = (float(ds["Q"][0]), float(ds["Q"][-1]), float(ds["E"][0]), float(ds["E"][-1]))
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 2.6 * len(rows)), squeeze=False, sharex=True, sharey=True)
    for (a, b), r in zip(axes, rows, strict=True):
        for ax, vals, what in ((a, r["data"], "measured"), (b, r["fitted"], "fitted")):
            img = np.full(valid.shape, np.nan)
            img[valid] = vals
            ax.imshow(img, origin="lower", aspect="auto", extent=extent, vmin=-0.3, vmax=0.7)
            ax.set_title(f"{r['T']:.0f} K, {what}", fontsize=9)
        a.set_ylabel("E (meV)")
    for ax in axes[-1]:
        ax.set_xlabel("|Q| (1/Å)")
    fig.tight_layout()
    fig.savefig(out / "al_arcs_spectra.png", dpi=110)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    T = [r["T"] for r in rows]
    for j, n in enumerate(names):
        ax.errorbar(T, [r["phi"][j] for r in rows], yerr=[r["err"][j] for r in rows], marker="o", capsize=3, label=n)
    ax.set_xlabel("T (K)")
    ax.set_ylabel("force constant (eV/Å²)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "al_arcs_constants.png", dpi=110)
    print(f"figures in {out}/al_arcs_spectra.png, {out}/al_arcs_constants.png")


if __name__ == "__main__":
    main()
