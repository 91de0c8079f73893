"""The objective of a fit: its problems as functions of one parameter vector x.

x = (φ, nuisance of problem 1, nuisance of problem 2, …); the loss is the sum of the problems'
squared residual norms. :class:`Objective` is what the optimizers call: the stacked residuals of
the deterministic (mean) models with their exact Jacobian, the stochastic loss of one epoch, the
stability check of every iterate and the identifiability of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """The problems of a fit as functions of the parameter vector x (what the optimizers call).

    With constraints, x holds the fitted constants only (the fixed ones are inserted by
    :meth:`split`), and each Gaussian prior adds the residual (φ_i − mean)/σ after the problems'.
    """

    problems: tuple[Problem, ...]
    model: IFCModel
    k: np.ndarray  # (K, 3) Å⁻¹: where stability is required (every observable's k-points)
    fixed: dict = field(default_factory=dict)  # index of a constant → its value, eV/Å²
    priors: dict = field(default_factory=dict)  # index of a constant → (mean, σ), eV/Å²

    @property
    def n_free(self) -> int:
        """The model's free constants (fitted and fixed): the length of φ."""
        return self.model.n_free

    @property
    def n_fit(self) -> int:
        """The constants the optimizer moves: the first entries of x."""
        return self.model.n_free - len(self.fixed)

    @property
    def fitted(self) -> np.ndarray:
        """Indices (into φ) of the fitted constants, in order."""
        return np.array([i for i in range(self.n_free) if i not in self.fixed], dtype=int)

    @property
    def n_prior(self) -> int:
        return len(self.priors)

    def x_of(self, phi, nuisances) -> np.ndarray:
        """x from a full φ (numpy or tensor) and the problems' nuisance vectors."""
        phi = phi.detach().cpu().numpy() if isinstance(phi, torch.Tensor) else np.asarray(phi, dtype=float)
        return np.concatenate([phi[self.fitted]] + [np.asarray(e, dtype=float) for e in nuisances])

    def full_x(self, x) -> np.ndarray:
        """x with the fixed constants inserted: (φ, nuisances) in the model's layout."""
        x = np.asarray(x, dtype=float)
        phi = np.empty(self.n_free)
        phi[self.fitted] = x[: self.n_fit]
        for i, v in self.fixed.items():
            phi[i] = v
        return np.concatenate([phi, x[self.n_fit:]])

    def expand(self, cov: np.ndarray) -> np.ndarray:
        """A covariance of x as one of :meth:`full_x` (zero rows and columns for fixed constants)."""
        n_x = cov.shape[0]
        E = np.zeros((self.n_free + n_x - self.n_fit, n_x))
        E[self.fitted, np.arange(self.n_fit)] = 1.0
        E[self.n_free:, self.n_fit:] = np.eye(n_x - self.n_fit)
        return E @ cov @ E.T

    def _prior_rows(self, phi: torch.Tensor) -> torch.Tensor:
        if not self.priors:
            return phi.new_zeros(0)
        idx = torch.as_tensor(list(self.priors), device=phi.device)
        mean, sigma = (torch.as_tensor([v[j] for v in self.priors.values()], dtype=phi.dtype, device=phi.device)
                       for j in (0, 1))
        return (phi[idx] - mean) / sigma

    def _prior_jacobian(self) -> np.ndarray:
        """(n_prior, n_fit): the priors' rows of the Jacobian in the fitted constants."""
        J = np.zeros((self.n_prior, self.n_fit))
        col = {int(i): c for c, i in enumerate(self.fitted)}
        for r, (i, (_, sigma)) in enumerate(self.priors.items()):
            J[r, col[i]] = 1.0 / sigma
        return J

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
        """(φ, [nuisance of each problem]) from x (the fixed constants inserted into φ)."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device) if not isinstance(x, torch.Tensor) else \
            x.to(dtype=self.dtype, device=self.device)
        start, nuisances = self.n_fit, []
        for p in self.problems:
            nuisances.append(x[start : start + p.n_nuisance])
            start += p.n_nuisance
        phi = x[: self.n_fit]
        if self.fixed:
            full = torch.zeros(self.n_free, dtype=x.dtype, device=x.device)
            full = full.index_put((torch.as_tensor(list(self.fixed), device=x.device),),
                                  torch.as_tensor(list(self.fixed.values()), dtype=x.dtype, device=x.device))
            phi = full.index_put((torch.as_tensor(self.fitted, device=x.device),), phi)
        return phi, nuisances

    def split_full(self, x_full) -> tuple[torch.Tensor, list]:
        """(φ, [nuisance of each problem]) from x in the model's layout (:meth:`full_x`)."""
        x = torch.as_tensor(np.asarray(x_full, dtype=float), dtype=self.dtype, device=self.device)
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
        """The names of x's entries: the fitted constants, then each problem's nuisance parameters."""
        names = [self.model.names[i] for i in self.fitted]
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
                "smaller cutoff), fix some or give them priors (constraints=xtds.Constraints(fixed=..., "
                "priors=...)), or add data (a wider |q| range, a full volume instead of a wedge)"
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
                             + [self._prior_rows(phi)]).cpu().numpy()

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

        n_h = getattr(self.model, "n_harmonic", None)
        if n_h is not None and all(hasattr(p.observable, "cumulant_jacobian") for p in self.problems):
            # an anharmonic model: forward mode in the force constants only; the cumulant columns come
            # from the observables' own cheap Jacobian (θ enters far pairs through site factors only)
            theta = phi[n_h:].detach()
            with TRANSFORMS:
                dI, I = torch.func.jacfwd(lambda ph: values(torch.cat([ph, theta])), has_aux=True)(phi[:n_h])
            dI = tuple(torch.cat([Ji, p.observable.cumulant_jacobian(phi.detach()).to(Ji)], 1)
                       for Ji, p in zip(dI, self.problems, strict=True))
        else:
            with TRANSFORMS:  # torch's transforms are not thread-safe (xtds.transforms)
                dI, I = torch.func.jacfwd(values, has_aux=True)(phi)  # each (P_i, n_free)
        rows, blocks = [], []
        for p, eta, Ii, Ji in zip(self.problems, nuisances, I, dI, strict=True):
            rows.append(p.residuals_of(Ii, eta))
            blocks.append(p.residual_jacobian(Ii, Ji, eta))
        n_total = self.n_fit + sum(p.n_nuisance for p in self.problems)
        J = torch.zeros((sum(len(r) for r in rows) + self.n_prior, n_total), dtype=rows[0].dtype,
                        device=rows[0].device)
        start, col = 0, self.n_fit
        fitted = torch.as_tensor(self.fitted, device=rows[0].device)
        for r, (J_phi, J_eta), p in zip(rows, blocks, self.problems, strict=True):
            J[start : start + len(r), : self.n_fit] = J_phi[:, fitted]
            if p.n_nuisance:
                J[start : start + len(r), col : col + p.n_nuisance] = J_eta
                col += p.n_nuisance
            start += len(r)
        if self.priors:
            J[start:, : self.n_fit] = torch.as_tensor(self._prior_jacobian(), dtype=J.dtype, device=J.device)
            rows.append(self._prior_rows(phi.detach()))
        return torch.cat(rows).detach().cpu().numpy(), J.detach().cpu().numpy()

    def loss(self, x: torch.Tensor, epoch: int, penalty: float = 1.0) -> torch.Tensor:
        """The stochastic loss Σ‖ρ‖² of one epoch; the eigenvalue penalty alone while it acts (Eq. 12–13)."""
        phi, nuisances = self.split(x)
        pen = eigen_penalty(self.model, phi, self.k, alpha=penalty)
        if pen > 0:
            return pen
        return (sum((p.residuals(phi, eta, epoch) ** 2).sum() for p, eta in zip(self.problems, nuisances, strict=True))
                + (self._prior_rows(phi) ** 2).sum())
