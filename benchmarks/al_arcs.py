"""Force constants of aluminium from the measured ARCS powder spectra (xtds.datasets.al_arcs).

For each temperature: the gradient (Levenberg–Marquardt) fit of the five constants of a 2-shell
Born–von Kármán model (b0, b1, b2, c0, c1) to χ''(|Q|, E) at the 4,144 valid pixels (coherent
one phonon from a k-mesh reduced by the Laue group, multiphonon n = 2…6 unless
``--no-multiphonon``), with a free scale and constant (and ``--energy-background N`` Chebyshev
terms in E; the data are normalized by the source, ``--normalize`` instead applies the source's
normalization to the model), from the published constants of Gilat & Nicklow (1966, 300 K); then,
with ``--nelder-mead N``, a Nelder–Mead fit (scipy) of the same loss over the same parameters from
the same start, side by side: loss, evaluations, wall time; with ``--multiphonon-check`` also the
fit without the multiphonon terms. Prints the constants against temperature with their errors and
the X and L frequencies against the measured ones; ``--plot DIR`` writes the figures.

    python benchmarks/al_arcs.py [--temperatures 50,150,280,450,640] [--mesh 12] [--nelder-mead 5000]
        [--resolution chopper:40,20] [--multiphonon-check] [--plot DIR]

The energy resolution (default ``chopper:40,20``) is the chopper model of
:func:`xtds.observables.neutron.sqe.chopper_resolution` (ARCS flight paths, Ei = 50 meV) with the moderator
and chopper timing widths 40 and 20 μs, calibrated on the 50 K spectrum: the gradient fit's loss
there for widths (15, 7.5), (20, 10), (30, 15), (40, 20), (60, 30), (80, 40) μs was 21.79, 21.32,
20.81, 20.65, 20.74, 21.00 (measured with a scratch script looping over ``--resolution``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import xtds
from xtds.datasets import al_arcs
from xtds.fitting import LM, Background
from xtds.fitting.fit import fit_problems
from xtds.fitting.problem import Problem
from xtds.lattice import dynamics
from xtds.observables.neutron.powder import PowderSpectrum
from xtds.observables.neutron.sqe import chopper_resolution

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


def resolution_of(args):
    """The energy resolution of ``--resolution``: a constant FWHM, the chopper model, or PyChop's
    model through resins (``resins:PACKAGE:FREQUENCY``)."""
    if args.resolution.startswith("resins:"):
        from xtds.observables.neutron.resolution import resolution_from_attrs

        package, freq = args.resolution.split(":", 1)[1].rsplit(":", 1)
        return resolution_from_attrs(al_arcs().attrs, chopper_package=package, chopper_frequency=int(freq))
    if args.resolution.startswith("chopper:"):
        tm, tc = (float(x) for x in args.resolution.split(":", 1)[1].split(","))
        return chopper_resolution(float(al_arcs().attrs.get("incident_energy_meV", 50.0)), tm, tc)
    return float(args.resolution)


def sigma_of(args, chi: np.ndarray, valid: np.ndarray, clipped: np.ndarray | None = None) -> np.ndarray:
    """σ of each valid pixel for the χ²: ``--sigma map`` the noise the spectrum shows by itself,
    pixel by pixel (xtds.observables.neutron.screen.noise_map from the pixels not ``clipped``: it
    varies 2.6× across these maps), or one number for every pixel (the source gives no errors)."""
    if args.sigma == "map":
        from xtds.observables.neutron.screen import noise_map

        clipped = np.zeros_like(valid) if clipped is None else clipped
        return noise_map(chi, valid & ~clipped, where=valid)[valid]
    return np.full(int(valid.sum()), float(args.sigma))


def screened(args, chi: np.ndarray, valid: np.ndarray, E, Q) -> tuple[np.ndarray, np.ndarray]:
    """(the pixels to fit, the clipped ones among them): with ``--screen`` the valid pixels less
    the outlying pixels and rows that xtds.observables.neutron.screen.screen_spectrum names, and
    less its clipped pixels (the source set negative intensities to its floor: 200–238 per
    temperature) — or, with ``--censored``, those kept as censored points; its report is printed."""
    none = np.zeros_like(valid)
    if not args.screen:
        return valid, none
    from xtds.observables.neutron.screen import screen_spectrum

    sc = screen_spectrum(chi, E, Q, mask=valid)
    clipped = sc.clipped_mask
    print(f"        screen: {len(sc.clipped)} clipped ({'censored' if args.censored else 'left out'}), "
          f"{len(sc.pixels)} outlying pixels, {len(sc.rows)} rows left out", flush=True)
    return (sc.mask | clipped, clipped) if args.censored else (sc.mask, none)


def constraints_of(args, model):
    """``--far-prior σ``: a Gaussian prior (0, σ) on each free constant of the shells beyond the
    second (the long-range springs a powder spectrum determines only in combination), else None."""
    if args.far_prior is None:
        return None
    far = [i.name for i in model.info if i.shell > 2 and not i.derived and i.name in model.names]
    return xtds.Constraints(priors={n: (0.0, float(args.far_prior)) for n in far}) if far else None


def background_of(args, attrs) -> Background:
    """The nuisance terms: a constant, ``--energy-background`` Chebyshev terms in E and, with
    ``--angle-background N[,M]``, N terms in the scattering angle 2θ and N × M angle × energy
    products (the incident energy from the data's attrs)."""
    n, m = (int(x) for x in (args.angle_background + ",0").split(",")[:2])
    Ei = float(attrs.get("incident_energy_meV", 50.0))
    return Background(energy=args.energy_background, angle=n, angle_energy=m, incident_energy=Ei if n else None)


def add_nuisance_arguments(ap) -> None:
    """The options of the nuisance terms and σ shared with the other ARCS benchmarks."""
    ap.add_argument("--energy-background", type=int, default=0,
                    help="Chebyshev terms in the energy transfer added to the scale and constant")
    ap.add_argument("--angle-background", default="0", metavar="N[,M]",
                    help="Chebyshev terms in the scattering angle (N) and their products with M terms in E")
    ap.add_argument("--sigma", default=str(SIGMA),
                    help="pixel σ of the χ²: a number, or 'map' for the noise the spectrum shows pixel by pixel")
    ap.add_argument("--far-prior", type=float, default=None, metavar="SIGMA",
                    help="Gaussian prior (0, SIGMA eV/Å²) on every constant beyond the second shell")
    ap.add_argument("--linewidth-law", default="linear", choices=("linear", "klemens"),
                    help="temperature law of the linewidths: Γ ∝ T, or ∝ 1 + 2n(ε/2) (Klemens; finite at T → 0)")
    ap.add_argument("--linewidth-branches", action="store_true",
                    help="separate linewidths of the transverse and longitudinal modes (gamma1_T, gamma1_L)")
    ap.add_argument("--screen", action="store_true",
                    help="leave out the pixels screen_spectrum names (clipped, outlying) and the rows it names")
    ap.add_argument("--censored", action="store_true",
                    help="with --screen, keep the clipped pixels as censored points (Problem(censored=...))")


def model_and_start(linewidths: bool | str | None = None, shells: int = 2, law: str = "linear",
                    branches: bool = False):
    """The Al model of ``shells`` shells (with linewidths if asked: True or "1" for Γ ∝ ε T, "0,1"
    for powers 0 and 1 of ε, …; ``law`` their temperature law, ``Linewidths(temperature_law=...)``;
    ``branches``: separate widths of the transverse and longitudinal modes)
    and its start: Gilat & Nicklow's constants for the first two shells, 0 beyond (each γ_p = 0.1 meV)."""
    model = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=shells)
    start = {n: start_constants().get(n, 0.0) for n in model.names}
    if linewidths:
        from xtds.observables.neutron.linewidth import LinewidthIFC, Linewidths

        powers = (1,) if linewidths is True else tuple(int(p) for p in str(linewidths).split(","))
        lw = Linewidths(powers=powers, temperature_law=law, branches=branches)
        model = LinewidthIFC.of(model, lw)
        start = {**start, **{n: 0.1 for n in lw.names}}
    return model, start


def x_and_l(model, phi, cov=None) -> dict:
    """The transverse and longitudinal frequencies (THz) at X and L; with ``cov`` (the constants'
    covariance, free constants only) also their standard errors, as "X T σ" etc."""
    a = float(model.crystal.lattice[0][0])
    k = torch.tensor([[2 * np.pi / a, 0, 0], [np.pi / a] * 3], dtype=torch.float64)

    def four(p):
        f = dynamics.frequencies(model, p, k)
        return torch.stack([f[0, 0], f[0, 2], f[1, 0], f[1, 2]])

    p = torch.as_tensor(np.asarray(phi, dtype=float))
    out = dict(zip(("X T", "X L", "L T", "L L"), four(p).detach().numpy().tolist(), strict=True))
    if cov is not None:
        J = torch.autograd.functional.jacobian(four, p).numpy()
        sd = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", J, cov, J), 0, None))
        out.update({f"{n} σ": float(v) for n, v in zip(("X T", "X L", "L T", "L L"), sd, strict=True)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--temperatures", default="50,150,280,450,640")
    ap.add_argument("--mesh", type=int, default=12, help="k-mesh steps per reciprocal axis (powder_points)")
    ap.add_argument("--resolution", default="chopper:40,20",
                    help="energy resolution: a constant FWHM in meV, or 'chopper:TM,TC' (moderator and chopper timing "
                         "widths in μs of xtds.observables.neutron.sqe.chopper_resolution at Ei = 50 meV, ARCS "
                         "flight paths), or 'resins:PACKAGE:HZ' (PyChop's ARCS model through resins, e.g. "
                         "resins:ARCS-100-1.5-AST:600)")
    ap.add_argument("--linewidths", nargs="?", const="1", default=None, metavar="POWERS",
                    help="fit phonon linewidths Γ = (T/300 K) Σ_p γ_p (ε/10 meV)^p with the constants (LinewidthIFC); "
                         "POWERS the p, default 1 (Γ ∝ εT); e.g. 0,1")
    ap.add_argument("--no-incoherent", action="store_true", help="leave out the incoherent scattering")
    ap.add_argument("--shells", type=int, default=2, help="neighbour shells of the Born–von Kármán model")
    ap.add_argument("--q-resolution", type=float, default=None, help="|Q| resolution FWHM, 1/Å (default none)")
    add_nuisance_arguments(ap)
    ap.add_argument("--nelder-mead", type=int, default=0, help="also fit by Nelder–Mead with at most N evaluations")
    ap.add_argument("--no-multiphonon", action="store_true", help="leave out the n ≥ 2 terms")
    ap.add_argument("--multiphonon-check", action="store_true",
                    help="also fit without the n ≥ 2 terms at each temperature and print both losses")
    ap.add_argument("--normalize", action="store_true", help="normalize the model as the source (no scale, constant)")
    ap.add_argument("--max-iter", type=int, default=50, help="Levenberg–Marquardt iterations at most")
    ap.add_argument("--stop-sigma", type=float, default=1e-3,
                    help="LM stops once its next step is below this many standard errors (0: the tolerances alone)")
    ap.add_argument("--starts", type=int, default=1,
                    help="gradient fits from this many starting points (the published constants and random "
                         "scalings of them), keeping the lowest loss")
    ap.add_argument("--start-spread", type=float, default=0.2, help="relative scatter of the extra starts")
    ap.add_argument("--joint", type=int, default=None, metavar="DEGREE",
                    help="also fit all temperatures at once, the constants a polynomial of this degree in T "
                         "(xtds.fitting.fit_joint_series), and print the coefficients (a₁: the softening rate)")
    ap.add_argument("--joint-shared", default="", metavar="NAMES",
                    help="with --joint, parameters with one value for all temperatures (e.g. gamma1: the "
                         "linewidths, whose temperature law is in the model)")
    ap.add_argument("--jacobian", default="auto", choices=("auto", "exact", "differences"),
                    help="LM's Jacobians: exact (forward mode, with a secant second-order term) or finite differences")
    ap.add_argument("--plot", default=None, help="folder for figures: measured vs fitted spectra, constants vs T, "
                                                  "the fitted dispersions against the measured X and L phonons")
    ap.add_argument("--save", default=None, help="write the table (constants, errors, losses, times) to this JSON")
    args = ap.parse_args()
    if args.sigma == "map" and (args.starts > 1 or args.multiphonon_check or args.nelder_mead):
        ap.error("--starts, --multiphonon-check and --nelder-mead compare losses of a uniform σ: "
                 "use them without --sigma map")
    if args.joint is not None and args.censored:
        ap.error("--joint compares χ² of measured points: use it without --censored")
    ds = al_arcs()
    valid = ds["valid"].values
    model, start = model_and_start(args.linewidths, args.shells, args.linewidth_law, args.linewidth_branches)
    rows = []
    for T in (float(t) for t in args.temperatures.split(",")):
        chi = ds["chi"].sel(temperature=T).values
        mask, clipped = screened(args, chi, valid, ds["E"].values, ds["Q"].values)
        data = chi[mask]
        # the time a user waits: from building the observable (its Q-points, k-orbits, adaptive widths at
        # the first evaluation) to the result (covariance, dispersion, DOS, elastic constants), torch's
        # lazy imports included on the first temperature
        t = time.perf_counter()
        obs = PowderSpectrum(model, ds["Q"].values, ds["E"].values, T, mask=mask, resolution=resolution_of(args),
                             mesh=args.mesh, normalize=args.normalize, q_resolution=args.q_resolution,
                             multiphonon=() if args.no_multiphonon else (2, 3, 4, 5, 6),
                             incoherent=not args.no_incoherent)
        prob = Problem(obs, data, sigma=sigma_of(args, chi, mask, clipped), loss="chi2",
                       background=False if args.normalize else background_of(args, ds.attrs),
                       censored=-clipped[mask].astype(int))

        calls = [0, 0]  # plain evaluations, evaluations with the Jacobian (forward mode, one batch of tangents)
        spectrum = obs.spectrum

        def counted(phi, calls=calls, spectrum=spectrum):
            calls[int(torch._C._functorch.is_functorch_wrapped_tensor(phi))] += 1
            return spectrum(phi)

        obs.spectrum = counted
        optimizer = LM(max_iter=args.max_iter, jacobian=args.jacobian, stop_sigma=args.stop_sigma or None,
                       progress=False)
        res = fit_problems([prob], start, starts=args.starts, start_spread=args.start_spread, optimizer=optimizer,
                           constraints=constraints_of(args, model))
        t_fit = time.perf_counter() - t
        t_opt = float(res.attrs["minimize_time_s"])  # the minimization alone: what the Nelder–Mead clock holds
        obs.spectrum = spectrum
        phi = res["ifc"].sel(constant=list(model.names)).values
        measured = ~clipped[mask]  # censored pixels are limits, not values: left out of the loss shown
        loss = float(np.sum((data - res["model_intensity"].values)[measured] ** 2))  # sum of squares
        names = list(model.names)
        cov = res["ifc_cov"].sel(constant=names, constant_=names).values
        row = {"T": T, "phi": phi, "err": res["ifc_stderr"].sel(constant=names).values, "loss": loss,
               "time": t_fit, "optimizer_time": t_opt, "freq": x_and_l(model, phi, cov),
               "fitted": res["model_intensity"].values, "data": data,
               "evals": calls[0], "jacobian_evals": calls[1], "iterations": int(res.attrs["iterations"])}
        print(f"{T:5.0f} K  gradient: loss {loss:.8f} (sum of squares); the user waits {t_fit:.2f} s, the "
              f"minimization {t_opt:.2f} s ({t_fit / t_opt:.2f}×), "
              f"{calls[0]} plain model evaluations and {calls[1]} with the Jacobian, "
              f"{res.attrs['iterations']} iterations; "
              + ", ".join(f"{n} {v:+.4f}±{e:.4f}" for n, v, e in zip(model.names, row["phi"], row["err"], strict=True)),
              flush=True)
        if args.starts > 1:
            print(f"        {args.starts} starts, final losses (sum of squares): "
                  + ", ".join(f"{v * SIGMA**2:.4f}" for v in json.loads(res.attrs["starts"]))
                  + f"; kept start {res.attrs['best_start']}", flush=True)
        freq = row["freq"]
        print("        X, L (THz): " + ", ".join(f"{k} {freq[k]:.3f} ± {freq[k + ' σ']:.3f} "
                                                  f"(measured {MEASURED_THZ[k]})" for k in MEASURED_THZ), flush=True)
        from xtds.fitting.diagnostics import spectrum_diagnostics

        diag = spectrum_diagnostics(res, prob)
        row["rms"], row["smooth_share"] = diag.attrs["rms"], diag.attrs["smooth_share"]
        row["residual_over_noise"] = diag.attrs["residual_over_noise"]
        print(f"        residuals: rms {diag.attrs['rms']:.3f} (σ = {args.sigma}), "
              f"{diag.attrs['residual_over_noise']:.3f}× the pixel noise {diag.attrs['pixel_noise']:.4f}"
              f" the data show; "
              f"share in the lowest 6×6 cosine modes "
              f"{diag.attrs['smooth_share']:.2f} (noise alone: {diag.attrs['smooth_share_noise']:.3f})", flush=True)
        if args.multiphonon_check and not args.no_multiphonon:
            one = PowderSpectrum(model, ds["Q"].values, ds["E"].values, T, mask=mask, resolution=resolution_of(args),
                                 mesh=args.mesh, normalize=args.normalize, q_resolution=args.q_resolution,
                                 multiphonon=())
            alone = fit_problems([Problem(one, data, sigma=prob.sigma, loss="chi2", background=prob.background)],
                                 start, optimizer=LM(max_iter=args.max_iter, progress=False))
            row["loss_one_phonon"] = float(alone["loss"].values[-1]) * SIGMA**2
            print(f"        without multiphonon: loss {row['loss_one_phonon']:.4f} (with: {loss:.4f})", flush=True)
        if args.nelder_mead:
            nm = nelder_mead(prob, model, start, args.nelder_mead)
            row.update(nm)
            print(f"        Nelder–Mead: loss {nm['nm_loss'] * SIGMA**2:.8f} (gradient {loss:.8f}) after "
                  f"{nm['nm_evals']} evaluations in "
                  f"{nm['nm_time']:.1f} s (gradient fit {nm['nm_time'] / t_fit:.1f}× faster as the user waits, "
                  f"its minimization "
                  f"{nm['nm_time'] / t_opt:.1f}×; loss "
                  f"{'≤' if loss <= nm['nm_loss'] * SIGMA**2 * (1 + 1e-9) else '>'} Nelder–Mead's); constants "
                  + ", ".join(f"{v:+.4f}" for v in nm["nm_x"][: model.n_free]), flush=True)
        row["problem"], row["mask"] = prob, mask
        rows.append(row)
    if args.joint is not None:
        joint = joint_fit(rows, model, start, args.joint, args.joint_shared)
    if args.save:
        keep = ("T", "phi", "err", "loss", "time", "optimizer_time", "freq", "loss_one_phonon", "nm_loss", "nm_time",
                "nm_evals", "evals", "jacobian_evals", "iterations", "nm_x")
        with open(args.save, "w", encoding="utf-8") as fh:
            json.dump([{k: np.asarray(v).tolist() if k in ("phi", "err", "nm_x") else v for k, v in r.items()
                        if k in keep} for r in rows], fh, indent=1, default=float)
    if args.plot:
        plot(rows, ds, model.names, args.plot, args.shells)
        plot_frequencies(rows, args.plot, joint if args.joint is not None else None)
    print("\nT (K) | " + " | ".join(model.names) + " | loss")
    for r in rows:
        print(f"{r['T']:.0f} | " + " | ".join(f"{v:+.4f}±{e:.4f}" for v, e in zip(r["phi"], r["err"], strict=True))
              + f" | {r['loss']:.4f}")


def joint_fit(rows, model, start, degree, shared=""):
    """All temperatures at once, φ(T) = Σ_j a_j (T − T̄)^j (the ``shared`` names one value for all),
    each spectrum with its own nuisance terms: the coefficients with their errors, χ² of each member
    against its separate fit, the X and L frequencies at each T, and φ(T) against the separate fits."""
    import dataclasses

    from xtds.fitting import fit_joint_series

    members = [dataclasses.replace(r["problem"], name=f"T{r['T']:.0f}") for r in rows]
    shared = tuple(n for n in shared.split(",") if n)
    t = time.perf_counter()
    res = fit_joint_series(members, [r["T"] for r in rows], start, degree=degree, shared=shared,
                           optimizer=LM(max_iter=200, progress=False))
    chi2 = res["member_loss"].values
    alone = [float(np.sum(((r["data"] - r["fitted"]) / r["problem"].sigma) ** 2)) for r in rows]
    print(f"\njoint fit, constants of degree {degree} in T about {res.attrs['center']:.0f} K"
          + (f", {', '.join(shared)} shared" if shared else "") + f": χ² {chi2.sum():.1f} (separate fits: "
          f"{sum(alone):.1f}; per T " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(chi2, alone, strict=True))
          + f") in {time.perf_counter() - t:.1f} s, {res.attrs['iterations']} iterations ({res.attrs['message']})")
    cov = res["coefficient_cov"].values
    res.attrs["freq"] = []
    for r, a, b in zip(rows, chi2, alone, strict=True):
        B = np.kron(((r["T"] - res.attrs["center"]) ** np.arange(degree + 1))[None, :], np.eye(model.n_free))
        f = x_and_l(model, res["ifc"].sel(temperature=r["T"]).values, B @ cov @ B.T)
        res.attrs["freq"].append(f)
        # the residual over the noise map's rms, scaled from the separate fit's by √(χ² ratio)
        print(f"  {r['T']:5.0f} K joint: residual/noise {r['residual_over_noise'] * np.sqrt(a / b):.3f}; "
              + ", ".join(f"{k} {f[k]:.3f} ± {f[k + ' σ']:.3f}" for k in MEASURED_THZ))
    for j in range(degree + 1):
        unit = "eV/Å²" + ("" if j == 0 else "/K" if j == 1 else f"/K^{j}")
        print(f"  a{j} ({unit}): " + ", ".join(
            f"{n} {float(res['coefficient'].sel(constant=n, power=j)):+.4g}±"
            f"{float(res['coefficient_stderr'].sel(constant=n, power=j)):.2g}" for n in model.names))
    for r in rows:
        jt = res["ifc"].sel(temperature=r["T"]).values
        print(f"  {r['T']:5.0f} K: joint " + ", ".join(f"{v:+.4f}" for v in jt) + " | separate "
              + ", ".join(f"{v:+.4f}" for v in r["phi"]))
    return res


def nelder_mead(prob, model, start, max_evals):
    """Nelder–Mead (scipy, adaptive) on the very loss the gradient fit minimizes (χ² of the same
    problem over the same parameters: the constants, log scale and constant), from the same start
    (the constants and the least-squares scale and constant); an unstable point counts as +inf.
    Returns loss (χ²), evaluations, wall time and the parameters."""
    from scipy.optimize import minimize

    from xtds.fitting.objective import Objective, initial_vector

    objective = Objective((prob,), model, prob.observable.stability_k())
    phi0 = initial_vector(model, start)
    x0 = np.concatenate([phi0.numpy(), prob.initial_nuisance(phi0)])
    n_eval = [0]

    def f(x):
        n_eval[0] += 1
        try:
            r = objective.residuals(x, check_stable=True)
        except xtds.UnstableError:
            return np.inf
        return float(r @ r)

    t = time.perf_counter()
    res = minimize(f, x0, method="Nelder-Mead", options={"maxfev": max_evals, "xatol": 1e-6, "fatol": 1e-6,
                                                         "adaptive": True})
    return {"nm_loss": float(res.fun), "nm_evals": n_eval[0], "nm_time": time.perf_counter() - t, "nm_x": res.x}


def plot_frequencies(rows, folder, joint=None):
    """X and L frequencies (THz) against T with their errors: the separate fits and, if given, the
    joint fit (its ``attrs["freq"]``); the measured 300 K values as lines."""
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = np.array([r["T"] for r in rows])
    fig, axes = plt.subplots(1, 4, figsize=(11, 3), sharex=True)
    for ax, k in zip(axes, MEASURED_THZ, strict=True):
        ax.errorbar(T, [r["freq"][k] for r in rows], yerr=[r["freq"][k + " σ"] for r in rows], marker="o",
                    capsize=3, label="separate fits")
        if joint is not None:
            ax.errorbar(T + 8, [f[k] for f in joint.attrs["freq"]], yerr=[f[k + " σ"] for f in joint.attrs["freq"]],
                        marker="s", capsize=3, label="joint fit")
        ax.axhline(MEASURED_THZ[k], color="0.5", ls=":", label="measured (300 K)")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("T (K)")
    axes[0].set_ylabel("frequency (THz)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(folder) / "al_arcs_frequencies.png"
    fig.savefig(path, dpi=110)
    print(f"figure {path}")


def plot(rows, ds, names, folder, shells=2):
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
            img[r.get("mask", valid)] = vals
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
    plot_dispersion(rows, names, out, shells)
    print(f"figures in {out}/al_arcs_spectra.png, al_arcs_constants.png, al_arcs_dispersion.png")


def plot_dispersion(rows, names, out, shells=2):
    """The dispersion of each fit (a model of ``shells`` shells; its linewidth parameters left out)
    along the standard path, with the measured X and L frequencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from xtds.plot import plot_dispersion as draw

    model = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=shells)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    handles = []
    for i, r in enumerate(rows):
        color = plt.cm.plasma(i / max(1, len(rows) - 1) * 0.85)
        disp = xtds.dispersion(model, {n: v for n, v in zip(names, r["phi"], strict=True) if n in model.names})
        draw(disp, ax=ax, color=color, lw=1.2)
        handles.append(Line2D([], [], color=color, label=f"{r['T']:.0f} K"))
    x, labels = disp["distance"].values, list(disp["label"].values)
    for name in ("X", "L"):
        for xt in [x[j] for j, lab in enumerate(labels) if lab == name]:
            ax.plot([xt, xt], [MEASURED_THZ[f"{name} T"], MEASURED_THZ[f"{name} L"]], "ks", ms=5)
    handles.append(Line2D([], [], color="k", marker="s", ls="", label="measured"))
    ax.set_ylabel("frequency (THz)")
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "al_arcs_dispersion.png", dpi=110)


if __name__ == "__main__":
    main()
