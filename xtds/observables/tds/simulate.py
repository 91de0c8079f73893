"""A forward model evaluated on a volume's (H, K, L) grid: synthetic data and model volumes."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xtds.lattice.crystal import as_crystal, measured_cell
from xtds.lattice.ifc import IFCModel
from xtds.observables.tds.settings import as_tds_model

__all__ = ["simulate", "ifc_model"]


def ifc_model(crystal, shells: int | None = None, cutoff: float | None = None, cell=None) -> IFCModel:
    """The :class:`~xtds.IFCModel` of a crystal argument: an IFCModel as it is (then ``shells`` and
    ``cutoff`` must be None), or a Crystal, preset name or CIF path with ``shells`` or ``cutoff``;
    ``cell``: the data's measured cell, which a preset name takes (:func:`~xtds.lattice.crystal.as_crystal`)."""
    if isinstance(crystal, IFCModel):
        if shells is not None or cutoff is not None:
            raise ValueError("give the range once: an IFCModel already has its shells/cutoff (pass the crystal "
                             "with shells=..., or the IFCModel alone)")
        return crystal
    if shells is not None and not isinstance(shells, (int, np.integer)):
        raise ValueError(f"shells must be a positive integer (a count of neighbour shells), got {shells!r}; the "
                         "arguments are (crystal, shells, initial), the temperature is a keyword: temperature=...")
    return IFCModel(as_crystal(crystal, cell), shells=shells, cutoff=cutoff)


def simulate(ds: xr.Dataset, crystal, ifc, temperature: float | None = None, shells: int | None = None,
             model=None) -> xr.Dataset:
    """The model intensity on the dataset's (H, K, L) grid (r.l.u.): a Dataset with ``intensity``
    (electrons² per primitive cell) on (H, K, L), and attrs ``unit_cell``, ``space_group``,
    ``temperature``, ``method``, ``geometry`` and ``quantum``.

    ``crystal``: a Crystal (preset name, CIF path) with ``shells``, or an
    :class:`~xtds.IFCModel`; ``ifc``: the free constants (mapping, DataArray, array).
    ``temperature`` defaults to ``ds.attrs['temperature']``. ``model``: the forward model's settings
    (:class:`~xtds.observables.tds.settings.TDSModel` or a dict of them; default exact): its
    ``geometry="auto"`` is an infinite crystal unless ``ds`` says it was simulated on a periodic
    supercell whose grid it lies on, its ``quantum=None`` the statistics of ``ds`` when it says
    (``attrs['quantum']``), else quantum. The Laue reduction is used when the grid is closed
    under the group.
    """
    if temperature is None:
        temperature = ds.attrs.get("temperature")
        if temperature is None:
            raise ValueError("temperature (K) is required: pass temperature=..., or set ds.attrs['temperature']")
    settings = as_tds_model(model)
    ifc_m = ifc_model(crystal, shells, cell=measured_cell(ds.attrs))
    cryst = ifc_m.crystal
    hkl = np.stack(np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij"), -1).reshape(-1, 3)
    obs, _ = settings.observable(ifc_m, cryst.rlu_to_cartesian(hkl), temperature, hkl=hkl, attrs=ds.attrs,
                                 check=False)
    with torch.no_grad():
        I = obs(ifc_m.vector(ifc))
    shape = tuple(ds.sizes[d] for d in "HKL")
    return xr.Dataset(
        {"intensity": (("H", "K", "L"), I.cpu().numpy().reshape(shape),
                       {"units": "electrons^2 per primitive cell", "long_name": f"TDS intensity ({obs.method})"})},
        coords={d: ds[d] for d in "HKL"},
        attrs={"unit_cell": [float(x) for x in cryst.parameters], "space_group": cryst.space_group,
               "temperature": float(temperature), "method": obs.method, "geometry": repr(obs.geometry),
               "quantum": int(obs.quantum)},
    )
