"""Imported DFT force constants against phonopy and euphonic: the table of docs/phonopy.md.

    python benchmarks/imports.py

For each of phonopy's examples (NaCl, ZnO, MgB2; with and without NAC) and euphonic's test data
(Si2-sc-skew, graphite, quartz) it prints the largest frequency difference over the largest
frequency at 200 random wave vectors inside the first zone's parallelepiped, the import's time and,
for quartz, the process's peak resident memory. Data: tests/data/ (see its README for sources).
"""

from __future__ import annotations

import gzip
import pathlib
import resource
import tempfile
import time
import warnings

import numpy as np

from xtds.io import phonopy as pio
from xtds.lattice.dynamics import frequencies

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
EXAMPLES = {"NaCl": [2, 2, 2], "ZnO": [2, 2, 2], "MgB2": [3, 3, 2]}


def phonopy_rows():
    import phonopy

    for name, sc in EXAMPLES.items():
        for born in (False, True):
            folder = DATA / "phonopy" / name
            if born and not (folder / "BORN").exists():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ph = phonopy.load(supercell_matrix=sc, primitive_matrix="auto",
                                  unitcell_filename=str(folder / "POSCAR-unitcell"),
                                  force_sets_filename=str(folder / "FORCE_SETS"),
                                  born_filename=str(folder / "BORN") if born else None, log_level=0)
                t0 = time.perf_counter()
                mi = pio.from_phonopy(ph)
                dt = time.perf_counter() - t0
            k = np.random.default_rng(1).uniform(-0.5, 0.5, (200, 3)) @ mi.primitive.reciprocal
            nu = frequencies(mi, mi.vector(None), k).numpy()
            ph.run_qpoints(k @ np.asarray(ph.primitive.cell).T / (2 * np.pi))
            ref = np.sort(ph.qpoints.frequencies, axis=1)
            print(f"phonopy  {name:<12} NAC {str(born):<5} import {dt:6.2f} s   |Δν|/ν_max vs phonopy "
                  f"{np.abs(nu - ref).max() / np.abs(ref).max():.2e}")


def euphonic_rows():
    import euphonic

    for name in ("Si2-sc-skew", "graphite", "quartz"):
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "fc.json"
            path.write_bytes(gzip.open(DATA / "euphonic" / f"{name}_force_constants.json.gz").read())
            fc = euphonic.ForceConstants.from_json_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            mi = pio.from_euphonic(fc)
            dt = time.perf_counter() - t0
        rlu = np.random.default_rng(1).uniform(-0.5, 0.5, (200, 3))
        nu = frequencies(mi, mi.vector(None), rlu @ mi.crystal.reciprocal, unit="meV").numpy()
        ref = np.sort(fc.calculate_qpoint_phonon_modes(rlu, asr=None).frequencies.to("meV").magnitude, axis=1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"euphonic {name:<12} polar {str(fc.born is not None):<5} import {dt:6.2f} s   |Δν|/ν_max vs "
              f"euphonic {np.abs(nu - ref).max() / ref.max():.2e}   peak RSS so far {rss:.0f} MB")


if __name__ == "__main__":
    phonopy_rows()
    euphonic_rows()
