"""The one-read reduction of a lazy volume to its irreducible points (xtds.volume.reduce) against
the in-memory reduction of the same volume (the orbits grouped by their canonical keys)."""

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xtds.lattice.laue import LaueGroup
from xtds.volume import prepare as vol
from xtds.volume.reduce import sign_folding_group


def grid(n, span=2.0):
    return np.round(np.linspace(-span, span, n), 9)


#: A cell with each group's metric, so that |q| is the same on every member of an orbit.
CELLS = {"m-3m": [3.9, 3.9, 3.9], "m-3": [3.9, 3.9, 3.9], "4/mmm": [3.9, 3.9, 4.4], "mmm": [3.9, 4.1, 4.4],
         "2/m": [3.9, 4.1, 4.4]}


def make(shape, seed=0, weights=False, sigma=False, dtype=np.float64, laue="m-3m"):
    rng = np.random.default_rng(seed)
    I = (rng.random(shape) + 0.5).astype(dtype)
    I[rng.random(shape) < 0.05] = np.nan  # bad voxels
    data = {"intensity": (("H", "K", "L"), I), "mask": (("H", "K", "L"), rng.random(shape) < 0.15)}
    if weights:
        data["weights"] = (("H", "K", "L"), rng.integers(0, 4, shape).astype(float))
    if sigma:
        data["sigma"] = (("H", "K", "L"), 0.05 * (1 + rng.random(shape)))
    return xr.Dataset(data, coords={d: (d, grid(n), {"units": "rlu"}) for d, n in zip("HKL", shape, strict=True)},
                      attrs={"unit_cell": CELLS[laue] + [90.0, 90.0, 90.0]})


def canonical_keys(pts, shape, laue):
    """The orbit key of each point's grid index (centred integer coordinates)."""
    idx = np.stack([np.abs(np.asarray(pts[d].values)[:, None] - grid(n)[None, :]).argmin(1)
                    for d, n in zip("HKL", shape, strict=True)], 1)
    return LaueGroup.of(laue=laue).orbit_keys(2 * idx - (np.asarray(shape) - 1))[1]


@pytest.mark.parametrize(
    ("laue", "shape", "chunks", "weights", "sigma", "dtype"),
    [
        ("m-3m", (15, 15, 15), 4, False, False, np.float64),  # odd: the planes through 0; slabs straddle it
        ("m-3m", (12, 12, 12), 5, True, True, np.float64),  # even: no plane through 0; weights and σ
        ("m-3", (11, 11, 11), 3, False, True, np.float32),  # cyclic permutations only; float32 sums
        ("4/mmm", (10, 10, 7), 6, True, False, np.float64),  # H ↔ K only, L apart
        ("mmm", (9, 7, 8), 2, False, True, np.float64),  # three axes of different lengths
    ],
)
def test_folded_points_equal_the_in_memory_reduction(laue, shape, chunks, weights, sigma, dtype):
    ds = make(shape, weights=weights, sigma=sigma, dtype=dtype, laue=laue)
    full = vol.to_points(ds, laue=laue)  # numpy: the in-memory reduction
    lazy = ds.chunk({"H": chunks, "K": 4, "L": 5})
    folded = vol.to_points(lazy, laue=laue)
    assert folded.sizes["point"] == full.sizes["point"]
    # the same orbits in the same order (by canonical key), each represented by one of its members
    np.testing.assert_array_equal(canonical_keys(folded, shape, laue), canonical_keys(full, shape, laue))
    rtol = 1e-6 if dtype == np.float32 else 1e-12  # float32: sums of ≤ 8 values in float32
    for v in ("intensity", "weight") + (("sigma",) if sigma else ()):
        np.testing.assert_allclose(folded[v].values, full[v].values, rtol=rtol)
    np.testing.assert_array_equal(folded["multiplicity"].values, full["multiplicity"].values)
    np.testing.assert_allclose(np.linalg.norm(folded["q"].values, axis=1),
                               np.linalg.norm(full["q"].values, axis=1), rtol=1e-12)
    assert folded.attrs["n_valid_voxels"] == full.attrs["n_valid_voxels"]


def test_symmetrized_sigma_and_max_points():
    ds = make((13, 13, 13), sigma=True).tds.symmetrize(laue="m-3m")
    full = vol.to_points(ds, laue="m-3m")
    folded = vol.to_points(ds.chunk({"H": 3}), laue="m-3m")
    np.testing.assert_allclose(folded["sigma"].values, full["sigma"].values, rtol=1e-12)
    part = vol.to_points(ds.chunk({"H": 3}), laue="m-3m", max_points=20, seed=1)
    assert part.sizes["point"] == 20 and part.attrs["n_points_available"] == full.sizes["point"]
    keys = canonical_keys(full, (13,) * 3, "m-3m")
    at = np.searchsorted(keys, canonical_keys(part, (13,) * 3, "m-3m"))
    np.testing.assert_allclose(part["intensity"].values, full["intensity"].values[at], rtol=1e-12)


def test_each_block_is_read_once():
    """The fold reads every block of the source once (the intensity and the weights of a slab are
    one graph), whatever the number of slabs in flight."""
    n, calls = 12, []

    def block(x, block_info=None):
        calls.append(block_info[None]["chunk-location"])
        rng = np.random.default_rng(sum(block_info[None]["chunk-location"]))
        return rng.random(x.shape) + 0.5

    src = da.zeros((n, n, n), chunks=(3, 6, 4)).map_blocks(block, dtype=float)
    ds = xr.Dataset({"intensity": (("H", "K", "L"), src)}, coords={d: (d, grid(n), {"units": "rlu"}) for d in "HKL"},
                    attrs={"unit_cell": [3.52, 3.52, 3.52, 90.0, 90.0, 90.0]})
    with dask.config.set(scheduler="threads"):
        pts = vol.to_points(ds, laue="m-3m")
    assert len(calls) == src.npartitions and len(set(calls)) == src.npartitions
    assert pts["multiplicity"].sum() == n**3


@pytest.mark.heavy
@pytest.mark.parametrize("scheduler", ["threads", "synchronous", "processes"])
def test_same_points_whatever_the_scheduling(scheduler, monkeypatch):
    """The blocks in flight are capped by memory (IN_FLIGHT_BYTES), and the result does not depend on
    the scheduler or on how many blocks are in flight."""
    from xtds.volume import reduce

    ds = make((11, 11, 11), weights=True, laue="m-3m").chunk({"H": 3, "K": 4, "L": 5})
    with dask.config.set(scheduler=scheduler):
        many = vol.to_points(ds, laue="m-3m")
        monkeypatch.setattr(reduce, "IN_FLIGHT_BYTES", 1)  # no budget: one block at a time
        assert reduce.default_in_flight(ds["intensity"].chunks, np.float64) == 1
        one = vol.to_points(ds, laue="m-3m")
    for v in ("intensity", "weight", "multiplicity"):
        np.testing.assert_allclose(one[v].values, many[v].values, rtol=1e-12)
    monkeypatch.setattr(reduce, "IN_FLIGHT_BYTES", 512 * 2**20)
    # 4 M-voxel float32 blocks (open_volume's NeXus blocks): at most 4 in flight, whatever the cores
    assert 1 <= reduce.default_in_flight(((100,) * 10, (200,) * 5, (200,) * 5), np.float32) <= 4


def test_groups_that_cannot_be_folded():
    assert sign_folding_group(LaueGroup.of(laue="m-3m").matrices) is not None
    assert len(sign_folding_group(LaueGroup.of(laue="m-3m").matrices)) == 6
    assert len(sign_folding_group(LaueGroup.of(laue="m-3").matrices)) == 3
    for laue in ("-1", "2/m", "4/m", "6/mmm", "-3m"):  # no full set of sign changes, or axes mixed
        assert sign_folding_group(LaueGroup.of(laue=laue).matrices) is None
    # a lazy volume with such a group goes the in-memory way, with the same result
    ds = make((9, 9, 9), laue="2/m")
    a, b = vol.to_points(ds, laue="2/m"), vol.to_points(ds.chunk({"H": 3}), laue="2/m")
    np.testing.assert_allclose(a["intensity"].values, b["intensity"].values, rtol=1e-12)
    with pytest.raises(ValueError, match="symmetric about 0"):
        vol.to_points(make((9, 9, 9), laue="mmm").isel(H=slice(1, None)).chunk({"H": 3}), laue="mmm")
