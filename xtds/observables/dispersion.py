"""Measured phonon frequencies as an observable: the classic Born–von Kármán fit of triple-axis or
IXS dispersion data (``loss="chi2"`` with the measured σ and ``background=False``: the frequencies
are absolute), alone or jointly with TDS volumes and spectra."""

from __future__ import annotations

import numpy as np
import torch

from xtds.lattice import dynamics
from xtds.observables.base import Observable, check_points_q

__all__ = ["DispersionPoints"]


class DispersionPoints(Observable):
    """Phonon frequencies (THz) of branch ``branch[p]`` (0 = lowest, modes sorted by frequency) at
    Cartesian wave vectors ``q[p]`` (Å⁻¹): shape (P,). Differentiable (eigenvalue derivatives;
    at a degenerate level the branches share a value, whatever their split)."""

    stochastic = False

    def __init__(self, model, q, branch, dtype=torch.float64, device=None):
        self.model = model
        self.q = check_points_q(q, "q")
        self.branch = np.asarray(branch, dtype=int).reshape(-1)
        m = 3 * model.primitive.n_atoms
        if self.branch.shape != (len(self.q),):
            raise ValueError(f"give one branch index per q-point: {len(self.branch)} for {len(self.q)}")
        if np.any((self.branch < 0) | (self.branch >= m)):
            raise ValueError(f"branch indices run from 0 to {m - 1} (3 × atoms of the primitive cell), got "
                             f"{sorted(set(self.branch[(self.branch < 0) | (self.branch >= m)].tolist()))}")
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return len(self.q)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        k = torch.as_tensor(self.q, dtype=phi.dtype, device=phi.device)
        lam = torch.linalg.eigvalsh(dynamics.dynamical_matrix(self.model, phi, k))
        lam = lam[torch.arange(len(k), device=phi.device), torch.as_tensor(self.branch, device=phi.device)]
        return dynamics.eigenvalues_to_thz(lam)

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        return self.q
