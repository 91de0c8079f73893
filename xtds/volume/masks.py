"""Masks and wedges on (H, K, L) volumes: boolean arrays, **True = excluded**.

Array-in, array-out: every function takes in-memory blocks (numpy or cupy) that broadcast, and
knows nothing of xarray or dask; the xarray layer maps them over dask blocks.
"""

from __future__ import annotations

import itertools

import numpy as np

from xtds.lattice.reflections import allowed_reflections
from xtds.volume.arrays import array_module as _xp

__all__ = [
    "invalid_mask",
    "bragg_mask",
    "q_range_mask",
    "wedge_mask",
    "angle_to_plane",
    "bragg_reach",
    "check_bragg_radius",
]


def invalid_mask(intensity, weights=None):
    """True where the intensity is non-finite or ≤ 0, or the weight is ≤ 0 (or non-finite)."""
    bad = ~np.isfinite(intensity) | (intensity <= 0)
    if weights is not None:
        bad = bad | ~np.isfinite(weights) | (weights <= 0)
    return bad


def bragg_mask(H, K, L, crystal, radius: float, units: str = "rlu", reflections=None):
    """True within ``radius`` of an allowed Bragg reflection.

    Parameters
    ----------
    H, K, L
        Broadcastable arrays, r.l.u.
    crystal
        The :class:`~xtds.Crystal` (lattice and structure, for the allowed reflections).
    radius
        Sphere radius, in r.l.u. (Euclidean in H, K, L) or Å⁻¹ (``units="1/angstrom"``).
    reflections
        Shape (n, 3) integers to mask instead of the allowed reflections.
    """
    if radius <= 0:
        raise ValueError(f"the Bragg-peak radius must be positive, got {radius}")
    if units not in ("rlu", "1/angstrom"):
        raise ValueError(f"radius units must be 'rlu' or '1/angstrom', got {units!r}")
    B = np.asarray(crystal.reciprocal)  # rows b1, b2, b3, Å⁻¹
    reach = bragg_reach(crystal, radius, units)
    if reflections is None:
        hmax = int(max(float(abs(x).max()) for x in (H, K, L))) + reach + 1
        reflections = allowed_reflections(crystal, hmax)
    allowed = {tuple(int(v) for v in row) for row in np.asarray(reflections)}
    offsets = list(itertools.product(range(-reach, reach + 1), repeat=3))
    near = None
    for dh, dk, dl in offsets:
        h0, k0, l0 = np.round(H) + dh, np.round(K) + dk, np.round(L) + dl
        d = (H - h0, K - k0, L - l0)
        if units == "rlu":
            dist2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
        else:
            dist2 = sum((d[0] * B[0, a] + d[1] * B[1, a] + d[2] * B[2, a]) ** 2 for a in range(3))
        hit = (dist2 <= radius**2) & _is_allowed(h0, k0, l0, allowed)
        near = hit if near is None else near | hit
    return near


def check_bragg_radius(crystal, radius: float, units: str = "rlu") -> float:
    """The radius as a float; a ``ValueError`` unless ``radius`` is a positive number below half the
    distance between the nearest allowed reflections (in ``units``: "rlu" or "1/angstrom"): spheres
    as large as that leave no diffuse scattering between the peaks (``bragg=10`` is a typo for 0.1, and the mask of
    so many overlapping spheres took minutes before "no valid voxel")."""
    if units not in ("rlu", "1/angstrom"):
        raise ValueError(f"bragg_units must be 'rlu' or '1/angstrom', got {units!r}")
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise ValueError(f"the Bragg mask radius must be a number ({units}), got {radius!r}") from None
    refl = allowed_reflections(crystal, 2).astype(float)
    refl = refl[np.any(refl != 0, axis=1)]
    dist = np.linalg.norm(refl if units == "rlu" else refl @ np.asarray(crystal.reciprocal), axis=1).min()
    if not (np.isfinite(r) and 0 < r < dist / 2):
        raise ValueError(
            f"bragg={radius!r} {units}: the radius must be positive and below half the distance between neighbouring "
            f"reflections of {crystal.name or crystal.formula} ({dist / 2:.3g} {units}); typical masks are 0.05–0.2 "
            "r.l.u."
        )
    return r


def bragg_reach(crystal, radius: float, units: str = "rlu") -> int:
    """How many lattice nodes beyond the nearest one a sphere of ``radius`` can reach, per axis.

    A point within the radius of a node differs from it by |Δh_i| ≤ |Δq| |a_i| / 2π (r.l.u.);
    below 0.5 the nearest node (rounding) is the only candidate.
    """
    bound = radius if units == "rlu" else radius * np.linalg.norm(crystal.lattice, axis=1).max() / (2 * np.pi)
    return 0 if bound < 0.5 else int(np.ceil(bound - 0.5))


def _is_allowed(h, k, l, allowed: set):
    """Elementwise membership of integer (h, k, l) arrays in ``allowed`` (a set of tuples)."""
    xp = _xp(h)
    arr = np.array(sorted(allowed), dtype=np.int64).reshape(-1, 3)
    span = int(np.abs(arr).max(initial=0))
    table = np.zeros((2 * span + 1,) * 3, dtype=bool)
    table[tuple((arr + span).T)] = True
    table = xp.asarray(table)
    # axis by axis (on broadcastable blocks these stay 1-D), broadcast only in the gather
    ins = [xp.abs(x) <= span for x in (h, k, l)]
    idx = [(xp.where(i, x, 0) + span).astype(np.int64) for i, x in zip(ins, (h, k, l), strict=True)]
    return ins[0] & ins[1] & ins[2] & table[idx[0], idx[1], idx[2]]


def q_range_mask(qnorm, q_min: float | None = None, q_max: float | None = None):
    """True where |q| (Å⁻¹) lies outside [q_min, q_max]."""
    out = qnorm != qnorm  # NaN |q| (never on a grid) would be excluded
    if q_min is not None:
        out = out | (qnorm < q_min)
    if q_max is not None:
        out = out | (qnorm > q_max)
    return out


def angle_to_plane(qx, qy, qz, normal) -> np.ndarray:
    """The angle (degrees, 0–90) between q and the plane whose normal is the Cartesian ``normal``."""
    n = np.asarray(normal, dtype=float)
    n = n / np.linalg.norm(n)
    qn = np.sqrt(qx**2 + qy**2 + qz**2)
    s = np.abs(qx * n[0] + qy * n[1] + qz * n[2]) / np.where(qn > 0, qn, 1.0)
    return np.degrees(np.arcsin(np.clip(s, 0.0, 1.0)))


def wedge_mask(qx, qy, qz, normal, half_angle: float):
    """True outside the wedge of ±``half_angle`` degrees about the plane ⊥ ``normal`` (Cartesian).

    q = 0 lies in every plane and is kept.
    """
    if not 0 < half_angle <= 90:
        raise ValueError(f"the wedge half-angle must be in (0, 90] degrees, got {half_angle}")
    return angle_to_plane(qx, qy, qz, normal) > half_angle
