"""Symmetrization for the hexagonal and trigonal Laue classes, and hand-given classes checked."""

import numpy as np
import pytest
import xarray as xr

import xtds
from xtds.lattice.laue import LaueGroup

MG = xtds.Crystal.preset("Mg")


def hex_volume(n=6, step=0.25, seed=0, holes=0.1):
    rng = np.random.default_rng(seed)
    c = np.arange(-n, n + 1) * step
    I = rng.random((len(c),) * 3) + 0.5
    I[rng.random(I.shape) < holes] = np.nan  # masked voxels
    return xr.Dataset({"intensity": (("H", "K", "L"), I)}, coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                      attrs={"temperature": 300.0})


def brute_force(ds, group):
    """The orbit mean over the members inside the box and valid, by looking each image up."""
    c = ds["H"].values
    n0 = int(np.argmin(np.abs(c)))
    I = ds["intensity"].values
    out = np.full(I.shape, np.nan)
    for idx in np.ndindex(I.shape):
        h = np.array(idx) - n0
        vals = []
        for R in group.matrices:
            g = R @ h + n0
            if np.all(g >= 0) and np.all(g < len(c)) and np.isfinite(I[tuple(g)]):
                vals.append(I[tuple(g)])
        if vals:
            out[idx] = np.mean(vals)
    return out


@pytest.mark.heavy
@pytest.mark.parametrize("laue", ["6/mmm", "6/m", "-3m", "-3"])
def test_hexagonal_symmetrization_is_the_explicit_average(laue):
    ds = hex_volume()
    group = LaueGroup.of(crystal=MG) if laue == "6/mmm" else LaueGroup.of(laue=laue)
    assert len(group) == {"6/mmm": 24, "6/m": 12, "-3m": 12, "-3": 6}[laue]
    sym = ds.tds.symmetrize(crystal=MG) if laue == "6/mmm" else ds.tds.symmetrize(laue=laue, crystal=MG)
    np.testing.assert_allclose(sym["intensity"].values, brute_force(ds, group), rtol=1e-12, equal_nan=True)
    again = sym.tds.symmetrize(crystal=MG) if laue == "6/mmm" else sym.tds.symmetrize(laue=laue, crystal=MG)
    np.testing.assert_allclose(again["intensity"].values, sym["intensity"].values, rtol=1e-12, equal_nan=True)
    lazy = ds.chunk({"H": 5}).tds.symmetrize(crystal=MG) if laue == "6/mmm" else None
    if lazy is not None:
        np.testing.assert_allclose(lazy["intensity"].values, sym["intensity"].values, rtol=1e-12, equal_nan=True)


def test_a_wrong_laue_class_is_refused():
    ds = hex_volume(n=3)
    with pytest.raises(ValueError, match="not a symmetry of this crystal"):
        ds.tds.symmetrize(laue="m-3m", crystal=MG)
    rutile = xtds.Crystal.preset("TiO2")
    with pytest.raises(ValueError, match="not a symmetry of this crystal"):
        ds.tds.symmetrize(laue="m-3m", crystal=rutile)
    with pytest.raises(ValueError, match="same step"):
        ds.assign_coords(K=ds["K"] * 2).tds.symmetrize(crystal=MG)


def test_points_of_a_hexagonal_volume_merge_orbits():
    ds = hex_volume(n=4, holes=0.0)
    sym = ds.tds.symmetrize(crystal=MG)
    pts = sym.tds.to_points(crystal=MG)
    assert pts.sizes["point"] < ds["intensity"].size / 6
    assert int(pts["multiplicity"].sum()) == ds["intensity"].size
