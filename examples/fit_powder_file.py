"""From a reduced powder I(|Q|, E) file to force constants and linewidths with honest errors.

    python examples/fit_powder_file.py [--file SQW.nxs --temperature T --package P --frequency HZ]
        [--out DIR]

Without ``--file`` it first writes a demonstration file: nickel at 450 K as ARCS would record it at
Eᵢ = 50 meV (PyChop's resolution through resins), reduced with Mantid to an MDHistoWorkspace in
|Q| and ΔE (the layout of ``SaveMD``), uncorrected for kᵢ/k_f, with a scale, a flat background,
phonon linewidths and noise: *simulated* (known constants), so the fit can be judged. Then, as for
a measured file:

1. read it (:func:`xtds.io.spectra.load_powder_spectrum`: intensities, errors, instrument, Eᵢ);
2. screen it (:func:`xtds.observables.neutron.screen.screen_spectrum`);
3. make the problem (:func:`xtds.fitting.powder.powder_problem`: the resolution of the recorded
   instrument and Eᵢ, k_f/kᵢ, the elastic cut, the coverage, χ² with the file's errors);
4. fit a 2-shell model with a linewidth (:class:`xtds.LinewidthIFC`), and the same model without
   it (each twice: the k-mesh's adaptive widths made again at the first fit's constants), and
   compare the two (:func:`xtds.compare_fits`);
5. print the constants with their errors, the reduced χ², the choices made, and (with matplotlib)
   write a map of the standardized residuals.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

import xtds
from xtds.fitting.powder import powder_problem
from xtds.io.spectra import load_powder_spectrum
from xtds.observables.neutron.linewidth import LinewidthIFC, Linewidths
from xtds.observables.neutron.powder import PowderSpectrum
from xtds.observables.neutron.resolution import instrument_resolution

TRUTH = {"springs": {1: 3.8, 2: 0.25}, "gamma1": 0.3, "scale": 25.0, "background": 0.05}
SETTINGS = dict(chopper_package="ARCS-100-1.5-AST", chopper_frequency=600)


def write_demo_file(path: Path, temperature: float = 450.0) -> dict:
    """A simulated ARCS measurement of Ni in the MDHisto layout; returns the true constants."""
    model = LinewidthIFC.of(xtds.IFCModel(xtds.Crystal.preset("Ni"), shells=2), Linewidths())
    truth = dict(zip(model.names[:-1], model.central_force(TRUTH["springs"])[:-1], strict=True))
    truth["gamma1"] = TRUTH["gamma1"]
    e_edges, q_edges = np.arange(0.0, 48.01, 0.5), np.arange(0.3, 8.01, 0.1)
    E, Q = 0.5 * (e_edges[1:] + e_edges[:-1]), 0.5 * (q_edges[1:] + q_edges[:-1])
    res = instrument_resolution("ARCS", 50.0, **SETTINGS)
    obs = PowderSpectrum(model, Q, E, temperature, resolution=res, mesh=10, kind="sqe", normalize=False,
                         multiphonon=(2, 3), multiphonon_mesh=8)
    with torch.no_grad():
        S = obs.spectrum(model.vector(truth)).numpy()
    intensity = TRUTH["scale"] * S * np.sqrt(np.clip(1 - E / 50.0, 0, None))[:, None] + TRUTH["background"]
    sigma = 0.02 * np.nanmax(intensity) + 0.03 * np.abs(intensity)
    noisy = intensity + sigma * np.random.default_rng(11).standard_normal(intensity.shape)
    with h5py.File(path, "w") as f:
        d = f.create_group("MDHistoWorkspace/data")
        for name, edges, long, units in (("D0", q_edges, "|Q|", "Angstrom^-1"), ("D1", e_edges, "DeltaE", "meV")):
            ax = d.create_dataset(name, data=edges)
            ax.attrs["long_name"], ax.attrs["units"] = long, units
        d.create_dataset("signal", data=np.nan_to_num(noisy, nan=0.0))
        d.create_dataset("errors_squared", data=np.nan_to_num(sigma**2, nan=0.0))
        d.create_dataset("mask", data=(~np.isfinite(noisy)).astype(np.int8))
        f.create_dataset("MDHistoWorkspace/experiment0/instrument/name", data=b"ARCS")
        f.create_dataset("MDHistoWorkspace/experiment0/logs/Ei/value", data=np.array([50.0]))
    return truth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", default=None, help="a reduced powder spectrum (Mantid MDHisto/SofQW NeXus, NXSPE, HDF5)")
    ap.add_argument("--temperature", type=float, default=450.0, help="the sample temperature (K)")
    ap.add_argument("--element", default="Ni", help="a preset crystal (Ni, Al, Cu, …)")
    ap.add_argument("--package", default=SETTINGS["chopper_package"], help="the chopper package (resins' name)")
    ap.add_argument("--frequency", type=int, default=SETTINGS["chopper_frequency"], help="the chopper frequency, Hz")
    ap.add_argument("--out", default="out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = None
    path = Path(args.file) if args.file else out / "ni_arcs_sqw_simulated.nxs"
    if not args.file:
        truth = write_demo_file(path, args.temperature)
        print(f"wrote a simulated measurement: {path} (Ni, {args.temperature:g} K, ARCS Ei = 50 meV)")
        # the file is not kᵢ/k_f-corrected: say so (Mantid's SaveMD does not record it)
    data = load_powder_spectrum(path)
    if not args.file:
        data = data.assign_attrs(ki_over_kf_scaling=False)
    print(f"read {data.attrs['source_format']}: {data.sizes['E']} energies × {data.sizes['Q']} |Q|, "
          f"instrument {data.attrs.get('instrument')}, Ei {data.attrs.get('incident_energy_meV')} meV")
    base = xtds.IFCModel(xtds.Crystal.preset(args.element), shells=2)
    settings = dict(chopper_package=args.package, chopper_frequency=args.frequency)
    results = {}
    for label, model in (("harmonic lines", base), ("with linewidths", LinewidthIFC.of(base, Linewidths()))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prob = powder_problem(data, model, args.temperature, settings=settings, mesh=10, multiphonon=(2, 3),
                                  multiphonon_mesh=8)
        for w in caught:
            print("screen:", str(w.message).splitlines()[0])
        start = dict(zip(base.names, base.central_force({1: 3.0, 2: 0.1}), strict=True))
        res = xtds.fit_problems([prob], start, optimizer=xtds.LM(progress=False))
        # the k-mesh's adaptive widths were made at the start; make them again at the fitted constants
        # and refit from there (they would otherwise leak into the linewidths)
        fitted = dict(zip(model.names, res["ifc"].sel(constant=list(model.names)).values.tolist(), strict=True))
        prob.observable.reset()
        prob.observable.reference = model.vector(fitted)
        res = xtds.fit_problems([prob], fitted, optimizer=xtds.LM(progress=False))
        results[label] = res
        stats = json.loads(res.attrs["problems"])[0]
        print(f"\n{label}: χ²ᵣ {stats['chi2_reduced']:.3f} over {stats['n_points']} pixels "
              f"(errors ×{stats['error_scale']:.2f}); choices: {prob.data_attrs['choices']}")
        for n in model.names:
            v, e = float(res["ifc"].sel(constant=n)), float(res["ifc_stderr"].sel(constant=n))
            t = "" if truth is None or n not in truth else f"   truth {truth[n]:+.4f}  ({(v - truth[n]) / e:+.1f}σ)"
            print(f"  {n:7s} {v:+.4f} ± {e:.4f}{t}")
        print(f"  scale {float(res['scale']):.3f} ± {float(res['scale_stderr']):.3f}, background "
              f"{float(res['background']):.4f} ± {float(res['background_stderr']):.4f}")
    cmp = xtds.compare_fits(results["harmonic lines"], results["with linewidths"])
    print(f"\ncompare: Δχ² {cmp['delta_chi2']:.1f} for {cmp['delta_parameters']} parameter(s), ΔBIC "
          f"{cmp['delta_bic']:.1f}: {cmp['verdict']}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return results
    res = results["with linewidths"]
    E, Q = data["E"].values, data["Q"].values
    resid = np.full((len(E), len(Q)), np.nan)
    obs = prob.observable
    resid[obs.mask] = (res["intensity"].values - res["model_intensity"].values) / prob.sigma
    fig, ax = plt.subplots(figsize=(6, 4))
    im = ax.pcolormesh(Q, E, resid, cmap="RdBu_r", vmin=-4, vmax=4, shading="nearest")
    fig.colorbar(im, label="(data − model)/σ")
    ax.set(xlabel="|Q| (Å⁻¹)", ylabel="E (meV)", title="standardized residuals")
    fig.savefig(out / "powder_residuals.png", dpi=120, bbox_inches="tight")
    print(f"wrote {out / 'powder_residuals.png'}")
    return results


if __name__ == "__main__":
    main()
