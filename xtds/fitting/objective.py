"""The objective of a fit: its problems as functions of one parameter vector x.

x = (φ, nuisance of problem 1, nuisance of problem 2, …); the loss is the sum of the problems'
squared residual norms. :class:`Objective` is what the optimizers call: the stacked residuals of
the deterministic (mean) models with their exact Jacobian, the stochastic loss of one epoch, the
stability check of every iterate and the identifiability of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.fitting.losses import eigen_penalty
from xtds.fitting.problem import Problem
from xtds.lattice.ifc import IFCModel
from xtds.lattice.stability import check_stable
from xtds.transforms import TRANSFORMS

__all__ = ["Objective", "initial_vector", "RANK_RTOL"]

#: Singular values of the column-scaled Jacobian below this fraction of the largest count as zero:
#: a parameter combination the data do not determine.
RANK_RTOL = 1e-9



def initial_vector(model: IFCModel, initial) -> torch.Tensor:
    """Starting φ from a mapping, a DataArray, an array, or a Phonopy object (projected)."""
    if initial is None:
        raise ValueError(
            "give starting force constants: initial={name: value} (eV/Å²), an IFC DataArray, or phonopy force "
            "constants (a Phonopy object); e.g. xtds.datasets.paper_ni_ifcs('starting') for the paper's Ni"
        )
    if hasattr(initial, "force_constants") and hasattr(initial, "supercell"):
        from xtds.io.phonopy import from_phonopy

        return model.vector(from_phonopy(initial, model, check_points=0).phi)
    phi = model.vector(initial)
    if not torch.all(torch.isfinite(phi)):
        given = dict(zip(model.names, phi.tolist(), strict=True))
        raise ValueError(f"the starting force constants hold NaN or inf: {given}")
    return phi


@dataclass(frozen=True, eq=False)
class Objective:
    """The problems of a fit as functions of the parameter vector x (what the optimizers call)."""

    problems: tuple[Problem, ...]
    model: IFCModel
    k: np.ndarray  # (K, 3) Å⁻¹: where stability is required (every observable's k-points)

    @property
    def n_free(self) -> int:
        return self.model.n_free

    @property
    def stochastic(self) -> bool:
        return any(p.observable.stochastic for p in self.problems)

    @property
    def dtype(self):
        return self.problems[0].observable.dtype

    @property
    def device(self):
        return self.problems[0].observable.device

    def split(self, x) -> tuple[torch.Tensor, list]:
        """(φ, [nuisance of each problem]) from x."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device) if not isinstance(x, torch.Tensor) else \
            x.to(dtype=self.dtype, device=self.device)
        start, nuisances = self.n_free, []
        for p in self.problems:
            nuisances.append(x[start : start + p.n_nuisance])
            start += p.n_nuisance
        return x[: self.n_free], nuisances

    def rows(self) -> list[slice]:
        """The rows of each problem in the stacked residual vector."""
        out, start = [], 0
        for p in self.problems:
            out.append(slice(start, start + len(p)))
            start += len(p)
        return out

    def parameter_names(self) -> list[str]:
        names = list(self.model.names)
        for p in self.problems:
            prefix = f"{p.name}_" if p.name else ""
            names += [f"{prefix}{n}" for n in p.nuisance_names]
        return names

    def check_identifiable(self, J: np.ndarray, raise_: bool = True) -> dict:
        """Rank and condition number of the Jacobian with unit columns; a ``ValueError`` naming the
        unconstrained combination when the data do not determine every parameter."""
        names = self.parameter_names()
        if not np.all(np.isfinite(J)):
            bad = sorted({names[j] for j in np.nonzero(~np.isfinite(J))[1]})
            raise ValueError(f"the model gives non-finite values or derivatives at the start (parameters {bad}): "
                             "check the data's q-points against the geometry and the starting constants (an "
                             "infinite crystal has no value at Bragg peaks and q = 0: mask them, e.g. bragg=0.1)")
        norms = np.linalg.norm(J, axis=0)
        dead = [names[i] for i in np.nonzero(norms == 0)[0]]
        Jn = J / np.where(norms > 0, norms, 1.0)
        s, Vt = np.linalg.svd(Jn, full_matrices=False)[1:]
        rank = int(np.sum(s > RANK_RTOL * s[0])) if len(s) and s[0] > 0 else 0
        info = {"rank": rank, "n_parameters": len(names), "condition": float(s[0] / s[-1]) if s[-1] > 0 else np.inf}
        if rank < len(names) and raise_:
            v = Vt[-1]
            combo = dead or [f"{v[i]:+.2f}·{names[i]}" for i in np.argsort(-np.abs(v))[:4] if abs(v[i]) > 0.1]
            raise ValueError(
                f"the data do not determine the parameters: the Jacobian at the start has rank {rank} of "
                f"{len(names)} (unconstrained: {' '.join(combo)}). Fit fewer constants (fewer shells or a "
                "smaller cutoff), or add data (a wider |q| range, a full volume instead of a wedge)"
            )
        return info

    def check_stable(self, phi: torch.Tensor) -> None:
        """:func:`xtds.lattice.stability.check_stable` at every observable's k-points."""
        check_stable(self.model, phi, self.k)

    def residuals(self, x, check_stable: bool = False) -> np.ndarray:
        """The stacked residuals (numpy) of the deterministic (mean) models."""
        phi, nuisances = self.split(x)
        if check_stable:
            self.check_stable(phi)
        with torch.no_grad():
            return torch.cat([p.residuals(phi, eta) for p, eta in zip(self.problems, nuisances, strict=True)]
                             ).cpu().numpy()

    def value_and_jacobian(self, x, check_stable: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The stacked residuals (R,) and their exact Jacobian (R, n) at ``x`` (numpy).

        The observables are differentiated in forward mode (``torch.func.jacfwd``) in the force
        constants only, one batch of n_free tangents through the forward model; the scale and
        background act after the observable, so their columns (and the chain rule through them)
        cost next to nothing. Raises what the model's forward-mode derivatives raise where an
        operation has none (:class:`~xtds.fitting.lm.LM` then falls back to finite differences)."""
        phi, nuisances = self.split(x)
        if check_stable:
            self.check_stable(phi)

        def values(p_):
            out = tuple(p.observable.mean(p_) for p in self.problems)
            return out, tuple(o.detach() for o in out)

        with TRANSFORMS:  # torch's transforms are not thread-safe (xtds.transforms)
            dI, I = torch.func.jacfwd(values, has_aux=True)(phi)  # each (P_i, n_free)
        rows, blocks = [], []
        for p, eta, Ii, Ji in zip(self.problems, nuisances, I, dI, strict=True):
            rows.append(p.residuals_of(Ii, eta))
            blocks.append(p.residual_jacobian(Ii, Ji, eta))
        n_total = self.n_free + sum(p.n_nuisance for p in self.problems)
        J = torch.zeros((sum(len(r) for r in rows), n_total), dtype=rows[0].dtype, device=rows[0].device)
        start, col = 0, self.n_free
        for r, (J_phi, J_eta), p in zip(rows, blocks, self.problems, strict=True):
            J[start : start + len(r), : self.n_free] = J_phi
            if p.n_nuisance:
                J[start : start + len(r), col : col + p.n_nuisance] = J_eta
                col += p.n_nuisance
            start += len(r)
        return torch.cat(rows).detach().cpu().numpy(), J.detach().cpu().numpy()

    def loss(self, x: torch.Tensor, epoch: int, penalty: float = 1.0) -> torch.Tensor:
        """The stochastic loss Σ‖ρ‖² of one epoch; the eigenvalue penalty alone while it acts (Eq. 12–13)."""
        phi, nuisances = self.split(x)
        pen = eigen_penalty(self.model, phi, self.k, alpha=penalty)
        if pen > 0:
            return pen
        return sum((p.residuals(phi, eta, epoch) ** 2).sum() for p, eta in zip(self.problems, nuisances, strict=True))
