"""Ni: the symmetry-reduced force constants of the paper's benchmark and their phonons.

Prints the IFC table (5 shells, the paper's naming), the elastic constants and a stability check,
and writes the phonon dispersion with the DOS to ``<out>/ni_dispersion.png``.

    python examples/ni_phonons.py --out out
"""

from __future__ import annotations

import argparse
import pathlib

import xtds
from xtds.datasets import paper_ni_ifcs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="folder for the plot (created)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    crystal = xtds.datasets.paper_ni_crystal()
    model = xtds.IFCModel(crystal, shells=5)
    print(crystal)
    print(model)
    ifc = model.to_dataarray(paper_ni_ifcs("target"))
    print()
    print(model.table(ifc, title="Target IFCs of the paper's Ni benchmark (EAM u3 / 1.505), eV/Å²"))

    C = xtds.elastic_constants(model, ifc)
    print(f"\nElastic constants (GPa): C11 = {float(C[0, 0]):.1f}, C12 = {float(C[0, 1]):.1f}, "
          f"C44 = {float(C[3, 3]):.1f}")
    print(xtds.stability(model, ifc))

    disp = xtds.dispersion(model, ifc)
    dos = xtds.dos(model, ifc, mesh=24, sigma=0.08)
    for label in ("X", "L"):
        nu = disp.where(disp["label"] == label, drop=True).values[0]
        print(f"ν({label}) = " + ", ".join(f"{v:.3f}" for v in nu) + " THz")

    import matplotlib

    matplotlib.use("Agg")
    from xtds.plot import plot_dispersion

    fig = plot_dispersion(disp, dos=dos, title="Ni, paper Target IFCs (5 shells)")
    path = out / "ni_dispersion.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
