"""The long-range dipole–dipole interaction of polar crystals (LO–TO splitting).

In a polar crystal a displacement u_s carries a dipole Z_s u_s (Born effective charges Z, in e),
and the dipoles interact through the electronic dielectric tensor ε∞. The interaction decays as
1/r³, beyond any short-range model, and makes H(k) non-analytic at Γ: the longitudinal optical
modes are raised by a term that depends on the direction k̂ of approach (LO–TO splitting).

xtds adds it in the form of Gonze & Lee (Phys. Rev. B 55, 10355 (1997)), the reciprocal-space
part of the Ewald sum with a Gaussian damping, and the acoustic sum rule restored:

    H_dd(k)_{sα,tβ} = (4π e²/Ω) Σ_{G, K = k+G ≠ 0} (K·Z_s)_α (K·Z_t)_β / (K·ε·K)
                       · exp(−K·ε·K / 4Λ²) · exp(−i G·(τ_t − τ_s))
                     − δ_st Σ_u [same sum at k = 0]_{sα,uβ},

with (K·Z_s)_α = Σ_γ K_γ Z_s[γ, α], e² = 14.3996 eV·Å, Ω the cell volume; the phase
exp(−iG·(τ_t − τ_s)) is the Poisson sum of a pair interaction in the phase convention of
:mod:`xtds.lattice.dynamics` (H(k + G) = e^{iG·(τ_t − τ_s)} H(k), as the short-range part).
The real-space part of the Ewald sum is short-ranged
(erfc(Λr)/r³): a fitted short-range model absorbs it, and force constants imported from a
supercell calculation have the same damped sum subtracted at the supercell's wave vectors
(:func:`supercell_force_constants`), exactly as phonopy does, so that near Γ both give
H_fc(0) + the non-analytic term. At k ≡ Γ exactly (no direction) the K = 0 term is left out:
the analytic (TO) limit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xtds.lattice.kmesh import commensurate_k

__all__ = ["dipole_dipole", "supercell_force_constants", "COULOMB_EV_A", "NAC_LAMBDA"]

#: e²/(4πε₀) in eV·Å (CODATA 2018).
COULOMB_EV_A = 14.399645478
#: The Ewald splitting parameter Λ (Å⁻¹): the real-space remainder erfc(Λr)/r³ is below 10⁻⁴ of
#: the bare interaction beyond 2.8 Å.
NAC_LAMBDA = 1.0
#: Reciprocal vectors with K·ε·K/4Λ² below this are summed (exp(−36) ≈ 2·10⁻¹⁶).
_EXPONENT_CUT = 36.0

_CACHE: dict = {}


def _g_vectors(cell, k_max: float) -> np.ndarray:
    """All reciprocal vectors G of ``cell`` with |G| ≤ k_max + the largest |k| folded in, (M, 3)."""
    B = cell.reciprocal  # rows b_i, 2π included
    widths = [abs(np.linalg.det(B)) / np.linalg.norm(np.cross(B[(i + 1) % 3], B[(i + 2) % 3])) for i in range(3)]
    n = [int(math.ceil(k_max / w)) + 1 for w in widths]
    m = np.stack(np.meshgrid(*(np.arange(-x, x + 1) for x in n), indexing="ij"), -1).reshape(-1, 3)
    G = m @ B
    return G[np.linalg.norm(G, axis=1) <= k_max + np.linalg.norm(B, axis=1).max()]


def _sum(cell, k: np.ndarray, lam: float, factor: float) -> np.ndarray:
    """The damped reciprocal sum (no ASR term), (K, 3n, 3n) complex, eV/Å²; K = 0 terms left out."""
    Z, eps = np.asarray(cell.born), np.asarray(cell.epsilon)
    n = cell.n_atoms
    tau = cell.cartesian_positions
    k_cut = 2 * lam * math.sqrt(_EXPONENT_CUT / float(np.linalg.eigvalsh(eps).min()))
    G = _g_vectors(cell, k_cut)
    pref = 4 * math.pi * factor / cell.volume
    out = np.zeros((len(k), 3 * n, 3 * n), dtype=complex)
    frac = k @ cell.lattice.T / (2 * math.pi)
    k_red = k - np.round(frac) @ cell.reciprocal  # the same K = k + G set, centred on the first zone
    for i, (kk, k0) in enumerate(zip(k_red, k, strict=True)):
        K = kk[None, :] + G
        KeK = np.einsum("ma,ab,mb->m", K, eps, K)
        keep = (KeK > 1e-14) & (KeK / (4 * lam * lam) < _EXPONENT_CUT)
        K, KeK = K[keep], KeK[keep]
        KZ = np.einsum("mg,sga->msa", K, Z).reshape(len(K), 3 * n)  # (K·Z_s)_α
        phase = np.exp(-1j * ((K - k0[None, :]) @ tau.T))  # (M, n): e^{−iG·τ_s}, K = k + G
        ph = np.repeat(phase, 3, axis=1)
        w = np.exp(-KeK / (4 * lam * lam)) / KeK
        v = KZ * ph  # (M, 3n): (K·Z_t)_β e^{−iG·τ_t}
        out[i] = pref * (np.conj(v).T * w) @ v
    return out


def dipole_dipole(cell, k, lam: float = NAC_LAMBDA, factor: float = COULOMB_EV_A) -> np.ndarray:
    """H_dd(k) of a polar ``cell`` (a :class:`~xtds.Crystal` with ``born`` and ``epsilon``): shape
    (..., 3n, 3n) complex Hermitian, eV/Å², k Cartesian Å⁻¹ (2π included). See the module docstring.
    ``lam``: the Ewald parameter Λ, Å⁻¹; ``factor``: e²/(4πε₀) in eV·Å (an imported calculation's
    own value, e.g. phonopy's 14.4 of a BORN file, reproduces it exactly).

    Results are cached per (cell, k-set): fits evaluate the same k many times."""
    if not cell.polar:
        raise ValueError("the crystal has no Born charges and ε∞ (Crystal(..., born=..., epsilon=...))")
    k = np.asarray(k, dtype=float)
    lead, kf = k.shape[:-1], k.reshape(-1, 3)
    key = (hash(cell), float(lam), float(factor), kf.shape, hash(kf.tobytes()))
    if key in _CACHE:
        return _CACHE[key].reshape(*lead, *_CACHE[key].shape[1:])
    n = cell.n_atoms
    H = _sum(cell, kf, lam, factor)
    H0 = _sum(cell, np.zeros((1, 3)), lam, factor)[0].reshape(n, 3, n, 3)
    asr = H0.sum(axis=2)  # (n, 3, 3): Σ_u of the k = 0 sum
    for s in range(n):
        H[:, 3 * s : 3 * s + 3, 3 * s : 3 * s + 3] -= asr[s]
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[key] = H
    return H.reshape(*lead, 3 * n, 3 * n)


def dipole_dipole_tensor(cell, k: torch.Tensor, lam: float = NAC_LAMBDA,
                         factor: float = COULOMB_EV_A) -> torch.Tensor:
    """:func:`dipole_dipole` as a tensor of ``k``'s dtype (complex) and device, no gradient
    (the term does not depend on the force constants)."""
    H = dipole_dipole(cell, k.detach().cpu().numpy(), lam, factor)
    cdtype = torch.complex128 if k.dtype == torch.float64 else torch.complex64
    return torch.as_tensor(H, dtype=cdtype, device=k.device)


def supercell_force_constants(primitive, supercell, site: np.ndarray, lam: float = NAC_LAMBDA,
                              rows=None, factor: float = COULOMB_EV_A) -> np.ndarray:
    """The damped dipole–dipole term as supercell force constants, (N, N, 3, 3) eV/Å² (phonopy's
    layout): the Fourier interpolation of :func:`dipole_dipole` at the supercell's commensurate
    wave vectors. Subtracted from a supercell calculation's force constants, it leaves their
    short-range part (Gonze & Lee; phonopy's default NAC method).

    ``supercell``: lattice (3, 3) rows and Cartesian positions (N, 3) as a pair; ``site``: (N,) the
    primitive-cell atom of each supercell atom; ``rows``: only these supercell atoms' rows, shape
    (len(rows), N, 3, 3) (compact force constants; memory n_rows · N instead of N²)."""
    lat, pos = (np.asarray(a, dtype=float) for a in supercell)
    k = commensurate_k(primitive.lattice, lat)
    H = dipole_dipole(primitive, k, lam, factor).reshape(len(k), primitive.n_atoms, 3, primitive.n_atoms, 3)
    rows = np.arange(len(pos)) if rows is None else np.asarray(rows, dtype=int)
    d = pos[None, :, :] - pos[rows, None, :]  # x_j − x_i
    phase = np.exp(-1j * np.einsum("ka,ija->kij", k, d))  # (K, n_rows, N)
    blocks = H[:, site[rows]][:, :, :, site]  # (K, n_rows, 3, N, 3)
    fc = np.einsum("kij,kiajb->ijab", phase, blocks).real / len(k)
    return fc
