"""The independent anchor of the fitted linewidths: phonon linewidths of an aluminium potential from
its third-order force constants with phono3py (issue 31, item 4).

    python benchmarks/al_linewidths_phono3py.py [--supercell 4] [--mesh 16] [--temperatures 300,450,640]
        [--out DIR]

The potential is asap3's EMT for Al at its own 0 K lattice constant. phono3py makes the displaced
supercells (the primitive cell × ``--supercell`` in each direction, 0.03 Å displacements), asap3 gives
their forces, phono3py builds the second- and third-order force constants and the imaginary part Γ
of the three-phonon self-energy of each mode at X and L (``--mesh`` q-mesh, tetrahedron method) at
each temperature: the linewidth (FWHM) is 2Γ. Printed per temperature: the FWHM (meV) of the
transverse and longitudinal modes at X and L, their energies, and the one-parameter law of
:class:`xtds.observables.neutron.linewidth.Linewidths` fitted to them, Γ = γ₁ (ε/10 meV)(T/300 K):
γ₁ by least squares over the four modes and the temperatures, and how far each mode lies from it;
then, for both temperature laws of ``Linewidths(temperature_law=...)`` (``linear``: T/T_ref;
``klemens``: (ε/4k_BT_ref) coth(ε/4k_BT)), γ₁ with its rms deviation, and each mode's own
temperature dependence against the law (one amplitude per mode: the rms relative deviation over
the temperatures), which tells the laws apart below room temperature.
``pip install phono3py`` and ``xtds[md]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

THZ_TO_MEV = 4.135667696  # h × 1 THz in meV (CODATA)


def emt_forces(supercells):
    from asap3 import EMT
    from ase import Atoms

    out = []
    for sc in supercells:
        atoms = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = EMT()
        out.append(atoms.get_forces())
    return np.array(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supercell", type=int, default=4, help="fc3 supercell: the primitive cell repeated N×N×N")
    ap.add_argument("--phonon-supercell", type=int, default=6, help="fc2 supercell: the primitive cell N×N×N")
    ap.add_argument("--mesh", type=int, default=16, help="q-mesh of the self-energy (even: X and L on it)")
    ap.add_argument("--temperatures", default="300,450,640")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from phono3py import Phono3py
    from phonopy.structure.atoms import PhonopyAtoms

    from xtds.md import equilibrium_lattice_constant

    t0 = time.perf_counter()
    a = equilibrium_lattice_constant("Al")
    # the primitive fcc cell (one atom)
    lat = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    cell = PhonopyAtoms(symbols=["Al"], cell=lat, scaled_positions=[[0, 0, 0]])
    N, M = args.supercell, args.phonon_supercell
    ph3 = Phono3py(cell, supercell_matrix=np.diag([N] * 3), phonon_supercell_matrix=np.diag([M] * 3),
                   primitive_matrix=None)
    ph3.generate_displacements(distance=0.03)
    ph3.forces = emt_forces(ph3.supercells_with_displacements)
    ph3.produce_fc3()
    ph3.generate_fc2_displacements(distance=0.03)
    ph3.phonon_forces = emt_forces(ph3.phonon_supercells_with_displacements)
    ph3.produce_fc2()
    n_fc3 = len(ph3.supercells_with_displacements)
    ph3.mesh_numbers = [args.mesh] * 3
    ph3.init_phph_interaction()
    m = args.mesh
    # X and L in the reduced coordinates of the primitive reciprocal lattice of this cell
    points = {"X": np.array([0.5, 0.0, 0.5]), "L": np.array([0.5, 0.5, 0.5])}
    gp = {}
    for name, q in points.items():
        addr = np.rint(q * m).astype(int)
        gp[name] = int(ph3.grid.get_indices_from_addresses(addr))
    temps = [float(t) for t in args.temperatures.split(",")]
    ise = ph3.run_imag_self_energy(list(gp.values()), temps, frequency_points_at_bands=True)
    gam = np.asarray(ise.gammas)[0]  # (temperatures, grid points, bands) THz, the first (only) smearing
    # the band frequencies (THz) at X and L from phono3py's own fc2 (its dynamical matrix at q)
    dm = ph3.dynamical_matrix
    freqs = []
    for q in points.values():
        dm.run(q)
        w2 = np.linalg.eigvalsh(dm.dynamical_matrix)
        freqs.append(np.sign(w2) * np.sqrt(np.abs(w2)) * ph3.unit_conversion_factor)
    freqs = np.array(freqs)
    rows = []
    for i, name in enumerate(gp):
        for j, T in enumerate(temps):
            for b, label in ((0, "T"), (2, "L")):
                eps = float(freqs[i, b]) * THZ_TO_MEV
                fwhm = 2 * float(gam[j, i, b]) * THZ_TO_MEV
                rows.append({"point": name, "branch": label, "T": T, "energy_meV": eps, "fwhm_meV": fwhm})
    x = np.array([r["energy_meV"] / 10 * r["T"] / 300 for r in rows])
    y = np.array([r["fwhm_meV"] for r in rows])
    g1 = float(x @ y / (x @ x))
    print(f"EMT Al, a = {a:.4f} Å; fc3 from {n_fc3} supercells of {N}³ cells, fc2 {M}³; mesh {m}³; "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'mode':>6} {'T (K)':>6} {'ε (meV)':>8} {'FWHM (meV)':>11} {'γ₁ law':>8}")
    for r, xi in zip(rows, x, strict=True):
        r["law_meV"] = g1 * xi
        print(f"{r['point'] + '_' + r['branch']:>6} {r['T']:6.0f} {r['energy_meV']:8.2f} {r['fwhm_meV']:11.4f} "
              f"{r['law_meV']:8.4f}")
    print(f"γ₁ (least squares over the modes and temperatures): {g1:.4f} meV "
          f"(Γ = γ₁ (ε/10 meV)(T/300 K)); rms deviation {np.sqrt(np.mean((y - g1 * x) ** 2)):.4f} meV")
    compare_laws(rows)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "al_linewidths_phono3py.json").write_text(json.dumps(
            {"lattice_constant_A": a, "gamma1_meV": g1, "rows": rows, "args": vars(args)}, indent=1))
    return g1, rows


def compare_laws(rows) -> dict:
    """For each temperature law: γ₁ of Γ = γ₁ (ε/10 meV) g(ε, T) over every mode and temperature
    with its rms deviation (meV), and per mode the rms relative deviation of Γ(T) from the law
    with the mode's own amplitude (the temperature dependence alone)."""
    import torch

    from xtds.observables.neutron.linewidth import Linewidths

    y = np.array([r["fwhm_meV"] for r in rows])
    out = {}
    for law in ("linear", "klemens"):
        lw = Linewidths(temperature_law=law)
        x = np.array([float(lw.width(torch.ones(1, dtype=torch.float64),
                                     torch.tensor(r["energy_meV"], dtype=torch.float64), r["T"])) for r in rows])
        g1 = float(x @ y / (x @ x))
        per_mode = {}
        for mode in sorted({(r["point"], r["branch"]) for r in rows}):
            i = np.array([(r["point"], r["branch"]) == mode for r in rows])
            a = float(x[i] @ y[i] / (x[i] @ x[i]))
            per_mode["_".join(mode)] = float(np.sqrt(np.mean((y[i] / (a * x[i]) - 1) ** 2)))
        out[law] = {"gamma1_meV": g1, "rms_meV": float(np.sqrt(np.mean((y - g1 * x) ** 2))), "per_mode": per_mode}
        print(f"law {law:8s}: γ₁ {g1:.4f} meV, rms deviation {out[law]['rms_meV']:.4f} meV; each mode's T "
              "dependence against the law (rms relative deviation): "
              + ", ".join(f"{k} {v:.3f}" for k, v in per_mode.items()))
    return out


if __name__ == "__main__":
    main()
