"""The ``xtds`` command line: ``info``, ``simulate``, ``fit`` and ``plot`` on files.

    xtds info sample_300K.nxs
    xtds simulate --like sample_300K.nxs --crystal Ni --shells 5 --ifc target --out model.zarr
    xtds fit sample_300K.nxs --crystal Ni --shells 5 --initial starting --bragg 0.1 --out fit.nc --plots out/
    xtds plot fit.nc --out out/
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _ifc_arg(text: str):
    from xtds.datasets import paper_ni_ifcs

    if text in ("target", "starting", "table1", "table2"):
        return paper_ni_ifcs(text)
    if os.path.exists(text):
        with open(text, encoding="utf-8") as f:
            return json.load(f)
    raise SystemExit(f"--ifc/--initial: give 'target', 'starting' (the paper's Ni) or a JSON file name → eV/Å², "
                     f"not {text!r}")


def _crystal(name: str):
    from xtds.crystal import as_crystal

    try:
        return as_crystal(name)  # a preset name or a CIF file
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None


def cmd_info(args) -> int:
    from xtds.io import open_volume

    ds = open_volume(args.file, group=args.group)
    print(f"{args.file}: {dict(ds.sizes)}")
    for d in "HKL":
        c = ds[d].values
        print(f"  {d}: {c[0]:g} … {c[-1]:g} r.l.u., step {(c[1] - c[0]) if len(c) > 1 else 0:g}")
    print(f"  variables: {list(ds.data_vars)}; chunks {ds['intensity'].data.chunksize if ds.chunks else None}")
    for k, v in ds.attrs.items():
        print(f"  {k}: {v}")
    return 0


def cmd_simulate(args) -> int:
    from xtds.io import open_volume, write_volume
    from xtds.model import simulate

    _check_out(args.out, args.overwrite, _FORMATS.get(args.format), results=False)
    crystal = _crystal(args.crystal)
    like = open_volume(args.like)
    T = args.temperature if args.temperature is not None else like.attrs.get("temperature")
    sim = simulate(like, crystal, _ifc_arg(args.ifc), temperature=T, shells=args.shells, method=args.method,
                   quantum=False if args.classical else None)
    write_volume(sim, args.out, format=_FORMATS.get(args.format), overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def _print_result(res) -> None:
    print(f"{'name':<6}{'value':>14}{'stderr':>12}   (eV/Å²)")
    for name in res["constant"].values:
        print(f"{name:<6}{float(res['ifc'].sel(constant=name)):>14.6f}{float(res['ifc_stderr'].sel(constant=name)):>12.2e}")
    print(f"loss {res.attrs['final_loss']:.4e} after {res.attrs['iterations']} iterations "
          f"({res.attrs['message']}); {res.attrs['wall_time_s']:.1f} s")


def _check_out(path, overwrite: bool, fmt=None, results: bool = True) -> None:
    """Validate an output path before the work, so that a finished fit is never lost to it."""
    from xtds.io import _format_of

    if path is None:
        return
    try:
        kind = fmt or _format_of(path, writing=True)
    except ValueError:
        raise SystemExit(f"--out {path}: give a name ending in .nc or .zarr (or --format nc|zarr)") from None
    if results and kind == "nexus":
        raise SystemExit(f"--out {path}: a fit result is written as netCDF (.nc) or zarr (.zarr), not NeXus")
    if os.path.lexists(path) and not overwrite:
        raise SystemExit(f"--out {path} exists: pass --overwrite to replace it, or another --out")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise SystemExit(f"--out {path}: its folder does not exist")


def _background_arg(text):
    return {None: False, "none": False, "constant": "constant", "compton": "compton",
            "polynomial": "polynomial"}[text]


def _optimizer(args):
    from xtds.fitting import LM, Adam

    if args.method == "sampled" or args.epochs is not None or args.lr is not None:
        if args.max_iter is not None:
            raise SystemExit("--max-iter is for Levenberg–Marquardt; the sampled method uses Adam (--epochs, --lr)")
        return Adam(**{k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None})
    return LM(**({"max_iter": args.max_iter} if args.max_iter is not None else {}))


def cmd_fit(args) -> int:
    from xtds.fitting import fit
    from xtds.io import open_volume, write_volume

    _check_out(args.out, args.overwrite, _FORMATS.get(args.format))
    crystal = _crystal(args.crystal)
    optimizer = _optimizer(args)
    initial = _ifc_arg(args.initial)
    ds = open_volume(args.file, group=args.group)
    if args.wedge is not None:
        ds = ds.tds.wedge(normal=(0, 1, 0), half_angle=args.wedge, crystal=crystal)
    if args.method == "sampled" and not args.classical and "quantum" not in ds.attrs:
        raise SystemExit("--method sampled is classical: add --classical (the paper's statistics)")
    res = fit(ds, crystal, temperature=args.temperature, shells=args.shells, initial=initial, method=args.method,
              bragg=args.bragg, q_min=args.q_min, q_max=args.q_max, checkpoint=args.checkpoint, optimizer=optimizer,
              progress=not args.quiet, quantum=False if args.classical else None,
              background=_background_arg(args.background), temperature_stderr=args.temperature_stderr,
              symmetrize=not args.no_symmetrize)
    _print_result(res)
    if args.out:
        write_volume(res, args.out, format=_FORMATS.get(args.format), overwrite=args.overwrite)
        print(f"wrote {args.out}")
    if args.plots:
        _plots(res, args.plots, ds=ds, crystal=crystal, shells=args.shells)
    return 0


def _plots(res, folder, ds=None, crystal=None, shells=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from xtds.plot import plot_convergence, plot_dispersion, plot_slices

    os.makedirs(folder, exist_ok=True)
    fig = plot_dispersion(res["dispersion"], dos=res["dos"], title="fitted dispersion (±1σ)",
                          stderr=res["dispersion_stderr"] if "dispersion_stderr" in res else None,
                          dos_stderr=res["dos_stderr"] if "dos_stderr" in res else None)
    fig.savefig(os.path.join(folder, "dispersion.png"), dpi=110, bbox_inches="tight")
    fig = plot_convergence(res)
    fig.savefig(os.path.join(folder, "convergence.png"), dpi=110, bbox_inches="tight")
    written = ["dispersion.png", "convergence.png"]
    if ds is not None:
        ifc = {str(n): float(v) for n, v in zip(res["constant"].values, res["ifc"].values, strict=True)}
        model = ds.tds.simulate(crystal, {k: v for k, v in ifc.items() if k != "a0"}, shells=shells,
                                temperature=ds.attrs.get("temperature"))
        fig = plot_slices(ds, model=model, plane="HK0")
        fig.savefig(os.path.join(folder, "slice_HK0.png"), dpi=110, bbox_inches="tight")
        written.append("slice_HK0.png")
    print(f"wrote {', '.join(os.path.join(folder, w) for w in written)}")


def cmd_plot(args) -> int:
    import xarray as xr

    from xtds.io import _format_of

    if not os.path.exists(args.file):
        raise SystemExit(f"no such file or store: {args.file}")
    kind = _format_of(args.file)
    if kind == "nexus":
        raise SystemExit(f"{args.file} is a NeXus volume, not a fit result: plot a result of 'xtds fit --out' "
                         "(.nc or .zarr); for a volume use 'xtds info'")
    res = xr.open_zarr(args.file) if kind == "zarr" else xr.open_dataset(args.file, engine="h5netcdf")
    if "dispersion" not in res:
        raise SystemExit(f"{args.file} is not a fit result (no 'dispersion'); for a volume use 'xtds info'")
    _plots(res, args.out)
    return 0


_FORMATS = {None: None, "nc": "netcdf", "netcdf": "netcdf", "zarr": "zarr", "nxs": "nexus", "nexus": "nexus"}


def main(argv=None) -> int:
    from xtds._version import __version__

    ap = argparse.ArgumentParser(prog="xtds", description="X-ray TDS → interatomic force constants")
    ap.add_argument("--version", action="version", version=f"xtds {__version__}")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="describe a volume file")
    p.add_argument("file")
    p.add_argument("--group", default=None, help="NeXus NXdata group, e.g. f1/transform")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("simulate", help="model intensity on a volume's grid")
    p.add_argument("--like", required=True, help="a volume whose H, K, L grid (and temperature) to use")
    p.add_argument("--crystal", required=True)
    p.add_argument("--shells", type=int, required=True)
    p.add_argument("--ifc", required=True, help="'target', 'starting' or a JSON file name → eV/Å²")
    p.add_argument("--temperature", type=float, default=None, help="K (default: the file's)")
    p.add_argument("--method", default="exact", choices=["exact", "one_phonon"], help="forward model")
    p.add_argument("--classical", action="store_true",
                   help="classical statistics (default: the --like file's, else quantum)")
    p.add_argument("--out", required=True, help="the model volume (.zarr, .nc or .nxs)")
    p.add_argument("--format", choices=["zarr", "nc", "nxs"], default=None, help="instead of the --out suffix")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("fit", help="fit force constants to a volume")
    p.add_argument("file")
    p.add_argument("--crystal", required=True)
    p.add_argument("--shells", type=int, required=True)
    p.add_argument("--initial", required=True, help="'starting' (the paper's Ni) or a JSON file name → eV/Å²")
    p.add_argument("--temperature", type=float, default=None, help="K (default: the file's)")
    p.add_argument("--method", default="exact", choices=["exact", "one_phonon", "sampled"], help="forward model")
    p.add_argument("--classical", action="store_true",
                   help="classical statistics (default: the file's, else quantum as for measured data)")
    p.add_argument("--background", default=None, choices=["none", "constant", "compton", "polynomial"],
                   help="nuisance terms fitted with a scale (default none: the scale-free loss)")
    p.add_argument("--temperature-stderr", type=float, default=0.0, help="uncertainty of the temperature, K")
    p.add_argument("--group", default=None)
    p.add_argument("--no-symmetrize", action="store_true", help="fit without Laue symmetrization first")
    p.add_argument("--bragg", type=float, default=None, help="Bragg mask radius, r.l.u.")
    p.add_argument("--q-min", type=float, default=None)
    p.add_argument("--q-max", type=float, default=None)
    p.add_argument("--wedge", type=float, default=None, help="keep ±this many degrees about H0L")
    p.add_argument("--checkpoint", default=None, help="checkpoint file: resume a killed fit")
    p.add_argument("--max-iter", type=int, default=None, help="Levenberg–Marquardt iterations (default 50)")
    p.add_argument("--epochs", type=int, default=None, help="Adam epochs (sampled method; default 1000)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--out", default=None, help="write the result (.nc or .zarr)")
    p.add_argument("--format", choices=["zarr", "nc"], default=None, help="instead of the --out suffix")
    p.add_argument("--plots", default=None, help="folder for the plots")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("plot", help="plots of a saved fit result")
    p.add_argument("file")
    p.add_argument("--out", default="out")
    p.set_defaults(func=cmd_plot)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as err:
        if args.debug:
            raise
        message = str(err).replace("overwrite=True", "--overwrite").replace("format=", "--format ")
        print(f"xtds {args.command}: {type(err).__name__}: {message} (--debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
