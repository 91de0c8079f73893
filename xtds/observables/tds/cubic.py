"""Third cumulants of every pair from cubic bond force constants (first-order perturbation theory).

The third cumulants of pair displacement differences reach far: a bond's asymmetric stretch is
felt, through the harmonic correlations, by pairs many shells away. Rather than a free tensor per
shell, write the lowest anharmonic energy as cubic bond terms,

    V₃ = (1/6) Σ_bonds Ψ^b_abc Δ_a Δ_b Δ_c,     Δ = u_l' − u_l (bond b from atom l to atom l'),

with Ψ^b symmetric, invariant under the bond's stabilizer and odd under its reversal (a bond term
obeys the acoustic sum rules by construction). To first order in Ψ, classically,
⟨x_a x_b x_c⟩ = −β ⟨x_a x_b x_c V₃⟩₀, and Wick's theorem gives for the difference x = u_j − u_i
of any pair (every bond counted from both ends, hence ½)

    K₃_abc(i, j) = −(1 / 2k_BT) Σ_{ordered bonds} Ψ_{a'b'c'} X_aa' X_bb' X_cc',
    X_aa' = ⟨x_a Δ_a'⟩ = G_{j l'} − G_{j l} − G_{i l'} + G_{i l},   G_{mn} = ⟨u_m u_nᵀ⟩.

On a periodic supercell, with D^b_c(r) = G_{c c'_b}(r + t_b) − G_{c c_b}(r) (atom c at cell 0 with
the bond from atom c_b at cell r to atom c'_b at r + t_b), X = A − B with A = D^b_{c_j}(r − R) and
B = D^b_{c_i}(r). Of (A − B)^{⊗3} summed over the bond's cell r, the AAA and BBB terms do not
depend on R (the site third cumulants' difference; zero where inversion holds) and the mixed
ones are cross-correlations over the supercell, made with FFTs:

    Σ_r φAAB = Y(R),  Y_xyz = Σ_w corr(P_{c_j, xyw}, D_{c_i, zw}),   P_xyw = Σ Ψ_{x'y'w} D_xx' D_yy',
    Σ_r φABB = Z(R),  Z_xyz = Σ_w corr(D_{c_j, xw}, P_{c_i, yzw}),   corr(p, q)(R) = Σ_r p(r − R) q(r),

and K₃ = −(1/2k_BT) Σ_b [S(c_j) − S(c_i) − 3 sym Y + 3 sym Z]. Linear in Ψ, so the result is a
basis (one K₃ per parameter) that the fit contracts with θ. Checked against the direct sum over
bonds (tests) and, on EMT nickel, against every pair's K₃ measured from MD frames
(docs/anharmonic.md).

Classical: the quantum first-order result has frequency factors that this form does not carry.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from xtds.lattice.cumulants import component_embedding, multisets

__all__ = ["bond_cumulants", "bond_group"]

_MS3 = np.array(multisets(3))  # (10, 3)
_PERMS = list(itertools.permutations(range(3)))


def _sym(t: torch.Tensor) -> torch.Tensor:
    """The full symmetrization of the last three (Cartesian) axes."""
    nd = t.dim()
    base = list(range(nd - 3))
    return sum(t.permute(*base, *(nd - 3 + p for p in perm)) for perm in _PERMS) / 6


def bond_group(pairs, bond_maps: dict, cell, repeats) -> dict:
    """The bonds and the supercell's translations on the primitive cell, for :func:`bond_cumulants`.

    The supercell of ``cell`` (L1×L2×L3) is, in primitive-lattice coordinates, the quotient Z³/MZ³
    of the primitive translations by the supercell's (rows of the integer matrix M). Its Smith
    normal form S = U M V (sympy) makes it the grid Z_d1 × Z_d2 × Z_d3, t ↦ t V mod d, on which
    the cross-correlations are FFTs: a conventional cell's atoms of one Bravais site then cost as
    one. ``pairs``: the model whose pair indices key ``bond_maps`` (pair → (10, n_par)).

    Returns a dict: ``grid`` d; ``reps`` the first atom of ``cell`` on each primitive site;
    ``gather`` (n_s, n_s, N) the flat (c'·N_cells + r) of the atom that is site s' at translation
    g from ``reps[s]``; ``src``, ``dst`` (B,) sites and ``shift_index`` (B, N) the translation
    g + t_b of each primitive bond; ``cols`` the bond constants' places in θ and ``maps``
    (B, 10, len(cols)) each bond's Ψ in them; ``out_index`` (M,) the (s_i, s_j, g) of every pair
    term of :class:`~xtds.observables.tds.exact.Terms`, in its order.
    """
    from sympy import Matrix
    from sympy.matrices.normalforms import smith_normal_decomp

    prim = pairs.primitive
    L = np.asarray(repeats, dtype=int)
    Ap_inv = np.linalg.inv(np.asarray(prim.lattice))
    cell_in_prim = np.asarray(cell.lattice) @ Ap_inv
    M = np.diag(L) @ cell_in_prim
    if np.abs(M - np.round(M)).max() > 1e-6:
        raise ValueError("the cell is not a supercell of the model's primitive cell")
    cell_in_prim, M = np.round(cell_in_prim).astype(int), np.round(M).astype(int)
    S, _, V = (np.array(x, dtype=np.int64) for x in smith_normal_decomp(Matrix(M.tolist())))
    d = np.abs(np.diag(S))

    def index(t):  # flat group index of primitive translations t (..., 3)
        y = (np.asarray(t) @ V) % d
        return np.ravel_multi_index(tuple(np.moveaxis(y, -1, 0)), tuple(d))

    site = pairs.pair_table(cell).site
    n, n_s = cell.n_atoms, prim.n_atoms
    p_c = np.round(np.asarray(cell.cartesian_positions) @ Ap_inv - np.asarray(prim.positions)[site]).astype(int)
    r = np.stack(np.meshgrid(*(np.arange(x) for x in L), indexing="ij"), -1).reshape(-1, 3)
    Nc, Ng = len(r), int(np.prod(d))
    if Ng * n_s != n * Nc:
        raise RuntimeError("the supercell's translation group does not hold its atoms")
    reps = [int(np.nonzero(site == s)[0][0]) for s in range(n_s)]
    gather = np.full((n_s, n_s, Ng), -1)
    out = []
    for s, c0 in enumerate(reps):
        g = index(p_c[None, :, :] + (r @ cell_in_prim)[:, None, :] - p_c[c0])  # (Nc, n)
        flat = np.arange(n)[None, :] * Nc + np.arange(Nc)[:, None]
        gather[s, np.broadcast_to(site[None, :], g.shape), g] = flat
        out.append(((s * n_s + site[:, None]) * Ng + g.T).reshape(-1))  # Terms order: (c', r)
    if (gather < 0).any():
        raise RuntimeError("a translation of the supercell's group has no atom")
    table = pairs.pair_table(prim)
    b = np.nonzero([int(q) in bond_maps for q in table.pair])[0]
    grid = np.stack(np.unravel_index(np.arange(Ng), tuple(d)), -1)
    shift_index = np.ravel_multi_index(tuple(np.moveaxis((grid[None] + (table.shift[b] @ V)[:, None]) % d, -1, 0)),
                                       tuple(d))
    maps = np.stack([bond_maps[int(q)] for q in table.pair[b]])
    cols = np.nonzero(np.abs(maps).sum(axis=(0, 1)) > 0)[0]
    return dict(grid=tuple(int(x) for x in d), reps=reps, gather=gather, src=table.src[b], dst=table.dst[b],
                shift_index=shift_index, cols=cols, maps=maps[:, :, cols], out_index=np.concatenate(out))


def bond_cumulants(Cr: torch.Tensor, bonds: dict, temperature: float, theta: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The third cumulants of every pair term of the exact supercell sum, per cubic bond parameter.

    Parameters
    ----------
    Cr
        (n, n, L1, L2, L3, 3, 3) Å²: ⟨u_{c,0} u_{c',r}ᵀ⟩ (:func:`~xtds.thermal.covariance.lattice_covariance`).
    bonds
        The bonds and the translations (:func:`bond_group`; a
        :class:`~xtds.observables.tds.anharmonic.CumulantDesign`'s ``bonds``); the pair terms start
        at its ``reps``, one atom per primitive site.
    temperature
        K (classical statistics).
    theta
        The anharmonic model's cumulant parameters: the K₃ of these bond constants (one pass);
        None: one K₃ per bond constant (the basis, for the Jacobian's columns).

    Returns
    -------
    torch.Tensor
        (n_sites · n · N_cells, 10) Å³ with ``theta``, else (…, 10, len(design.bonds["cols"]))
        per unit of each bond constant: the K₃ components of the pair from atom ``bonds["reps"][i]`` at
        cell 0 to atom c' at cell r, ordered (rep, c', r) as the terms of
        :class:`~xtds.observables.tds.exact.Terms`.
    """
    from xtds.units import KB_EV_PER_K

    reps = bonds["reps"]
    n = Cr.shape[0]
    grid = bonds["grid"]
    Ng = int(np.prod(grid))
    dev, dt = Cr.device, Cr.dtype
    n_s = len(reps)
    flat = Cr.reshape(n, -1, 3, 3)
    # G[s, s', x, u, g] = ⟨u_{s,0} u_{s',g}ᵀ⟩ on the primitive translations
    G = flat[torch.as_tensor(reps, device=dev)[:, None, None], torch.as_tensor(bonds["gather"], device=dev)]
    G = G.permute(0, 1, 3, 4, 2)
    src = torch.as_tensor(bonds["src"], device=dev)
    dst = torch.as_tensor(bonds["dst"], device=dev)
    idx_t = torch.as_tensor(bonds["shift_index"], device=dev)[:, None, None, :].expand(-1, 3, 3, -1)  # (B, 3, 3, N)
    # D[b, s, x, u, g] = G_{s, dst_b}(g + t_b)_xu − G_{s, src_b}(g)_xu
    far = torch.gather(G[:, dst], -1, idx_t[None].expand(n_s, -1, -1, -1, -1))  # (n_s, B, 3, 3, N)
    D = (far - G[:, src]).transpose(0, 1).contiguous()  # (B, n_s, 3, 3, N)
    E = torch.as_tensor(component_embedding(3), dtype=dt, device=dev)  # (27, 10)
    maps = torch.as_tensor(bonds["maps"], dtype=dt, device=dev)  # (B, 10, p)
    if theta is not None:  # one Ψ per bond: the parameters contracted first
        maps = maps @ theta[torch.as_tensor(bonds["cols"], device=dev)].to(dt)[:, None]
    psi = torch.einsum("fs,bsp->bpf", E, maps).reshape(len(src), -1, 3, 3, 3)  # Ψ per bond and parameter
    Dpsi = torch.einsum("bpuvw,bcxur->bpcxvwr", psi, D)
    P = torch.einsum("bpcxvwr,bcyvr->bpcxywr", Dpsi, D)  # (B, p, n_s, 3, 3, 3, N): Σ Ψ_x'y'w D_xx' D_yy'
    S = torch.einsum("bpcxywr,bczwr->pcxyz", P, D)  # (p, n_s, 3, 3, 3): the R-independent sums

    def fft(t):  # over the translations (last axis, reshaped to the grid), real input
        return torch.fft.rfftn(t.reshape(*t.shape[:-1], *grid), dim=(-3, -2, -1)).flatten(-3)

    Dk, Pk = fft(D), fft(P)  # (B, n_s, 3, 3, K), (B, p, n_s, 3, 3, 3, K)
    # corr(p, q)(R) = Σ_g p(g − R) q(g) = irfft(conj(p̂) q̂)
    Yk = torch.einsum("bpjxytk,biztk->pijxyzk", Pk.conj(), Dk)
    Zk = torch.einsum("bjxtk,bpiyztk->pijxyzk", Dk.conj(), Pk)
    half = (*grid[:2], grid[2] // 2 + 1)
    YZ = torch.fft.irfftn((Zk - Yk).reshape(*Yk.shape[:-1], *half), s=grid, dim=(-3, -2, -1))
    YZ = YZ.flatten(-3).movedim(-1, 3)  # (p, i, j, N, 3, 3, 3)
    K = 3 * _sym(YZ) + (S[:, None, :, None] - S[:, :, None, None])
    K = K * (-1.0 / (2 * KB_EV_PER_K * float(temperature)))
    ms = torch.as_tensor(_MS3, device=dev)
    comps = K[..., ms[:, 0], ms[:, 1], ms[:, 2]].reshape(K.shape[0], n_s * n_s * Ng, 10)
    comps = comps[:, torch.as_tensor(bonds["out_index"], device=dev)].permute(1, 2, 0)
    return comps[..., 0] if theta is not None else comps
