"""Elastic constants from the long-wavelength limit of the lattice dynamics.

For small k the acoustic part of H(k), with the optical coordinates relaxed (Schur complement),
is Γ(k) = V_c Σ_jm C_ijlm k_j k_m per primitive cell (the method of long waves, Born & Huang).
Writing H(k) = H0 + H1(k) + H2(k) + O(k³), with H1 = i Σ_p Φ_p (k·d_p), H2 = −½ Σ_p Φ_p (k·d_p)²,
U the 3n×3 stack of identities (uniform translations, H0 U = 0) and Q an orthonormal basis of its
complement,

    Γ(k) = Uᵀ H2 U − (Uᵀ H1 Q)(Qᵀ H0 Q)⁻¹(Qᵀ H1 U),

exactly to second order. The Christoffel coefficients G_ijlm (symmetric in j, m) fix the elastic
tensor with its Voigt symmetries by least squares; the residual measures how far the force
constants are from an equilibrium (Huang conditions).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from xtds.lattice.ifc import IFCModel
from xtds.units import GPA_PER_EV_A3

__all__ = ["elastic_tensor", "christoffel_coefficients", "VOIGT"]

#: Voigt pairs in order 1..6: xx, yy, zz, yz, xz, xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _grouped(model: IFCModel, values: torch.Tensor) -> torch.Tensor:
    """Sum per-pair 3×3 values into the 3n×3n site-block matrix."""
    n = model.n_sites
    out = torch.zeros(n * n, 3, 3, dtype=values.dtype, device=values.device)
    idx = torch.as_tensor(model.pair_src * n + model.pair_dst, device=values.device)
    out = out.index_add(0, idx, values)
    return out.reshape(n, n, 3, 3).permute(0, 2, 1, 3).reshape(3 * n, 3 * n)


def christoffel_coefficients(model: IFCModel, phi: torch.Tensor) -> torch.Tensor:
    """G_ijlm (eV/Å³) with Γ_il(k) = V_c Σ_jm G_ijlm k_j k_m; symmetric in j ↔ m. Shape (3,3,3,3)."""
    n = model.n_sites
    blocks = model.blocks(phi)  # (P, 3, 3)
    d = torch.as_tensor(model.pair_vector, dtype=phi.dtype, device=phi.device)
    H0 = _grouped(model, blocks)
    # H1 = i Σ_j k_j A_j  with A_j = Σ_p Φ_p d_pj ;  H2 = −½ Σ_jm k_j k_m B_jm, B_jm = Σ_p Φ_p d_pj d_pm
    A = torch.stack([_grouped(model, blocks * d[:, j, None, None]) for j in range(3)])
    B = torch.stack(
        [
            torch.stack([_grouped(model, blocks * (d[:, j] * d[:, m])[:, None, None]) for m in range(3)])
            for j in range(3)
        ]
    )
    U = torch.eye(3, dtype=phi.dtype, device=phi.device).repeat(n, 1)  # (3n, 3)
    G = -0.5 * torch.einsum("ai,jmab,bl->ijlm", U, B, U)
    if n > 1:
        Un = U / np.sqrt(n)
        full, _ = torch.linalg.qr(torch.cat([Un, torch.eye(3 * n, dtype=phi.dtype, device=phi.device)], 1))
        Q = full[:, 3 : 3 * n]
        D = Q.T @ H0 @ Q
        evals = torch.linalg.eigvalsh(D)
        if evals.min() <= 1e-10 * evals.abs().max():
            raise ValueError(
                "the optical modes at Γ are not all stable (Qᵀ H(0) Q is not positive definite); the "
                "elastic constants with internal relaxation are undefined for these force constants"
            )
        # (Uᵀ H1 Q) = i k_j Uᵀ A_j Q ;  (Qᵀ H1 U) = i k_m Qᵀ A_m U → product −k_j k_m (...)
        X = torch.einsum("ai,jab,bq->jiq", U, A, Q)  # (3, 3, 3n-3)
        Y = torch.einsum("qa,mab,bl->mql", Q.T, A, U)  # (3, 3n-3, 3)
        Dinv = torch.linalg.inv(D)
        G = G + torch.einsum("jiq,qr,mrl->ijlm", X, Dinv, Y)  # minus (i)(i) = +
    G = 0.5 * (G + G.permute(0, 3, 2, 1))  # symmetrize j <-> m
    return G / model.primitive.volume


def _voigt_design() -> np.ndarray:
    """Linear map from the 21 independent C_ab (a ≤ b, Voigt) to the 81 G_ijlm coefficients."""
    pairs = [(a, b) for a in range(6) for b in range(a, 6)]
    vi = {}
    for a, (i, j) in enumerate(VOIGT):
        vi[(i, j)] = vi[(j, i)] = a
    M = np.zeros((81, 21))
    for i, j, l, m in itertools.product(range(3), repeat=4):
        row = 27 * i + 9 * j + 3 * l + m
        # G_ijlm = ½ (C_ijlm + C_imlj)
        for (p, q, r, s) in ((i, j, l, m), (i, m, l, j)):
            a, b = vi[(p, q)], vi[(r, s)]
            col = pairs.index((min(a, b), max(a, b)))
            M[row, col] += 0.5
    return M


_DESIGN = _voigt_design()


def elastic_tensor(model: IFCModel, phi: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The 6×6 Voigt elastic tensor (GPa) from the long-wavelength limit.

    Returns
    -------
    C
        Shape (6, 6) GPa, Voigt order xx, yy, zz, yz, xz, xy; differentiable in φ.
    residual
        ‖G − G(C)‖ / ‖G‖: zero when the force constants satisfy the Huang conditions.
    """
    G = christoffel_coefficients(model, phi).reshape(81)
    M = torch.as_tensor(_DESIGN, dtype=phi.dtype, device=phi.device)
    pinv = torch.linalg.pinv(M)
    c = pinv @ G
    resid = torch.linalg.norm(M @ c - G) / torch.clamp(torch.linalg.norm(G), min=1e-300)
    C = torch.zeros(6, 6, dtype=phi.dtype, device=phi.device)
    iu = torch.triu_indices(6, 6)
    C = C.index_put((iu[0], iu[1]), c)
    C = C + C.T - torch.diag(torch.diagonal(C))
    return C * GPA_PER_EV_A3, float(resid.detach())
