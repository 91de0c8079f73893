"""Data shipped with xtds.

``paper_ni_ifcs`` gives the force constants of the synthetic Ni benchmark of Suchan et al. 2026
(arXiv:2603.28683), Tables 1–2. Their Target column is the Foiles "u3" EAM Hessian divided by
1.505 and the Starting column the Baskes MEAM Hessian divided by the same factor: numbers for the
synthetic benchmark, not physical nickel (see ``docs/conventions.md``).

``al_arcs`` gives measured powder inelastic neutron spectra of aluminium (ARCS, Su & Li).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

__all__ = ["paper_ni_crystal", "paper_ni_ifcs", "paper_ni_tables", "paper_ni_volume", "small_ni_nexus",
           "six_shell_ni_volume", "al_arcs"]


@lru_cache(maxsize=1)
def paper_ni_tables() -> dict:
    """The paper's Ni tables and set-up, as stored in ``xtds/data/paper_ni.json``."""
    return json.loads(resources.files("xtds").joinpath("data/paper_ni.json").read_text(encoding="utf-8"))


def paper_ni_crystal():
    """The crystal of the paper's synthetic Ni benchmark: fcc Ni with a = 3.52 Å, the paper's value
    (the measured room-temperature cell, ``Crystal.preset("Ni")``, is 3.5239 Å)."""
    from xtds.lattice.crystal import Crystal

    return Crystal.fcc("Ni", a=float(paper_ni_tables()["setup"]["lattice_constant_A"]))


def paper_ni_ifcs(which: str = "target") -> dict[str, float]:
    """The paper's Ni force constants, name → eV/Å² (a0 included).

    ``which``: ``"target"`` (EAM u3 / 1.505), ``"starting"`` (MEAM / 1.505), ``"table1"`` (the
    paper's converged full-3-D fit) or ``"table2"`` (the paper's ±10° wedge fit).
    """
    t = paper_ni_tables()
    keys = {
        "target": t["target_EAM_U3"],
        "starting": t["starting_MEAM"],
        "table1": t["table1_full_3d"]["converged"],
        "table2": t["table2_wedge_10deg"]["converged"],
    }
    if which not in keys:
        raise ValueError(f"which must be one of {sorted(keys)}, got {which!r}")
    return dict(keys[which])


def paper_ni_volume(
    n_max: int = 40,
    temperature: float = 300.0,
    noise_configurations: int | None = None,
    emulate_with: int = 150,
    wedge: float | None = None,
    seed: int = 0,
    ifcs=None,
):
    """The paper's synthetic Ni volume: ``exact`` TDS of the Target IFCs on the 5×5×5 supercell,
    in classical statistics as in the paper (``attrs['quantum'] = 0``, which fits follow).

    Parameters
    ----------
    n_max
        The grid n ∈ [−n_max, n_max]³ of the supercell's reciprocal lattice (H = n/5); 40 gives
        the paper's 81³ grid.
    noise_configurations
        Add the Monte-Carlo noise of a mean over this many sampled configurations (the paper's
        target: 100,000). It is emulated from ``emulate_with`` configurations of the ``sampled``
        model (kspace solver): target = exact + (mean_M − exact) · √(M/N), the same noise
        structure (correlations across q included) at the amplitude of N configurations.
    wedge
        Keep only ±``wedge`` degrees about the H0L plane (the rest is NaN, weight 0): the paper's
        Table 2 set-up with ``wedge=10``.
    ifcs
        The constants to simulate (a mapping of the 5-shell model's names, eV/Å²; e.g. softened
        ones for a temperature series); default the paper's Target.

    Returns
    -------
    ``xr.Dataset`` with ``intensity`` (electrons² per primitive cell) on (H, K, L) r.l.u. of the
    cubic cell, and attrs ``unit_cell``, ``space_group``, ``temperature``.
    """
    import numpy as np
    import torch
    import xarray as xr

    from xtds.io import crystal_attrs
    from xtds.lattice.ifc import IFCModel
    from xtds.observables import PeriodicSupercell, supercell_q_grid, tds_intensity
    from xtds.observables.tds.sampled import sampled_intensity

    ni = paper_ni_crystal()
    model = IFCModel(ni, shells=5)
    phi = model.vector(paper_ni_ifcs("target") if ifcs is None else {k: v for k, v in dict(ifcs).items() if k != "a0"})
    q = supercell_q_grid(ni, 5, n_max)
    with torch.no_grad():
        exact = tds_intensity(model, phi, q, temperature, geometry=PeriodicSupercell(5), quantum=False)
        I = exact
        if noise_configurations:
            mean, _ = sampled_intensity(model, phi, torch.as_tensor(q), temperature, 5, n_samples=emulate_with,
                                        solver="kspace", seed=seed)
            I = exact + (mean - exact) * np.sqrt(emulate_with / noise_configurations)
    n = 2 * n_max + 1
    c = np.arange(-n_max, n_max + 1) / 5.0
    ds = xr.Dataset(
        {"intensity": (("H", "K", "L"), I.numpy().reshape(n, n, n),
                       {"units": "electrons^2 per primitive cell", "long_name": "TDS intensity"})},
        coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
        attrs={**crystal_attrs(ni), "temperature": float(temperature),
               "description": "synthetic Ni TDS, " + ("paper Target IFCs (EAM u3 / 1.505)" if ifcs is None
                                                        else "given IFCs") + ", exact model, 5x5x5 supercell",
               "noise_configurations": int(noise_configurations or 0), "quantum": 0,
               "geometry": repr(PeriodicSupercell(5))},
    )
    if wedge is not None:
        from xtds.volume.prepare import wedge as keep_wedge

        m = keep_wedge(ds, normal=(0, 1, 0), half_angle=wedge)["mask"]
        ds["intensity"] = ds["intensity"].where(~m)
        ds.attrs["wedge"] = f"±{wedge}° about H0L"
    return ds


def small_ni_nexus(path, n_max: int = 12, temperature: float = 300.0, overwrite: bool = False) -> str:
    """Write the small embedded example: the synthetic Ni volume on the 5×5×5 supercell grid
    n ∈ [−n_max, n_max]³ (25³ voxels by default), as an NXrefine-layout NeXus file
    (``entry/masked_transform`` with ``data``, ``weights``, ``Ql``/``Qk``/``Qh``; ``entry/sample``).
    Returns the path. Used by ``make demo`` and the tests."""
    import os

    import xarray as xr

    from xtds.io.nexus import write_nexus

    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    ds = paper_ni_volume(n_max=n_max, temperature=temperature)
    ds["weights"] = xr.ones_like(ds["intensity"])
    write_nexus(ds, path, mode="w", group="masked_transform")
    return path


def six_shell_ni_volume(n_max: int = 16, g=(-0.03, -0.015)):
    """A model-mismatch test case: the paper's Ni Target plus a sixth shell ((2, 2, 2) a/2, constants
    g0, g1 in eV/Å²), ``exact`` and classical on the 6×6×6 supercell grid n ∈ [−n_max, n_max]³ (H = n/6).
    A five-shell fit cannot describe it. Returns (volume, the true constants by name)."""
    import numpy as np
    import torch
    import xarray as xr

    from xtds.io import crystal_attrs
    from xtds.lattice.ifc import IFCModel
    from xtds.observables import PeriodicSupercell, supercell_q_grid, tds_intensity

    ni = paper_ni_crystal()
    truth = {k: v for k, v in paper_ni_ifcs("target").items() if k != "a0"} | {"g0": g[0], "g1": g[1]}
    six = IFCModel(ni, shells=6)
    with torch.no_grad():
        I = tds_intensity(six, six.vector(truth), supercell_q_grid(ni, 6, n_max), 300.0,
                          geometry=PeriodicSupercell(6), quantum=False)
    n = 2 * n_max + 1
    c = np.arange(-n_max, n_max + 1) / 6
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(n, n, n),
                                   {"units": "electrons^2 per primitive cell"})},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={**crystal_attrs(ni), "temperature": 300.0, "quantum": 0,
                           "geometry": repr(PeriodicSupercell(6)),
                           "description": f"Ni Target plus a sixth shell g0={g[0]}, g1={g[1]} eV/Å^2"})
    return ds, truth



#: Source attribution of :func:`al_arcs` (copied from the source's repository; Apache-2.0).
AL_ARCS_SOURCE = (
    "Y. Su and C. Li, 'Uncovering Obscured Phonon Dynamics from Powder Inelastic Neutron Scattering "
    "using Machine Learning' (github suyaokun/2DPhononINS-ML, Apache-2.0; Zenodo doi 10.5281/zenodo.10373288): "
    "polycrystalline Al on ARCS (SNS), Ei = 50 meV, reduced with Mantid to chi''(|Q|, E); energy-dependent "
    "background subtracted and each spectrum normalised as (x - mean)/(max - min) over its valid pixels by the source"
)


def al_arcs():
    """Measured powder inelastic neutron spectra of polycrystalline Al (ARCS, Eᵢ = 50 meV) at 50, 150,
    280, 450 and 640 K, as the source (Su & Li) published them: χ''(|Q|, E) after background
    subtraction and their normalisation (x − mean)/(max − min) over the valid pixels.

    Returns an ``xr.Dataset`` with ``chi`` (temperature, E, Q) (NaN outside the instrument's
    coverage), ``valid`` (E, Q) bool (the 4,144 pixels the source's models use), ``sim_example``
    (E, Q) (one spectrum the source simulated with Phonopy + OCLIMAX) and ``sim_example_label``
    (constant) eV/Å² (its five force constants, in the source's order and units); coordinates
    ``temperature`` (K), ``E`` (meV, bin centres, 0.5 meV bins), ``Q`` (Å⁻¹, |Q| with 2π, step 0.1).
    """
    import numpy as np
    import xarray as xr

    with resources.files("xtds").joinpath("data/al_arcs_powder_ins.npz").open("rb") as fh:
        d = dict(np.load(fh))
    coords = {"temperature": ("temperature", d["temperature_K"].astype(float), {"units": "K"}),
              "E": ("E", d["E_meV"], {"units": "meV", "long_name": "energy transfer"}),
              "Q": ("Q", d["Q_invA"], {"units": "1/angstrom", "long_name": "|Q|"})}
    return xr.Dataset(
        {"chi": (("temperature", "E", "Q"), d["chi"], {"long_name": "chi''(|Q|, E), normalised by the source",
                                                       "units": "1"}),
         "valid": (("E", "Q"), d["valid"], {"long_name": "pixels inside the instrument coverage"}),
         "sim_example": (("E", "Q"), d["sim_example"], {"long_name": "spectrum simulated by the source",
                                                        "units": "1"}),
         "sim_example_label": (("constant",), d["sim_example_label"], {"units": "eV/angstrom^2"})},
        coords=coords,
        attrs={"source": AL_ARCS_SOURCE, "instrument": "ARCS", "incident_energy_meV": 50.0,
               "sample": "polycrystalline Al", "license": "Apache-2.0"},
    )
