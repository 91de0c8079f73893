"""End to end: fit Ni force constants to a small NXrefine-layout NeXus volume.

Writes the embedded example (the paper's synthetic Ni TDS on the 5×5×5 supercell grid, 25³ voxels,
300 K) as ``<out>/ni_small.nxs``, opens it lazily, fits the 16 constants from the paper's Starting
values with the exact model, prints the IFC table against the Target, and writes the plots
(dispersion with DOS, convergence, HK0 slices of data, model and residual) and the result.

    python examples/fit_ni.py --out out
"""

from __future__ import annotations

import argparse
import pathlib

import xtds
from xtds.datasets import paper_ni_ifcs, small_ni_nexus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="folder for the file, the result and the plots (created)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    path = small_ni_nexus(out / "ni_small.nxs", overwrite=True)
    ds = xtds.open_volume(path)  # lazy: nothing read yet
    print(f"opened {path}: {dict(ds.sizes)} voxels, T = {ds.attrs['temperature']} K, {ds.attrs['space_group']}")
    ni = xtds.datasets.paper_ni_crystal()
    fit = ds.tds.fit(crystal=ni, shells=5, initial=paper_ni_ifcs("starting"), optimizer=xtds.LM(progress=False))

    target = paper_ni_ifcs("target")
    start = paper_ni_ifcs("starting")
    # the paper's tables round a0; compare with the sum rule's value of the Target (paper Eq. 3)
    model = xtds.IFCModel(ni, shells=5)
    target["a0"] = float(model.derived(model.vector(target))[0])
    print(f"\n{'name':<5}{'start':>11}{'fitted':>12}{'stderr':>10}{'target':>11}{'error':>11}   (eV/Å²)")
    for name in fit["constant"].values:
        v, se = float(fit["ifc"].sel(constant=name)), float(fit["ifc_stderr"].sel(constant=name))
        print(f"{name:<5}{start[name]:>11.5f}{v:>12.6f}{se:>10.1e}{target[name]:>11.5f}{v - target[name]:>11.1e}")
    print(f"\n{fit.attrs['iterations']} Levenberg–Marquardt iterations; the fit took {fit.attrs['wall_time_s']:.1f} s "
          f"(the minimization {fit.attrs['minimize_time_s']:.1f} s); {fit.sizes['point']} irreducible points; "
          f"{fit.attrs['message']}")
    C = fit["elastic_constants"]
    print(f"elastic constants (GPa): C11 = {float(C[0, 0]):.1f}, C12 = {float(C[0, 1]):.1f}, "
          f"C44 = {float(C[3, 3]):.1f}")

    xtds.write_volume(fit, out / "ni_fit.nc", overwrite=True)
    import matplotlib

    matplotlib.use("Agg")
    from xtds.plot import plot_convergence, plot_dispersion, plot_slices

    fitted = {str(n): float(v) for n, v in zip(fit["constant"].values, fit["ifc"].values, strict=True) if n != "a0"}
    model = ds.tds.simulate(ni, fitted, shells=5)
    for name, fig in (
        ("ni_fit_dispersion.png", plot_dispersion(fit["dispersion"], dos=fit["dos"], title="Ni, fitted IFCs")),
        ("ni_fit_convergence.png", plot_convergence(fit, reference=target)),
        ("ni_fit_slice_HK0.png", plot_slices(ds, model=model, plane="HK0")),
    ):
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        print(f"wrote {out / name}")
    print(f"wrote {out / 'ni_fit.nc'}")


if __name__ == "__main__":
    main()
