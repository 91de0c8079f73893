"""Measured phonon frequencies as an observable: the classic Born–von Kármán fit of triple-axis or
IXS dispersion data (``loss="chi2"`` with the measured σ and ``background=False``: the frequencies
are absolute), alone or jointly with TDS volumes and spectra."""

from __future__ import annotations

import re

import numpy as np
import torch

from xtds.lattice import dynamics
from xtds.observables.base import Observable, check_points_q

__all__ = ["DispersionPoints", "branch_label", "longitudinal_fraction", "assign_branches"]

_LABEL = re.compile(r"^(?P<pol>[LT])(?P<kind>[AO])?(?P<n>\d*)$", re.IGNORECASE)


def branch_label(label: str, n_atoms: int) -> tuple[str, int]:
    """('L' or 'T', rank within that polarization, 0-based) of a branch label: ``L``/``LA`` the
    lowest longitudinal branch, ``LO`` (``LO1``, ``L2``) the next; ``T1``/``TA1``/``TA`` and
    ``T2``/``TA2`` the two lowest transverse, ``TO1``/``T3`` the next. A cell of n atoms has n
    longitudinal and 2n transverse branches."""
    m = _LABEL.match(str(label).strip())
    if not m:
        raise ValueError(f"branch label {label!r}: use L, LA, LO, L2, T1, T2, TA1, TA2, TO1, … (polarization, "
                         "acoustic/optical, rank) or a branch index (0 = lowest)")
    pol, kind, n = m["pol"].upper(), (m["kind"] or "").upper(), int(m["n"] or 1)
    if pol == "L":
        rank = (n - 1) + (1 if kind == "O" else 0)
        size = n_atoms
    else:
        rank = (n - 1) + (2 if kind == "O" else 0)
        size = 2 * n_atoms
    if n < 1 or rank >= size:
        raise ValueError(f"branch label {label!r}: a cell of {n_atoms} atom(s) has {size} {pol} branches")
    return pol, rank


def longitudinal_fraction(U: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_s |q̂·e_sν|² of each mode (K, m) from the eigenvectors U (K, m, m) of D(q) (columns) and the
    wave vectors q (K, 3): 1 for a purely longitudinal mode, 0 for a transverse one."""
    K, m, _ = U.shape
    qh = q / torch.linalg.norm(q, dim=1, keepdim=True).clamp(min=1e-30)
    e = U.reshape(K, m // 3, 3, m)  # (K, atom, α, mode)
    proj = torch.einsum("ka,ksam->ksm", qh.to(U.dtype), e)
    return (proj.abs() ** 2).sum(1).real


class DispersionPoints(Observable):
    """Phonon frequencies (THz) of branch ``branch[p]`` at Cartesian wave vectors ``q[p]`` (Å⁻¹):
    shape (P,). A branch is an index (0 = lowest, modes sorted by frequency) or a label of its
    polarization (:func:`branch_label`: ``L``, ``T1``, ``T2``, ``LA``, ``TO1``, …): at each q the n
    modes with the largest longitudinal fraction Σ_s|q̂·e_s|² are the longitudinal ones and the
    others transverse, each set ranked by frequency, so a labelled branch is followed through the
    crossings where sorting by frequency would swap it with another (the measured branches are
    labelled by polarization). Differentiable (eigenvalue derivatives; at a degenerate level the
    branches share a value, whatever their split); the choice of mode is made at each evaluation."""

    stochastic = False

    def __init__(self, model, q, branch, dtype=torch.float64, device=None):
        self.model = model
        self.q = check_points_q(q, "q")
        n_atoms = model.primitive.n_atoms
        m = 3 * n_atoms
        raw = np.asarray(branch, dtype=object).reshape(-1)
        if raw.shape != (len(self.q),):
            raise ValueError(f"give one branch index per q-point (or a label): {len(raw)} for {len(self.q)}")
        labels = [isinstance(b, str) for b in raw]
        self.labels = [branch_label(b, n_atoms) if is_label else None for b, is_label in zip(raw, labels, strict=True)]
        self.branch = np.array([-1 if is_label else int(b) for b, is_label in zip(raw, labels, strict=True)])
        plain = self.branch[~np.array(labels, bool)]
        if np.any((plain < 0) | (plain >= m)):
            raise ValueError(f"branch indices run from 0 to {m - 1} (3 × atoms of the primitive cell), got "
                             f"{sorted(set(plain[(plain < 0) | (plain >= m)].tolist()))}")
        if any(labels) and np.any(np.linalg.norm(self.q[np.array(labels, bool)], axis=1) < 1e-9):
            raise ValueError("a branch label needs q ≠ 0 (its polarization is measured against q̂)")
        self.dtype, self.device = dtype, device

    def mode_index(self, phi: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
        """The mode (0 = lowest) each point compares with at constants ``phi`` (P,): its index, or the
        labelled branch's mode by polarization and rank (in torch, so that it also runs inside the
        forward-mode Jacobian of a fit; the choice itself has no derivative). ``D``: the dynamical
        matrices at every point's q, where already made."""
        idx = torch.as_tensor(self.branch, device=phi.device)
        rows = [p for p, lab in enumerate(self.labels) if lab is not None]
        if not rows:
            return idx
        n = self.model.primitive.n_atoms
        k = torch.as_tensor(self.q[rows], dtype=phi.dtype, device=phi.device)
        Dr = dynamics.dynamical_matrix(self.model, phi, k) if D is None else D[rows]
        _, U = torch.linalg.eigh(Dr)
        frac = longitudinal_fraction(U, k)
        order = torch.argsort(-frac, dim=1, stable=True)
        longitudinal = torch.sort(order[:, :n], dim=1).values  # ascending frequency (eigh's order)
        transverse = torch.sort(order[:, n:], dim=1).values
        picked = []
        for r, p in enumerate(rows):
            pol, rank = self.labels[p]
            picked.append((longitudinal if pol == "L" else transverse)[r, rank])
        return idx.index_put((torch.as_tensor(rows, device=phi.device),), torch.stack(picked))

    def __len__(self) -> int:
        return len(self.q)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        k = torch.as_tensor(self.q, dtype=phi.dtype, device=phi.device)
        D = dynamics.dynamical_matrix(self.model, phi, k)
        lam = torch.linalg.eigvalsh(D)
        lam = lam[torch.arange(len(k), device=phi.device), self.mode_index(phi, D).to(phi.device)]
        return dynamics.eigenvalues_to_thz(lam)

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        return self.q


def assign_branches(model, phi, q, frequency) -> list[str]:
    """Labels (``"L"``, ``"T1"``, ``"LO"`` style: polarization and rank, :func:`branch_label`) for
    measured frequencies (THz) at Cartesian ``q`` (P, 3) Å⁻¹ that carry none, from the model at
    constants ``phi`` (e.g. published ones): the points at one q take distinct modes, nearest in
    frequency (an optimal assignment), and each mode is named by its polarization. Review them
    where the model is far from the data; :class:`DispersionPoints` then follows each labelled
    branch through crossings."""
    from scipy.optimize import linear_sum_assignment

    qq = check_points_q(q, "q")
    nu = np.asarray(frequency, dtype=float).reshape(-1)
    if nu.shape != (len(qq),):
        raise ValueError(f"give one frequency per q-point: {len(nu)} for {len(qq)}")
    n = model.primitive.n_atoms
    phi = model.vector(phi) if not isinstance(phi, torch.Tensor) else phi
    keys = [tuple(np.round(v, 9)) for v in qq]
    out: list[str] = [""] * len(qq)
    for key in dict.fromkeys(keys):
        rows = [i for i, kk in enumerate(keys) if kk == key]
        k = torch.as_tensor(np.array([qq[rows[0]]]), dtype=torch.float64)
        with torch.no_grad():
            lam, U = torch.linalg.eigh(dynamics.dynamical_matrix(model, phi.detach().to(torch.float64), k))
            f = dynamics.eigenvalues_to_thz(lam)[0].numpy()
            frac = longitudinal_fraction(U, k)[0].numpy()
        if len(rows) > len(f):
            raise ValueError(f"{len(rows)} frequencies at q = {key}, more than the {len(f)} modes")
        r, c = linear_sum_assignment(np.abs(nu[rows][:, None] - f[None, :]))
        order = np.argsort(-frac, kind="stable")
        longitudinal, transverse = np.sort(order[:n]), np.sort(order[n:])
        for i, mode in zip(r, c, strict=True):
            if mode in longitudinal:
                rank = int(np.flatnonzero(longitudinal == mode)[0])
                out[rows[i]] = "L" if rank == 0 else f"L{rank + 1}"
            else:
                out[rows[i]] = f"T{int(np.flatnonzero(transverse == mode)[0]) + 1}"
    return out
