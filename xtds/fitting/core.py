"""The fit: problems → optimizer → covariance → a labelled Dataset.

:func:`fit_problems` is the loop every kind of data goes through: a list of
:class:`~xtds.fitting.problem.Problem` sharing one vector of force constants, an optimizer
(:class:`~xtds.fitting.optimize.LM` or :class:`~xtds.fitting.optimize.Adam`), the covariance and
the result. :func:`fit_points` makes the problem of a volume's fitting points and :func:`fit`
prepares a volume first; ``ds.tds.fit(...)`` is :func:`fit` on the Dataset.

Parameters x = (φ, nuisance of problem 1, nuisance of problem 2, …); the loss is the sum of the
problems' squared residual norms.

Uncertainties: the Gauss–Newton covariance of that (unweighted) least-squares estimator,
cov = J⁺ Σ J⁺ᵀ, with J the Jacobian of the stacked residuals at the optimum and Σ the residual
covariance: σ̂_p² per problem p from its residuals (for ``var_log``: Σρ² / dof, the irreducible
points counting as independent observations; for ``chi2``: 1, the residuals being in units of σ),
or, for data that are a mean over N sampled configurations, the covariance of single-configuration
draws through the linearized fit, divided by N. For one problem J⁺ σ̂² J⁺ᵀ = σ̂² (JᵀJ)⁻¹.
A problem's temperature uncertainty σ_T adds σ_T² g gᵀ, g = ∂x̂/∂T = −J⁺ ∂ρ/∂T (the shift of the
optimum when the temperature moves; in classical statistics every force constant scales with T).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from xtds.crystal import as_crystal
from xtds.errors import UnstableError, check_temperature
from xtds.fitting.losses import eigen_penalty, min_eigenvalues
from xtds.fitting.optimize import LM, Adam, Checkpoint
from xtds.fitting.problem import Problem, describe
from xtds.fitting.result import result_dataset
from xtds.ifc import IFCModel
from xtds.model.geometry import InfiniteCrystal, PeriodicSupercell, auto_geometry
from xtds.model.infinite import mesh_convergence
from xtds.model.observable import TDSIntensity, statistics_of
from xtds.volume import dataset as vol
from xtds.volume.masks import is_allowed
from xtds.volume.schema import check_crystal

__all__ = ["fit", "fit_points", "fit_problems", "points_problem", "Objective"]

#: Singular values of the column-scaled Jacobian below this fraction of the largest count as zero:
#: a parameter combination the data do not determine.
RANK_RTOL = 1e-9

log = logging.getLogger("xtds.fitting")


def initial_vector(model: IFCModel, initial) -> torch.Tensor:
    """Starting φ from a mapping, a DataArray, an array, or a Phonopy object (projected)."""
    if initial is None:
        raise ValueError(
            "give starting force constants: initial={name: value} (eV/Å²), an IFC DataArray, or phonopy force "
            "constants (a Phonopy object); e.g. xtds.datasets.paper_ni_ifcs('starting') for the paper's Ni"
        )
    if hasattr(initial, "force_constants") and hasattr(initial, "supercell"):
        from xtds.phonopy_io import from_phonopy

        return model.vector(from_phonopy(model, initial).phi)
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
        return getattr(self.problems[0].observable, "dtype", torch.float64)

    @property
    def device(self):
        return getattr(self.problems[0].observable, "device", None)

    def split(self, x) -> tuple[torch.Tensor, list]:
        """(φ, [nuisance of each problem]) from x."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device) if not isinstance(x, torch.Tensor) else \
            x.to(dtype=self.dtype, device=self.device)
        start, nus = self.n_free, []
        for p in self.problems:
            nus.append(x[start : start + p.n_nuisance])
            start += p.n_nuisance
        return x[: self.n_free], nus

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
        lam = min_eigenvalues(self.model, phi, self.k)
        bad = lam[torch.isfinite(lam)] < -1e-10
        if torch.any(bad):
            raise UnstableError(f"{int(bad.sum())} negative Hessian eigenvalues (min {float(lam.min()):.3g} eV/Å²)")

    def residuals(self, x, check_stable: bool = False) -> np.ndarray:
        """The stacked residuals (numpy) of the deterministic (mean) models."""
        phi, nus = self.split(x)
        if check_stable:
            self.check_stable(phi)
        with torch.no_grad():
            return torch.cat([p.residuals(phi, nu) for p, nu in zip(self.problems, nus, strict=True)]).cpu().numpy()

    def value_and_jacobian(self, x, check_stable: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The stacked residuals (R,) and their exact Jacobian (R, n) at ``x`` (numpy).

        The observables are differentiated in forward mode (``torch.func.jacfwd``) in the force
        constants only, one batch of n_free tangents through the forward model; the scale and
        background act after the observable, so their columns (and the chain rule through them)
        cost next to nothing. Raises what the model's forward-mode derivatives raise where an
        operation has none (:class:`LM` then falls back to finite differences)."""
        phi, nus = self.split(x)
        if check_stable:
            self.check_stable(phi)

        def values(p_):
            out = tuple(p.observable.mean(p_) for p in self.problems)
            return out, tuple(o.detach() for o in out)

        dI, I = torch.func.jacfwd(values, has_aux=True)(phi)  # each (P_i, n_free)
        rows, jac = [], []
        for p, nu, Ii, Ji in zip(self.problems, nus, I, dI, strict=True):
            r_phi = torch.func.vmap(lambda t, p=p, nu=nu, Ii=Ii: torch.func.jvp(lambda v: p.residuals_of(v, nu), (Ii,),
                                                                               (t,))[1], in_dims=1, out_dims=1)(Ji)
            cols = [r_phi]
            if p.n_nuisance:
                cols.append(torch.func.jacfwd(lambda v, p=p, Ii=Ii: p.residuals_of(Ii, v))(nu))
            rows.append(p.residuals_of(Ii, nu))
            jac.append(cols)
        n_total = self.n_free + sum(p.n_nuisance for p in self.problems)
        J = torch.zeros((sum(len(r) for r in rows), n_total), dtype=rows[0].dtype, device=rows[0].device)
        start, col = 0, self.n_free
        for r, cols, p in zip(rows, jac, self.problems, strict=True):
            J[start : start + len(r), : self.n_free] = cols[0]
            if p.n_nuisance:
                J[start : start + len(r), col : col + p.n_nuisance] = cols[1]
                col += p.n_nuisance
            start += len(r)
        return torch.cat(rows).detach().cpu().numpy(), J.detach().cpu().numpy()

    def loss(self, x: torch.Tensor, epoch: int, penalty: float = 1.0) -> torch.Tensor:
        """The stochastic loss Σ‖ρ‖² of one epoch; the eigenvalue penalty alone while it acts (Eq. 12–13)."""
        phi, nus = self.split(x)
        pen = eigen_penalty(self.model, phi, self.k, alpha=penalty)
        if pen > 0:
            return pen
        return sum((p.residuals(phi, nu, epoch) ** 2).sum() for p, nu in zip(self.problems, nus, strict=True))


def fit_problems(
    problems,
    initial,
    optimizer: LM | Adam | None = None,
    noise_draws: int = 200,
    checkpoint=None,
    callback=None,
    progress: bool = True,
    source: str | None = None,
    starts: int = 1,
    start_spread: float = 0.2,
    seed: int = 0,
) -> xr.Dataset:
    """Fit one vector of force constants to a sum of problems.

    Parameters
    ----------
    problems
        A :class:`~xtds.fitting.problem.Problem` or a list of them, all on the same
        :class:`~xtds.IFCModel` (joint fits of several volumes, temperatures or kinds of data).
    initial
        Starting force constants: mapping, DataArray, array, or a Phonopy object (projected).
    optimizer
        :class:`LM` (default for deterministic observables) or :class:`Adam` (default, and
        required, when an observable is stochastic).
    noise_draws
        Single-configuration draws for the covariance of problems with ``noise_configurations``.
    checkpoint
        A file path: progress is saved there and a restarted fit resumes from it (problems and
        optimizer must be the same; ``max_iter``/``epochs`` may grow).
    callback
        Called as ``callback(iteration, x, loss)`` after every accepted iteration.
    starts, start_spread, seed
        With ``starts`` > 1, the fit also runs from ``starts`` − 1 other stable starting points,
        each constant multiplied by 1 + ``start_spread``·u, u uniform in [−1, 1] (``seed``), and
        keeps the lowest loss: a loss with more than one minimum (measured spectra at high
        temperature) is then less likely to end in the nearer one. ``attrs["starts"]`` lists
        every start's final loss (JSON); ``attrs["best_start"]`` which one won (0: ``initial``).

    Returns
    -------
    ``xr.Dataset``: ``ifc``, ``ifc_stderr`` (dim ``constant``; eV/Å², a0 included), ``ifc_cov``,
    ``dispersion``, ``dos``, ``elastic_constants``, ``loss`` and ``wall_time`` (dim
    ``iteration``), each problem's data, scaled model and residual (prefixed by its name in a
    joint fit), attrs with provenance and timings.
    """
    t_start = time.perf_counter()
    problems = (problems,) if isinstance(problems, Problem) else tuple(problems)
    if not problems:
        raise ValueError("give at least one Problem to fit")
    model = problems[0].model
    for p in problems[1:]:
        if p.model is not model and (repr(p.model.crystal), p.model.names) != (repr(model.crystal), model.names):
            raise ValueError("the problems of one fit must share one IFCModel (crystal and cutoff)")
    names = [p.name for p in problems]
    if len(problems) > 1 and (len(set(names)) != len(names) or "" in names):
        raise ValueError(f"the problems of a joint fit need distinct, non-empty names, got {names}")
    problems = tuple(converge_mesh(p, initial) for p in problems)
    n_points = sum(len(p) for p in problems)
    n_params = model.n_free + sum(p.n_nuisance for p in problems)
    n_centring = sum(1 for p in problems if p.loss == "var_log" and not p.n_nuisance)
    if n_points < n_params + n_centring:
        raise ValueError(
            f"{n_points} data points cannot determine {n_params} parameters ({model.n_free} force constants"
            f"{' and nuisance parameters' if n_params > model.n_free else ''}"
            f"{', and the var_log loss spends one on the scale' if n_centring else ''}): add data (a larger volume, "
            "no wedge, fewer masks) or fit fewer constants (fewer shells or a smaller cutoff)"
        )
    k = np.unique(np.concatenate([p.observable.stability_k() for p in problems]).round(12), axis=0)
    objective = Objective(problems, model, k)
    if optimizer is None:
        optimizer = Adam() if objective.stochastic else LM()
    phi0 = initial_vector(model, initial).to(dtype=objective.dtype, device=objective.device)
    try:
        objective.check_stable(phi0)
    except UnstableError as err:
        raise UnstableError(
            f"the starting force constants are dynamically unstable ({err}); start from stable IFCs (check with "
            "xtds.stability(model, ifc)), e.g. a nearest-neighbour model or projected phonopy force constants"
        ) from err
    x0 = np.concatenate([phi0.cpu().numpy()] + [p.initial_nuisance(phi0) for p in problems])
    settings = {"problems": [describe(p) for p in problems], "optimizer": describe(optimizer)}
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, Checkpoint.fingerprint_of({**settings, "initial": x0.tolist()}))
    if int(starts) < 1 or (int(starts) > 1 and checkpoint is not None):
        raise ValueError(f"starts must be at least 1 (got {starts}), and 1 with a checkpoint")
    res = optimizer.minimize(objective, x0, checkpoint=ckpt, progress=progress, callback=callback)
    tried = [float(res.loss)]
    best = 0
    for x_start in _other_starts(objective, phi0, int(starts) - 1, start_spread, seed):
        other = optimizer.minimize(objective, x_start, progress=progress, callback=callback)
        tried.append(float(other.loss))
        if other.loss < res.loss:
            res, best = other, len(tried) - 1
    cov, robust, stats = _covariance(objective, res, noise_draws)
    out = result_dataset(objective, res, cov, stats, settings, x0, robust=robust)
    out.attrs.update(source=str(source), wall_time_s=float(time.perf_counter() - t_start))
    if starts > 1:
        out.attrs.update(starts=json.dumps(tried), best_start=int(best))
    return out


def _other_starts(objective: Objective, phi0: torch.Tensor, n: int, spread: float, seed: int):
    """``n`` stable starting vectors: φ0 with each constant scaled by 1 + spread·u (u uniform in
    [−1, 1]), the nuisance parameters refitted to each; unstable draws are skipped (at most 20n)."""
    rng = np.random.default_rng(seed)
    made = 0
    for _ in range(20 * n):
        if made == n:
            return
        phi = phi0 * torch.as_tensor(1 + spread * rng.uniform(-1, 1, len(phi0)), dtype=phi0.dtype,
                                     device=phi0.device)
        try:
            objective.check_stable(phi)
        except UnstableError:
            continue
        made += 1
        yield np.concatenate([phi.cpu().numpy()] + [p.initial_nuisance(phi) for p in objective.problems])
    if made < n:
        log.warning("only %d of %d extra starting points were stable", made, n)


#: ``geometry="auto"`` refines an infinite crystal's k-mesh (×4/3, at most MESH_REFINEMENTS times)
#: until the model changes by at most this much (median relative change over up to MESH_CHECK_POINTS
#: of the points, to a 1.5× finer mesh, at the starting constants) before fitting.
MESH_TOLERANCE = 1e-4
MESH_REFINEMENTS = 2
MESH_CHECK_POINTS = 300


def converge_mesh(problem: Problem, initial) -> Problem:
    """The problem with its infinite crystal's k-mesh refined until converged to
    :data:`MESH_TOLERANCE` at the starting constants, when ``geometry="auto"`` chose it (a
    geometry given by hand is kept). The meshes tried and their changes are logged and appended to
    the problem's ``geometry_reason``. Unstable starting constants are left to the fit's check."""
    obs = problem.observable
    if not (isinstance(obs, TDSIntensity) and isinstance(obs.geometry, InfiniteCrystal)) \
            or problem.geometry_reason in ("", "given") or obs.method != "exact":
        return problem
    try:
        phi0 = initial_vector(obs.model, initial)
        steps = []
        for i in range(MESH_REFINEMENTS + 1):
            conv = mesh_convergence(obs, phi0, max_points=MESH_CHECK_POINTS)
            steps.append(f"{conv['mesh'][0]}³ vs {conv['finer_mesh'][0]}³: {conv['median_rel_change']:.1e}")
            if not conv["median_rel_change"] > MESH_TOLERANCE or i == MESH_REFINEMENTS:
                break
            finer = tuple(int(4 * np.ceil(m * 4 / 3 / 4)) for m in obs.geometry.shape)
            obs = dataclasses.replace(obs, geometry=InfiniteCrystal(finer))
    except UnstableError:
        return problem
    why = (f"{problem.geometry_reason}; k-mesh {tuple(obs.geometry.shape)} chosen for a median change ≤ "
           f"{MESH_TOLERANCE:g} at the starting constants ({', '.join(steps)})")
    log.info("infinite crystal: %s", why.split("; ")[-1])
    return dataclasses.replace(problem, observable=obs, geometry_reason=why)


#: Blocks (|q| shells) per problem of the robust (cluster-sandwich) covariance.
ROBUST_BLOCKS = 12


def _covariance(objective: Objective, res, noise_draws: int):
    """cov = J⁺ Σ J⁺ᵀ (see the module docstring), the robust covariance and per-problem (n, dof, σ̂²).

    Robust: the cluster sandwich J⁺ Ω J⁺ᵀ with Ω block-diagonal, Ω_b = ρ_b ρ_bᵀ over
    :data:`ROBUST_BLOCKS` shells of |q| per problem, times G/(G − 1) for G blocks. It takes the
    residuals as they are, correlations within a shell included, so a model that cannot fit the
    data (missing shells, a wrong background) widens it where the Gauss–Newton covariance, which
    assumes independent residuals of the model's own form, stays narrow.
    """
    J = res.jacobian
    rho = objective.residuals(res.x)
    Jp = np.linalg.pinv(J)
    phi, nus = objective.split(res.x)
    n_total = len(rho)
    cov = np.zeros((J.shape[1], J.shape[1]))
    robust = np.zeros_like(cov)
    stats = []
    for p, rows, nu in zip(objective.problems, objective.rows(), nus, strict=True):
        dof, unit = p.dof_and_variance(rho[rows], objective.n_free * len(p) / n_total)
        Jr = Jp[:, rows]
        if p.noise_configurations:
            seed = int(getattr(p.observable, "seed", 0) or 0) + 7919
            shifts = -p.noise_residuals(phi, nu, noise_draws, seed) @ Jr.T
            cov += np.cov(shifts, rowvar=False) / float(p.noise_configurations)
            robust += np.cov(shifts, rowvar=False) / float(p.noise_configurations)
            s2, dof = float("nan"), len(p)
        else:
            cov += unit * (Jr @ Jr.T)
            blocks = p.blocks(ROBUST_BLOCKS)
            shifts = np.stack([Jr[:, b] @ rho[rows][b] for b in blocks])
            robust += shifts.T @ shifts * (len(blocks) / max(len(blocks) - 1, 1))
            s2 = unit * float(p.weight.sum()) if p.loss == "var_log" else 1.0  # per voxel: Var of one log I
        if p.temperature_stderr:
            g = -Jr @ _temperature_derivative(p, phi, nu)
            cov += p.temperature_stderr**2 * np.outer(g, g)
            robust += p.temperature_stderr**2 * np.outer(g, g)
        stats.append({"name": p.name, "n_points": len(p), "dof": int(dof), "sigma2_hat": s2,
                      "temperature_stderr_K": float(p.temperature_stderr)})
    return cov, robust, stats


def _temperature_derivative(p: Problem, phi, nu, rel_step: float = 1e-3) -> np.ndarray:
    """∂ρ/∂T (shape (P,)) of a problem's residuals at fixed parameters, by central differences of
    the observable rebuilt at T ± h (h = 10⁻³ T)."""
    T = float(p.observable.temperature)
    h = rel_step * T
    rho = []
    for t in (T + h, T - h):
        q = dataclasses.replace(p, observable=dataclasses.replace(p.observable, temperature=t))
        with torch.no_grad():
            rho.append(q.residuals(phi, nu).cpu().numpy())
    return (rho[0] - rho[1]) / (2 * h)


def points_problem(
    points: xr.Dataset,
    model: IFCModel,
    temperature: float,
    method: str = "exact",
    geometry="auto",
    quantum: bool = True,
    form_factor: str | None = "cromer-mann",
    loss: str = "var_log",
    background=False,
    temperature_stderr: float = 0.0,
    corrections=None,
    n_samples: int = 15,
    solver: str = "kspace",
    orbit_average: bool = True,
    seed: int = 0,
    noise_configurations: int | None = None,
    dtype=torch.float64,
    device=None,
    name: str = "",
) -> Problem:
    """The :class:`Problem` of a volume's fitting points (from :func:`xtds.volume.to_points`): a
    :class:`~xtds.model.TDSIntensity` at their q with the method's options, compared with their
    ``intensity`` (weights: ``multiplicity``; ``sigma`` when present). ``orbit_average`` applies
    to ``sampled`` only. Arguments as :func:`fit_points`."""
    if "point" not in points.dims or "q" not in points:
        raise ValueError("points must be a Dataset on dim 'point' with 'q' (from ds.tds.to_points())")
    if str(points["q"].attrs.get("units", "")) != "1/angstrom":
        raise ValueError("points['q'] must carry units '1/angstrom' (Cartesian, 2π included)")
    hkl = np.stack([points[d].values for d in "HKL"], 1)
    if isinstance(geometry, str):
        if geometry != "auto":
            raise ValueError(f"geometry must be 'auto', a PeriodicSupercell or an InfiniteCrystal, got {geometry!r}")
        geometry, why = auto_geometry(hkl, points.attrs, method=method)
        log.info("geometry='auto' chose %r for %d points: %s", geometry, len(hkl), why)
        geometry_reason = why
    else:
        geometry_reason = "given"
    check_range(model, geometry)
    check_bragg_free(model, geometry, points["q"].values, hkl)
    observable = TDSIntensity(model, points["q"].values, temperature, method=method, geometry=geometry,
                              quantum=quantum, form_factor=form_factor, laue_reduce="auto",
                              orbit_average=bool(orbit_average) and method == "sampled", n_samples=n_samples,
                              solver=solver, seed=seed, dtype=dtype, device=device)
    mult = points["multiplicity"].values if "multiplicity" in points else None
    coords = {"point": points["point"].values} if "point" in points.coords else {}
    coords.update({d: (points[d].values, dict(points[d].attrs)) for d in "HKL"})
    return Problem(observable, points["intensity"].values, weight=mult,
                   sigma=points["sigma"].values if "sigma" in points else None, loss=loss,
                   background=None if background is False else background,
                   temperature_stderr=temperature_stderr, corrections=corrections,
                   noise_configurations=noise_configurations, name=name,
                   coords=coords,
                   data_attrs=dict(points["intensity"].attrs), geometry_reason=geometry_reason)


def check_bragg_free(model: IFCModel, geometry, q: np.ndarray, hkl: np.ndarray) -> None:
    """A ``ValueError`` when an infinite crystal is to be fitted at q = 0 or at allowed Bragg
    reflections (non-vanishing structure factor), where its diffuse intensity is undefined and
    measured data are Bragg peaks. Forbidden reflections (e.g. 001 of hcp) are fine."""
    if not isinstance(geometry, InfiniteCrystal):
        return
    crystal = model.crystal
    on = np.all(np.abs(hkl - np.round(hkl)) < 1e-6, axis=1)
    if np.any(on):
        on[np.flatnonzero(on)] = is_allowed(crystal, np.round(hkl[on]))
    if np.any(on):
        raise ValueError(
            f"{int(on.sum())} points lie on reciprocal-lattice points (e.g. H K L = {hkl[on][0].round(4)}), where an "
            "infinite crystal has Bragg peaks and no defined diffuse intensity: mask them (fit(..., bragg=0.1) or "
            "ds.tds.mask(bragg=...)), or, for a volume simulated on a periodic supercell, pass "
            "geometry=PeriodicSupercell(L) (or keep its attrs['geometry'])"
        )


def check_range(model: IFCModel, geometry) -> None:
    """A ``ValueError`` when the force constants reach beyond half a periodic supercell: a pair and
    its periodic images would then be the same pair twice (the model no longer an infinite crystal's)."""
    if not isinstance(geometry, PeriodicSupercell):
        return
    reach = max(float(i.distance) for i in model.info)
    cell = np.asarray(model.crystal.lattice) * np.asarray(geometry.repeats)[:, None]
    volume = abs(np.linalg.det(cell))
    half = min(volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)) / 2
    if reach > half * (1 + 1e-9):
        raise ValueError(
            f"the force constants reach {reach:.3f} Å, beyond half the {geometry.repeats} supercell ({half:.3f} Å): "
            "a pair would meet its own periodic image. Fit fewer shells (or a smaller cutoff), or use a supercell "
            "of more repeats (data on a finer grid) or geometry=InfiniteCrystal(...)"
        )


def fit_points(
    points: xr.Dataset,
    crystal,
    temperature: float,
    shells: int | None = None,
    cutoff: float | None = None,
    initial=None,
    *,
    method: str = "exact",
    geometry="auto",
    quantum: bool | None = None,
    form_factor: str | None = "cromer-mann",
    loss: str = "var_log",
    background=False,
    temperature_stderr: float = 0.0,
    corrections=None,
    n_samples: int = 15,
    solver: str = "kspace",
    orbit_average: bool = True,
    seed: int = 0,
    noise_configurations: int | None = None,
    noise_draws: int = 200,
    optimizer: LM | Adam | None = None,
    checkpoint=None,
    callback=None,
    progress: bool = True,
    dtype=torch.float64,
    device=None,
    source: str | None = None,
) -> xr.Dataset:
    """Fit force constants to fitting points (from :func:`xtds.volume.to_points`).

    Parameters
    ----------
    points
        Dataset on dim ``point`` with ``intensity``, ``multiplicity``, ``q`` (Å⁻¹) and H, K, L
        (r.l.u.); optional ``sigma`` for ``loss="chi2"``.
    crystal, temperature
        The :class:`~xtds.Crystal` and the temperature (K, required).
    shells, cutoff
        The IFC model's range (neighbour shells or a radius in Å).
    initial
        Starting IFCs: mapping, DataArray, or a Phonopy object (projected on the basis).
    method, geometry, quantum, form_factor
        The forward model (:class:`~xtds.model.TDSIntensity`); ``geometry="auto"`` is an infinite
        crystal (measured data), or the periodic supercell the data say they were simulated on
        (:func:`~xtds.model.geometry.auto_geometry`); the choice and its reason are logged and kept in
        the result's attrs ``geometry``/``geometry_reason``, with ``mesh_convergence`` for an
        infinite crystal. ``quantum``: None
        (default) takes the statistics the data say they were simulated with (``attrs['quantum']``,
        written by :func:`xtds.simulate`) and otherwise Bose–Einstein statistics, those of a measured
        crystal; False: classical (the paper's benchmark).
    loss, background
        ``"var_log"`` (the paper's) or ``"chi2"``. ``background``: the nuisance terms fitted with an
        overall scale: True or ``"constant"``, ``"compton"`` (Compton scattering of free amplitude
        and a constant), ``"polynomial"``, or a :class:`~xtds.fitting.background.Background`
        (always at least a constant for ``chi2``); see :mod:`xtds.fitting.background`.
    temperature_stderr
        Standard uncertainty of the temperature (K), propagated into the errors (0: exact).
    corrections
        Polarization and absorption factors multiplied into the model
        (:class:`~xtds.corrections.Corrections`, e.g. ``Corrections.from_attrs(ds.attrs,
        sample_radius=0.1)``); None: the volume is taken as corrected.
    n_samples, solver, orbit_average, seed
        ``sampled`` only: configurations per epoch, the Cholesky solver, whether each point's
        model averages every configuration over its Laue orbit (default; the same mean with less
        noise), and the noise seed (``seed + epoch`` per epoch).
    noise_configurations, noise_draws
        The data are a mean over N sampled configurations (the paper's synthetic target): the
        covariance then comes from ``noise_draws`` single configurations at the fitted IFCs, each
        mapped to a parameter shift by the linearized fit, divided by N.
    optimizer
        :class:`~xtds.fitting.LM` (default for ``exact``/``one_phonon``) or
        :class:`~xtds.fitting.Adam` (default for ``sampled``), with their settings.
    checkpoint, callback, progress
        As :func:`fit_problems`.

    Returns
    -------
    The Dataset of :func:`fit_problems`, with ``intensity``, ``model_intensity`` and ``residual``
    on dim ``point``.
    """
    check_temperature(temperature)
    quantum = statistics_of(points.attrs, quantum)
    model = IFCModel(as_crystal(crystal), shells=shells, cutoff=cutoff)
    problem = points_problem(points, model, temperature, method=method, geometry=geometry, quantum=quantum,
                             form_factor=form_factor, loss=loss, background=background,
                             temperature_stderr=temperature_stderr, corrections=corrections, n_samples=n_samples,
                             solver=solver, orbit_average=orbit_average, seed=seed,
                             noise_configurations=noise_configurations, dtype=dtype, device=device)
    return fit_problems([problem], initial, optimizer=optimizer, noise_draws=noise_draws, checkpoint=checkpoint,
                        callback=callback, progress=progress, source=source)


def fit(
    ds: xr.Dataset,
    crystal,
    temperature: float | None = None,
    shells: int | None = None,
    cutoff: float | None = None,
    initial=None,
    *,
    bragg: float | None = None,
    q_min: float | None = None,
    q_max: float | None = None,
    symmetrize: bool = True,
    laue: str | None = None,
    max_points: int | None = None,
    method: str = "exact",
    geometry="auto",
    quantum: bool | None = None,
    form_factor: str | None = "cromer-mann",
    loss: str = "var_log",
    background=False,
    temperature_stderr: float = 0.0,
    corrections=None,
    n_samples: int = 15,
    solver: str = "kspace",
    orbit_average: bool = True,
    seed: int = 0,
    noise_configurations: int | None = None,
    noise_draws: int = 200,
    optimizer: LM | Adam | None = None,
    checkpoint=None,
    callback=None,
    progress: bool = True,
    dtype=torch.float64,
    device=None,
) -> xr.Dataset:
    """Fit a volume: mask, symmetrize, reduce to irreducible points, and :func:`fit_points`.

    Masks and wedges beyond the convenience keywords are the accessor chain's:
    ``ds.tds.mask(...).tds.wedge(...).tds.fit(...)``. ``temperature`` defaults to
    ``ds.attrs['temperature']`` (the file's) and is required one way or the other. ``bragg``
    (r.l.u. radius), ``q_min``/``q_max`` (Å⁻¹) add masks; ``symmetrize`` averages over the Laue
    group first (``laue``: a class name instead of the crystal's). ``max_points``: fit a random
    subset (drawn with ``seed``) of at most this many irreducible points, for volumes whose hundreds
    of thousands of points hold far more information than a handful of constants needs; on a large
    volume only the drawn orbits are read (:func:`~xtds.volume.dataset.to_points`); the reported
    errors are those of the subset (honest, and larger than the whole volume's). Every
    other keyword is :func:`fit_points`'s.
    """
    if temperature is None:
        temperature = ds.attrs.get("temperature")
        if temperature is None:
            raise ValueError("temperature (K) is required: pass temperature=..., or set ds.attrs['temperature']")
    check_temperature(temperature)
    quantum = statistics_of(ds.attrs, quantum)
    crystal = as_crystal(crystal)
    check_crystal(ds, crystal)
    prepared = vol.mask(ds, bragg=bragg, q_min=q_min, q_max=q_max, crystal=crystal)
    group = dict(laue=laue, crystal=crystal) if laue else dict(crystal=crystal)
    # symmetrize: each Laue orbit becomes one point holding the weighted mean of its valid voxels (and
    # the σ of that mean), exactly what vol.symmetrize followed by the reduction gives (to 1e-15),
    # without writing the symmetrized volume first (a third of the time on a 321³ volume)
    points = vol.to_points(prepared, irreducible=bool(symmetrize), max_points=max_points, seed=seed, **group)
    symmetrized = (f"{vol.laue_of(prepared, laue, crystal).name} (orbit means of the valid voxels)" if symmetrize
                   else prepared.attrs.get("symmetrized"))
    n_all = points.attrs.get("n_points_available")
    subset = json.loads(points.attrs["subset"]) if "subset" in points.attrs else None
    if subset:
        log.info("fitting %d of %s points (max_points, seed %d; %s)", points.sizes["point"],
                 "the" if n_all is None else f"the {n_all}", seed, subset["drawn"])
    out = fit_points(points, crystal, temperature, shells=shells, cutoff=cutoff, initial=initial, method=method,
                     geometry=geometry, quantum=quantum, form_factor=form_factor, loss=loss, background=background,
                     temperature_stderr=temperature_stderr, corrections=corrections,
                     n_samples=n_samples, solver=solver, orbit_average=orbit_average, seed=seed,
                     noise_configurations=noise_configurations, noise_draws=noise_draws, optimizer=optimizer,
                     checkpoint=checkpoint, callback=callback, progress=progress, dtype=dtype, device=device,
                     source=ds.attrs.get("source"))
    out.attrs["preparation"] = json.dumps(
        {"masks": prepared.attrs.get("masks"), "symmetrized": symmetrized,
         "n_valid_voxels": points.attrs.get("n_valid_voxels"), "n_points_available": n_all,
         "n_points_fitted": points.sizes["point"], "subset": subset},
        default=str)
    return out
