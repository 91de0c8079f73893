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


def _constants_file(path: str, option: str) -> dict:
    """Named force constants (eV/Å²) from a JSON file; a message naming the option and file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            ifc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"{option} {path}: not a readable JSON file ({err}); write the constants as "
                         '{"b0": -0.99, "b1": ...} in eV/Å²') from None
    if not isinstance(ifc, dict) or not ifc:
        raise SystemExit(f"{option} {path}: holds a JSON {type(ifc).__name__}, not an object of "
                         'named constants {"b0": -0.99, "b1": ...} in eV/Å²')
    bad = {k: v for k, v in ifc.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        raise SystemExit(f"{option} {path}: the constants {sorted(bad)} are not numbers ({bad}); give each "
                         "constant as a number in eV/Å²")
    return ifc


def _ifc_arg(text: str):
    from xtds.datasets import paper_ni_ifcs

    if text in ("target", "starting", "table1", "table2"):
        return paper_ni_ifcs(text)
    if os.path.exists(text):
        return _constants_file(text, "--ifc/--initial")
    raise SystemExit(f"--ifc/--initial: give 'target', 'starting' (the paper's Ni) or a JSON file name → eV/Å², "
                     f"not {text!r}")


def _constraints(fix: list[str] | None, prior: list[str] | None):
    """``--fix NAME=VALUE`` (or NAME: its starting value) and ``--prior NAME=MEAN,SIGMA`` as Constraints."""
    from xtds.fitting import Constraints

    fixed, priors = {}, {}
    for text in fix or []:
        name, _, value = text.partition("=")
        try:
            fixed[name.strip()] = float(value) if value.strip() else None
        except ValueError:
            raise SystemExit(f"--fix {text!r}: give NAME=VALUE (eV/Å²), e.g. --fix f3=0, or NAME alone to hold "
                             "its starting value") from None
    for text in prior or []:
        name, _, value = text.partition("=")
        priors[name.strip()] = _pair(value, f"--prior {name.strip()}=", "0,0.05 (mean and σ, eV/Å²)")
    try:
        return Constraints(fixed=fixed, priors=priors)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _pair(text: str, option: str, example: str) -> tuple[float, float]:
    """Two numbers from 'A,B'; a message naming the option otherwise."""
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"{option} {text!r}: give two numbers as 'A,B', e.g. {option} {example}") from None
    return a, b


def _crystal(name: str, ds=None, quiet: bool = False):
    """The crystal of ``--crystal``: a CIF file as it is; a preset's structure with the volume's own
    cell where the volume records one close to the preset's (a preset is a room-temperature cell,
    the file's is the one measured)."""
    from xtds.lattice.crystal import as_crystal, measured_cell

    cell = None if ds is None else measured_cell(ds.attrs)
    try:
        crystal = as_crystal(name, cell)  # a preset name or a CIF file
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    if cell is not None and not quiet and isinstance(name, str) and not name.lower().endswith(".cif"):
        preset = as_crystal(name)
        if preset.parameters != crystal.parameters:
            theirs, mine = (", ".join(f"{x:.5g}" for x in c.parameters[:3]) for c in (crystal, preset))
            print(f"--crystal {name}: the preset's structure with the volume's cell a, b, c = {theirs} Å (the "
                  f"preset's, at room temperature, is {mine} Å)")
    return crystal


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
    from xtds.observables import TDSModel, simulate

    _check_out(args.out, args.overwrite, _FORMATS.get(args.format), results=False, inputs=[args.like])
    like = open_volume(args.like)
    crystal = _crystal(args.crystal, like)
    T = args.temperature if args.temperature is not None else like.attrs.get("temperature")
    sim = simulate(like, crystal, _ifc_arg(args.ifc), temperature=T, shells=args.shells,
                   model=TDSModel(method=args.method, quantum=False if args.classical else None))
    write_volume(sim, args.out, format=_FORMATS.get(args.format), overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def _print_result(res) -> None:
    print(f"{'name':<6}{'value':>14}{'stderr':>12}   (eV/Å²)")
    for name in res["constant"].values:
        print(f"{name:<6}{float(res['ifc'].sel(constant=name)):>14.6f}{float(res['ifc_stderr'].sel(constant=name)):>12.2e}")
    print(f"loss {res.attrs['final_loss']:.4e} after {res.attrs['iterations']} iterations "
          f"({res.attrs['message']}); {res.attrs['wall_time_s']:.1f} s")


def _check_out(path, overwrite: bool, fmt=None, results: bool = True, inputs=()) -> None:
    """Validate an output path before the work, so that a finished fit is never lost to it, and never
    one of the command's own ``inputs`` (replacing a measured volume by a result or a model)."""
    from xtds.io import format_of

    if path is None:
        return
    try:
        kind = fmt or format_of(path, writing=True)
    except ValueError:
        raise SystemExit(f"--out {path}: give a name ending in .nc or .zarr (or --format nc|zarr)") from None
    if results and kind == "nexus":
        raise SystemExit(f"--out {path}: a fit result is written as netCDF (.nc) or zarr (.zarr), not NeXus")
    if any(_same_path(path, i) for i in inputs):
        raise SystemExit(f"--out {path} is this command's input volume: it would be replaced by the output "
                         "(--overwrite or not); give another --out")
    _check_new(path, overwrite)


def _check_new(path, overwrite: bool, option: str = "--out") -> None:
    """An output file the command will write: refused when it exists (without ``--overwrite``) or
    its folder does not, before the work."""
    if os.path.lexists(path) and not overwrite:
        raise SystemExit(f"{option} {path} exists: pass --overwrite to replace it, or another {option}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise SystemExit(f"{option} {path}: its folder does not exist")


def _same_path(a, b) -> bool:
    """Whether two paths name one file or folder (by any name or link; either may not exist yet)."""
    if a is None or b is None:
        return False
    a, b = (os.fspath(x).rstrip("/") or "/" for x in (a, b))
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_side_paths(args) -> None:
    """``--checkpoint`` and ``--plots`` before the fit: neither may be the input or the output (the
    result would then be refused, or written into the wrong place, after the fit)."""
    named = {"the input volume": args.file, "--out": args.out}
    for option, path in (("--checkpoint", args.checkpoint), ("--plots", args.plots)):
        for what, other in named.items():
            if _same_path(path, other):
                raise SystemExit(f"{option} {path} is also {what}: give {option} a path of its own")
    if args.plots is not None and os.path.exists(args.plots) and not os.path.isdir(args.plots):
        raise SystemExit(f"--plots {args.plots} is a file: give a folder for the plots")
    if _same_path(args.checkpoint, args.plots):
        raise SystemExit(f"--checkpoint {args.checkpoint} is also --plots: give each a path of its own")


def _background_arg(text):
    return {None: False, "none": False, "constant": "constant", "compton": "compton",
            "polynomial": "polynomial"}[text]


def _optimizer(args):
    """The optimizer of ``--optimizer`` (default: the one for the method's kind of objective) with the
    settings given on the command line, through the optimizer interface alone."""
    from xtds.fitting import Optimizer

    options = {k: v for k, v in (("max_iter", args.max_iter), ("epochs", args.epochs), ("lr", args.lr))
               if v is not None}
    stochastic = args.method == "sampled" or "epochs" in options or "lr" in options
    options.update(checkpoint=args.checkpoint, progress=not args.quiet)
    try:
        if args.optimizer is not None:
            return Optimizer.named(args.optimizer, **options)
        return Optimizer.default_for(stochastic, **options)
    except ValueError as err:
        raise SystemExit(f"--optimizer/--max-iter/--epochs/--lr: {err}") from None


def cmd_fit(args) -> int:
    from xtds.fitting import Errors, Preparation, fit
    from xtds.io import open_volume, write_volume
    from xtds.observables import TDSModel

    _check_out(args.out, args.overwrite, _FORMATS.get(args.format), inputs=[args.file])
    _check_side_paths(args)
    crystal = _crystal(args.crystal)
    optimizer = _optimizer(args)
    initial = _ifc_arg(args.initial)
    ds = open_volume(args.file, group=args.group)
    crystal = _crystal(args.crystal, ds, quiet=args.quiet)
    if args.wedge is not None:
        ds = ds.tds.wedge(normal=(0, 1, 0), half_angle=args.wedge, crystal=crystal)
    if args.method == "sampled" and not args.classical and "quantum" not in ds.attrs:
        raise SystemExit("--method sampled is classical: add --classical (the paper's statistics)")
    res = fit(ds, crystal, args.shells, initial, temperature=args.temperature,
              prepare=Preparation(bragg=args.bragg, q_min=args.q_min, q_max=args.q_max,
                                  symmetrize=not args.no_symmetrize),
              model=TDSModel(method=args.method, quantum=False if args.classical else None),
              background=_background_arg(args.background), optimizer=optimizer,
              errors=Errors(temperature_stderr=args.temperature_stderr),
              constraints=_constraints(args.fix, args.prior))
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
    from xtds.io import format_of, open_dataset_file

    if not os.path.exists(args.file):
        raise SystemExit(f"no such file or store: {args.file}")
    if _same_path(args.out, args.file) or (os.path.exists(args.out) and not os.path.isdir(args.out)):
        raise SystemExit(f"--out {args.out} is {'the file to plot' if _same_path(args.out, args.file) else 'a file'}: "
                         "give a folder for the plots")
    kind = format_of(args.file)
    if kind == "nexus":
        raise SystemExit(f"{args.file} is a NeXus volume, not a fit result: plot a result of 'xtds fit --out' "
                         "(.nc or .zarr); for a volume use 'xtds info'")
    res = open_dataset_file(args.file)
    if "dispersion" not in res:
        raise SystemExit(f"{args.file} is not a fit result (no 'dispersion'); for a volume use 'xtds info'")
    _plots(res, args.out)
    return 0


_FORMATS = {None: None, "nc": "netcdf", "netcdf": "netcdf", "zarr": "zarr", "nxs": "nexus", "nexus": "nexus"}


def _powder_data(name: str):
    """A powder INS data set in the layout of :func:`xtds.datasets.al_arcs` (chi (temperature, E,
    Q), valid (E, Q)): ``al_arcs`` or a netCDF/zarr path."""
    if name == "al_arcs":
        from xtds.datasets import al_arcs

        return al_arcs()
    if not os.path.exists(name):
        raise FileNotFoundError(f"no data set {name!r}: give 'al_arcs' or a netCDF/zarr file")
    from xtds.io import open_dataset_file

    ds = open_dataset_file(name)
    missing = [v for v in ("chi", "valid", "Q", "E", "temperature") if v not in ds.variables]
    if missing:
        raise ValueError(f"{name} lacks {missing}: a powder data set needs chi (temperature, E, Q), valid (E, Q)")
    return ds.load()


def _powder_observable(args, ds, temperature: float):
    from xtds.lattice.crystal import as_crystal
    from xtds.lattice.ifc import IFCModel
    from xtds.observables.neutron.powder import PowderSpectrum
    from xtds.observables.neutron.sqe import chopper_resolution

    model = IFCModel(as_crystal(args.crystal), shells=args.shells)
    if args.chopper:
        tm, tc = _pair(args.chopper, "--chopper", "40,20 (the moderator and chopper times, μs)")
        try:
            res = chopper_resolution(float(ds.attrs.get("incident_energy_meV", 50.0)), tm, tc)
        except ValueError as err:
            raise SystemExit(f"--chopper {args.chopper!r}: {err}") from None
    else:
        res = args.fwhm
    return PowderSpectrum(model, ds["Q"].values, ds["E"].values, temperature, mask=ds["valid"].values,
                          resolution=res, mesh=args.mesh)


def cmd_amortize_simulate(args) -> int:
    from xtds.amortized import make_training_set

    ref = _constants_file(args.reference, "--reference")
    lo, hi = _pair(args.temperatures, "--temperatures", "100,300 (K)")
    ds = _powder_data(args.data)
    obs = _powder_observable(args, ds, 0.5 * (lo + hi))
    out = make_training_set(obs, ref, args.n, box=(args.low, args.high), seed=args.seed, store=args.store,
                   workers=args.workers, temperatures=(lo, hi), progress=not args.quiet)
    import zarr

    root = zarr.open_group(args.store, mode="r+")
    root.attrs["cli"] = json.dumps({"data": args.data, "crystal": args.crystal, "shells": args.shells,
                                    "mesh": args.mesh, "fwhm": args.fwhm, "chopper": args.chopper,
                                    "temperatures": [lo, hi], "reference": ref})
    print(f"{args.n} spectra of {out.sizes['pixel']} pixels in {args.store} ({out.attrs['seconds']:.1f} s)")
    return 0


def cmd_amortize_train(args) -> int:
    import numpy as np
    import zarr

    from xtds.amortized import (
        GaussianPosterior,
        LabelScale,
        PosteriorEnsemble,
        TwoStage,
        standardized,
        with_temperature,
    )

    for suffix in (".pt", ".json"):  # the network's two files
        _check_new(args.out + suffix, args.overwrite)
    root = zarr.open_group(args.store, mode="r")
    if not bool(np.all(root["done"][:])):
        raise ValueError(f"the training set {args.store} is not complete: rerun `xtds amortize simulate` on it")
    meta = json.loads(root.attrs["cli"])
    prov = json.loads(root.attrs["provenance"])
    phi = np.asarray(root["constants"][:])
    T = np.asarray(root["temperature"][:])
    X = with_temperature(standardized(np.asarray(root["values"][:])), T, meta["temperatures"])
    box = np.asarray(prov["box"], dtype=float)
    if box.shape != (2,):
        raise ValueError(f"the training set's box {prov['box']} is not one (low, high) pair: train in Python")
    scale = LabelScale(tuple(prov["reference"]), float(box[0]), float(box[1]))
    info = {"training_set": args.store, "provenance": prov, "cli": meta, "input": "standardized"}
    if args.members < 1 or (args.members > 1 and not args.posterior):
        raise ValueError(f"--members {args.members}: give a count ≥ 1, and an ensemble (> 1) with --posterior")
    net = (GaussianPosterior if args.posterior else TwoStage)(X.shape[1], scale, metadata=info)
    kw = {"epochs": args.epochs, "checkpoint": args.out + ".ckpt", "progress": not args.quiet}
    if args.noise is not None:
        if not args.posterior:
            raise ValueError("--noise trains the posterior of noisy spectra: use it with --posterior")
        if not args.noise > 0:
            raise ValueError(f"--noise must be a positive pixel σ of the standardized spectra, got {args.noise}")
        sigma = np.full(X.shape[1], args.noise)
        sigma[-1] = 0.0  # the temperature input has none
        kw.update(noise=sigma, restandardize=True)
    if not args.posterior:
        kw["regressor_epochs"] = args.epochs
    if args.members > 1:
        net = PosteriorEnsemble.fit(X.shape[1], scale, X, phi, members=args.members, metadata=info, **kw)
    else:
        net.fit(X, phi, **kw)
    net.save(args.out)
    print(f"saved {args.out}.pt and {args.out}.json")
    return 0


def cmd_amortize_predict(args) -> int:
    import numpy as np

    from xtds.amortized import load, standardized, with_temperature

    if args.out is not None:
        own = [args.net + ".pt", args.net + ".json", args.net, args.data]
        if any(_same_path(args.out, o) for o in own):
            raise SystemExit(f"--out {args.out} is the network or the data this command reads: give another --out")
        _check_new(args.out, args.overwrite)
    net = load(args.net)
    meta = net.metadata.get("cli", {})
    ds = _powder_data(args.data)
    temps = [float(t) for t in args.temperature.split(",")] if args.temperature else \
        [float(t) for t in ds["temperature"].values]
    valid = ds["valid"].values
    spectra = np.stack([ds["chi"].sel(temperature=T).values[valid] for T in temps])
    if net.metadata.get("input") == "standardized":  # as the network was trained (older networks: as stored)
        spectra = standardized(spectra)
    X = with_temperature(spectra, temps, meta.get("temperatures", (min(temps), max(temps))))
    if hasattr(net, "vae"):
        mean, spread = net.predict(X, n_draws=args.draws)
    else:
        mean, cov = net.predict(X)
        spread = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    names = net.metadata["provenance"]["observable"]["constants"]
    rows = [{"temperature": T, "constants": dict(zip(names, map(float, m), strict=True)),
             "spread": dict(zip(names, map(float, s), strict=True))}
            for T, m, s in zip(temps, mean, spread, strict=True)]
    for r in rows:
        print(f"{r['temperature']:g} K: " + ", ".join(f"{k} {v:+.4f}±{r['spread'][k]:.4f}"
                                                     for k, v in r["constants"].items()))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


def _amortize_parser(sub):
    p = sub.add_parser("amortize", help="amortized inference: simulate a training set, train, predict")
    asub = p.add_subparsers(dest="amortize_command", required=True)
    s = asub.add_parser("simulate", help="a training set of powder spectra (zarr)")
    s.add_argument("--data", default="al_arcs", help="'al_arcs' or a netCDF/zarr powder data set (its grid, mask)")
    s.add_argument("--crystal", required=True)
    s.add_argument("--shells", type=int, required=True)
    s.add_argument("--reference", required=True, help="JSON file: constant name → eV/Å²")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--low", type=float, default=0.5, help="draws: reference × uniform(low, high)")
    s.add_argument("--high", type=float, default=1.5)
    s.add_argument("--temperatures", default="50,640", help="low,high K of the drawn temperatures")
    s.add_argument("--mesh", type=int, default=12)
    s.add_argument("--fwhm", type=float, default=2.0, help="constant energy resolution FWHM, meV")
    s.add_argument("--chopper", default=None, help="'TM,TC': the chopper resolution (μs) instead of --fwhm")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--store", required=True, help="the zarr training set (a rerun resumes it)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_amortize_simulate)
    t = asub.add_parser("train", help="train the two-stage network (or --posterior) on a training set")
    t.add_argument("--store", required=True)
    t.add_argument("--out", required=True, help="path prefix of the saved network (.pt, .json)")
    t.add_argument("--epochs", type=int, default=300)
    t.add_argument("--posterior", action="store_true", help="the Gaussian amortized posterior instead")
    t.add_argument("--noise", type=float, default=None,
                   help="with --posterior: the pixel σ of the standardized measured spectra, drawn onto every "
                        "training batch (a posterior for noisy spectra)")
    t.add_argument("--members", type=int, default=1,
                   help="with --posterior: an ensemble of this many posteriors from different seeds (their "
                        "mixture; its spread shows where a measured spectrum lies off the simulations)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing network at --out")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_amortize_train)
    r = asub.add_parser("predict", help="constants of measured spectra from a trained network")
    r.add_argument("--net", required=True)
    r.add_argument("--data", default="al_arcs")
    r.add_argument("--temperature", default=None, help="comma-separated K (default: every one in the data)")
    r.add_argument("--draws", type=int, default=10_000, help="latent draws (two-stage network)")
    r.add_argument("--out", default=None, help="write the predictions (JSON)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    r.set_defaults(func=cmd_amortize_predict)


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
    p.add_argument("--fix", action="append", metavar="NAME[=VALUE]",
                   help="hold a constant at VALUE (eV/Å²) or at its starting value; repeatable")
    p.add_argument("--prior", action="append", metavar="NAME=MEAN,SIGMA",
                   help="a Gaussian prior on a constant (eV/Å²); repeatable")
    p.add_argument("--group", default=None)
    p.add_argument("--no-symmetrize", action="store_true", help="fit without Laue symmetrization first")
    p.add_argument("--bragg", type=float, default=None, help="Bragg mask radius, r.l.u.")
    p.add_argument("--q-min", type=float, default=None)
    p.add_argument("--q-max", type=float, default=None)
    p.add_argument("--wedge", type=float, default=None, help="keep ±this many degrees about H0L")
    p.add_argument("--checkpoint", default=None, help="checkpoint file: resume a killed fit")
    p.add_argument("--optimizer", default=None, help="the optimizer by name (lm, adam; default: lm, or adam "
                   "for --method sampled)")
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
    _amortize_parser(sub)
    args = ap.parse_args(argv)
    command = args.command + (f" {args.amortize_command}" if args.command == "amortize" else "")
    try:
        return args.func(args)
    except SystemExit as err:  # the commands' own argument checks: a message, exit status 2 as argparse's
        if not isinstance(err.code, str):
            raise
        print(f"xtds {command}: {err.code}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as err:
        if args.debug:
            raise
        message = str(err).replace("overwrite=True", "--overwrite").replace("format=", "--format ")
        print(f"xtds {command}: {type(err).__name__}: {message} (--debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
