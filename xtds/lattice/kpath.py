"""Standard high-symmetry paths through the Brillouin zone (seekpath, HPKOT convention)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from xtds.lattice.crystal import SYMPREC, Crystal

__all__ = ["KPath", "standard_path"]

_GREEK = {"GAMMA": "Γ", "SIGMA": "Σ", "DELTA": "Δ", "LAMBDA": "Λ"}


def _label(name: str) -> str:
    base, _, idx = name.partition("_")
    base = _GREEK.get(base, base)
    return f"{base}{''.join('₀₁₂₃₄₅₆₇₈₉'[int(c)] for c in idx)}" if idx.isdigit() else base


@dataclass(frozen=True)
class KPath:
    """Points sampled along a path.

    Attributes
    ----------
    k
        Shape (n, 3), Cartesian Å⁻¹.
    hkl
        Shape (n, 3), r.l.u. of the crystal's own cell.
    distance
        Shape (n,), Å⁻¹: cumulative length along the path (no jump at a break such as U|K).
    labels
        n strings: the point label at special points (``'U|K'`` at a break), ``''`` elsewhere.
    """

    k: np.ndarray
    hkl: np.ndarray
    distance: np.ndarray
    labels: tuple[str, ...]

    @property
    def ticks(self) -> list[tuple[float, str]]:
        """(distance, label) of the labelled points, for plot axes."""
        return [(float(d), lab) for d, lab in zip(self.distance, self.labels, strict=True) if lab]


def path_segments(crystal: Crystal) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """seekpath's special points (r.l.u. of ``crystal``'s cell) and segments, labels in Greek."""
    import seekpath

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seekpath warns that a conventional cell is a supercell
        res = seekpath.get_path_orig_cell(crystal.spglib_cell, with_time_reversal=True, symprec=SYMPREC)
    points = {_label(k): np.asarray(v, dtype=float) for k, v in res["point_coords"].items()}
    segments = [(_label(a), _label(b)) for a, b in res["path"]]
    return points, segments


def standard_path(
    crystal: Crystal,
    density: float = 40.0,
    segments: list[tuple[str, str]] | None = None,
    points: dict[str, np.ndarray] | None = None,
) -> KPath:
    """Sample the standard path of ``crystal`` (e.g. Γ X U|K Γ L W X for FCC).

    Parameters
    ----------
    density
        Points per Å⁻¹ of path length (each segment gets at least 2 points, both ends included).
    segments
        Optional list of (start, end) labels to use instead of seekpath's, e.g.
        ``[("Γ", "X"), ("X", "W"), ("W", "K"), ("K", "Γ"), ("Γ", "L")]``.
    points
        Optional extra or replacement special points, label → r.l.u.
    """
    if not density > 0:
        raise ValueError(f"density must be positive (points per Å⁻¹), got {density}")
    pts, segs = path_segments(crystal)
    if points:
        pts.update({k: np.asarray(v, float) for k, v in points.items()})
    if segments is not None:
        segs = [tuple(s) for s in segments]
    unknown = {p for s in segs for p in s} - set(pts)
    if unknown:
        raise ValueError(f"unknown k-point labels {sorted(unknown)}; known: {sorted(pts)}")
    ks, hkls, dist, labels = [], [], [], []
    total = 0.0
    prev_end = None
    for a, b in segs:
        ha, hb = pts[a], pts[b]
        ka, kb = crystal.rlu_to_cartesian(ha), crystal.rlu_to_cartesian(hb)
        length = float(np.linalg.norm(kb - ka))
        n = max(2, int(np.ceil(length * density)) + 1)
        t = np.linspace(0.0, 1.0, n)
        seg_h = ha[None] + t[:, None] * (hb - ha)[None]
        seg_lab = [""] * n
        seg_lab[0], seg_lab[-1] = a, b
        if prev_end is not None:
            if prev_end == a:
                seg_h, seg_lab, t = seg_h[1:], seg_lab[1:], t[1:]
            else:
                labels[-1] = f"{labels[-1]}|{a}"
                seg_h, seg_lab, t = seg_h[1:], seg_lab[1:], t[1:]
                # the start point of a new branch: add it with the same distance as the break
                hkls.append(ha[None])
                ks.append(ka[None])
                dist.append(np.array([total]))
                labels.append("")
        hkls.append(seg_h)
        ks.append(crystal.rlu_to_cartesian(seg_h))
        dist.append(total + t * length)
        labels += seg_lab
        total += length
        prev_end = b
    hkl = np.concatenate(hkls)
    k = np.concatenate(ks)
    d = np.concatenate(dist)
    return KPath(k=k, hkl=hkl, distance=d, labels=tuple(labels))
