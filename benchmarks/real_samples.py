"""The numbers of docs/real-samples.md: backgrounds, statistics, σ_T, robust errors, LO–TO.

    python benchmarks/real_samples.py            # about two minutes on 2 cores

Each block prints what the matching test asserts (tests/test_backgrounds.py, test_robust.py,
test_nac.py), on the same synthetic data.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import xtds
from xtds.datasets import paper_ni_ifcs, paper_ni_volume, six_shell_ni_volume
from xtds.observables.scattering import compton

NI = xtds.datasets.paper_ni_crystal()
TARGET = paper_ni_ifcs("target")
START = paper_ni_ifcs("starting")
FREE = [n for n in TARGET if n != "a0"]


def rel_err(res, ref):
    return max(abs(float(res["ifc"].sel(constant=n)) / ref[n] - 1) for n in FREE)


def c11(res):
    return float(res["elastic_constants"].values[0, 0])


def backgrounds(vol):
    hkl = np.stack(np.meshgrid(*(vol[d].values for d in "HKL"), indexing="ij"), -1)
    qn = np.linalg.norm(NI.rlu_to_cartesian(hkl.reshape(-1, 3)), axis=1)
    C = compton(["Ni"], qn).reshape(vol["intensity"].shape)
    data = vol.copy()
    data["intensity"] = 37.2 * (vol["intensity"] + 0.8 * C) + 40.0
    print("\n## Compton (scale 37.2, amplitude 0.8, constant 40 on the Ni Target volume)")
    print(f"{'background':<12}{'max rel err':>13}{'C11 (GPa)':>11}{'eta2_q':>8}{'max |bin mean|':>16}{'wait (s)':>10}"
          f"{'minimize (s)':>14}")
    for bg in ("compton", "constant"):
        t = time.perf_counter()
        res = data.tds.fit(NI, shells=5, initial=START, background=bg, optimizer=xtds.LM(progress=False))
        d = xtds.diagnostics(res)
        print(f"{bg:<12}{rel_err(res, TARGET):>13.2e}{c11(res):>11.2f}{d.attrs['eta2_q']:>8.3f}"
              f"{float(np.nanmax(np.abs(d['residual_mean_by_q']))):>16.2e}{time.perf_counter() - t:>10.1f}"
              f"{res.attrs['minimize_time_s']:>14.1f}")


def statistics(vol):
    print("\n## Quantum-simulated data ('measured': no record of the statistics)")
    q = vol.tds.simulate(NI, TARGET, shells=5, model=xtds.TDSModel(quantum=True))
    del q.attrs["quantum"]
    for label, kw in (("default (quantum)", {}), ("quantum=False", {"quantum": False})):
        res = q.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False), **kw)
        print(f"{label:<20} max rel err {rel_err(res, TARGET):.2e}")
    print("\n## σ_T = 5 K (classical data at 300 K)")
    pts = vol.tds.symmetrize(crystal=NI).tds.to_points(crystal=NI)
    base = xtds.fit_points(pts, NI, 300.0, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    sig = xtds.fit_points(pts, NI, 300.0, shells=5, initial=START, errors=xtds.Errors(temperature_stderr=5.0),
                          optimizer=xtds.LM(progress=False))
    hi = xtds.fit_points(pts, NI, 305.0, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    widened = np.sqrt(sig["ifc_stderr"].values ** 2 - base["ifc_stderr"].values ** 2)
    shift = np.abs(hi["ifc"].values - base["ifc"].values)
    ratio = widened / shift
    print(f"added error / refit shift at 305 K: min {ratio.min():.5f}, max {ratio.max():.5f}")


def robust():
    ds, truth = six_shell_ni_volume(16)
    res = ds.tds.fit(NI, shells=5, initial=START, optimizer=xtds.LM(progress=False))
    print("\n## 6-shell truth (g0 = -0.03, g1 = -0.015 eV/Å²) fitted with 5 shells: |error| / σ")
    print(f"{'constant':<10}{'truth':>10}{'fit':>10}{'Gauss–Newton':>14}{'robust':>8}")
    for k in ("b0", "b1", "b2", "c0", "c1", "d1"):
        v = float(res["ifc"].sel(constant=k))
        e = abs(v - truth[k])
        print(f"{k:<10}{truth[k]:>10.4f}{v:>10.4f}{e / float(res['ifc_stderr'].sel(constant=k)):>14.1f}"
              f"{e / float(res['ifc_stderr_robust'].sel(constant=k)):>8.1f}")


def lo_to():
    from xtds.io.phonopy import to_phonopy
    from xtds.lattice import dynamics

    print("\n## LO–TO near Γ against phonopy's NAC (THz)")
    cases = {"NaCl": (("Na", "Cl", 5.64), {"Na": 1.1, "Cl": -1.1}, 2.4, {1: 2.0, 2: 0.3}),
             "MgO": (("Mg", "O", 4.21), {"Mg": 1.96, "O": -1.96}, 3.0, {1: 6.0, 2: 0.8})}
    for name, (rs, born, eps, springs) in cases.items():
        crystal = xtds.Crystal.rocksalt(*rs).with_born(born, eps)
        model = xtds.IFCModel(crystal, shells=2)
        phi = torch.tensor(model.central_force(springs))
        ph = to_phonopy(model, phi, 3)
        for d in ([1, 0, 0], [1, 1, 0], [1, 1, 1]):
            k = crystal.rlu_to_cartesian(1e-6 * np.asarray(d, dtype=float))
            nu = dynamics.frequencies(model, phi, k[None]).numpy()[0][3:]
            ph.run_qpoints([[0, 0, 0]], nac_q_direction=k @ np.asarray(ph.primitive.cell).T)
            ref = ph.qpoints.frequencies[0][3:]
            print(f"{name:<5} {str(d):<10} xtds TO/LO {nu[0]:.4f} {nu[2]:.4f}  phonopy {ref[0]:.4f} {ref[2]:.4f}  "
                  f"max |diff| {np.abs(nu - ref).max():.1e}")


def main():
    t = time.perf_counter()
    vol = paper_ni_volume(n_max=16)
    backgrounds(vol)
    statistics(vol)
    robust()
    lo_to()
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
