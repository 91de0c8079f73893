"""Anharmonic TDS: the cumulant expansion of the pair average beyond the Gaussian.

Every other TDS model of xtds takes ⟨exp(iq·Δu)⟩ = exp(−½κ₂) for a pair's displacement difference
Δu = u_j' − u_j (Gaussian, harmonic). In an anharmonic crystal the cumulant expansion goes on:

    ⟨exp(iq·Δu)⟩ = exp(−½κ₂ − (i/6)κ₃ + (1/24)κ₄ + …),   κ_r(q) = Σ K^{(r)}_{ab…} q_a q_b …,

so each pair term of the exact supercell sum (:mod:`xtds.observables.tds.exact`) becomes

    f f' e^{−W−W'} e^{qᵀC q} · exp(κ₄/24) · cos(q·d − κ₃/6).

κ₂ stays that of the harmonic constants (the effective harmonic constants, fitted as before).
K^{(3)}, K^{(4)} of the pair Δu are parameterized by symmetry (:class:`Anharmonic`):

- **site terms** (shell ``a``): the cumulants of one atom's displacement, invariant under its
  site group (cubic sites: K₄ has ``xxxx`` and ``xxyy``, K₃ is forbidden). Far apart, two atoms move
  independently and K^{(r)}(Δu) → K_r(u_j') + (−1)^r K_r(u_j): the anharmonic Debye–Waller factor,
  present in every pair term (and cancelled in the self term, Δu = 0).
- **pair terms** for the first ``shells`` neighbour shells: what the correlated motion of near
  neighbours adds (the bond's asymmetric stretch, K₃; its extra kurtosis, K₄), invariant under
  the pair's stabilizer, a reversal of the pair counting (−1)^r.

The expansion is of fourth order: it holds while the neglected cumulants are small, i.e. while
|q|⁴K₄/24 and |q|³K₃/6 stay well below 1 (with |q|²⟨u²⟩ of order 1 the fifth and sixth cumulants
start to matter); :meth:`AnharmonicIFC.validity` reports the largest of these at given q. With
all cumulant parameters zero the model is the exact harmonic one, term for term.

:class:`AnharmonicIFC` is an :class:`~xtds.IFCModel` whose parameter vector is the harmonic
constants followed by the cumulant components (Å³, Å⁴): every fit, constraint and error estimate
takes it unchanged (``ds.tds.fit(AnharmonicIFC(...), ...)`` or ``TDSModel(anharmonic=Anharmonic())``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from xtds.lattice.crystal import Crystal
from xtds.lattice.cumulants import invariant_basis, multisets, q_monomials, rotate_components
from xtds.lattice.ifc import ExtendedIFCModel, IFCInfo, IFCModel, shell_letter
from xtds.observables.tds.cubic import bond_cumulants, bond_group
from xtds.thermal.covariance import lattice_covariance

__all__ = ["Anharmonic", "AnharmonicIFC", "CumulantDesign", "as_anharmonic_model", "apply_cumulants"]

_UNIT = {3: "Å^3", 4: "Å^4", "p3": "eV/Å^3"}


@dataclass(frozen=True)
class Anharmonic:
    """The cumulant terms of an anharmonic TDS model.

    Parameters
    ----------
    shells
        Neighbour shells with their own third cumulants (0: none); they may reach beyond the
        harmonic constants' shells (third cumulants of pair differences are long-ranged).
    quartic_shells
        Neighbour shells with their own fourth cumulants (beyond the site terms).
    site
        Whether the single-site cumulants (the anharmonic Debye–Waller factor) are included.
    order
        The highest cumulant: 3 (κ₃ only) or 4 (κ₃ and κ₄, default).
    cubic_shells
        Neighbour shells of cubic bond force constants Ψ (eV/Å³, names ``p3b0`` …) whose
        third cumulants of *every* pair follow from first-order perturbation theory,
        K₃ = −(k_BT)⁻¹ Σ_bonds Ψ X X X with X the harmonic covariance of the pair with the bond
        (:mod:`xtds.observables.tds.cubic`): the long range of K₃ from a few constants. Classical
        statistics only. 0: none; the per-shell ``shells`` terms then add to them near by.
    """

    shells: int = 4
    quartic_shells: int = 1
    site: bool = True
    order: int = 4
    cubic_shells: int = 0

    def __post_init__(self):
        for what in ("shells", "quartic_shells", "cubic_shells"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"Anharmonic({what}=...) must be a count of neighbour shells ≥ 0, got {v!r}")
        if self.order not in (3, 4):
            raise ValueError(f"Anharmonic(order=...) must be 3 or 4 (the highest cumulant), got {self.order!r}")
        if self.shells == 0 and self.cubic_shells == 0 and not self.site and (
                self.order == 3 or self.quartic_shells == 0):
            raise ValueError("this Anharmonic(...) has no terms: give shells ≥ 1, cubic_shells ≥ 1 or site=True")

    def reach(self) -> int:
        """The farthest shell with pair terms or bond constants."""
        return max(self.shells, self.cubic_shells, self.quartic_shells if self.order == 4 else 0)


class AnharmonicIFC(ExtendedIFCModel):
    """Harmonic force constants plus symmetry-reduced cumulants of the pair displacements.

    Parameters
    ----------
    crystal, shells, cutoff
        As :class:`~xtds.IFCModel` (the harmonic constants).
    anharmonic
        The cumulant terms (:class:`Anharmonic`).

    Attributes
    ----------
    names
        The harmonic constants (eV/Å²), then the cumulant components, e.g. ``k4a0`` (site K₄_xxxx,
        Å⁴), ``k3b0`` (nearest-neighbour K₃, Å³).
    n_harmonic
        How many of ``names`` are force constants.
    units
        The unit of each name.

    Examples
    --------
    >>> from xtds import Crystal
    >>> m = AnharmonicIFC(Crystal.fcc("Ni", a=3.52), shells=3, anharmonic=Anharmonic(shells=1))
    >>> m.names[m.n_harmonic:]
    ('k4a0', 'k4a1', 'k3b0', 'k3b1', 'k3b2', 'k4b0', 'k4b1', 'k4b2', 'k4b3', 'k4b4', 'k4b5')
    """

    extra_units_note = "Å^3 and Å^4 cumulants"
    settings_attr = "anharmonic"

    def __init__(self, crystal: Crystal, shells: int | None = None, cutoff: float | None = None,
                 anharmonic: Anharmonic | None = None):
        super().__init__(crystal, shells=shells, cutoff=cutoff)
        self.anharmonic = Anharmonic() if anharmonic is None else anharmonic
        if not isinstance(self.anharmonic, Anharmonic):
            raise TypeError(f"anharmonic must be an xtds.Anharmonic(...), got {self.anharmonic!r}")
        reach = self.anharmonic.reach()
        #: the pairs (and their symmetry) of the cumulant terms: this model's, or a longer-ranged one's
        self.cumulant_pairs = self if reach <= self.n_shells else IFCModel(crystal, shells=reach)
        self._build_cumulants()
        self._designs: dict = {}

    @classmethod
    def of(cls, model: IFCModel, anharmonic: Anharmonic) -> AnharmonicIFC:
        """The anharmonic model over the same harmonic constants as ``model``."""
        out = cls(model.crystal, cutoff=model.cutoff, anharmonic=anharmonic)
        out.nac_lambda, out.nac_factor = model.nac_lambda, model.nac_factor
        return out

    # ------------------------------------------------------------------ construction
    def _stabilizer(self, rep: int, reversal_sign: int):
        """(rotations, signs) of the operations that leave pair ``rep`` (or reverse it, with sign)."""
        P = self.cumulant_pairs
        R, s = [], []
        for g in range(len(P._ops)):
            q = P._image(g, rep)
            if q == rep:
                R.append(P._ops.cartesian[g])
                s.append(1)
            elif P._transposed(q) == rep and reversal_sign is not None:
                R.append(P._ops.cartesian[g])
                s.append(reversal_sign)
        return R, s

    def _build_cumulants(self):
        anh = self.anharmonic
        ranks = (3, 4) if anh.order == 4 else (3,)
        infos: list[IFCInfo] = []
        P = self.cumulant_pairs
        site_orbits = [o for o in P._orbits if o.shell == 0]
        reach = {3: anh.shells, 4: anh.quartic_shells}
        col = 0
        sp = self.primitive.species
        entries = []  # (orbit, rank, N, first column, kind)
        for kind in ("site", "pair", "bond"):
            for rank in (ranks if kind != "bond" else (3,)):
                if kind == "site":
                    orbits = site_orbits if anh.site else []
                elif kind == "bond":
                    orbits = [o for o in P._orbits if 1 <= o.shell <= anh.cubic_shells]
                else:
                    orbits = [o for o in P._orbits if 1 <= o.shell <= reach[rank]]
                for o in orbits:
                    if kind == "site":
                        R, s = self._stabilizer(o.rep, None)
                    else:
                        R, s = self._stabilizer(o.rep, (-1) ** rank)
                    pivots, N = invariant_basis(R, s, rank)
                    if not pivots:
                        continue
                    entries.append((o, rank, N, col, kind))
                    st, tt = int(P.pair_src[o.rep]), int(P.pair_dst[o.rep])
                    suffix = "" if len(site_orbits if kind == "site" else
                                        [p for p in P._orbits if p.shell == o.shell]) == 1 else \
                        (f"_{sp[st]}" if kind == "site" else f"_{sp[st]}-{sp[tt]}")
                    prefix = "p" if kind == "bond" else "k"
                    for i, pv in enumerate(pivots):
                        infos.append(IFCInfo(name=f"{prefix}{rank}{shell_letter(o.shell)}{i}{suffix}", shell=o.shell,
                                             distance=float(P.shell_distances[o.shell]), sites=(st, tt),
                                             species=(sp[st], sp[tt]),
                                             neighbour=tuple(float(x) for x in P.pair_vector[o.rep]),
                                             element=pv, count=int(np.sum(P.pair_src[o.members] == st)),
                                             derived=False))
                    col += len(pivots)
        n_par = col
        names = [i.name for i in infos]
        # per rank: the components of each member pair (or site) as a matrix of the parameters
        self._pair_maps = {r: {} for r in ranks}
        self._site_maps = {r: {} for r in ranks}
        #: pair index → (10, n_par): the cubic bond constants' tensor Ψ_abc of each bond
        self._bond_maps = {}
        for o, rank, N, c0, kind in entries:
            m = N.shape[1]
            is_site = kind == "site"
            for q, g, tflag in zip(o.members, o.op, o.transpose, strict=True):
                M = np.zeros((len(multisets(rank)), n_par))
                M[:, c0 : c0 + m] = rotate_components(P._ops.cartesian[g], rank) @ N
                if tflag and not is_site:
                    M *= (-1) ** rank
                if kind == "bond":
                    self._bond_maps[int(q)] = M
                elif is_site:
                    key = int(P.pair_src[q])
                    self._site_maps[rank].setdefault(key, np.zeros_like(M))
                    self._site_maps[rank][key] = M  # every member of a site orbit is that site's self pair
                else:
                    self._pair_maps[rank][int(q)] = M
        self.cumulant_ranks = ranks
        self._append(infos, [_UNIT["p3" if n[0] == "p" else int(n[1])] for n in names])

    # ------------------------------------------------------------------ the TDS terms
    def design(self, cell: Crystal, repeats, src: np.ndarray, dst: np.ndarray, d: np.ndarray) -> CumulantDesign:
        """The cumulant terms of the pair terms (src atom, dst atom of ``cell``, vector d (M, 3) Å) of
        an L1×L2×L3 periodic supercell of ``cell`` (:class:`CumulantDesign`, cached)."""
        key = (hash(cell), tuple(int(x) for x in repeats), len(src))
        if key in self._designs:
            return self._designs[key]
        site = self.pair_table(cell).site
        sup = np.asarray(cell.lattice) * np.asarray(repeats)[:, None]
        f = d @ np.linalg.inv(sup)
        dmin = (f - np.round(f)) @ sup  # nearest image
        P = self.cumulant_pairs
        near = np.nonzero((P.pair_shell >= 1) & (P.pair_shell <= self.anharmonic.reach()))[0]
        n_par = len(self.names) - self.n_harmonic
        self_term = np.linalg.norm(dmin, axis=1) < 1e-6
        rows, pair_of = [], []
        for e in np.nonzero(~self_term)[0]:
            cand = near[(P.pair_src[near] == site[src[e]]) & (P.pair_dst[near] == site[dst[e]])]
            if len(cand):
                dist = np.linalg.norm(P.pair_vector[cand] - dmin[e], axis=1)
                if dist.min() < 1e-4:
                    rows.append(e)
                    pair_of.append(int(cand[dist.argmin()]))
        pair = {}
        atom_site = {}
        for r in self.cumulant_ranks:
            maps = self._pair_maps[r]
            if maps:
                pair[r] = np.stack([maps.get(p, np.zeros((len(multisets(r)), n_par))) for p in pair_of]) \
                    if pair_of else np.zeros((0, len(multisets(r)), n_par))
            if self._site_maps[r]:
                atom_site[r] = np.stack([self._site_maps[r].get(int(site[a]), np.zeros((len(multisets(r)), n_par)))
                                         for a in range(cell.n_atoms)])
        bonds = bond_group(P, self._bond_maps, cell, repeats) if self._bond_maps else {}
        out = CumulantDesign(pair_index=np.array(rows, dtype=int), pair=pair, atom_site=atom_site,
                             self_index=np.nonzero(self_term)[0], self_atom=np.asarray(src)[self_term], bonds=bonds)
        self._designs[key] = out
        return out

    def validity(self, phi, q, temperature: float | None = None, repeats=None) -> dict[str, float]:
        """The largest |κ₃|/6 and |κ₄|/24 over the pair terms at wave vectors ``q`` (Q, 3) Å⁻¹ for
        a nearest-neighbour pair and a distant one: where they approach 1 the fourth-order
        expansion no longer holds. With cubic bond constants, whose K₃ reach every pair through
        the covariances, give the ``temperature`` (K) and the supercell ``repeats``: their largest
        |κ₃|/6 is ``kappa3_bonds``."""
        phi = self.vector(phi)
        theta = phi[self.n_harmonic :]
        qt = torch.as_tensor(np.asarray(q, dtype=float), dtype=phi.dtype)
        out = {}
        if self._bond_maps:
            if temperature is None or repeats is None:
                raise ValueError("this model has cubic bond constants, whose K₃ follow from the covariances: give "
                                 "validity(phi, q, temperature=T, repeats=(L1, L2, L3)) of the supercell")
            L = tuple(int(x) for x in np.broadcast_to(np.asarray(repeats), 3))
            bonds = bond_group(self.cumulant_pairs, self._bond_maps, self.crystal, L)
            with torch.no_grad():
                Cr = lattice_covariance(self, phi, L, temperature)
                k3 = bond_cumulants(Cr, bonds, temperature, theta=theta)
            out["kappa3_bonds"] = float((q_monomials(qt, 3) @ k3.T).abs().max()) / 6
        for r in self.cumulant_ranks:
            mats = list(self._pair_maps[r].values()) + list(self._site_maps[r].values())
            if not mats:
                continue
            comps = torch.stack([torch.as_tensor(M, dtype=phi.dtype) @ theta for M in mats], 1)  # (n_sym, m)
            k = q_monomials(qt, r) @ comps
            out[f"kappa{r}"] = float(k.abs().max()) * (2 if r == 4 else 1) / (6 if r == 3 else 24)
        return out


def as_anharmonic_model(model: IFCModel, anharmonic: Anharmonic | None) -> IFCModel:
    """``model`` with the cumulant terms of ``anharmonic`` (None: as it is)."""
    if anharmonic is None or isinstance(model, AnharmonicIFC):
        if isinstance(model, AnharmonicIFC) and anharmonic is not None and model.anharmonic != anharmonic:
            raise ValueError(f"the model already has {model.anharmonic}; TDSModel(anharmonic={anharmonic}) "
                             "differs: give one of them")
        return model
    if not isinstance(anharmonic, Anharmonic):
        raise TypeError(f"anharmonic must be an xtds.Anharmonic(...) or None, got {anharmonic!r}")
    return AnharmonicIFC.of(model, anharmonic)


@dataclass(frozen=True)
class CumulantDesign:
    """How the cumulant parameters θ enter the pair terms of one supercell sum.

    Attributes
    ----------
    pair_index
        (M_p,): the pair terms within the cumulant shells.
    pair
        rank → (M_p, n_sym, n_par): their pair tensors' components as a matrix of θ.
    atom_site
        rank → (n, n_sym, n_par): the site tensor of each atom of the cell.
    self_index, self_atom
        The self terms (d = 0, Δu = 0) and their atom: the site terms cancel there.
    bonds
        The cubic bond constants' bonds on the primitive cell and the supercell's translations
        (:func:`~xtds.observables.tds.cubic.bond_group`; empty: none).
    """

    pair_index: np.ndarray
    pair: dict
    atom_site: dict
    self_index: np.ndarray
    self_atom: np.ndarray
    bonds: dict = field(default_factory=dict)


def kappa(M: np.ndarray, theta: torch.Tensor, q: torch.Tensor, rank: int) -> torch.Tensor:
    """κ_rank(q) (Q, m) of the m tensors whose components are M (m, n_sym, n_par) @ θ."""
    comps = torch.einsum("msp,p->ms", torch.as_tensor(M, dtype=theta.dtype, device=theta.device), theta)
    return q_monomials(q, rank) @ comps.T


def apply_cumulants(design: CumulantDesign, theta: torch.Tensor, q: torch.Tensor, a: torch.Tensor,
                    arg: torch.Tensor, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                    bond_k3: torch.Tensor | None = None):
    """The exact supercell sum's per-atom amplitudes ``a`` (Q, n), phases ``arg`` = q·d (Q, M) and
    exponents ``x`` = qᵀC q (Q, M) with the cumulant terms of θ added: site K₄ as a factor
    exp(κ₄/24) of each atom's amplitude (taken back in the self terms), site K₃ as the phase
    −(κ₃(dst) − κ₃(src))/6, pair tensors as −κ₃/6 and κ₄/24 on their terms, and the cubic bond
    constants' K₃ of every term (``bond_k3`` (M, 10) components,
    :func:`~xtds.observables.tds.cubic.bond_cumulants`) as −κ₃/6. Returns (a, arg, x)."""
    if bond_k3 is not None:
        arg = arg - q_monomials(q, 3) @ bond_k3.T / 6
    if 4 in design.atom_site:
        s4 = kappa(design.atom_site[4], theta, q, 4) / 24  # (Q, n)
        a = a * torch.exp(s4)
        self_idx = torch.as_tensor(design.self_index, device=q.device)
        x = x.index_add(1, self_idx, -2 * s4[:, torch.as_tensor(design.self_atom, device=q.device)])
    if 3 in design.atom_site:
        s3 = kappa(design.atom_site[3], theta, q, 3) / 6
        arg = arg - (s3[:, dst] - s3[:, src])
    if len(design.pair_index):
        idx = torch.as_tensor(design.pair_index, device=q.device)
        if 3 in design.pair:
            arg = arg.index_add(1, idx, -kappa(design.pair[3], theta, q, 3) / 6)
        if 4 in design.pair:
            x = x.index_add(1, idx, kappa(design.pair[4], theta, q, 4) / 24)
    return a, arg, x
