"""Optimizers for the IFC fit, as settings objects (:class:`LM`, :class:`Adam`), with progress
bars and resumable checkpoints.

- :func:`levenberg_marquardt_exact` for the deterministic models whose operations all have
  forward-mode derivatives (the default where they do): damped Gauss–Newton on exact Jacobians
  (one batched forward-mode pass, :meth:`xtds.fitting.core.Objective.value_and_jacobian`) with a
  secant estimate of the second-order term (NL2SOL), superlinear where the misfit is large.
- :func:`levenberg_marquardt` otherwise: damped Gauss–Newton on a residual vector, the Jacobian by
  forward differences of the forward model in the iterations (1 evaluation per parameter) and by
  central differences (exact to O(h²), h = 1e-5) for up to POLISH_STEPS final Gauss–Newton steps
  and the covariance.
- In both, a step whose force constants are dynamically unstable, or that raises the loss, is
  rejected and the damping raised, so every accepted iterate keeps the Hessian positive definite.
- :func:`adam` for the stochastic ``sampled`` model: the paper's Adam with a learning rate halved
  every ``halve_every`` epochs down to ``lr_min``, and the eigenvalue penalty of Eq. 12–13.

Both write a checkpoint (JSON, replaced atomically) every ``checkpoint_every`` iterations when a
path is given, and resume from it: a killed fit restarted with the same settings continues where
it stopped and reaches the same result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from xtds.errors import UnstableError

__all__ = ["LM", "Adam", "OptimizeResult", "levenberg_marquardt", "levenberg_marquardt_exact", "adam", "jacobian",
           "whitening", "Checkpoint"]


@dataclass
class OptimizeResult:
    x: np.ndarray
    loss: float
    history: list = field(default_factory=list)  # (iteration, loss, seconds) rows
    iterations: int = 0
    converged: bool = False
    message: str = ""
    resumed_from: int | None = None
    x_cov: np.ndarray | None = None  # Adam: covariance of the iterates averaged into x (the last 10%)
    jacobian: np.ndarray | None = None  # of the deterministic residuals at x
    start_condition: float | None = None  # preconditioned Adam: condition number of JᵀJ at the start
    identifiability: dict = field(default_factory=dict)  # rank and condition of the (scaled) Jacobian


class Checkpoint:
    """A resumable state on disk, tied to a fingerprint of the fit's settings."""

    def __init__(self, path, fingerprint: str):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"the folder of the checkpoint {self.path} does not exist: create it first")
        if os.path.isdir(self.path):
            raise ValueError(f"the checkpoint {self.path} is a folder: give a file name (e.g. fit.ckpt)")
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"cannot write the checkpoint {self.path}: its folder is not writable")

    @staticmethod
    def fingerprint_of(settings: dict) -> str:
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load(self) -> dict | None:
        if not os.path.exists(self.path):
            return None
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"the checkpoint {self.path} is not a readable xtds checkpoint ({err}): it is empty or corrupt; "
                "delete it (or pass another path) to start afresh"
            ) from err
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError(f"the checkpoint {self.path} is not an xtds checkpoint: delete it or pass another path")
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"the checkpoint {self.path} belongs to a fit with other settings (data, model or options): "
                "delete it, or pass another checkpoint path, to start afresh"
            )
        return state

    def save(self, state: dict) -> None:
        state = dict(state, fingerprint=self.fingerprint)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, self.path)


def _bar(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def jacobian(fun, x, h, at_x=None):
    """Finite-difference Jacobian of ``fun`` (numpy vector → vector) at ``x``: shape (n_out, n_in).
    Central differences (error O(h²)), or, given ``at_x`` = fun(x), forward differences (error O(h),
    half the evaluations: the iterations of a fit, whose steps need no more)."""
    cols = []
    for j in range(len(x)):
        e = np.zeros_like(x)
        e[j] = h
        if at_x is None:
            cols.append((fun(x + e) - fun(x - e)) / (2 * h))
        else:
            cols.append((fun(x + e) - at_x) / h)
    return np.stack(cols, axis=1)


#: Gauss–Newton steps on central-difference Jacobians at most after Levenberg–Marquardt converges.
POLISH_STEPS = 3

#: Eigenvalues of JᵀJ below this fraction of the largest are raised to it in :func:`whitening`, so
#: that a direction the data barely constrain gets steps at most 1000× the stiffest one's.
WHITENING_FLOOR = 1e-6


def whitening(J: np.ndarray) -> np.ndarray:
    """P = (JᵀJ)^(−1/2) (symmetric), eigenvalues floored at ``WHITENING_FLOOR`` × the largest.

    With x = x0 + P z, a loss ‖ρ(x)‖² that is linear in x near x0 has the identity Hessian (up to a
    factor 2) in z: the long, narrow valleys of an ill-conditioned fit become round, which is what a
    diagonal, first-order method such as Adam needs. Shape (n, n) from J of shape (m, n).
    """
    s, V = np.linalg.eigh(J.T @ J)
    s = np.maximum(s, WHITENING_FLOOR * max(float(s.max()), np.finfo(float).tiny))
    return (V / np.sqrt(s)) @ V.T


def _settled(J, f, g, M, stop_sigma):
    """The Newton step δ = −M⁻¹g (M = JᵀJ + S, or JᵀJ where that is not positive definite) if it
    lies within ``stop_sigma`` standard errors of the current point, else None: δᵀJᵀJδ ≤
    stop_sigma² f/(m − n), the parameters' covariance estimated as (JᵀJ)⁻¹ f/(m − n). Every
    parameter then moves by less than ``stop_sigma`` of its standard error (Cauchy–Schwarz), and
    the loss lies within about stop_sigma² f/(m − n) of the minimum of the local model."""
    m, n = J.shape
    if not stop_sigma or m <= n or not f > 0:
        return None
    A = J.T @ J
    for H in (M, A):
        try:
            np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            continue
        d = np.linalg.solve(H, -g)
        return d if float(d @ A @ d) <= stop_sigma**2 * f / (m - n) else None
    return None


def _prefer_augmented(g, step, A, S, actual) -> bool:
    """NL2SOL's choice of model (Dennis, Gay & Welsch 1981): whether the augmented model JᵀJ + S
    foresaw the change of the loss ``actual`` (f − f_new) along ``step`` at least as well as
    Gauss–Newton's JᵀJ. A secant S that has grown wrong (too stiff: short steps that crawl along a
    valley; too soft: rejected steps) is then left out until it predicts better again."""
    lin = -2.0 * float(g @ step)
    gauss_newton = lin - float(step @ A @ step)
    augmented = gauss_newton - float(step @ S @ step)
    return abs(augmented - actual) <= abs(gauss_newton - actual)


def _shrink(M, D, g, step, lam) -> float:
    """The damping after a rejected ``step``: at least 4λ (and 1e-10), raised further until the step
    is at most half as long in the metric D. Without the second rule a λ that many accepted steps
    have divided down to 1e-12 takes a dozen rejected trials, each a model evaluation, to matter."""
    norm = float(np.sqrt(step @ D @ step))
    lam = max(4.0 * lam, 1e-10)
    while lam < 1e12:
        try:
            trial = np.linalg.solve(M + lam * D, -g)
        except np.linalg.LinAlgError:
            trial = None
        if trial is not None and float(np.sqrt(trial @ D @ trial)) <= 0.5 * norm:
            break
        lam *= 4.0
    return lam


def _iterate(trial, jacobian_at, x0, max_iter, xtol, ftol, checkpoint, progress, callback, on_start, secant,
             stop_sigma=None, plain=None):
    """The Levenberg–Marquardt loop both variants share. ``trial(x)`` returns (r, J) or (r, None)
    (raising :class:`~xtds.errors.UnstableError` for unstable constants); ``jacobian_at(x, r)``
    makes J where the trial gave none, after an accepted step. With ``secant`` the model Hessian is
    JᵀJ + S, S the secant estimate of the second-order term (:func:`_secant_update`). With
    ``stop_sigma``, converged once the next Newton step lies within that many standard errors
    (:func:`_settled`); the step is then taken with ``plain(x)`` (the residuals alone: no
    Jacobian) if it lowers the loss, and J stays the one of the point before. Returns a dict of the
    state at the end (x, r, f, J, lam, iteration, history, converged, message, resumed, t0, S,
    augmented)."""
    x = np.asarray(x0, dtype=float).copy()
    lam, start, history, resumed = 1e-3, 0, [], None
    S = np.zeros((len(x), len(x))) if secant else None
    augmented = secant  # the model of the next step: JᵀJ + S, or JᵀJ (Gauss–Newton)
    state = checkpoint.load() if checkpoint else None
    if state is not None:
        x, lam, start, history = np.array(state["x"]), state["lam"], state["iteration"], state["history"]
        if secant and "secant" in state:
            S = np.array(state["secant"])
            augmented = bool(state.get("augmented", True))
        resumed = start
    r, J = trial(x)
    J = jacobian_at(x, r) if J is None else J
    f = float(r @ r)
    t0 = time.perf_counter() - (history[-1][2] if history else 0.0)
    if not history:
        history.append((0, f, 0.0))
    if on_start is not None:
        on_start(J)
    converged, message = False, "maximum number of iterations reached"
    bar = _bar(max_iter, "Levenberg–Marquardt", progress)
    bar.update(start)
    it = start
    while it < max_iter:
        it += 1
        A, g = J.T @ J, J.T @ r
        M = A + S if augmented else A
        last = _settled(J, f, g, M, stop_sigma)
        if last is not None:
            converged = True
            message = f"the next step is within {stop_sigma:g} standard errors"
            try:
                r_new = (plain or (lambda z: trial(z)[0]))(x + last)
                f_new = float(r_new @ r_new)
            except UnstableError:
                f_new = np.inf
            if f_new < f:
                x, r, f = x + last, r_new, f_new
                history.append((it, f, time.perf_counter() - t0))
                bar.update(1)
                if callback is not None:
                    callback(it, x, f)
                message += " (taken)"
            else:
                it -= 1
            break
        D = np.diag(np.maximum(np.diag(A), 1e-30))
        accepted = False
        while lam < 1e12:
            H = M + lam * D
            if augmented:
                try:
                    np.linalg.cholesky(H)
                except np.linalg.LinAlgError:  # S made the model indefinite: damp more
                    lam = max(4.0 * lam, 1e-10)
                    continue
            step = np.linalg.solve(H, -g)
            if -float(g @ step) - 0.5 * float(step @ M @ step) <= 0.5 * ftol * f:
                break  # the model expects no decrease above round-off: at the minimum
            try:
                r_new, J_new = trial(x + step)
                f_new = float(r_new @ r_new)
            except UnstableError:
                f_new = np.inf
            if f_new < f:
                accepted = True
                break
            if secant and np.isfinite(f_new):  # keep the model that foresaw this failure better
                augmented = _prefer_augmented(g, step, A, S, f - f_new)
                M = A + S if augmented else A
            lam = _shrink(M, D, g, step, lam)
        if not accepted:
            converged, message = True, "no step lowers the loss (at a minimum to machine precision)"
            break
        if secant:
            augmented = _prefer_augmented(g, step, A, S, f - f_new)
            S = _secant_update(S, step, J, J_new, r, r_new)
        df = f - f_new
        x, r, f = x + step, r_new, f_new
        if J_new is not None:
            J = J_new
        lam = max(lam / 3.0, 1e-12)
        history.append((it, f, time.perf_counter() - t0))
        bar.update(1)
        bar.set_postfix(loss=f"{f:.4e}")
        if callback is not None:
            callback(it, x, f)
        small_step = np.linalg.norm(step) <= xtol * (np.linalg.norm(x) + xtol)
        if small_step or df <= ftol * max(f, 1e-300):
            converged, message = True, "step or loss change below tolerance"
            break
        if J_new is None:
            J = jacobian_at(x, r)
        if checkpoint:
            checkpoint.save({"x": x.tolist(), "lam": lam, "iteration": it, "history": history}
                            | ({"secant": S.tolist(), "augmented": augmented} if secant else {}))
    bar.close()
    return {"x": x, "r": r, "f": f, "J": J, "lam": lam, "it": it, "history": history, "converged": converged,
            "message": message, "resumed": resumed, "t0": t0, "S": S, "augmented": augmented}


def levenberg_marquardt(
    fun,
    x0,
    max_iter: int = 50,
    xtol: float = 1e-9,
    ftol: float = 1e-12,
    h: float = 1e-5,
    checkpoint: Checkpoint | None = None,
    progress: bool = True,
    callback=None,
    on_start=None,
    stop_sigma: float | None = None,
) -> tuple[OptimizeResult, np.ndarray]:
    """Minimize ‖fun(x)‖² from ``x0``; ``fun`` returns a numpy residual vector or raises
    :class:`~xtds.errors.UnstableError`. ``on_start(J)`` sees the first Jacobian (and may raise).
    Jacobians by forward differences in the iterations, then Gauss–Newton polish steps on central
    differences (module docstring); ``stop_sigma`` as :func:`levenberg_marquardt_exact`. Returns
    the result and the Jacobian at the optimum."""
    s = _iterate(lambda x: (fun(x), None), lambda x, r: jacobian(fun, x, h, at_x=r), x0, max_iter, xtol, ftol,
                 checkpoint, progress, callback, on_start, secant=False, stop_sigma=stop_sigma, plain=fun)
    x, r, f, it, history, message = s["x"], s["r"], s["f"], s["it"], s["history"], s["message"]
    J = jacobian(fun, x, h)  # central differences at the optimum: the covariance's
    # The iterations' forward-difference Jacobians (error O(h)) stop a little short of the optimum
    # (where Jᵀr = 0 for the true J): polish with Gauss–Newton steps on the central-difference
    # Jacobian (error O(h²)) while they lower the loss, at most POLISH_STEPS of them.
    polished = 0
    while polished < POLISH_STEPS:
        step = np.linalg.lstsq(J, -r, rcond=None)[0]
        try:
            r_new = fun(x + step)
        except UnstableError:
            break
        f_new = float(r_new @ r_new)
        if not f_new < f:
            break
        x, r, f, polished = x + step, r_new, f_new, polished + 1
        history.append((it + polished, f, time.perf_counter() - s["t0"]))  # after the iterations, not counted
        J = jacobian(fun, x, h)
    if polished:
        message += f" (then {polished} Gauss–Newton polish step{'s' if polished > 1 else ''})"
    if checkpoint:
        checkpoint.save({"x": x.tolist(), "lam": s["lam"], "iteration": it, "history": history})
    return OptimizeResult(x, f, history, it, s["converged"], message, s["resumed"]), J


def _secant_update(S: np.ndarray, step: np.ndarray, J_old: np.ndarray, J_new: np.ndarray, r_old: np.ndarray,
                   r_new: np.ndarray) -> np.ndarray:
    """The Dennis–Gay–Welsch update of S ≈ Σ_i r_i ∇²r_i, the part of the loss's Hessian that
    Gauss–Newton leaves out (Dennis, Gay & Welsch, ACM TOMS 7, 348 (1981), the NL2SOL method):
    the symmetric rank-two change that makes (J_newᵀJ_new + S) map the step onto the change of the
    gradient, with S first shrunk by NL2SOL's sizing factor. Unchanged when yᵀs ≤ 0."""
    y = J_new.T @ r_new - J_old.T @ r_old  # change of the gradient (½∇f)
    y_sharp = (J_new - J_old).T @ r_new  # change of Jᵀ at the new residuals: what S must reproduce
    sSs = float(step @ S @ step)
    if sSs != 0:
        S = S * min(1.0, abs(float(step @ y_sharp)) / abs(sSs))
    ys = float(y @ step)
    if not ys > 0:
        return S
    v = y_sharp - S @ step
    return S + (np.outer(v, y) + np.outer(y, v)) / ys - float(v @ step) * np.outer(y, y) / ys**2


def levenberg_marquardt_exact(
    value_and_jacobian,
    x0,
    max_iter: int = 50,
    xtol: float = 1e-9,
    ftol: float = 1e-12,
    checkpoint: Checkpoint | None = None,
    progress: bool = True,
    callback=None,
    on_start=None,
    stop_sigma: float | None = None,
    plain=None,
) -> tuple[OptimizeResult, np.ndarray]:
    """Minimize ‖r(x)‖² from ``x0`` with exact Jacobians: ``value_and_jacobian(x)`` returns
    (r, J) as numpy arrays or raises :class:`~xtds.errors.UnstableError`.

    Levenberg–Marquardt on the Gauss–Newton Hessian JᵀJ plus a secant estimate S of the
    second-order term Σ r_i ∇²r_i (:func:`_secant_update`, NL2SOL): Gauss–Newton alone converges
    only linearly where the residuals stay large at the optimum (a misfit of χ²/N ≈ 1.5 shrinks
    the step by about 0.6 per iteration), with S the convergence is superlinear. Every trial point
    is evaluated with its Jacobian (an accepted step, the usual case, needs no second pass).
    Converged when an accepted step lowers the loss by less than ``ftol`` (relative), moves x by
    less than ``xtol`` (relative), or when no damping yields a step the quadratic model expects to
    lower the loss by more than ``ftol``. With exact derivatives no polishing is needed: where
    Jᵀr = 0 is the optimum. With ``stop_sigma``, also converged once the next Newton step lies
    within that many standard errors of the parameters (estimated from the residuals,
    (JᵀJ)⁻¹ f/(m − n)); that step is then taken with ``plain(x)`` (the residuals without the
    Jacobian; else ``value_and_jacobian``) where it lowers the loss. Past that point the fit only
    polishes digits the data cannot tell apart.
    """
    s = _iterate(value_and_jacobian, None, x0, max_iter, xtol, ftol, checkpoint, progress, callback, on_start,
                 secant=True, stop_sigma=stop_sigma, plain=plain)
    if checkpoint:
        checkpoint.save({"x": s["x"].tolist(), "lam": s["lam"], "iteration": s["it"], "history": s["history"],
                         "secant": s["S"].tolist(), "augmented": s["augmented"]})
    message = s["message"] + " (exact Jacobians, secant second-order term)"
    return OptimizeResult(s["x"], s["f"], s["history"], s["it"], s["converged"], message, s["resumed"]), s["J"]


def adam(
    loss_fn,
    x0,
    epochs: int = 1000,
    lr: float = 0.01,
    halve_every: int | None = None,
    lr_min: float | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
    callback=None,
) -> OptimizeResult:
    """Adam on ``loss_fn(x_tensor, epoch) -> scalar tensor`` (stochastic); the learning rate
    halves every ``halve_every`` epochs (default: 40% of ``epochs``), not below ``lr_min``
    (default lr/4). Returns the mean of the last 10% of the iterates (the stochastic optimum) as
    ``x``, and their covariance as ``x_cov`` (the optimizer's scatter)."""
    halve_every = max(1, round(0.4 * epochs)) if halve_every is None else halve_every
    lr_min = lr / 4 if lr_min is None else lr_min
    x = torch.tensor(np.asarray(x0, dtype=float), requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    start, history, resumed, tail = 0, [], None, []
    state = checkpoint.load() if checkpoint else None
    if state is not None:
        with torch.no_grad():
            x.copy_(torch.tensor(state["x"], dtype=x.dtype))
        start, history, tail, resumed = state["iteration"], state["history"], state["tail"], state["iteration"]
        if state.get("adam"):
            m = state["adam"]
            opt.state[x] = {
                "step": torch.tensor(float(m["step"])),
                "exp_avg": torch.tensor(m["exp_avg"], dtype=x.dtype),
                "exp_avg_sq": torch.tensor(m["exp_avg_sq"], dtype=x.dtype),
            }
    t0 = time.perf_counter() - (history[-1][2] if history else 0.0)
    bar = _bar(epochs, "Adam", progress)
    bar.update(start)
    keep = max(1, epochs // 10)
    for epoch in range(start, epochs):
        for group in opt.param_groups:
            group["lr"] = max(lr * 0.5 ** (epoch // halve_every), lr_min)
        opt.zero_grad()
        loss = loss_fn(x, epoch)
        loss.backward()
        opt.step()
        history.append((epoch + 1, float(loss.detach()), time.perf_counter() - t0))
        if epoch >= epochs - keep:
            tail.append(x.detach().numpy().tolist())
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4e}")
        if callback is not None:
            callback(epoch + 1, x.detach().numpy(), float(loss.detach()))
        if checkpoint and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            st = opt.state[x]
            checkpoint.save(
                {
                    "x": x.detach().numpy().tolist(),
                    "iteration": epoch + 1,
                    "history": history,
                    "tail": tail,
                    "adam": {
                        "step": float(st["step"]),
                        "exp_avg": st["exp_avg"].numpy().tolist(),
                        "exp_avg_sq": st["exp_avg_sq"].numpy().tolist(),
                    },
                }
            )
    bar.close()
    xs = np.mean(np.array(tail), axis=0) if tail else x.detach().numpy()
    spread = np.atleast_2d(np.cov(np.array(tail).T)) if len(tail) > 1 else np.zeros((len(xs), len(xs)))
    return OptimizeResult(xs, history[-1][1] if history else np.nan, history, epochs, True, "epochs done", resumed,
                          spread)


@dataclass(frozen=True)
class LM:
    """Levenberg–Marquardt (for deterministic observables): damped Gauss–Newton on the residuals.

    ``max_iter`` iterations at most; converged when the step is below ``xtol`` (relative) or the
    loss falls by less than ``ftol`` (relative). Unstable or uphill steps are rejected.
    ``jacobian``: ``"exact"`` (forward-mode derivatives of the whole model,
    :meth:`xtds.fitting.core.Objective.value_and_jacobian`, with a secant estimate of the
    second-order term: :func:`levenberg_marquardt_exact`), ``"differences"`` (forward differences
    of step ``h`` eV/Å² in the iterations, central ones for the final polish and the covariance:
    :func:`levenberg_marquardt`) or ``"auto"`` (exact where the model has forward-mode
    derivatives, else differences; the result's message says which). ``stop_sigma``: also
    converged once the next step would move the parameters by less than this many standard errors
    (the step's length in the metric of their covariance (JᵀJ)⁻¹ f/(m − n)); the step is then
    taken with one plain evaluation. The default, 1e-3, leaves the loss within about 1e-6 χ²/ν of
    the minimum, where every further digit is noise; it never stops a fit to noise-free data early
    (there the step and the errors shrink together). None or 0: the tolerances alone.
    """

    max_iter: int = 50
    xtol: float = 1e-9
    ftol: float = 1e-12
    h: float = 1e-5
    jacobian: str = "auto"
    stop_sigma: float | None = 1e-3

    def __post_init__(self):
        if int(self.max_iter) < 1:
            raise ValueError(f"LM(max_iter=...) must be at least 1, got {self.max_iter}")
        if self.stop_sigma is not None and not float(self.stop_sigma) >= 0:
            raise ValueError(f"LM(stop_sigma=...) must be a number of standard errors ≥ 0 or None, "
                             f"got {self.stop_sigma!r}")
        if self.jacobian not in ("auto", "exact", "differences"):
            raise ValueError(f"LM(jacobian=...) must be 'auto', 'exact' or 'differences', got {self.jacobian!r}")

    def minimize(self, objective, x0, checkpoint=None, progress=True, callback=None) -> OptimizeResult:
        """Minimize ``objective`` (see :class:`xtds.fitting.core.Objective`) from ``x0``."""
        if objective.stochastic:
            raise ValueError("a stochastic observable (method='sampled') needs optimizer=Adam(...)")
        start = {}

        def fun(x):
            return objective.residuals(x, check_stable=True)

        def on_start(J0):
            start.update(objective.check_identifiable(J0))

        fallback = ""
        if self.jacobian != "differences":
            try:  # forward-mode derivatives through the whole model, where every operation has them
                first = objective.value_and_jacobian(x0)
            except (NotImplementedError, RuntimeError) as err:
                if self.jacobian == "exact":
                    raise RuntimeError(f"LM(jacobian='exact'): the model has no forward-mode derivative ({err})") \
                        from err
                fallback = f" (finite differences: no forward-mode derivative, {type(err).__name__}: {err})"
            else:
                x_first = np.asarray(x0, dtype=float).copy()

                def value_and_jacobian(x):  # the start's evaluation above is not repeated
                    if first is not None and np.array_equal(x, x_first):
                        return first
                    return objective.value_and_jacobian(x)

                res, J = levenberg_marquardt_exact(value_and_jacobian, x0, max_iter=self.max_iter,
                                                   xtol=self.xtol, ftol=self.ftol, checkpoint=checkpoint,
                                                   progress=progress, callback=callback, on_start=on_start,
                                                   stop_sigma=self.stop_sigma, plain=fun)
                res.jacobian, res.identifiability = J, start
                return res

        res, J = levenberg_marquardt(fun, x0, max_iter=self.max_iter, xtol=self.xtol, ftol=self.ftol, h=self.h,
                                     checkpoint=checkpoint, progress=progress, callback=callback,
                                     on_start=on_start, stop_sigma=self.stop_sigma)
        res.message += fallback[:300]
        res.jacobian = J
        res.identifiability = start
        return res


@dataclass(frozen=True)
class Adam:
    """Adam on the stochastic loss (the paper's optimizer), with the Eq. 12–13 eigenvalue penalty.

    ``epochs``; ``lr`` halves at 40% and 80% of them. ``precondition`` (default): Adam runs in
    coordinates z with x = x0 + P z, P = (JᵀJ)^(−1/2) from the Jacobian J of the deterministic
    residuals at the start (2p evaluations), so that the loss's narrow valleys become round; ``lr``
    (default 0.003) is then a step in units of the residual norm. Without it, ``lr`` (default
    0.01) is in eV/Å². ``penalty`` is α of Eq. 12; a checkpoint is written every
    ``checkpoint_every`` epochs. The result is the mean of the last 10% of the iterates, and their
    scatter is reported (``x_cov``).
    """

    epochs: int = 1000
    lr: float | None = None
    precondition: bool = True
    penalty: float = 1.0
    checkpoint_every: int = 10
    h: float = 1e-5

    def __post_init__(self):
        if int(self.epochs) < 1:
            raise ValueError(f"Adam(epochs=...) must be at least 1, got {self.epochs}")
        if self.lr is not None and not float(self.lr) > 0:
            raise ValueError(f"Adam(lr=...) must be positive, got {self.lr}")

    def minimize(self, objective, x0, checkpoint=None, progress=True, callback=None) -> OptimizeResult:
        """Minimize ``objective.loss(x, epoch)`` from ``x0``; also returns the deterministic Jacobian."""

        def loss_fn(x, epoch):
            return objective.loss(x, epoch, penalty=self.penalty)

        kw = dict(epochs=self.epochs, checkpoint=checkpoint, checkpoint_every=self.checkpoint_every,
                  progress=progress)
        if self.precondition:  # Adam on z, x = x0 + P z, in which the Gauss–Newton metric is the identity
            J0 = jacobian(objective.residuals, x0, self.h)
            identifiability = objective.check_identifiable(J0)
            P = torch.as_tensor(whitening(J0), dtype=torch.float64)
            X0 = torch.as_tensor(np.asarray(x0, dtype=float), dtype=torch.float64)

            def to_x(z):
                return X0 + P @ torch.as_tensor(z, dtype=torch.float64)

            cb = None if callback is None else (lambda i, z, f: callback(i, to_x(z).numpy(), f))
            res = adam(lambda z, epoch: loss_fn(to_x(z), epoch), np.zeros_like(x0), lr=0.003 if self.lr is None
                       else self.lr, callback=cb, **kw)
            res.x = to_x(res.x).numpy()
            res.x_cov = P.numpy() @ res.x_cov @ P.numpy().T
            res.start_condition = float(np.linalg.cond(J0) ** 2)  # of the Gauss–Newton metric J0ᵀJ0
        else:  # no Jacobian at the start: identifiability is judged at the end (reported, not raised)
            res = adam(loss_fn, x0, lr=0.01 if self.lr is None else self.lr, callback=callback, **kw)
            identifiability = None
        res.jacobian = jacobian(objective.residuals, res.x, self.h)  # the covariance: the mean model's Jacobian
        res.identifiability = identifiability or objective.check_identifiable(res.jacobian, raise_=False)
        return res
