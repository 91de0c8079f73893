"""Symmetric Cartesian tensors of displacement cumulants, reduced by symmetry.

The third and fourth cumulants of a displacement (or of a pair's displacement difference) are
fully symmetric tensors K_abc, K_abcd (Å³, Å⁴). A tensor is stored by its distinct components
(the index multisets a ≤ b ≤ c …: 10 for rank 3, 15 for rank 4); its contraction with q is

    κ(q) = Σ_{abc…} K_abc… q_a q_b q_c … = Σ_multisets m(multiset) K_multiset Π q,

with m the number of orderings of the multiset (:func:`q_monomials`). Under a rotation R a tensor
becomes R^{⊗r} K; a tensor that a group must leave unchanged (up to a sign per element) lies in
the image of the Reynolds average, whose basis :func:`invariant_basis` gives, named by pivot
components in a fixed order (``"xxxx"``, ``"xxyy"`` …) so that each free parameter is the value
of one component of the representative tensor.
"""

from __future__ import annotations

import itertools
from functools import cache
from math import factorial

import numpy as np
import torch

__all__ = ["multisets", "q_monomials", "invariant_basis", "rotate_components", "component_embedding"]

_AXES = "xyz"


@cache
def multisets(rank: int) -> tuple[tuple[int, ...], ...]:
    """The distinct components of a symmetric rank-``rank`` tensor: sorted index tuples."""
    return tuple(itertools.combinations_with_replacement(range(3), rank))


@cache
def _multiplicity(rank: int) -> np.ndarray:
    out = []
    for m in multisets(rank):
        c = np.bincount(m, minlength=3)
        out.append(factorial(rank) / np.prod([factorial(int(x)) for x in c]))
    return np.array(out)


@cache
def _embed(rank: int) -> np.ndarray:
    """(3^rank, n_sym): the full tensor (row-major) from the distinct components."""
    ms = multisets(rank)
    index = {m: i for i, m in enumerate(ms)}
    E = np.zeros((3**rank, len(ms)))
    for flat, idx in enumerate(itertools.product(range(3), repeat=rank)):
        E[flat, index[tuple(sorted(idx))]] = 1.0
    return E


def component_embedding(rank: int) -> np.ndarray:
    """(3^rank, n_sym): the full tensor (flattened row-major) from the distinct components."""
    return _embed(rank).copy()


def q_monomials(q: torch.Tensor, rank: int) -> torch.Tensor:
    """(Q, n_sym): m(multiset) Π q over each multiset, so that κ(q) = q_monomials(q) @ components."""
    ms = multisets(rank)
    cols = []
    for m in ms:
        v = q[:, m[0]]
        for a in m[1:]:
            v = v * q[:, a]
        cols.append(v)
    mult = torch.as_tensor(_multiplicity(rank), dtype=q.dtype, device=q.device)
    return torch.stack(cols, 1) * mult


def rotate_components(R: np.ndarray, rank: int) -> np.ndarray:
    """(n_sym, n_sym): the components of R^{⊗rank} K from those of K (R Cartesian, 3×3)."""
    E = _embed(rank)
    K = R
    for _ in range(rank - 1):
        K = np.kron(K, R)
    P = np.linalg.pinv(E)  # distinct components from a symmetric full tensor
    return P @ K @ E


def invariant_basis(rotations, signs, rank: int, tol: float = 1e-8) -> tuple[tuple[str, ...], np.ndarray]:
    """The symmetric rank-``rank`` tensors with s_g R_g^{⊗r} K = K for every (R_g, s_g).

    Returns (pivot names, N) with N of shape (n_sym, m): components = N @ θ, where θ_i is the
    value of component ``names[i]`` (e.g. ``"xxyy"``). m = 0 when symmetry forbids the tensor.
    """
    n_sym = len(multisets(rank))
    reynolds = np.zeros((n_sym, n_sym))
    for R, s in zip(rotations, signs, strict=True):
        reynolds += s * rotate_components(np.asarray(R, dtype=float), rank)
    reynolds /= len(signs)
    U, sv, _ = np.linalg.svd(reynolds)
    m = int(np.sum(sv > 0.5))  # a projector: singular values 1 or 0
    if m == 0:
        return (), np.zeros((n_sym, 0))
    N = U[:, :m]
    pivots: list[int] = []
    for i in range(n_sym):
        trial = pivots + [i]
        if np.linalg.matrix_rank(N[trial], tol=tol) == len(trial):
            pivots = trial
        if len(pivots) == m:
            break
    N = N @ np.linalg.inv(N[pivots])
    N[np.abs(N) < 1e-12] = 0.0
    names = tuple("".join(_AXES[a] for a in multisets(rank)[p]) for p in pivots)
    return names, N
