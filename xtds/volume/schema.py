"""What a volume Dataset is: ``intensity`` on H, K, L in r.l.u., and the attrs that name its crystal.

The readers and writers of :mod:`xtds.io` produce and check this schema; the volume functions
only consume it.
"""

from __future__ import annotations

import xarray as xr

__all__ = ["RLU_UNITS", "INV_ANGSTROM", "is_rlu", "check_volume", "crystal_attrs"]

#: Spellings of reciprocal lattice units accepted on H, K, L (compared in lower case).
RLU_UNITS = frozenset({"rlu", "r.l.u.", "r.l.u", "reciprocal lattice units"})

#: The unit string of Cartesian q (Å⁻¹, 2π included).
INV_ANGSTROM = "1/angstrom"


def is_rlu(units) -> bool:
    """True for a spelling of r.l.u. (see :data:`RLU_UNITS`)."""
    return str(units or "").strip().lower() in RLU_UNITS


def check_volume(ds: xr.Dataset) -> xr.Dataset:
    """Validate a volume Dataset: ``intensity`` on dims containing H, K, L with r.l.u. units."""
    if "intensity" not in ds:
        raise ValueError(f"the volume has no 'intensity' variable (it has {list(ds.data_vars)}); "
                         "rename the signal to 'intensity'")
    for d in "HKL":
        if d not in ds["intensity"].dims or d not in ds.coords:
            raise ValueError("'intensity' must have dims and coordinates H, K, L (r.l.u.); "
                             f"it has dims {ds['intensity'].dims}")
        if not is_rlu(ds[d].attrs.get("units")):
            raise ValueError(
                f"coordinate {d} has units {ds[d].attrs.get('units')!r}: xtds needs H, K, L in reciprocal lattice "
                f"units; if they are, set ds['{d}'].attrs['units'] = 'rlu'"
            )
    return ds


def crystal_attrs(crystal) -> dict:
    """The attrs that describe a crystal's cell in a volume: unit_cell (Å, degrees), space_group."""
    return {"unit_cell": [float(x) for x in crystal.parameters], "space_group": crystal.space_group}
