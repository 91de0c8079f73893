"""Volume preparation: symmetrization, masks, wedges, points; numpy and dask agree; cupy where present."""

import itertools
import json
import os

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xtds
from xtds.lattice.laue import LaueGroup
from xtds.volume.laue_grid import grid_operations

NI = xtds.Crystal.fcc("Ni", a=3.52)


def volume(n=9, span=2.0, seed=0, chunks=None, holes=0.2):
    """A random volume on a cubic grid symmetric about 0, with some invalid voxels."""
    rng = np.random.default_rng(seed)
    c = np.linspace(-span, span, n)
    I = rng.random((n, n, n)) + 0.5
    I[rng.random(I.shape) < holes] = np.nan
    ds = xr.Dataset(
        {"intensity": (("H", "K", "L"), I)},
        coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
        attrs={"unit_cell": [3.52, 3.52, 3.52, 90.0, 90.0, 90.0], "space_group": "Fm-3m"},
    )
    return ds.chunk(chunks) if chunks else ds


def explicit_symmetrize(I, w, c, R):
    """The group average by a loop over voxels and operations (coordinates looked up by value)."""
    where = {round(float(x), 6): i for i, x in enumerate(c)}
    out, wout = np.full(I.shape, np.nan), np.zeros(I.shape)
    for i, j, k in itertools.product(*(range(n) for n in I.shape)):
        h = np.array([c[i], c[j], c[k]])
        num = den = 0.0
        for g in R:
            a, b, e = (where[round(float(x), 6)] for x in g @ h)
            if w[a, b, e] > 0:
                num += I[a, b, e] * w[a, b, e]
                den += w[a, b, e]
        wout[i, j, k] = den
        if den > 0:
            out[i, j, k] = num / den
    return out, wout


@pytest.mark.parametrize("laue", ["m-3m", "m-3", "4/mmm", "mmm"])
def test_symmetrize_equals_explicit_loop(laue):
    ds = volume(n=7, seed=1)
    R = LaueGroup.of(laue=laue).matrices
    assert len(R) == {"m-3m": 48, "m-3": 24, "4/mmm": 16, "mmm": 8}[laue]
    out = ds.tds.symmetrize(laue=laue)
    w = np.isfinite(ds["intensity"].values).astype(float)
    ref, wref = explicit_symmetrize(np.nan_to_num(ds["intensity"].values), w, ds["H"].values, R)
    np.testing.assert_allclose(out["intensity"].values, ref, rtol=1e-13)
    np.testing.assert_array_equal(out["weights"].values, wref)


def test_symmetrize_is_invariant_idempotent_and_fills_holes():
    ds = volume(n=9, seed=2, holes=0.5)
    out = ds.tds.symmetrize()  # Laue group from attrs' space group: m-3m
    assert out.attrs["symmetrized"].startswith("m-3m (48")
    I = out["intensity"].values
    for op in grid_operations(LaueGroup.of(laue="m-3m").matrices, [out[d].values for d in "HKL"]):
        J = np.transpose(np.flip(I, op.flip_axes) if op.flip_axes else I, op.axes)
        np.testing.assert_allclose(J, I, rtol=1e-13)
    again = out.tds.symmetrize()
    np.testing.assert_allclose(again["intensity"].values, I, rtol=1e-13)
    holes = ~np.isfinite(ds["intensity"].values)
    filled = holes & np.isfinite(I)
    assert filled.sum() > 0.9 * holes.sum()  # nearly every hole has a valid partner at 50% holes


def test_grid_that_does_not_map_onto_itself():
    ds = volume(n=9).isel(H=slice(1, None))
    with pytest.raises(ValueError, match="not symmetric about 0"):
        ds.tds.symmetrize(laue="mmm")
    with pytest.raises(ValueError, match="not a symmetry of this crystal"):
        volume(n=9).tds.symmetrize(laue="6/mmm")  # the file says Fm-3m
    # a descending axis was reported as "axes H and K differ"; the sorted volume symmetrizes alike
    full = volume(n=9)
    for messy in (full.isel(H=slice(None, None, -1)), full.isel(K=[0, 2, 1, 3, 4, 5, 6, 7, 8])):
        with pytest.raises(ValueError, match=r"not in increasing order .*ds.sortby\(\['H', 'K', 'L'\]\)"):
            messy.tds.symmetrize(laue="m-3m")
        xr.testing.assert_allclose(messy.sortby(["H", "K", "L"]).tds.symmetrize(laue="m-3m"),
                                   full.tds.symmetrize(laue="m-3m"))


def test_mask_combination_and_fraction():
    ds = volume(n=21, span=2.0, holes=0.0)
    m = ds.tds.mask(bragg=0.15, crystal=NI)
    allowed = {(h, k, l) for h, k, l in itertools.product(range(-2, 3), repeat=3) if len({h % 2, k % 2, l % 2}) == 1}
    hh, kk, ll = np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij")
    near = np.zeros(hh.shape, bool)
    for G in allowed:
        near |= (hh - G[0]) ** 2 + (kk - G[1]) ** 2 + (ll - G[2]) ** 2 <= 0.15**2
    np.testing.assert_array_equal(m["mask"].values, near)
    assert m["mask"].values[10, 10, 10] and not m["mask"].values[15, 10, 10]  # (0,0,0) yes, (1,0,0) forbidden
    q = m.tds.mask(invalid=False, q_min=1.0, q_max=5.0)
    qn = 2 * np.pi / 3.52 * np.sqrt(hh**2 + kk**2 + ll**2)
    np.testing.assert_array_equal(q["mask"].values, near | (qn < 1.0) | (qn > 5.0))
    assert q.tds.masked_fraction() == pytest.approx(float((near | (qn < 1) | (qn > 5)).mean()))
    with pytest.raises(ValueError, match="leave no valid voxel"):
        ds.tds.mask(q_min=100.0)
    with pytest.raises(ValueError, match="needs the structure"):
        ds.tds.mask(bragg=0.1)


def test_bragg_radius_in_inverse_angstrom_and_diamond_extinctions():
    si = xtds.Crystal.preset("Si")
    refl = {tuple(r) for r in xtds.lattice.reflections.allowed_reflections(si, 4).tolist()}
    assert (1, 1, 1) in refl and (2, 2, 0) in refl and (4, 0, 0) in refl
    assert (2, 0, 0) not in refl and (2, 2, 2) not in refl and (1, 0, 0) not in refl
    ds = volume(n=21, holes=0.0)
    a = ds.tds.mask(bragg=0.1, crystal=NI)["mask"].values
    b = ds.tds.mask(bragg=0.1 * 2 * np.pi / 3.52, bragg_units="1/angstrom", crystal=NI)["mask"].values
    np.testing.assert_array_equal(a, b)


def test_wedge_equals_explicit_angle():
    ds = volume(n=17, holes=0.0)
    w = ds.tds.wedge(normal=(0, 1, 0), half_angle=10.0)
    hh, kk, ll = np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij")
    norm = np.sqrt(hh**2 + kk**2 + ll**2)
    angle = np.degrees(np.arcsin(np.divide(np.abs(kk), norm, out=np.zeros_like(norm), where=norm > 0)))
    np.testing.assert_array_equal(~w["mask"].values, angle <= 10.0)
    assert 0.05 < (~w["mask"].values).mean() < 0.3
    w2 = ds.tds.wedge(normal=(1, 1, 0), half_angle=5.0)
    n = np.array([1, 1, 0]) / np.sqrt(2)
    sin2 = np.divide(np.abs(hh * n[0] + kk * n[1]), norm, out=np.zeros_like(norm), where=norm > 0)
    ang2 = np.degrees(np.arcsin(sin2))
    np.testing.assert_array_equal(~w2["mask"].values, ang2 <= 5.0)


def test_points_irreducible_compression():
    ds = volume(n=9, holes=0.1).tds.symmetrize()
    full = ds.tds.to_points(irreducible=False)
    irr = ds.tds.to_points()
    assert full.sizes["point"] == int(np.isfinite(ds["intensity"].values).sum())
    assert irr["multiplicity"].sum() == full.sizes["point"]
    assert full.sizes["point"] / irr.sizes["point"] > 20  # ~48× on a big grid, fewer on 9³
    # a weighted loss over the compressed points equals the loss over all voxels
    f = lambda p: float((p["multiplicity"] * np.log(p["intensity"])).sum())  # noqa: E731
    assert f(irr) == pytest.approx(f(full), rel=1e-12)
    hkl_norm = np.sqrt(full.H**2 + full.K**2 + full.L**2)
    np.testing.assert_allclose(np.linalg.norm(full["q"].values, axis=1), 2 * np.pi / 3.52 * hkl_norm)


def test_rebin_weighted_mean():
    ds = volume(n=9, holes=0.3)
    r = ds.tds.rebin(3)
    I, w = ds["intensity"].values, np.isfinite(ds["intensity"].values)
    blk = (slice(3, 6), slice(0, 3), slice(6, 9))
    assert float(r["intensity"][1, 0, 2]) == pytest.approx(np.nanmean(I[blk]))
    assert float(r["weights"][1, 0, 2]) == w[blk].sum()
    assert float(r["H"][1]) == pytest.approx(ds["H"].values[3:6].mean())


def test_add_q_units():
    q = volume(n=5).tds.add_q()
    assert q["qx"].attrs["units"] == "1/angstrom"
    assert float(q["q"].sel(H=1.0, K=1.0, L=1.0)) == pytest.approx(2 * np.pi / 3.52 * np.sqrt(3))


@pytest.mark.heavy
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(3, 6), holes=st.floats(0.0, 0.6))
def test_numpy_and_dask_agree(seed, chunk, holes):
    ds = volume(n=11, seed=seed, holes=holes)
    dk = ds.chunk({"H": chunk, "K": chunk, "L": chunk})
    a = ds.tds.mask(bragg=0.2, crystal=NI).tds.wedge(half_angle=30).tds.symmetrize()
    b = dk.tds.mask(bragg=0.2, crystal=NI).tds.wedge(half_angle=30).tds.symmetrize()
    assert isinstance(b["intensity"].data, da.Array)
    np.testing.assert_allclose(b["intensity"].values, a["intensity"].values, rtol=1e-13)
    np.testing.assert_array_equal(b["weights"].values, a["weights"].values)


def test_dask_pipeline_is_lazy():
    from tests.test_io import ComputeCounter

    ds = volume(n=11, chunks={"H": 4, "K": 4, "L": 4})
    counter = ComputeCounter(limit=0)
    with dask.config.set(scheduler=counter):
        out = ds.tds.mask(bragg=0.1, crystal=NI, q_max=8.0).tds.wedge().tds.symmetrize().tds.add_q()
    assert counter.count == 0
    assert out["intensity"].chunks is not None


def _gpu():
    """cupy with a usable GPU; skips without one, unless XTDS_REQUIRE_GPU=1 (then it fails)."""
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as err:
        if os.environ.get("XTDS_REQUIRE_GPU"):
            raise AssertionError(f"XTDS_REQUIRE_GPU is set but cupy/GPU is unusable: {err}") from err
        pytest.skip("cupy with a GPU is not available (set XTDS_REQUIRE_GPU=1 to fail instead)")
    return cp


@pytest.mark.parametrize("lazy", [False, True])
def test_cupy_matches_numpy(lazy):
    cp = _gpu()
    ds = volume(n=11, seed=3, holes=0.3)
    ref = ds.tds.mask(bragg=0.2, crystal=NI).tds.wedge(half_angle=30).tds.symmetrize()
    src = ds.chunk({"H": 4, "K": 4, "L": 4}) if lazy else ds
    g = src.tds.as_backend("cupy").tds.mask(bragg=0.2, crystal=NI).tds.wedge(half_angle=30).tds.symmetrize()
    got = g["intensity"].data
    got = got.compute() if lazy else got
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(got), ref["intensity"].values, rtol=1e-12)


def test_backend_errors():
    with pytest.raises(ValueError, match="'numpy', 'cupy'"):
        volume().tds.as_backend("jax")


def test_to_points_max_points_samples_orbits_exactly():
    """On a volume of far more valid voxels than ``max_points``, the orbits of random voxels are
    reduced from their members alone: each sampled point equals the full reduction's point of the
    same orbit (mean, σ of the mean, number of valid members), and the draw follows the seed."""
    import xtds
    from xtds.volume import prepare as vol

    ni = xtds.datasets.paper_ni_crystal()
    c = np.round(np.arange(-2, 2 + 1e-9, 0.1), 6)
    rng = np.random.default_rng(0)
    I = rng.random((41,) * 3) + 1
    sigma = 0.01 * I * (1 + rng.random(I.shape))
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I), "sigma": (("H", "K", "L"), sigma),
                     "mask": (("H", "K", "L"), rng.random(I.shape) < 0.2)},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"})
    ds = vol.mask(ds, bragg=0.1, crystal=ni)
    full = vol.to_points(ds, crystal=ni)
    part = vol.to_points(ds, crystal=ni, max_points=25, seed=3)
    assert part.sizes["point"] == 25 and json.loads(part.attrs["subset"])["seed"] == 3

    def canon(p):  # m-3m: the orbit of h is fixed by the sorted |h|
        return [tuple(x) for x in np.sort(np.abs(np.round(np.stack([p[d].values for d in "HKL"], 1), 6)), axis=1)]

    where = {k: i for i, k in enumerate(canon(full))}
    at = [where[k] for k in canon(part)]
    for v in ("intensity", "sigma", "multiplicity", "weight"):
        np.testing.assert_allclose(part[v].values, full[v].values[at], rtol=1e-12)
    again = vol.to_points(ds, crystal=ni, max_points=25, seed=3)
    np.testing.assert_array_equal(again["H"].values, part["H"].values)
    assert full.attrs["n_points_available"] == full.sizes["point"]
    voxels = vol.to_points(ds, crystal=ni, irreducible=False, max_points=100, seed=1)  # the uniform subset
    assert voxels.sizes["point"] == 100 and voxels.attrs["n_points_available"] == voxels.attrs["n_valid_voxels"]


@pytest.mark.parametrize(("radius", "units"), [(10, "rlu"), (0.87, "rlu"), (-0.1, "rlu"), (float("nan"), "rlu"),
                                               (1.6, "1/angstrom"), (0.1, "r.l.u"), ("0.1", "rlu")])
def test_a_bragg_radius_that_leaves_nothing_between_the_peaks_is_refused_at_once(radius, units):
    """bragg=10 (a typo for 0.1) ran for minutes before 'no valid voxel': radii of half the spacing
    of the nearest reflections or more (0.866 r.l.u., 1.546 Å⁻¹ for Ni) are refused before any work."""
    import time

    ds = volume(n=11)
    t = time.perf_counter()
    if radius == "0.1":  # a number given as text is read as one
        ds.tds.mask(bragg=radius, crystal=NI)
        return
    with pytest.raises(ValueError, match="bragg"):
        ds.tds.mask(bragg=radius, bragg_units=units, crystal=NI)
    assert time.perf_counter() - t < 5
