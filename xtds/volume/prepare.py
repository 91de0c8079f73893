"""The xarray layer of the volume kernels: validate, label, and map the kernels over blocks.

Every function takes a volume Dataset (``intensity`` on H, K, L in r.l.u.; optional ``weights``
and ``mask``) and returns a new one; nothing is computed for dask-backed data unless the function
says so. Masks follow one convention: **True = excluded**.
"""

from __future__ import annotations

import json

import dask
import numpy as np
import xarray as xr

from xtds.errors import triple
from xtds.lattice.laue import GRID_TOL, LaueGroup, laue_class_of
from xtds.lattice.reflections import allowed_reflections
from xtds.volume import masks as _masks
from xtds.volume.arrays import array_module as _xp
from xtds.volume.laue_grid import grid_operations
from xtds.volume.reduce import fold_points, sign_folding_group
from xtds.volume.schema import INV_ANGSTROM as _INV_A
from xtds.volume.schema import check_volume, unit_cell_of
from xtds.volume.sources import reading
from xtds.volume.symmetrize import symmetrize_array

__all__ = [
    "reciprocal_of",
    "add_q",
    "weights_of",
    "mask",
    "wedge",
    "symmetrize",
    "masked_fraction",
    "to_points",
    "rebin",
    "as_backend",
    "laue_of",
]


def _is_dask(x) -> bool:
    import dask.array as da

    return isinstance(x, da.Array)


def reciprocal_of(ds: xr.Dataset, crystal=None) -> np.ndarray:
    """The reciprocal matrix (rows b1, b2, b3, Å⁻¹, 2π included) from ``crystal`` or ``attrs['unit_cell']``."""
    if crystal is not None:
        return np.asarray(crystal.reciprocal)
    if "unit_cell" not in ds.attrs:
        raise ValueError(
            "the volume has no unit cell: pass crystal=xtds.Crystal.preset('Ni') (or another Crystal), or set "
            "ds.attrs['unit_cell'] = [a, b, c, alpha, beta, gamma] (Å, degrees)"
        )
    from xtds.lattice.crystal import Crystal

    a, b, c, al, be, ga = (float(x) for x in unit_cell_of(ds.attrs["unit_cell"]))
    lattice_only = Crystal.from_parameters(a, b, c, al, be, ga, [[0, 0, 0]], ["H"])
    return np.asarray(lattice_only.reciprocal)


def check_subgroup(group: LaueGroup, of: LaueGroup) -> None:
    """A ``ValueError`` unless every operation of ``group`` is one of ``of`` (the crystal's): averaging
    over operations the crystal does not have mixes inequivalent points and corrupts the data."""
    have = {tuple(np.asarray(m).ravel()) for m in of.matrices}
    extra = [m for m in group.matrices if tuple(np.asarray(m).ravel()) not in have]
    if extra:
        raise ValueError(
            f"laue={group.name!r} is not a symmetry of this crystal (Laue class {of.name}): {len(extra)} of its "
            f"{len(group)} operations, e.g. {np.asarray(extra[0]).tolist()}, are not the crystal's. Leave laue out "
            f"(the crystal's own class is used) or give a subgroup of {of.name}")


#: Relative tolerance of the metric check: cell parameters in files are rounded (about 1e-4).
METRIC_TOL = 2e-3


def check_metric(group: LaueGroup, reciprocal) -> None:
    """A ``ValueError`` unless every operation of ``group`` keeps |Q| of every (H, K, L) for this cell
    (rows of ``reciprocal``, Å⁻¹): Mᵀ G* M = G*, G* = B Bᵀ. A class the cell cannot have (m-3m on a
    hexagonal cell) would average inequivalent points."""
    B = np.asarray(reciprocal, dtype=float)
    G = B @ B.T
    scale = np.abs(G).max()
    bad = [M for M in group.matrices if np.abs(np.asarray(M).T @ G @ np.asarray(M) - G).max() > METRIC_TOL * scale]
    if bad:
        a, b, c, al, be, ga = _cell_text(B)
        raise ValueError(
            f"laue={group.name!r} does not fit this volume's unit cell (a={a:.4g} b={b:.4g} c={c:.4g} Å, α={al:.4g} "
            f"β={be:.4g} γ={ga:.4g}°): {len(bad)} of its {len(group)} operations, e.g. {np.asarray(bad[0]).tolist()}, "
            "change |Q| and would average inequivalent points. Give the crystal's own Laue class, or crystal=..., "
            "or set ds.attrs['space_group']")


def _cell_text(B: np.ndarray):
    A = 2 * np.pi * np.linalg.inv(B).T  # real-space rows
    la = np.linalg.norm(A, axis=1)

    def ang(i, j):
        return float(np.degrees(np.arccos(A[i] @ A[j] / la[i] / la[j])))

    return la[0], la[1], la[2], ang(1, 2), ang(0, 2), ang(0, 1)


def laue_of(ds: xr.Dataset, laue: str | None = None, crystal=None) -> LaueGroup:
    """The Laue group: ``laue`` (a class name), else the crystal's, else ``attrs['space_group']``."""
    if laue is not None:
        group = LaueGroup.of(laue=laue)
        if crystal is not None:
            check_subgroup(group, LaueGroup.of(crystal=crystal))
        elif "space_group" in ds.attrs:  # the file's space group, in its standard setting
            check_subgroup(group, LaueGroup.of(space_group=ds.attrs["space_group"]))
        elif "unit_cell" in ds.attrs:  # no space group: the cell's metric must at least allow the group
            check_metric(group, reciprocal_of(ds))
        return group
    if crystal is not None:
        return LaueGroup.of(crystal=crystal)
    if "space_group" in ds.attrs:
        return LaueGroup.of(laue=laue_class_of(ds.attrs["space_group"]))
    raise ValueError("no Laue group: pass laue='m-3m', crystal=..., or set ds.attrs['space_group']")


def _to_numpy(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def _map_hkl(ds: xr.Dataset, fn, dtype=bool) -> xr.DataArray:
    """fn(H, K, L) on broadcastable blocks (numpy or cupy), lazily over the intensity's blocks."""
    tmpl = ds["intensity"].transpose("H", "K", "L")
    coords = [np.asarray(ds[d].values, dtype=float) for d in "HKL"]

    def on_block(h, k, l, like):
        xp = _xp(like)
        return fn(xp.asarray(h)[:, None, None], xp.asarray(k)[None, :, None], xp.asarray(l)[None, None, :])

    if _is_dask(tmpl.data):

        def block(x, block_info=None):
            loc = block_info[0]["array-location"]
            sl = [c[a:b] for c, (a, b) in zip(coords, loc, strict=True)]
            xp = _xp(x)
            return xp.broadcast_to(on_block(*sl, x), x.shape)

        data = tmpl.data.map_blocks(block, dtype=dtype)
    else:
        data = _xp(tmpl.data).broadcast_to(on_block(*coords, tmpl.data), tmpl.shape)
    return xr.DataArray(data, dims=("H", "K", "L"), coords={d: ds[d] for d in "HKL"})


def _q_parts(B):
    def qparts(h, k, l):
        return [h * B[0, a] + k * B[1, a] + l * B[2, a] for a in range(3)]

    return qparts


def add_q(ds: xr.Dataset, crystal=None) -> xr.Dataset:
    """Add Cartesian coordinates ``qx``, ``qy``, ``qz`` and ``q`` = |q| (Å⁻¹, 2π included), lazily."""
    ds = check_volume(ds)
    B = reciprocal_of(ds, crystal)
    parts = _q_parts(B)
    out = ds.copy()
    for a, name in enumerate(("qx", "qy", "qz")):
        out.coords[name] = _map_hkl(ds, lambda h, k, l, a=a: parts(h, k, l)[a], dtype=float)
        out[name].attrs.update(units=_INV_A, long_name=f"{name} (Å⁻¹, 2π included)")

    def qnorm(h, k, l):
        x, y, z = parts(h, k, l)
        return (x * x + y * y + z * z) ** 0.5

    out.coords["q"] = _map_hkl(ds, qnorm, dtype=float)
    out["q"].attrs.update(units=_INV_A, long_name="|q| (Å⁻¹)")
    return out


def weights_of(ds: xr.Dataset) -> xr.DataArray:
    """The per-voxel weight the reductions use: ``weights`` (or 1), 0 where masked or non-finite
    (and, when the volume has ``sigma``, where σ is not positive and finite)."""
    if "weights" not in ds:  # 1 where valid
        ok = np.isfinite(ds["intensity"])
        if "sigma" in ds:
            ok = ok & np.isfinite(ds["sigma"]) & (ds["sigma"] > 0)
        if "mask" in ds:
            ok = ok & ~ds["mask"]
        return ok.astype(float)
    w = ds["weights"]
    ok = np.isfinite(ds["intensity"]) & np.isfinite(w) & (w > 0)
    if "sigma" in ds:
        ok = ok & np.isfinite(ds["sigma"]) & (ds["sigma"] > 0)
    if "mask" in ds:
        ok = ok & ~ds["mask"]
    return xr.where(ok, w, 0.0)


def _with_mask(ds: xr.Dataset, new: xr.DataArray, label: str) -> xr.Dataset:
    out = ds.copy()
    old = ds["mask"] if "mask" in ds else None
    out["mask"] = new if old is None else (old | new)
    out["mask"].attrs.update(long_name="excluded voxels (True = excluded)", units="1")
    history = list(np.atleast_1d(ds.attrs.get("masks", [])))
    out.attrs["masks"] = [str(x) for x in history] + [label]
    if not _is_dask(out["mask"].data):
        _check_not_empty(out)
    return out


def _check_not_empty(ds: xr.Dataset) -> None:
    if bool((weights_of(ds) > 0).sum() == 0):
        raise ValueError(
            f"the masks {ds.attrs.get('masks')} leave no valid voxel: loosen them (smaller Bragg radius, "
            "wider |q| range or wedge) or check the data"
        )


def mask(
    ds: xr.Dataset,
    invalid: bool = True,
    bragg: float | None = None,
    bragg_units: str = "rlu",
    q_min: float | None = None,
    q_max: float | None = None,
    user=None,
    crystal=None,
) -> xr.Dataset:
    """Add to ``mask`` (True = excluded) the chosen criteria; lazy for dask data.

    Parameters
    ----------
    invalid
        Exclude non-finite and non-positive intensities and zero/non-finite weights.
    bragg
        Radius of the spheres around the allowed Bragg reflections, in ``bragg_units`` ("rlu" or
        "1/angstrom"). Allowed reflections come from ``crystal``'s structure factor (required).
    q_min, q_max
        Keep only q_min ≤ |q| ≤ q_max (Å⁻¹); needs ``crystal`` or ``attrs['unit_cell']``.
    user
        A boolean DataArray on (H, K, L) (or broadcastable to it), True = excluded.
    """
    ds = check_volume(ds)
    out, labels = None, []

    def add(m, label):
        nonlocal out
        out = m if out is None else (out | m)
        labels.append(label)

    if invalid:
        w = ds["weights"] if "weights" in ds else None
        add(xr.apply_ufunc(_masks.invalid_mask, ds["intensity"], *([w] if w is not None else []), dask="allowed"),
            "invalid")
    if bragg is not None:
        if crystal is None:
            raise ValueError("a Bragg mask needs the structure: pass crystal=xtds.Crystal.preset(...)")
        bragg = _masks.check_bragg_radius(crystal, bragg, bragg_units)
        extent = int(max(np.abs(ds[d].values).max() for d in "HKL"))
        refl = allowed_reflections(crystal, extent + _masks.bragg_reach(crystal, bragg, bragg_units) + 1)
        add(_map_hkl(ds, lambda h, k, l: _masks.bragg_mask(h, k, l, crystal, bragg, bragg_units, reflections=refl)),
            f"bragg<{bragg} {bragg_units}")
    if q_min is not None or q_max is not None:

        G = reciprocal_of(ds, crystal) @ reciprocal_of(ds, crystal).T  # |q|² = h G hᵀ

        def qmask(h, k, l):  # on broadcastable (n,1,1), (1,n,1), (1,1,n) blocks: the sums stay small
            hk = G[0, 0] * h * h + 2 * G[0, 1] * h * k + G[1, 1] * k * k
            q2 = hk + (2 * G[0, 2] * h + 2 * G[1, 2] * k + G[2, 2] * l) * l
            return _masks.q_range_mask(abs(q2) ** 0.5, q_min, q_max)  # |…|: round-off below 0 at q = 0

        add(_map_hkl(ds, qmask), f"|q| outside [{q_min}, {q_max}] 1/angstrom")
    if user is not None:
        if not isinstance(user, xr.DataArray) or user.dtype != bool:
            raise TypeError("user= must be a boolean xr.DataArray on (H, K, L), True = excluded")
        add(user.broadcast_like(ds["intensity"]), "user")
    if out is None:
        return ds
    return _with_mask(ds, out.transpose("H", "K", "L"), " + ".join(labels))


def wedge(ds: xr.Dataset, normal=(0, 1, 0), half_angle: float = 10.0, crystal=None) -> xr.Dataset:
    """Keep only voxels within ±``half_angle`` degrees of the plane ⊥ ``normal``.

    ``normal`` is a reciprocal-space direction in r.l.u. (converted with the reciprocal matrix):
    the paper's ±10° about the H0L plane is ``normal=(0, 1, 0)``. The rest is added to ``mask``.
    """
    ds = check_volume(ds)
    if not 0 < float(half_angle) <= 90:
        raise ValueError(f"the wedge half-angle must be in (0, 90] degrees, got {half_angle}")
    B = reciprocal_of(ds, crystal)
    n_cart = np.asarray(normal, dtype=float) @ B
    if not np.linalg.norm(n_cart) > 0:
        raise ValueError("the wedge normal must be a non-zero (H, K, L) direction")
    parts = _q_parts(B)
    m = _map_hkl(ds, lambda h, k, l: _masks.wedge_mask(*parts(h, k, l), n_cart, half_angle))
    return _with_mask(ds, m, f"wedge ±{half_angle}° about plane ⊥ {tuple(normal)} (rlu)")


def masked_fraction(ds: xr.Dataset) -> float:
    """The fraction of voxels excluded (mask, invalid intensity or zero weight); computes (one pass)."""
    with reading(ds, "computing the masked fraction"):
        return float(1.0 - (weights_of(ds) > 0).mean().compute())


def symmetrize(ds: xr.Dataset, laue: str | None = None, crystal=None, chunk: int | None = None) -> xr.Dataset:
    """Mask-aware Laue symmetrization (see :mod:`xtds.volume.symmetrize`); lazy for dask data.

    Returns a Dataset with the symmetrized ``intensity`` (NaN where no partner is valid), the
    summed ``weights``, and ``mask`` = no valid partner. attrs ``symmetrized`` names the group.
    A ``sigma`` variable (standard uncertainties of independent voxels) becomes that of the
    weighted orbit mean, √(Σ w²σ²)/Σ w.
    """
    ds = check_volume(ds).transpose("H", "K", "L", ...)
    group = laue_of(ds, laue, crystal)
    ops = grid_operations(group.matrices, [ds[d].values for d in "HKL"])
    w = weights_of(ds)
    inten = xr.where(w > 0, ds["intensity"], 0.0)
    I_s, w_s = symmetrize_array(inten.data, w.data, ops, chunk=chunk)
    out = ds.copy()
    coords = {d: ds[d] for d in "HKL"}
    out["intensity"] = xr.DataArray(I_s, dims=("H", "K", "L"), coords=coords, attrs=ds["intensity"].attrs)
    out["weights"] = xr.DataArray(w_s, dims=("H", "K", "L"), coords=coords,
                                  attrs={"units": "1", "long_name": "summed weights"})
    if "sigma" in ds:
        # The kernel sums over the G operations, which visit each distinct member of h's orbit
        # r(h) = |stabilizer of h| times: A = Σ_g w²σ² / Σ_g w and W = Σ_g w are r × the sums over
        # members, so the σ of the weighted mean over members is √(r A / W).
        s2w = xr.where(w > 0, ds["sigma"] ** 2 * w, 0.0)
        A, _ = symmetrize_array(s2w.data, w.data, ops, chunk=chunk)
        sig = xr.DataArray(A, dims=("H", "K", "L"), coords=coords)
        r = _map_hkl(ds, _stabilizer_order(ops, [ds[d].values for d in "HKL"]), dtype=float)
        out["sigma"] = np.sqrt(r * sig / out["weights"].where(out["weights"] > 0))
        out["sigma"].attrs = dict(ds["sigma"].attrs)
    out["mask"] = out["weights"] <= 0
    out["mask"].attrs.update(long_name="excluded voxels (True = excluded)", units="1")
    out.attrs["symmetrized"] = f"{group.name} ({len(ops)} operations)"
    return out


def _stabilizer_order(ops, coords):
    """fn(H, K, L) → the number of the grid operations that leave each voxel where it is."""
    step = min(float(np.min(np.abs(np.diff(c)))) if len(c) > 1 else 1.0 for c in coords)
    tol = GRID_TOL * step

    def order(h, k, l):
        xp = _xp(h)
        hkl = (h, k, l)
        count = 0
        for op in ops:
            R = op.matrix
            fixed = True
            for a in range(3):
                image = sum(R[a][b] * hkl[b] for b in range(3) if R[a][b])
                fixed = fixed & (xp.abs(image - hkl[a]) <= tol)
            count = count + fixed
        return count * 1.0

    return order


def to_points(ds: xr.Dataset, crystal=None, laue: str | None = None, irreducible: bool = True,
              max_points: int | None = None, seed: int = 0, progress: bool = False) -> xr.Dataset:
    """The valid voxels as fitting points (computes): dim ``point`` with ``intensity``,
    ``weight``, ``multiplicity``, coords H, K, L (r.l.u.) and ``q`` (point, xyz; Å⁻¹).

    With ``irreducible`` (and a Laue group from ``laue``, ``crystal`` or the attrs) the points of
    each orbit are merged into one: weighted mean intensity, summed weight, multiplicity = the
    number of valid voxels merged. The loss over the compressed points, weighted by
    multiplicity, equals the loss over all valid voxels when the volume is symmetrized.

    ``sigma`` (standard uncertainties of independent voxels), when present, is combined over each
    orbit as the σ of the weighted mean, √(Σ w²σ²)/Σ w; after :func:`symmetrize` (which has done
    that already, so the members hold copies of one mean) it is kept as it is.

    A lazy (dask) volume whose Laue group holds every sign change of the axes (m-3m, m-3, 4/mmm,
    mmm) is reduced in one read with memory 1/8 of the volume per summed quantity
    (:mod:`xtds.volume.reduce`, ``progress`` shows its blocks); each orbit is then represented by
    its member with every coordinate ≤ 0, and ``max_points`` draws uniformly among all the
    points. Other volumes are computed in memory:

    ``max_points``: at most this many points, drawn with ``seed``. Where the volume holds far more
    valid voxels (over 20 × ``max_points``, irreducible), the orbits are those of random valid
    voxels (an orbit is drawn with probability ∝ its number of valid voxels) and only their members
    are read: the cost no longer grows with the volume. Otherwise a uniform random subset of all
    the points. attrs ``n_points_available`` (None when sampled) and ``subset`` record it.
    """
    if max_points is not None and int(max_points) < 1:
        raise ValueError(f"max_points must be a positive number of points, got {max_points!r}")
    ds = check_volume(ds).transpose("H", "K", "L", ...)
    B = reciprocal_of(ds, crystal)
    if irreducible and _is_dask(ds["intensity"].data):  # a lazy volume: one read, bounded memory
        group = laue_of(ds, laue, crystal)
        perms = sign_folding_group(group.matrices)
        if perms is not None:
            return _folded_points(ds, B, group, perms, max_points, seed, progress)
    arrays = [weights_of(ds).data, ds["intensity"].data] + ([ds["sigma"].data] if "sigma" in ds else [])
    with reading(ds, "reducing the volume to points"):  # one pass: weights, intensity (and sigma) together
        w, I, *S = (_to_numpy(x) for x in dask.compute(*arrays))
    valid = np.flatnonzero(w.ravel() > 0)
    if len(valid) == 0:
        raise ValueError("no valid voxel is left after masking: loosen the masks or check the data")
    shape = w.shape
    if irreducible and max_points is not None and len(valid) > 20 * int(max_points):
        return _sampled_orbits(ds, B, w, I, S[0] if S else None, valid, laue, crystal, int(max_points), seed)
    idx = np.stack(np.unravel_index(valid, shape), axis=1)  # (P, 3)
    Iv, wv = I.ravel()[valid], w.ravel()[valid]
    sv = S[0].ravel()[valid] if S else None
    if irreducible:
        group = laue_of(ds, laue, crystal)
        grid_operations(group.matrices, [ds[d].values for d in "HKL"])  # the grid maps onto itself
        # centred integer coordinates m = 2i − (n − 1): the signed permutations act on them as on h
        orb = group.orbits(2 * idx - (np.asarray(shape) - 1))
        wsum = np.bincount(orb.inverse, weights=wv)
        Isum = np.bincount(orb.inverse, weights=Iv * wv)
        if sv is not None:
            if "symmetrized" in ds.attrs:  # the members hold one orbit mean (and its σ) each: keep it
                sv = np.bincount(orb.inverse, weights=sv * wv) / wsum
            else:  # independent voxels: the σ of their weighted mean
                sv = np.sqrt(np.bincount(orb.inverse, weights=(wv * sv) ** 2)) / wsum
        idx, Iv, wv, mult = idx[orb.index], Isum / wsum, wsum, orb.counts
    else:
        mult = np.ones(len(valid), dtype=np.int64)
    n_all = len(idx)
    subset = None
    if max_points is not None and n_all > int(max_points):
        pick = np.sort(np.random.default_rng(seed).choice(n_all, size=int(max_points), replace=False))
        idx, Iv, wv, mult = idx[pick], Iv[pick], wv[pick], mult[pick]
        sv = sv[pick] if sv is not None else None
        subset = {"max_points": int(max_points), "seed": int(seed), "drawn": "uniformly among the points"}
    pts = _points_dataset(ds, B, idx, Iv, wv, mult, sv)
    pts.attrs.update(n_valid_voxels=int(len(valid)), n_points_available=int(n_all))
    if subset:
        pts.attrs["subset"] = json.dumps(subset)
    return pts


def _folded_points(ds, B, group, perms, max_points, seed, progress):
    """:func:`to_points` of a lazy volume by :func:`xtds.volume.reduce.fold_points`: one read, slab
    by slab, memory 1/8 of the volume per accumulated quantity."""
    # the group holds every sign change: this checks each axis is symmetric about 0 (and permuted axes equal)
    grid_operations(group.matrices, [ds[d].values for d in "HKL"])
    w = weights_of(ds)
    sigma = None
    if "sigma" in ds:  # the σ of each orbit mean, as in to_points' in-memory path
        sigma = (ds["sigma"] * w) if "symmetrized" in ds.attrs else (ds["sigma"] * w) ** 2
    # slabs along the file's slowest axis (contiguous reads), the others whole
    slab = (ds["intensity"].encoding.get("disk_dims") or ds["intensity"].dims)[0]
    order = (slab,) + tuple(d for d in "HKL" if d != slab)
    with reading(ds, "reducing the volume to points"):
        r = fold_points(ds["intensity"].transpose(*order).data, w.transpose(*order).data, perms,
                        None if sigma is None else sigma.transpose(*order).data,
                        binary_weight="weights" not in ds, progress=progress, dims=order)
    if len(r["count"]) == 0:
        raise ValueError("no valid voxel is left after masking: loosen the masks or check the data")
    Iv, wv, mult = r.pop("I_w"), r.pop("w"), r.pop("count")
    wv = mult.astype(float) if wv is None else wv  # binary weights: the count
    Iv /= wv  # in place: the reduction of a 1001³ volume holds ~2·10⁷ points
    sv = None
    if sigma is not None:
        sv = r["extra"] / wv if "symmetrized" in ds.attrs else np.sqrt(r["extra"]) / wv
    idx = r.pop("index")
    n_all, subset, n_valid = len(idx), None, int(mult.sum())
    if max_points is not None and n_all > int(max_points):
        pick = np.sort(np.random.default_rng(seed).choice(n_all, size=int(max_points), replace=False))
        idx, Iv, wv, mult = idx[pick], Iv[pick], wv[pick], mult[pick]
        sv = sv[pick] if sv is not None else None
        subset = {"max_points": int(max_points), "seed": int(seed), "drawn": "uniformly among the points"}
    hkl = _hkl_of(ds, idx)
    del idx  # the indices of ~2·10⁷ points are no longer needed
    pts = _points_dataset(ds, B, None, Iv, wv, mult, sv, hkl=hkl)
    pts.attrs.update(n_valid_voxels=n_valid, n_points_available=int(n_all))
    if subset:
        pts.attrs["subset"] = json.dumps(subset)
    return pts


def _sampled_orbits(ds, B, w, I, sigma, valid, laue, crystal, max_points, seed):
    """:func:`to_points` (irreducible, ``max_points``) on a volume of far more valid voxels: the
    orbits of random valid voxels, each reduced from its members alone."""
    shape = np.asarray(w.shape)
    group = laue_of(ds, laue, crystal)
    grid_operations(group.matrices, [ds[d].values for d in "HKL"])
    rng = np.random.default_rng(seed)
    draw = rng.choice(valid, size=min(len(valid), 8 * max_points), replace=False)
    m = 2 * np.stack(np.unravel_index(draw, tuple(shape)), axis=1) - (shape - 1)
    _, canon, _ = group.orbit_keys(m)
    _, first = np.unique(canon, return_index=True)
    first = np.sort(first)[:max_points]  # distinct orbits, in the random order drawn
    reps = m[first]
    members, owner = group.images(reps)
    i = (members + (shape - 1)) // 2
    inside = np.all((i >= 0) & (i < shape), axis=1)  # members outside the box are not observed
    flat = np.ravel_multi_index(tuple(i[inside].T), tuple(shape))
    own = owner[inside]
    wm, Im = w.ravel()[flat], I.ravel()[flat]
    good = wm > 0
    flat, own, wm, Im = flat[good], own[good], wm[good], Im[good]
    n = len(reps)
    wsum = np.bincount(own, weights=wm, minlength=n)
    Isum = np.bincount(own, weights=Im * wm, minlength=n)
    mult = np.bincount(own, minlength=n)
    sv = None
    if sigma is not None:
        sm = sigma.ravel()[flat]
        if "symmetrized" in ds.attrs:
            sv = np.bincount(own, weights=sm * wm, minlength=n) / wsum
        else:
            sv = np.sqrt(np.bincount(own, weights=(wm * sm) ** 2, minlength=n)) / wsum
    idx = (reps + (shape - 1)) // 2
    pts = _points_dataset(ds, B, idx, Isum / wsum, wsum, mult, sv)
    pts.attrs.update(n_valid_voxels=int(len(valid)), n_points_available=None)
    pts.attrs["subset"] = json.dumps({"max_points": int(max_points), "seed": int(seed),
                                      "drawn": "orbits of random valid voxels (probability ∝ valid members)"})
    return pts


def _hkl_of(ds, idx):
    """The (H, K, L) coordinates (P, 3) of grid indices ``idx`` (P, 3), column by column."""
    hkl = np.empty((len(idx), 3))
    for a, d in enumerate("HKL"):
        hkl[:, a] = ds[d].values[idx[:, a]]
    return hkl


def _points_dataset(ds, B, idx, Iv, wv, mult, sv, hkl=None):
    """The points Dataset of :func:`to_points` from grid indices ``idx`` (P, 3) (or their
    coordinates ``hkl``) and their values."""
    hkl = _hkl_of(ds, idx) if hkl is None else hkl
    q = hkl @ B
    pts = xr.Dataset(
        {
            "intensity": ("point", Iv, ds["intensity"].attrs),
            "weight": ("point", wv, {"units": "1"}),
            "multiplicity": ("point", mult, {"units": "1"}),
            **({"sigma": ("point", sv, dict(ds["sigma"].attrs))} if sv is not None else {}),
        },
        coords={
            "H": ("point", hkl[:, 0], {"units": "rlu"}),
            "K": ("point", hkl[:, 1], {"units": "rlu"}),
            "L": ("point", hkl[:, 2], {"units": "rlu"}),
            "q": (("point", "xyz"), q, {"units": _INV_A, "long_name": "q (Cartesian, 2π included)"}),
            "xyz": ["x", "y", "z"],
        },
        attrs=dict(ds.attrs),
    )
    return pts


def rebin(ds: xr.Dataset, factor: int | tuple[int, int, int]) -> xr.Dataset:
    """Weighted block average onto a grid ``factor`` times coarser (trailing voxels dropped).

    intensity = Σ I w / Σ w over each block, weights = Σ w; H, K, L = block means; ``sigma``
    (independent voxels) becomes √(Σ w²σ²)/Σ w.
    """
    ds = check_volume(ds)
    f = triple(factor, "rebin factors")
    w = weights_of(ds)
    win = dict(zip("HKL", f, strict=True))
    num = xr.where(w > 0, ds["intensity"] * w, 0.0).coarsen(win, boundary="trim").sum()
    den = w.coarsen(win, boundary="trim").sum()
    out = xr.Dataset(
        {"intensity": xr.where(den > 0, num / den.where(den > 0, 1.0), np.nan), "weights": den},
        attrs=dict(ds.attrs),
    )
    out["intensity"].attrs = dict(ds["intensity"].attrs)
    out["weights"].attrs = {"units": "1"}
    if "sigma" in ds:
        s2 = xr.where(w > 0, (ds["sigma"] * w) ** 2, 0.0).coarsen(win, boundary="trim").sum()
        out["sigma"] = xr.where(den > 0, np.sqrt(s2) / den.where(den > 0, 1.0), np.nan)
        out["sigma"].attrs = dict(ds["sigma"].attrs)
    for d in "HKL":
        out[d].attrs = dict(ds[d].attrs)
    out["mask"] = out["weights"] <= 0
    out.attrs["rebinned"] = list(f)
    return out


def as_backend(ds: xr.Dataset, backend: str | None = None) -> xr.Dataset:
    """Move the data variables to ``"numpy"`` or ``"cupy"`` (dask arrays keep their laziness).

    ``None`` picks cupy when it imports and a GPU is present, else numpy (with a warning when
    cupy is installed but unusable). Naming ``"cupy"`` without it raises.
    """
    import warnings

    if backend is None:
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            backend = "cupy"
        except ImportError:
            backend = "numpy"
        except Exception as err:  # cupy present, no usable GPU
            warnings.warn(f"cupy is installed but no GPU is usable ({err}); using numpy", stacklevel=2)
            backend = "numpy"
    if backend == "cupy":
        try:
            import cupy
        except ImportError as err:
            raise ImportError("backend='cupy' needs cupy: pip install 'xtds[gpu]' on a machine with a CUDA GPU") \
                from err
        conv = cupy.asarray
    elif backend == "numpy":

        def conv(x):
            return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)

    else:
        raise ValueError(f"backend must be 'numpy', 'cupy' or None, got {backend!r}")
    out = ds.copy()
    for name, var in ds.data_vars.items():
        data = var.data
        if _is_dask(data):
            meta = conv(np.empty((0,) * data.ndim, dtype=data.dtype))
            out[name] = var.copy(data=data.map_blocks(conv, meta=meta))
        else:
            out[name] = var.copy(data=conv(data))
    return out
