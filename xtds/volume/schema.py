"""What a volume Dataset is: ``intensity`` on H, K, L in r.l.u., and the attrs that name its crystal.

The readers and writers of :mod:`xtds.io` produce and check this schema; the volume functions
only consume it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xtds.lattice.laue import space_group_number

__all__ = ["RLU_UNITS", "INV_ANGSTROM", "CELL_RTOL", "is_rlu", "check_volume", "crystal_attrs", "check_crystal"]

#: How far (relative) a crystal's cell may differ from a volume's ``unit_cell`` attribute.
CELL_RTOL = 0.02
#: A crystal whose cell lengths differ from the volume's by more than this is warned of (0.1 % in |Q|
#: moves fitted constants by more than typical statistical errors).
CELL_WARN = 1e-3

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
    extra = [d for d in ds["intensity"].dims if d not in ("H", "K", "L")]
    if extra:
        first = {d: 0 for d in extra}
        raise ValueError(
            f"'intensity' has dims {ds['intensity'].dims}: xtds works on one (H, K, L) volume at a time; select one "
            f"along {extra} (e.g. ds.isel({', '.join(f'{d}=0' for d in first)})) or loop over them"
        )
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


def unit_cell_of(value) -> np.ndarray:
    """``attrs['unit_cell']`` as six finite numbers (a, b, c in Å; α, β, γ in degrees), from a
    sequence or a text of six numbers; a ``ValueError`` that says what it holds otherwise."""
    if isinstance(value, (str, bytes)):
        value = (value.decode() if isinstance(value, bytes) else value).replace(",", " ").strip("[]() ").split()
    try:
        cell = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        cell = None
    if cell is None or cell.shape != (6,) or not np.all(np.isfinite(cell)):
        raise ValueError(f"the volume's attrs['unit_cell'] = {value!r} is not six finite numbers a, b, c (Å), "
                         "α, β, γ (degrees): correct it, e.g. ds.attrs['unit_cell'] = list(crystal.parameters)")
    if np.any(cell[:3] <= 0) or np.any(cell[3:] <= 0) or np.any(cell[3:] >= 180):
        raise ValueError(f"the volume's attrs['unit_cell'] = {cell.tolist()}: lengths must be positive (Å) and "
                         "angles between 0 and 180 degrees")
    return cell


def check_crystal(ds: xr.Dataset, crystal, rtol: float = CELL_RTOL, require_cell: bool = False) -> None:
    """A ``ValueError`` when ``crystal`` does not describe the volume: its cell differs from
    ``attrs['unit_cell']`` by more than ``rtol``, or its space group from ``attrs['space_group']``;
    with ``require_cell``, also when the volume records no cell (nothing to check the crystal by)."""
    if not hasattr(crystal, "parameters"):
        raise TypeError(f"crystal must be an xtds.Crystal (e.g. xtds.Crystal.preset('Ni')), got {crystal!r}")
    mine = crystal_attrs(crystal)
    if require_cell and "unit_cell" not in ds.attrs:
        raise ValueError(
            f"the volume records no unit cell (attrs['unit_cell']), so nothing shows that {crystal!r} is the crystal "
            "measured (a wrong crystal fits without a word): say so with ds.attrs['unit_cell'] = "
            "list(crystal.parameters) (a, b, c in Å, α, β, γ in degrees), or open the volume with "
            "xtds.open_volume(path, crystal=...)"
        )
    if "unit_cell" in ds.attrs:
        theirs = unit_cell_of(ds.attrs["unit_cell"])
        if not np.allclose(theirs, mine["unit_cell"], rtol=rtol):
            raise ValueError(
                f"the volume's unit cell {np.round(theirs, 4).tolist()} differs from the crystal's "
                f"{np.round(mine['unit_cell'], 4).tolist()} by more than {rtol:.0%}: pass a Crystal with the "
                "measured lattice (e.g. Crystal.fcc('Ni', a=...)), or check the file"
            )
        off = float(np.max(np.abs(np.asarray(theirs[:3]) / np.asarray(mine["unit_cell"][:3]) - 1)))
        if off > CELL_WARN:
            import warnings

            warnings.warn(
                f"the crystal's cell {np.round(mine['unit_cell'][:3], 5).tolist()} Å differs from the volume's "
                f"{np.round(theirs[:3], 5).tolist()} Å by {off:.2%}: every |Q| and so every constant follows the "
                "crystal's. Pass the crystal at the measured cell (a preset name, 'Ni', takes the volume's)",
                UserWarning, stacklevel=3)
    if str(ds.attrs.get("space_group", "")).strip():
        try:
            theirs = space_group_number(ds.attrs["space_group"])
        except ValueError as err:
            raise ValueError(f"the volume's attrs['space_group']: {err}; correct it (or delete it)") from None
        if theirs != space_group_number(mine["space_group"]):
            raise ValueError(
                f"the volume's space group {ds.attrs['space_group']!r} is not the crystal's {mine['space_group']!r}: "
                "pass the crystal that was measured, or correct ds.attrs['space_group']"
            )
