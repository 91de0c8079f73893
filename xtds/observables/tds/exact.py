"""The harmonic ensemble average of the scattered intensity, exact to all orders in the displacements.

For atoms j at X_j + u_j with Gaussian u (harmonic crystal),

    ⟨I(q)⟩ = Σ_{jj'} f_j f_j' exp(i q·(X_j − X_j')) exp(−½ qᵀ B_jj' q),   B_jj' = ⟨(u_j − u_j')(u_j − u_j')ᵀ⟩.

By translation symmetry, per primitive cell and with W_c = ½ qᵀ C(c0, c0) q:

    I(q) = Σ_s w_s Σ_{c'r} f_s f_c' exp(−W_s − W_c') cos(q·d) exp(qᵀ C(s0, c'r) q),

where s runs over one atom per primitive site (weight w_s = its share of the cell), c'r over all
atoms of the periodic supercell, and d = x_{c'r} − x_s. The covariances C come from
:func:`~xtds.thermal.covariance.lattice_covariance` (block-circulant structure, FFT).

The infinite crystal has its own module, :mod:`xtds.observables.tds.infinite`.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.lattice.cumulants import q_monomials
from xtds.lattice.ifc import IFCModel
from xtds.observables.scattering import form_factors_at
from xtds.observables.tds.anharmonic import CumulantDesign, apply_cumulants, kappa
from xtds.observables.tds.cubic import bond_cumulants
from xtds.thermal.covariance import covariance_k, lattice_covariance, q_products, symmetric_components
from xtds.thermal.debye_waller import self_components, supercell_exponents
from xtds.transforms import TRANSFORMS

__all__ = ["exact_supercell", "covariance_intensity", "one_phonon", "Terms", "cumulant_jacobian"]

class Terms:
    """The ingredients shared by the exact and one-phonon intensities of one geometry."""

    def __init__(self, model: IFCModel, Cr: torch.Tensor, temperature: float | None = None):
        cell = model.crystal
        n = cell.n_atoms
        L = np.asarray(Cr.shape[2:5])
        table = model.pair_table(cell)
        # one representative atom per primitive site, weighted by its share of the cell
        reps, weights = [], []
        for s in range(model.n_sites):
            atoms = np.nonzero(table.site == s)[0]
            reps.append(int(atoms[0]))
            weights.append(len(atoms) / n * model.n_sites)  # per primitive cell
        r = np.stack(np.meshgrid(*(np.arange(x) for x in L), indexing="ij"), -1).reshape(-1, 3)
        tau = cell.positions
        d_list, w_list, c_list, dst_list = [], [], [], []
        for c, wgt in zip(reps, weights, strict=True):
            frac = r[None, :, :] + tau[:, None, :] - tau[c]  # (n, N, 3) in cell fractions
            frac = frac.reshape(-1, 3)
            dst = np.repeat(np.arange(n), len(r))
            cov_idx = np.arange(n * len(r))
            wts = np.ones(len(frac))
            d_list.append(frac @ cell.lattice)
            w_list.append(wts * wgt)
            c_list.append(c * n * len(r) + cov_idx)
            dst_list.append(dst)
        dev = Cr.device
        self.src = np.concatenate([np.full(len(d), c) for d, c in zip(d_list, reps, strict=True)])
        self.dst = np.concatenate(dst_list)
        self.d = torch.as_tensor(np.concatenate(d_list), dtype=Cr.dtype, device=dev)
        self.w = torch.as_tensor(np.concatenate(w_list), dtype=Cr.dtype, device=dev)
        flat = Cr.reshape(n * n * len(r), 3, 3)
        self.C6 = symmetric_components(flat[torch.as_tensor(np.concatenate(c_list), device=dev)])  # (M, 6)
        self.C0 = self_components(Cr)  # (n, 6) self covariances
        self.species = list(cell.species)
        self.cell = cell
        self.design = None  # the cumulant terms of an anharmonic model (xtds.observables.tds.anharmonic)
        self.has_bonds = False  # cubic bond constants: their K₃ of every term (bond_k3)
        if getattr(model, "cumulant_ranks", None):
            self.design = model.design(cell, L, self.src, self.dst, np.concatenate(d_list))
            if self.design.bonds:
                if temperature is None:
                    raise ValueError("the cubic bond constants' K₃ needs the temperature: Terms(model, Cr, T)")
                if list(self.design.bonds["reps"]) != reps:
                    raise RuntimeError("the pair terms' source atoms are not the bond design's")
                self.has_bonds = True
                self._bond_args = (Cr, self.design.bonds, temperature)

    def bond_k3(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """The cubic bond constants' K₃ of every term: (M, 10) for the parameters ``theta``, or
        (M, 10, n_bond) per bond constant (:func:`~xtds.observables.tds.cubic.bond_cumulants`)."""
        return bond_cumulants(*self._bond_args, theta=theta)


def _sum_pairs(terms: Terms, q: torch.Tensor, form_factor, order: str, chunk: int,
               theta: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_M w f_s f_c' e^{−W_s−W_c'} cos(q·d) exp(x): the intensity to all orders (``order="all"``,
    the only one). With an anharmonic model's cumulant parameters ``theta``, its terms become
    cos(q·d − κ₃/6) exp(x + κ₄/24) (:mod:`xtds.observables.tds.anharmonic`).

    The cubic bond constants' K₃ depend on the force constants through the covariances; that
    dependence enters as Σ_M S_M κ₃'(q)_M / 6 with S_M = w a a' e^x sin(φ_M) taken as a constant (a
    term of value zero whose derivative is the exact chain rule), so that a forward-mode Jacobian in
    the force constants carries no tangent through every term's phase."""
    if order != "all":
        raise ValueError("only order='all' is summed here; the infinite crystal's multi-phonon part is in "
                         "xtds.observables.tds.infinite")
    out = []
    src = torch.as_tensor(terms.src, device=q.device)
    dst = torch.as_tensor(terms.dst, device=q.device)
    bond = terms.bond_k3(theta) if terms.has_bonds and theta is not None else None  # (M, 10)
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]
        qq = q_products(qc)  # (Q, 6)
        W = 0.5 * qq @ terms.C0.T  # (Q, n)
        f = form_factors_at(terms.species, qc, form_factor, start)  # (Q, n)
        a = f * torch.exp(-W)  # (Q, n)
        x = qq @ terms.C6.T  # (Q, M)
        arg = qc @ terms.d.T
        if terms.design is not None and theta is not None:
            a, arg, x = apply_cumulants(terms.design, theta, qc, a, arg, x, src, dst,
                                        None if bond is None else bond.detach())
        phase = torch.cos(arg)
        g = torch.exp(x)
        amp = a[:, src] * a[:, dst] * terms.w
        total = (amp * phase * g).sum(dim=1)
        if bond is not None:
            S = (amp * g * torch.sin(arg)).detach()  # ∂I/∂(κ₃/6) of each term
            dK = bond - bond.detach()  # zero, with the tangents of θ and of the covariances
            total = total + (q_monomials(qc, 3) * (S @ dK)).sum(1) / 6
        out.append(total)
    return torch.cat(out)


def exact_supercell(model, phi, q, temperature, geometry, quantum=False, form_factor="cromer-mann", chunk=2048):
    """⟨I(q)⟩ per primitive cell of an L1×L2×L3 periodic supercell, Bragg peaks included.

    ``geometry``: a :class:`~xtds.thermal.geometry.PeriodicSupercell` (or its repeats). q: shape
    (Q, 3) Å⁻¹ on the supercell's reciprocal grid. Returns shape (Q,), electrons².
    """
    Cr = lattice_covariance(model, phi, geometry, temperature, quantum=quantum)
    theta = phi[model.n_harmonic :] if getattr(model, "cumulant_ranks", None) else None
    return _sum_pairs(Terms(model, Cr, temperature), q, form_factor, "all", chunk, theta=theta)


def covariance_intensity(model, Cr, q, form_factor="cromer-mann", chunk=2048) -> torch.Tensor:
    """⟨I(q)⟩ per primitive cell of a periodic supercell whose displacements are Gaussian with the
    covariances ``Cr`` (Å², the layout of :func:`xtds.thermal.covariance.lattice_covariance`,
    whatever made them: a model's constants or MD frames, :func:`xtds.md.frame_covariance`).
    ``model`` gives the crystal and its supercell geometry only. q: shape (Q, 3) Å⁻¹ on the
    supercell's reciprocal grid. Returns shape (Q,), electrons²."""
    Cr = torch.as_tensor(Cr, dtype=torch.float64)
    return _sum_pairs(Terms(model, Cr), torch.as_tensor(q, dtype=torch.float64), form_factor, "all", chunk)


def one_phonon(model, phi, q, temperature, mesh=16, quantum=False, form_factor="cromer-mann", chunk=4096,
               lattice_cov=None):
    """First-order TDS per primitive cell at any q (Xu & Chiang), with the Debye–Waller factor.

    I₁(q) = Σ_{cc'} a_c a_c' qᵀ C_{cc'}(q) q / N_cell-to-primitive, a_c = f_c e^{−W_c}, where
    C(q) = k_BT H(q)⁺ (classical) or the Bose–Einstein covariance (quantum), in the phase
    convention of :mod:`xtds.lattice.dynamics` for the crystal's cell. Equivalently
    Σ_j |Σ_s f_s e^{−W_s} (q·e_js)/√M_s e^{iq·τ_s}|² (ħ/2ω_j) coth(ħω_j/2k_BT). ``mesh`` (a shape
    or a geometry) sets the k-mesh for W only. At q ≡ G the acoustic (divergent) part is left out:
    mask Bragg peaks.
    """
    cell = model.crystal
    n = cell.n_atoms
    W = supercell_exponents(model, phi, q, temperature, mesh, quantum=quantum, lattice_cov=lattice_cov)
    out = []
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]
        Cq = covariance_k(model, phi, qc, temperature, quantum=quantum, cell=cell)  # (Q, 3n, 3n)
        f = form_factors_at(cell.species, qc, form_factor, start)  # (Q, n)
        a = f * torch.exp(-W[start : start + chunk])
        v = (a[:, :, None] * qc[:, None, :]).reshape(len(qc), 3 * n).to(Cq.dtype)
        val = torch.einsum("qi,qij,qj->q", v.conj(), Cq, v).real
        out.append(val)
    return torch.cat(out) * (model.n_sites / n)


def cumulant_jacobian(model, phi, q, temperature, geometry, quantum=False, form_factor="cromer-mann",
                      chunk=2048) -> torch.Tensor:
    """∂I/∂θ (Q, n_θ) of an anharmonic model's intensity in its cumulant parameters θ at ``phi``.

    Cheap by the structure of the sum: θ reaches a pair term beyond the cumulant shells only
    through the site factors of its two atoms (site K₄ in the amplitudes, site K₃ as a phase
    δ(src, dst)), so those terms are summed once per atom pair of the cell (Σ w e^x cos(q·d) and
    Σ w e^x sin(q·d)) without derivatives, and only the shells' terms and the self terms are
    differentiated, in forward mode. The cubic bond constants reach every term, but only as the
    phase −κ₃/6, linear in them: their columns are Σ_M w a a' e^x sin(φ_M) κ₃,p(q)/6, one matrix
    product over the terms. Equal to the full forward-mode Jacobian (tests).
    """
    with torch.no_grad():
        Cr = lattice_covariance(model, phi, geometry, temperature, quantum=quantum)
        terms = Terms(model, Cr, temperature)
    design = terms.design
    theta0 = phi[model.n_harmonic :].detach()
    n = len(terms.species)
    src = torch.as_tensor(terms.src, device=q.device)
    dst = torch.as_tensor(terms.dst, device=q.device)
    near = np.union1d(design.pair_index, design.self_index)
    far = np.setdiff1d(np.arange(len(terms.src)), near)
    pos = {int(e): i for i, e in enumerate(near)}
    sub = CumulantDesign(pair_index=np.array([pos[int(e)] for e in design.pair_index], dtype=int), pair=design.pair,
                         atom_site=design.atom_site,
                         self_index=np.array([pos[int(e)] for e in design.self_index], dtype=int),
                         self_atom=design.self_atom, bonds=design.bonds)
    near_t, far_t = torch.as_tensor(near, device=q.device), torch.as_tensor(far, device=q.device)
    bond = terms.bond_k3() if terms.has_bonds else None  # (M, 10, n_bond) per bond constant
    bond_cols = torch.as_tensor(design.bonds["cols"], device=q.device) if bond is not None else None
    key = src[far_t] * n + dst[far_t]  # the (src, dst) atom pair of each far term
    ci, di = torch.arange(n, device=q.device).repeat_interleave(n), torch.arange(n, device=q.device).repeat(n)
    out = []
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]
        with torch.no_grad():
            qq = q_products(qc)
            W = 0.5 * qq @ terms.C0.T
            f = form_factors_at(terms.species, qc, form_factor, start)
            a0 = f * torch.exp(-W)
            x = qq @ terms.C6.T
            arg = qc @ terms.d.T
            if bond is not None:  # the bonds' phase at θ0 (their own columns below)
                arg = arg - q_monomials(qc, 3) @ (bond @ theta0[bond_cols]).T / 6
            ew = torch.exp(x[:, far_t]) * terms.w[far_t]
            Sc = torch.zeros(len(qc), n * n, dtype=q.dtype, device=q.device).index_add(
                1, key, ew * torch.cos(arg[:, far_t]))
            Ss = torch.zeros(len(qc), n * n, dtype=q.dtype, device=q.device).index_add(
                1, key, ew * torch.sin(arg[:, far_t]))
            x_n, arg_n, w_n = x[:, near_t], arg[:, near_t], terms.w[near_t]
        s_n, d_n = src[near_t], dst[near_t]

        def intensity(theta, qc=qc, a0=a0, Sc=Sc, Ss=Ss, x_n=x_n, arg_n=arg_n, w_n=w_n, s_n=s_n, d_n=d_n):
            a, arg2, x2 = apply_cumulants(sub, theta, qc, a0, arg_n, x_n, s_n, d_n)
            near_sum = (a[:, s_n] * a[:, d_n] * w_n * torch.cos(arg2) * torch.exp(x2)).sum(1)
            amp = a[:, ci] * a[:, di]
            if 3 in design.atom_site:  # the site K₃ phase of each atom pair: cos(φ−δ) = cos φ cos δ + sin φ sin δ
                s3 = kappa(design.atom_site[3], theta, qc, 3) / 6
                delta = s3[:, di] - s3[:, ci]
                far_sum = (amp * (Sc * torch.cos(delta) + Ss * torch.sin(delta))).sum(1)
            else:
                far_sum = (amp * Sc).sum(1)
            return near_sum + far_sum

        with TRANSFORMS:
            J = torch.func.jacfwd(intensity)(theta0).clone()
        if bond is not None:
            with torch.no_grad():
                a, arg_t, x_t = apply_cumulants(design, theta0, qc, a0, arg, x, src, dst)
                S = a[:, src] * a[:, dst] * terms.w * torch.exp(x_t) * torch.sin(arg_t)  # (Q, M)
                per = (S @ bond.reshape(len(terms.src), -1)).reshape(len(qc), bond.shape[1], -1)  # (Q, 10, n_bond)
                J[:, bond_cols] = torch.einsum("qs,qsp->qp", q_monomials(qc, 3), per) / 6
        out.append(J)
    return torch.cat(out)
