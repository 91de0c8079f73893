"""Scattering factors, the one table: X-ray form factors, Compton scattering, neutron scattering
lengths and cross-sections, each from the maintained tabulation of the field.

- X-ray: atomic form factors f(|q|) (Cromer–Mann, periodictable): :func:`form_factors`,
  :func:`form_factor_table`; the incoherent (Compton) scattering S(|q|) (xraylib, Hubbell et al.
  1975): :func:`compton`; the scattering angle of |q|: :func:`two_theta`.
- Neutrons: bound coherent scattering lengths b_c (fm) and cross-sections (barn) (periodictable,
  Sears 1992): :func:`scattering_lengths`, :func:`neutron_cross_sections`.

Species are element or ion symbols, read by :func:`xtds.lattice.crystal.element_of`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from xtds.lattice.crystal import element_of
from xtds.units import ELECTRON_REST_KEV, HC_KEV_A

__all__ = ["FORM_FACTORS", "form_factors", "check_form_factor", "form_factor_table", "compton", "two_theta",
           "scattering_lengths", "neutron_cross_sections", "form_factors_at"]

#: The accepted ``form_factor`` settings: a tabulation, or None for the bare lattice sum (f = 1).
FORM_FACTORS = ("cromer-mann", None)


def form_factors(species, qnorm) -> np.ndarray:
    """f_s(|q|) in electrons for each species.

    Parameters
    ----------
    species
        Element (or ion) symbols, length S.
    qnorm
        Shape (Q,), |q| in Å⁻¹ (2π included: |q| = 4π sin θ / λ).

    Returns
    -------
    Shape (S, Q) float. The Cromer–Mann fit is valid for sin θ/λ ≤ 2 Å⁻¹ (|q| ≲ 25 Å⁻¹).
    """
    from periodictable.cromermann import fxrayatq

    q = np.asarray(qnorm, dtype=float)
    return np.stack([np.asarray(fxrayatq(s, q), dtype=float) for s in species])


def check_form_factor(form_factor) -> None:
    """A ``ValueError`` naming the choices unless ``form_factor`` is one of :data:`FORM_FACTORS`."""
    if form_factor not in FORM_FACTORS:
        raise ValueError(f"form_factor must be one of {FORM_FACTORS}, got {form_factor!r}")


def form_factors_at(species, q: torch.Tensor, form_factor, start: int = 0) -> torch.Tensor:
    """(Q, n) form factors of the atoms ``species`` at the rows ``start … start + len(q)`` of a
    point set: ``form_factor`` is a name (:data:`FORM_FACTORS`: evaluated at |q|) or a table made
    in advance (a tensor (Q_all, n), e.g. by :func:`form_factor_table` from numpy |q|), which is
    what a model evaluated under ``torch.func`` transforms needs (it cannot read q's values)."""
    if isinstance(form_factor, torch.Tensor):
        return form_factor[start : start + len(q)].to(q)
    return form_factor_table(species, torch.linalg.norm(q, dim=1), form_factor).T


def form_factor_table(species, qnorm, form_factor="cromer-mann", like=None):
    """The form factor of each listed atom at each |q|: shape (len(species), Q), electrons.

    Each distinct species is evaluated once; ``form_factor=None`` gives ones (the bare lattice
    sum). ``qnorm`` may be a numpy array or a torch tensor; with a tensor (or a tensor ``like``)
    the table is a tensor of its dtype and device, without gradient (f depends on |q| only).
    """
    check_form_factor(form_factor)
    species = list(species)
    like = qnorm if like is None else like
    q = qnorm.detach().cpu().numpy() if hasattr(qnorm, "detach") else np.asarray(qnorm, dtype=float)
    if form_factor is None:
        table = np.ones((len(species), len(q)))
    else:
        uniq = sorted(set(species))
        f = form_factors(uniq, q)
        table = f[[uniq.index(s) for s in species]]
    if hasattr(like, "detach"):
        return torch.as_tensor(table, dtype=like.dtype, device=like.device)
    return table


def two_theta(qnorm, wavelength: float) -> np.ndarray:
    """Scattering angle 2θ (radians) of |q| (Å⁻¹, 2π included) at ``wavelength`` (Å); a ``ValueError``
    beyond the Ewald sphere (|q| > 4π/λ)."""
    if not wavelength > 0:
        raise ValueError(f"wavelength must be positive (Å), got {wavelength}")
    s = np.asarray(qnorm, dtype=float) * wavelength / (4 * math.pi)
    if np.any(s > 1 + 1e-12):
        raise ValueError(f"|q| up to {float(np.max(qnorm)):.3g} Å⁻¹ is beyond the Ewald sphere at λ = {wavelength} Å "
                         f"(|q| ≤ {4 * math.pi / wavelength:.3g} Å⁻¹): check the wavelength")
    return 2 * np.arcsin(np.clip(s, 0, 1))


def _atomic_number(species: str) -> int:
    return int(element_of(species).number)


def compton(species, qnorm, energy_keV: float | None = None) -> np.ndarray:
    """Incoherent (Compton) scattering of a set of atoms, electrons² per set.

    Parameters
    ----------
    species
        Element or ion symbols (ions use their element's function: the core electrons dominate
        at the |q| where the Compton part matters).
    qnorm
        Shape (Q,), |q| in Å⁻¹ (2π included); xraylib's argument is x = sin θ/λ = |q|/4π.
    energy_keV
        The incident energy. When given, each term is multiplied by the Breit–Dirac recoil factor
        (E'/E)², E'/E = 1 / (1 + (E/m_e c²)(1 − cos 2θ)), sin θ = |q|λ/4π (energy-integrating
        detector); None leaves it out.

    Returns
    -------
    Shape (Q,): Σ_atoms S_Z(x).
    """
    import xraylib_np

    q = np.asarray(qnorm, dtype=float).reshape(-1)
    if np.any(q < 0) or not np.all(np.isfinite(q)):
        raise ValueError("|q| must be finite and non-negative")
    z = np.array([_atomic_number(s) for s in species], dtype=np.int64)
    uniq, counts = np.unique(z, return_counts=True)
    table = np.asarray(xraylib_np.SF_Compt(uniq.astype(np.int64), q / (4 * math.pi)), dtype=float)  # (Z, Q)
    total = counts @ table
    if energy_keV is not None:
        energy = float(energy_keV)
        if not energy > 0:
            raise ValueError(f"energy_keV must be positive, got {energy_keV}")
        cos2t = np.cos(two_theta(q, HC_KEV_A / energy))
        total = total / (1 + energy / ELECTRON_REST_KEV * (1 - cos2t)) ** 2
    return total


def scattering_lengths(species: Sequence[str]) -> np.ndarray:
    """Bound coherent scattering lengths b_c (fm) of each atom's element (periodictable, the
    Sears 1992 table), shape (n,). Raises for an element without a tabulated length."""
    out = []
    for sp in species:
        el = element_of(str(sp))
        b = getattr(el.neutron, "b_c", None)
        if b is None:
            raise ValueError(f"periodictable has no coherent scattering length for {sp!r}: give scattering_lengths= "
                             "explicitly (fm, one per atom of the primitive cell)")
        out.append(float(b))
    return np.asarray(out)


def neutron_cross_sections(species: Sequence[str]) -> dict[str, np.ndarray]:
    """Bound scattering cross-sections (barn) of each atom's element (periodictable, the Sears 1992
    table): ``coherent`` (4π b_c²), ``incoherent`` and ``absorption`` (at 2200 m/s), shape (n,)
    each. An element without a tabulated value gets NaN there."""
    out: dict[str, list[float]] = {"coherent": [], "incoherent": [], "absorption": []}
    for sp in species:
        n = element_of(str(sp)).neutron
        for key, attr in (("coherent", "coherent"), ("incoherent", "incoherent"), ("absorption", "absorption")):
            v = getattr(n, attr, None)
            out[key].append(float("nan") if v is None else float(v))
    return {k: np.asarray(v) for k, v in out.items()}
