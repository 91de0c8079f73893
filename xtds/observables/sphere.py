"""Orientation averages over the unit sphere: rules (product and Lebedev), reduced by the Laue group.

A powder quantity is the average of a single-crystal one over the directions of Q:
⟨f⟩(|Q|) = (1/4π) ∮ f(|Q| n̂) dn̂ ≈ Σ_d w_d f(|Q| n̂_d). The neutron powder spectra
(:mod:`xtds.observables.neutron.powder`), the anisotropic multiphonon terms and the powder X-ray
TDS (:mod:`xtds.observables.tds.powder`) all use these rules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import lebedev_rule

from xtds.lattice.laue import LaueGroup

__all__ = ["sphere_rule", "powder_average", "next_order", "LEBEDEV_ORDERS", "DEFAULT_ORDER", "ARC_SPACING"]

#: Orders of the Lebedev rules scipy provides (degree of the spherical harmonics integrated exactly).
LEBEDEV_ORDERS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35, 41, 47, 53, 59, 65, 71, 77, 83, 89,
                  95, 101, 107, 113, 119, 125, 131)

#: Default order of :func:`powder_average`: polar nodes of the product rule (2·order² directions
#: before the Laue reduction).
DEFAULT_ORDER = 160


def _product_rule(n: int):
    """Gauss–Legendre in cos θ (n nodes) × 2n uniform azimuths offset by half a step: (2n², 3)
    directions and weights summing to 1; for even n invariant under the 4/mmm operations about z
    (so that a cubic Laue group reduces it 16×)."""
    mu, wmu = np.polynomial.legendre.leggauss(n)
    phi = (np.arange(2 * n) + 0.5) * np.pi / n
    st = np.sqrt(1 - mu**2)
    dirs = np.stack([st[:, None] * np.cos(phi)[None], st[:, None] * np.sin(phi)[None],
                     np.broadcast_to(mu[:, None], (n, 2 * n))], -1).reshape(-1, 3)
    return dirs, (wmu[:, None] / (4 * n) * np.ones(2 * n)[None]).ravel()


def sphere_rule(order: int = DEFAULT_ORDER, crystal=None, laue: str | None = None, kind: str = "product"):
    """Directions n̂ (N, 3) and weights (N,) summing to 1 of a rule on the unit sphere: ``kind``
    ``"product"`` (default: Gauss–Legendre in cos θ with ``order`` nodes × 2·order azimuths, for
    integrands as sharp as a powder spectrum at fine energy resolution) or ``"lebedev"`` (scipy's
    Lebedev rule of degree ``order``, for smooth integrands). With ``crystal`` (or a Laue class
    ``laue`` and a crystal), reduced by its Laue group: one direction per set of equivalent ones,
    carrying their summed weight."""
    if kind == "lebedev":
        if order not in LEBEDEV_ORDERS:
            raise ValueError(f"no Lebedev rule of order {order}; choose one of {LEBEDEV_ORDERS}")
        x, w = lebedev_rule(order)
        dirs, w = np.asarray(x).T, np.asarray(w) / np.sum(w)
    elif kind == "product":
        if int(order) < 2:
            raise ValueError(f"the product rule needs at least 2 polar nodes, got {order}")
        dirs, w = _product_rule(int(order))
    else:
        raise ValueError(f"kind must be 'product' or 'lebedev', got {kind!r}")
    if crystal is None:
        return dirs, w
    ops = LaueGroup.of(crystal, laue=laue).cartesian(crystal)  # (G, 3, 3)
    images = np.einsum("gij,nj->ngi", ops, dirs)  # (N, G, 3)
    # canonical image: the lexicographically largest, rounded
    r = np.round(images, 9)
    order_ = np.lexsort((r[..., 2], r[..., 1], r[..., 0]), axis=-1)[:, -1]
    key = r[np.arange(len(dirs)), order_]
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    wsum = np.bincount(inv.ravel(), weights=w, minlength=len(uniq))
    return uniq / np.linalg.norm(uniq, axis=1, keepdims=True), wsum


def next_order(order: int, kind: str) -> int:
    """The next finer rule after ``order`` (1.5× the polar nodes, or the next Lebedev order)."""
    if kind == "product":
        return 2 * int(round(order * 0.75))
    i = LEBEDEV_ORDERS.index(order)
    return LEBEDEV_ORDERS[i + 1] if i + 1 < len(LEBEDEV_ORDERS) else order


#: Default arc spacing (Å⁻¹) between neighbouring directions of the product rule on a |Q| sphere
#: (``order="auto"``: π|Q|/order ≤ this). Al at 1.5 meV FWHM: 4e-4 of the peak at |Q| = 3.7 Å⁻¹.
ARC_SPACING = 0.07


def powder_average(fn: Callable[[np.ndarray], torch.Tensor], qnorm, order="auto", crystal=None,
                   laue: str | None = None, check: bool = False, kind: str = "product",
                   arc: float = ARC_SPACING):
    """Σ_d w_d fn(|Q| n̂_d) for each |Q| of ``qnorm`` (Nq,) Å⁻¹: ``fn`` takes Cartesian Q (P, 3) Å⁻¹
    and returns a tensor (P, …); the result is (Nq, …). ``order``: of :func:`sphere_rule`, or
    ``"auto"`` (product rule with π|Q|/order ≤ ``arc`` Å⁻¹ on each sphere: the finer angular
    structure of larger spheres is resolved alike). With ``crystal`` the directions are reduced by
    its Laue group (``fn`` must then have the crystal's Laue symmetry). With ``check``, returns
    (average, report): per |Q| the order, the number of directions evaluated, and
    ``max_rel_change``, the largest |difference| to the next order (1.5× the polar nodes, or the
    next Lebedev rule) relative to the largest |value| (the quadrature's accuracy)."""
    qn = np.asarray(qnorm, dtype=float).reshape(-1)
    if np.any(qn < 0) or not np.all(np.isfinite(qn)):
        raise ValueError("|Q| must be finite and non-negative (Å⁻¹)")
    if order == "auto":
        if kind != "product":
            raise ValueError("order='auto' is for the product rule")
        orders = [max(8, 2 * int(np.ceil(np.pi * x / arc / 2))) for x in qn]  # even: 4/mmm-invariant
    else:
        orders = [order] * len(qn)

    def average(x, o):
        dirs, w = sphere_rule(o, crystal, laue, kind)
        vals = fn(x * dirs)
        wt = torch.as_tensor(w, dtype=vals.dtype, device=vals.device)
        return torch.einsum("d...,d->...", vals, wt), len(dirs)

    out, reports = [], []
    for x, o in zip(qn, orders, strict=True):
        val, n_dirs = average(x, o)
        out.append(val)
        if check:
            nxt = next_order(o, kind)
            with torch.no_grad():
                ref, _ = average(x, nxt)
            scale = float(ref.abs().max()) or 1.0
            reports.append({"Q": float(x), "order": o, "next_order": nxt, "n_directions": n_dirs,
                            "max_rel_change": float((val.detach() - ref).abs().max()) / scale})
    out = torch.stack(out)
    if not check:
        return out
    return out, {"per_Q": reports, "max_rel_change": max(r["max_rel_change"] for r in reports),
                 "n_directions": sum(r["n_directions"] for r in reports)}
