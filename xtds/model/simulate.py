"""A forward model evaluated on a volume's (H, K, L) grid: synthetic data and model volumes."""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from xtds.crystal import as_crystal
from xtds.ifc import IFCModel
from xtds.model.geometry import auto_geometry
from xtds.model.observable import TDSIntensity, statistics_of

__all__ = ["simulate"]


def simulate(
    ds: xr.Dataset,
    crystal,
    ifc,
    temperature: float | None = None,
    shells: int | None = None,
    cutoff: float | None = None,
    method: str = "exact",
    geometry="auto",
    quantum: bool | None = None,
    form_factor: str | None = "cromer-mann",
    **options,
) -> xr.Dataset:
    """The model intensity on the dataset's (H, K, L) grid (r.l.u.): a Dataset with ``intensity``
    (electrons² per primitive cell) on (H, K, L), and attrs ``unit_cell``, ``space_group``,
    ``temperature``, ``method`` and ``geometry``.

    ``temperature`` defaults to ``ds.attrs['temperature']``; ``geometry="auto"`` is an infinite
    crystal unless ``ds`` says it was simulated on a periodic supercell whose grid it lies on
    (:func:`~xtds.model.geometry.auto_geometry`). The Laue reduction is used when
    the grid is closed under the group. ``quantum``: None (default) takes the statistics of ``ds``
    when it says (``attrs['quantum']``), else quantum. ``options``: the method's options of
    :class:`~xtds.model.observable.TDSIntensity` (``n_samples``, ``seed``, …).
    """
    if temperature is None:
        temperature = ds.attrs.get("temperature")
        if temperature is None:
            raise ValueError("temperature (K) is required: pass temperature=..., or set ds.attrs['temperature']")
    quantum = statistics_of(ds.attrs, quantum)
    crystal = as_crystal(crystal)
    model = IFCModel(crystal, shells=shells, cutoff=cutoff)
    hkl = np.stack(np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij"), -1).reshape(-1, 3)
    if isinstance(geometry, str):
        if geometry != "auto":
            raise ValueError(f"geometry must be 'auto', a PeriodicSupercell or an InfiniteCrystal, got {geometry!r}")
        geometry, why = auto_geometry(hkl, ds.attrs, method=method)
        logging.getLogger("xtds.model").info("geometry='auto' chose %r: %s", geometry, why)
    obs = TDSIntensity(model, crystal.rlu_to_cartesian(hkl), temperature, method=method, geometry=geometry,
                       quantum=quantum, form_factor=form_factor, **options)
    with torch.no_grad():
        I = obs(model.vector(ifc))
    shape = tuple(ds.sizes[d] for d in "HKL")
    return xr.Dataset(
        {"intensity": (("H", "K", "L"), I.cpu().numpy().reshape(shape),
                       {"units": "electrons^2 per primitive cell", "long_name": f"TDS intensity ({method})"})},
        coords={d: ds[d] for d in "HKL"},
        attrs={"unit_cell": [float(x) for x in crystal.parameters], "space_group": crystal.space_group,
               "temperature": float(temperature), "method": method, "geometry": repr(obs.geometry),
               "quantum": int(quantum)},
    )
