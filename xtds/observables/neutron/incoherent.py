"""Incoherent neutron scattering: the one-phonon and multiphonon terms of the powder S(|Q|, E).

An element's nuclei scatter with a spread of lengths (isotopes, nuclear spins); the spread scatters
with no interference between atoms, with the cross-section σ_inc per atom (barn, the Sears 1992
table through periodictable). Its one-phonon part, averaged over the orientations of Q, is the
self term of each atom (Squires, ch. 3):

    S_inc,1(|Q|, E) = (1/N) Σ_s (σ_inc,s / 4π) e^{−2W_s} Q² T_s(E),

with T_s(E) the self spectral function per unit Q² of
:func:`xtds.observables.neutron.multiphonon.self_spectral_function` (for a cubic site; the
anisotropic form along each Q̂ otherwise), and its n-phonon terms the incoherent approximation's
(Q²)ⁿ/n! T_s^{*n}, exact here (not an approximation: incoherent scattering is a self term). Units:
mbarn/meV per atom, like the coherent S(|Q|, E) (σ_inc/4π in fm² is 100 σ_inc[barn]/4π).

Aluminium is almost purely coherent (σ_inc = 0.0082 b against σ_coh = 1.495 b), vanadium almost
purely incoherent (5.08 b against 0.0184 b), nickel both (5.2 b against 13.3 b).
:class:`xtds.observables.neutron.powder.PowderSpectrum` adds these terms by default
(``incoherent=True``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from xtds.observables.scattering import neutron_cross_sections

__all__ = ["incoherent_weights", "incoherent_sqe", "coherent_fraction"]

#: fm² per barn.
FM2_PER_BARN = 100.0

#: Adaptive broadening of the incoherent one-phonon term's mesh (σ = a × step × |∇ε|), chosen on Al
#: and NaCl at 16³ and 24³ (0.2, 0.4, 0.6 tried: 0.4 and 0.6 best, 0.4 the safer against
#: over-broadening).
ADAPTIVE_INCOHERENT = 0.4


def incoherent_weights(species, incoherent=True) -> np.ndarray:
    """σ_inc/4π (fm²) of each atom (n,), from periodictable by element (``incoherent=True``), from a
    mapping element → σ_inc (barn; others from the table), or an array (n,) of σ_inc in barn (an
    enriched or isotope-substituted sample). Raises for an element without a tabulated value."""
    species = [str(s) for s in species]
    table = neutron_cross_sections(species)["incoherent"]
    if incoherent is True:
        sigma = table
    elif isinstance(incoherent, Mapping):
        sigma = np.array([float(incoherent.get(s, t)) for s, t in zip(species, table, strict=True)])
    else:
        sigma = np.array(incoherent, dtype=float).reshape(-1)
        if sigma.shape != (len(species),):
            raise ValueError(f"give one incoherent cross-section (barn) per atom of the primitive cell "
                             f"({len(species)}: {species}), got shape {np.shape(incoherent)}")
    bad = [s for s, v in zip(species, sigma, strict=True) if not (np.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"no incoherent cross-section for {sorted(set(bad))} (periodictable has none, or it is "
                         "negative): give incoherent={element: sigma_barn} or incoherent=False")
    return sigma * FM2_PER_BARN / (4 * np.pi)


def coherent_fraction(species) -> float:
    """σ_coh / (σ_coh + σ_inc) of a cell's atoms (periodictable): near 1 for Al, near 0 for V."""
    cs = neutron_cross_sections([str(s) for s in species])
    coh, inc = float(np.nansum(cs["coherent"])), float(np.nansum(cs["incoherent"]))
    return coh / (coh + inc)


def incoherent_sqe(model, phi, qnorm, energies, temperature: float, orders=(1, 2, 3, 4, 5, 6), resolution=1.0,
                   mesh=16, step: float = 0.1, smearing: float = 0.1, incoherent=True, quantum: bool = True,
                   dw=None, separate: bool = False, adaptive=ADAPTIVE_INCOHERENT) -> torch.Tensor:
    """The incoherent terms of the powder S(|Q|, E) (module docstring), mbarn/meV per atom, shape
    (Q, E) (or (n_orders, Q, E) with ``separate``) at |Q| ``qnorm`` (Å⁻¹) and ``energies`` (meV),
    broadened by the resolution; differentiable in ``phi``. ``orders``: the phonon orders (1: the
    one-phonon term); ``incoherent``: the cross-sections (:func:`incoherent_weights`); ``mesh``,
    ``step``, ``smearing``, ``dw`` as :func:`xtds.observables.neutron.multiphonon.multiphonon_sqe`.
    Every k of the mesh contributes at every |Q| (incoherent scattering conserves no crystal
    momentum). The one-phonon term is the self spectral function of the mesh itself (sub-mesh
    extrapolation holds for integrals, not point by point), each mode a Gaussian of ``smearing``
    and its ``adaptive`` width (a × mesh step × |∇ε| made at ``phi``, or fixed widths from
    :func:`xtds.observables.neutron.multiphonon.mesh_widths`): against a 48³ mesh without adaptive widths,
    Al at 2 meV FWHM is within 3 % of the peak above 5 meV at 16³ (13 % at 2.5 meV, where the
    mesh misses the acoustic modes near Γ; measured, docs/neutron.md)."""
    from xtds.observables.neutron.multiphonon import multiphonon_sqe

    orders = tuple(int(o) for o in orders)
    w = incoherent_weights(model.primitive.species, incoherent)
    kw = dict(resolution=resolution, mesh=mesh, step=step, smearing=smearing, quantum=quantum, dw=dw, weights=w,
              separate=True)
    parts = []
    if 1 in orders:
        parts.append(multiphonon_sqe(model, phi, qnorm, energies, temperature, orders=(1,), extrapolate=False,
                                     adaptive=adaptive, **kw))
    rest = tuple(o for o in orders if o > 1)
    if rest:
        kw["smearing"] = max(smearing, 0.3)  # extrapolated from sub-meshes: smoother modes
        parts.append(multiphonon_sqe(model, phi, qnorm, energies, temperature, orders=rest, **kw))
    out = torch.cat(parts)
    return out if separate else out.sum(0)
