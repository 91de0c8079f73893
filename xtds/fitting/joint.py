"""Joint fits of a series: force constants as smooth functions of the series variable.

The members of a series (temperatures, pressures) are fitted at once, their force constants tied
by a polynomial in the series variable c (temperature in K, say):

    φ(c) = Σ_{j=0..d} a_j (c − c₀)^j,

so that the data of every member constrain every coefficient, and the coefficients themselves,
a_1 above all (the softening rate, eV/Å² per unit of c), come with Gauss–Newton errors. Each
member is a :class:`~xtds.fitting.problem.Problem` with its own nuisance parameters (scale,
background); the loss is the sum of the members' losses. Internally the polynomial is in
t = (c − c₀)/h (h the half-range of the coordinates), which keeps the Jacobian's columns of
similar size; the result is reported in the physical a_j.

With degree d = N − 1 for N members the map from coefficients to the members' constants is
invertible and the joint fit equals N separate fits (``tests/test_joint_series.py`` checks it);
with fewer coefficients it is the least-squares compromise the smoothness asks for.

``shared`` parameters take one value for every member (degree 0): the linewidth parameters γ_p of
:class:`~xtds.observables.neutron.linewidth.LinewidthIFC`, whose temperature law is in the model,
or a constant that should not move with c.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from xtds.fitting.lm import LM
from xtds.fitting.objective import Objective, initial_vector
from xtds.fitting.optimizers import Checkpoint, Optimizer
from xtds.observables.base import describe

__all__ = ["fit_joint_series", "SeriesObjective"]


@dataclass(frozen=True, eq=False)
class SeriesObjective(Objective):
    """The members' problems as functions of x = (θ, nuisance of member 1, …), θ (d + 1, n_free)
    flattened: member i has φ_i = Σ_j θ_j t_i^j (module docstring). Built by
    :func:`fit_joint_series`; what the optimizers call."""

    t: np.ndarray = None  # (N,) the members' scaled coordinates
    degree: int = 1
    shared: tuple = ()  # names of the model's free parameters kept at degree 0

    @property
    def active(self) -> np.ndarray:
        """Which of the (d + 1) × n_free coefficients θ_j,k are fitted (the shared parameters' j ≥ 1
        are not), power-major."""
        keep = np.array([n not in self.shared for n in self.model.names])
        return np.concatenate([np.ones(self.model.n_free, bool)] + [keep] * self.degree)

    @property
    def n_free(self) -> int:
        return int(self.active.sum())

    def basis(self, i: int) -> np.ndarray:
        """B_i (n_free, n_θ): φ_i = B_i θ."""
        powers = self.t[i] ** np.arange(self.degree + 1)
        return np.kron(powers[None, :], np.eye(self.model.n_free))[:, self.active]

    def member_x(self, x, i: int) -> np.ndarray:
        """(φ_i, nuisance of member i) from x."""
        x = np.asarray(x, dtype=float)
        theta = x[: self.n_free]
        start = self.n_free + sum(p.n_nuisance for p in self.problems[:i])
        return np.concatenate([self.basis(i) @ theta, x[start : start + self.problems[i].n_nuisance]])

    def _member(self, i: int) -> Objective:
        return Objective((self.problems[i],), self.model, self.problems[i].observable.stability_k())

    def parameter_names(self) -> list[str]:
        names = [f"{n}[t^{j}]" for j in range(self.degree + 1) for n in self.model.names]
        names = [n for n, a in zip(names, self.active, strict=True) if a]
        for p in self.problems:
            names += [f"{p.name}_{n}" for n in p.nuisance_names]
        return names

    def check_stable(self, phi) -> None:  # every member's constants
        theta = np.asarray(phi, dtype=float)
        x = np.concatenate([theta, np.zeros(sum(p.n_nuisance for p in self.problems))])
        for i in range(len(self.problems)):
            self._member(i).check_stable(torch.as_tensor(self.member_x(x, i)[: self.model.n_free]))

    def residuals(self, x, check_stable: bool = False) -> np.ndarray:
        return np.concatenate([self._member(i).residuals(self.member_x(x, i), check_stable=check_stable)
                               for i in range(len(self.problems))])

    def value_and_jacobian(self, x, check_stable: bool = True) -> tuple[np.ndarray, np.ndarray]:
        n, rows = self.model.n_free, []
        n_nu = [p.n_nuisance for p in self.problems]
        J = []
        for i in range(len(self.problems)):
            r, Ji = self._member(i).value_and_jacobian(self.member_x(x, i), check_stable=check_stable)
            full = np.zeros((len(r), self.n_free + sum(n_nu)))
            full[:, : self.n_free] = Ji[:, :n] @ self.basis(i)
            start = self.n_free + sum(n_nu[:i])
            full[:, start : start + n_nu[i]] = Ji[:, n:]
            rows.append(r)
            J.append(full)
        return np.concatenate(rows), np.concatenate(J)

    def loss(self, x, epoch, penalty=1.0):
        raise ValueError("joint series fits take deterministic observables and optimizer=LM(...)")


def fit_joint_series(problems, coords, initial, degree: int = 1, center: float | None = None,
                     optimizer: Optimizer | None = None, dim: str = "temperature", chi2_scale: str = "auto",
                     shared=()) -> xr.Dataset:
    """Fit the members of a series at once with force constants polynomial in the series variable.

    Parameters
    ----------
    problems
        One :class:`~xtds.fitting.problem.Problem` per member, all on the same IFC model (each with
        its own observable, data and nuisance parameters; distinct names).
    coords
        The series variable of each member (e.g. temperatures in K).
    initial
        Starting constants (as :func:`xtds.fit_problems`), used for a₀; the higher coefficients
        start at zero.
    degree, center
        Of the polynomial (1: linear in the series variable); c₀ (default: the mean of ``coords``), a₀ = φ(c₀).
    optimizer
        :class:`~xtds.fitting.lm.LM` (default; exact Jacobians where the observables have them),
        with its run-time settings (``progress``, ``checkpoint``, ``callback``).
    shared
        Names of free parameters with one value for every member (a_j = 0 for j ≥ 1, not fitted):
        e.g. the linewidths ``("gamma1",)`` of a model whose temperature law is already in it.

    Returns
    -------
    ``xr.Dataset``: ``coefficient`` (constant, power) a_j in eV/Å² per (unit of c)^j with
    ``coefficient_stderr`` and ``coefficient_cov``; ``ifc`` and ``ifc_stderr`` (``dim``,
    constant): φ at each member's coordinate with its propagated error; ``loss`` per member
    (``member_loss``) and by iteration; attrs: center, scale, optimizer message.
    Errors: J⁺ Σ J⁺ᵀ with each member's σ̂² as :func:`xtds.fit_problems` makes it (``chi2``: 1, or the
    reduced χ² where larger, ``chi2_scale`` as in :class:`~xtds.fitting.settings.Errors`; otherwise
    from the residuals), each member taking its share of the coefficients.
    """
    if chi2_scale not in ("auto", "always", "never"):
        raise ValueError(f"chi2_scale must be 'auto', 'always' or 'never', got {chi2_scale!r}")
    t_start = time.perf_counter()
    problems = tuple(problems)
    c = _check_members(problems, coords, degree)
    degree, model = int(degree), problems[0].model
    shared = _check_shared(model, shared)
    c0 = float(np.mean(c)) if center is None else float(center)
    h = float(np.max(np.abs(c - c0))) or 1.0
    k = np.concatenate([p.observable.stability_k() for p in problems])
    obj = SeriesObjective(problems, model, k, t=(c - c0) / h, degree=degree, shared=shared)
    phi0 = initial_vector(model, initial).cpu().numpy()
    theta0 = np.concatenate([phi0, np.zeros(obj.n_free - model.n_free)])
    x0 = np.concatenate([theta0] + [p.initial_nuisance(torch.as_tensor(phi0)) for p in problems])
    obj.check_stable(theta0)
    optimizer = LM() if optimizer is None else optimizer
    optimizer.check(obj)
    ckpt = None
    if optimizer.checkpoint is not None:
        settings = {"problems": [describe(p) for p in problems], "optimizer": describe(optimizer),
                    "coords": c.tolist(), "degree": degree, "center": c0, "shared": list(shared)}
        ckpt = Checkpoint(optimizer.checkpoint, Checkpoint.fingerprint_of({**settings, "initial": x0.tolist()}))
    res = optimizer.minimize(obj, x0, checkpoint=ckpt)
    rho = obj.residuals(res.x)
    Jp = np.linalg.pinv(res.jacobian)
    rows = np.cumsum([0] + [len(p) for p in problems])
    full, units = np.zeros((Jp.shape[0], Jp.shape[0])), []
    for p, a, b in zip(problems, rows[:-1], rows[1:], strict=True):  # each member's σ̂², as fit_problems
        unit = p.dof_and_variance(rho[a:b], obj.n_free * (b - a) / len(rho), chi2_scale)[1]
        full += unit * Jp[:, a:b] @ Jp[:, a:b].T
        units.append(unit)
    coef, cov = _physical_coefficients(obj, res.x, full, h)
    s2 = units[0] if len(set(units)) == 1 else json.dumps(units)
    out = _series_dataset(model, coef, cov, c, c0, degree, dim)
    out["member_loss"] = ((dim,), [float(rho[a:b] @ rho[a:b]) for a, b in zip(rows[:-1], rows[1:], strict=True)])
    out["loss"] = xr.DataArray([f for _, f, _ in res.history], dims=("iteration",),
                               coords={"iteration": [i for i, _, _ in res.history]})
    out.attrs.update(center=c0, scale=h, degree=degree, shared=", ".join(shared), message=res.message,
                     iterations=int(res.iterations), converged=int(bool(res.converged)), sigma2=s2,
                     members=", ".join(p.name for p in problems),
                     wall_time_s=float(time.perf_counter() - t_start), series_dim=dim,
                     model=f"{model.crystal!r}, {model.n_free} constants")
    if not math.isfinite(float(res.loss)):
        raise RuntimeError("the joint fit ended at a non-finite loss")
    return out


def _check_shared(model, shared) -> tuple:
    """The ``shared`` names as a tuple, each a free parameter of ``model``."""
    shared = tuple(shared)
    unknown = sorted(set(shared) - set(model.names))
    if unknown:
        raise ValueError(f"shared names {unknown} are not free parameters of the model ({', '.join(model.names)})")
    return shared


def _physical_coefficients(obj: SeriesObjective, x: np.ndarray, full: np.ndarray, h: float):
    """(a_j flattened power-major (d + 1)·n_free, their covariance) from the fitted scaled
    coefficients θ_j of t^j (the first ``obj.n_free`` entries of ``x``, covariance ``full``):
    a_j = θ_j / h^j; the shared parameters' a_j, j ≥ 1, are zero with zero error."""
    scale = np.repeat(h ** -np.arange(obj.degree + 1, dtype=float), obj.model.n_free)
    act = obj.active
    coef = np.zeros(len(act))
    coef[act] = x[: obj.n_free]
    cov = np.zeros((len(act), len(act)))
    cov[np.ix_(act, act)] = full[: obj.n_free, : obj.n_free]
    return coef * scale, cov * np.outer(scale, scale)


def _check_members(problems, coords, degree) -> np.ndarray:
    """The members' coordinates (N,), after checking the members (names, count, degree, kind)."""
    if len(problems) < 1:
        raise ValueError("give at least one Problem")
    names = [p.name for p in problems]
    if len(problems) > 1 and (len(set(names)) != len(names) or "" in names):
        raise ValueError(f"the members of a joint fit need distinct, non-empty names (Problem(name=...)), got {names}")
    c = np.asarray(coords, dtype=float).reshape(-1)
    if len(c) != len(problems):
        raise ValueError(f"{len(c)} coordinates for {len(problems)} members")
    degree = int(degree)
    if degree < 0 or degree >= len(np.unique(c)):
        raise ValueError(f"a polynomial of degree {degree} needs at least {degree + 1} distinct coordinates, "
                         f"got {len(np.unique(c))}")
    for p in problems:
        if p.observable.stochastic:
            raise ValueError("joint series fits take deterministic observables (not method='sampled')")
    return c


def _series_dataset(model, coef, cov, c, c0, degree, dim) -> xr.Dataset:
    """The coefficients a_j with their errors, and φ at each member's coordinate with its error."""
    nf = model.n_free
    cnames = list(model.names)
    flat = [f"{n}|{j}" for j in range(degree + 1) for n in cnames]
    out = xr.Dataset()
    out["coefficient"] = xr.DataArray(coef.reshape(degree + 1, nf).T, dims=("constant", "power"),
                                      coords={"constant": cnames, "power": np.arange(degree + 1)},
                                      attrs={"units": f"eV/Å^2 per (unit of {dim})^power",
                                             "long_name": f"φ({dim}) = Σ_j a_j ({dim} − {c0:g})^j"})
    out["coefficient_stderr"] = (("constant", "power"), np.sqrt(np.clip(np.diag(cov), 0, None)).reshape(
        degree + 1, nf).T)
    out["coefficient_cov"] = xr.DataArray(cov, dims=("coefficient_index", "coefficient_index_"),
                                          coords={"coefficient_index": flat, "coefficient_index_": flat})
    phis, errs = [], []
    for ci in c:
        B = np.kron(((ci - c0) ** np.arange(degree + 1))[None, :], np.eye(nf))
        phis.append(B @ coef)
        errs.append(np.sqrt(np.clip(np.diag(B @ cov @ B.T), 0, None)))
    out["ifc"] = xr.DataArray(np.array(phis), dims=(dim, "constant"), coords={dim: c},
                              attrs={"units": "eV/Å^2"})
    out["ifc_stderr"] = xr.DataArray(np.array(errs), dims=(dim, "constant"), attrs={"units": "eV/Å^2"})
    return out
