"""Levenberg–Marquardt for the IFC fit: :class:`LM`, the default optimizer of deterministic observables.

- :func:`levenberg_marquardt_exact` where the model's operations all have forward-mode
  derivatives (the default where they do): damped Gauss–Newton on exact Jacobians (one batched
  forward-mode pass, :meth:`xtds.fitting.objective.Objective.value_and_jacobian`) with a secant
  estimate of the second-order term (NL2SOL), superlinear where the misfit is large.
- :func:`levenberg_marquardt` otherwise: damped Gauss–Newton on a residual vector, the Jacobian by
  forward differences of the forward model in the iterations (1 evaluation per parameter) and by
  central differences (exact to O(h²), h = 1e-5) for up to POLISH_STEPS final Gauss–Newton steps
  and the covariance.
- In both, a step whose force constants are dynamically unstable, or that raises the loss, is
  rejected and the damping raised, so every accepted iterate keeps the Hessian positive definite.

A checkpoint (JSON, replaced atomically) is written after every accepted iteration when a path is
given, and a killed fit restarted with the same settings resumes from it and reaches the same result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from xtds.errors import UnstableError
from xtds.fitting.optimizers import Checkpoint, Optimizer, OptimizeResult, jacobian, progress_bar

__all__ = ["LM", "levenberg_marquardt", "levenberg_marquardt_exact", "POLISH_STEPS"]


#: Gauss–Newton steps on central-difference Jacobians at most after Levenberg–Marquardt converges.
POLISH_STEPS = 3

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


class _State:
    """The Levenberg–Marquardt iterate and what the loop carries between iterations."""

    def __init__(self, trial, jacobian_at, x0, checkpoint, secant):
        self.x = np.asarray(x0, dtype=float).copy()
        self.lam, self.start, self.history, self.resumed = 1e-3, 0, [], None
        self.S = np.zeros((len(self.x), len(self.x))) if secant else None
        self.augmented = secant  # the model of the next step: JᵀJ + S, or JᵀJ (Gauss–Newton)
        state = checkpoint.load() if checkpoint else None
        if state is not None:
            self.x, self.lam = np.array(state["x"]), state["lam"]
            self.start, self.history = state["iteration"], state["history"]
            if secant and "secant" in state:
                self.S = np.array(state["secant"])
                self.augmented = bool(state.get("augmented", True))
            self.resumed = self.start
        self.r, J = trial(self.x)
        self.J = jacobian_at(self.x, self.r) if J is None else J
        self.f = float(self.r @ self.r)
        self.t0 = time.perf_counter() - (self.history[-1][2] if self.history else 0.0)
        if not self.history:
            self.history.append((0, self.f, 0.0))
        self.converged, self.message = False, "maximum number of iterations reached"

    def accept(self, it, x, r, f, bar, callback):
        self.x, self.r, self.f = x, r, f
        self.history.append((it, f, time.perf_counter() - self.t0))
        bar.update(1)
        if callback is not None:
            callback(it, x, f)

    def saved(self, it) -> dict:
        out = {"x": self.x.tolist(), "lam": self.lam, "iteration": it, "history": self.history}
        if self.S is not None:
            out |= {"secant": self.S.tolist(), "augmented": self.augmented}
        return out

    def result(self, it) -> dict:
        return {"x": self.x, "r": self.r, "f": self.f, "J": self.J, "lam": self.lam, "it": it,
                "history": self.history, "converged": self.converged, "message": self.message,
                "resumed": self.resumed, "t0": self.t0, "S": self.S, "augmented": self.augmented}


def _last_step(st: _State, last, it, trial, plain, bar, callback, stop_sigma) -> int:
    """Take the settled Newton step ``last`` with one plain evaluation where it lowers the loss;
    returns the iteration count (one fewer when the step is not taken)."""
    st.converged = True
    st.message = f"the next step is within {stop_sigma:g} standard errors"
    try:
        r_new = (plain or (lambda z: trial(z)[0]))(st.x + last)
        f_new = float(r_new @ r_new)
    except UnstableError:
        f_new = np.inf
    if f_new < st.f:
        st.accept(it, st.x + last, r_new, f_new, bar, callback)
        st.message += " (taken)"
        return it
    return it - 1


def _damped_step(st: _State, A, g, M, trial, ftol, secant):
    """The damped step the loop accepts (raising λ after each rejection): (step, r, J, f) or None
    when no damping gives a step that the model expects to lower the loss above round-off."""
    D = np.diag(np.maximum(np.diag(A), 1e-30))
    while st.lam < 1e12:
        H = M + st.lam * D
        if st.augmented:
            try:
                np.linalg.cholesky(H)
            except np.linalg.LinAlgError:  # S made the model indefinite: damp more
                st.lam = max(4.0 * st.lam, 1e-10)
                continue
        step = np.linalg.solve(H, -g)
        if -float(g @ step) - 0.5 * float(step @ M @ step) <= 0.5 * ftol * st.f:
            return None  # the model expects no decrease above round-off: at the minimum
        try:
            r_new, J_new = trial(st.x + step)
            f_new = float(r_new @ r_new)
        except UnstableError:
            r_new, J_new, f_new = None, None, np.inf
        if f_new < st.f:
            return step, r_new, J_new, f_new
        if secant and np.isfinite(f_new):  # keep the model that foresaw this failure better
            st.augmented = _prefer_augmented(g, step, A, st.S, st.f - f_new)
            M = A + st.S if st.augmented else A
        st.lam = _shrink(M, D, g, step, st.lam)
    return None


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
    st = _State(trial, jacobian_at, x0, checkpoint, secant)
    if on_start is not None:
        on_start(st.J)
    bar = progress_bar(max_iter, "Levenberg–Marquardt", progress)
    bar.update(st.start)
    it = st.start
    while it < max_iter:
        it += 1
        A, g = st.J.T @ st.J, st.J.T @ st.r
        M = A + st.S if st.augmented else A
        last = _settled(st.J, st.f, g, M, stop_sigma)
        if last is not None:
            it = _last_step(st, last, it, trial, plain, bar, callback, stop_sigma)
            break
        taken = _damped_step(st, A, g, M, trial, ftol, secant)
        if taken is None:
            st.converged, st.message = True, "no step lowers the loss (at a minimum to machine precision)"
            break
        step, r_new, J_new, f_new = taken
        if secant:
            st.augmented = _prefer_augmented(g, step, A, st.S, st.f - f_new)
            st.S = _secant_update(st.S, step, st.J, J_new, st.r, r_new)
        df = st.f - f_new
        if J_new is not None:
            st.J = J_new
        st.lam = max(st.lam / 3.0, 1e-12)
        st.accept(it, st.x + step, r_new, f_new, bar, callback)
        bar.set_postfix(loss=f"{f_new:.4e}")
        small_step = np.linalg.norm(step) <= xtol * (np.linalg.norm(st.x) + xtol)
        if small_step or df <= ftol * max(st.f, 1e-300):
            st.converged, st.message = True, "step or loss change below tolerance"
            break
        if J_new is None:
            st.J = jacobian_at(st.x, st.r)
        if checkpoint:
            checkpoint.save(st.saved(it))
    bar.close()
    return st.result(it)


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


@dataclass(frozen=True)
class LM(Optimizer):
    """Levenberg–Marquardt (for deterministic observables): damped Gauss–Newton on the residuals.

    ``max_iter`` iterations at most; converged when the step is below ``xtol`` (relative) or the
    loss falls by less than ``ftol`` (relative). Unstable or uphill steps are rejected.
    ``jacobian``: ``"exact"`` (forward-mode derivatives of the whole model,
    :meth:`xtds.fitting.objective.Objective.value_and_jacobian`, with a secant estimate of the
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

    name = "lm"
    stochastic = False
    default = True

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

    def minimize(self, objective, x0, checkpoint=None) -> OptimizeResult:
        """Minimize ``objective`` (:class:`xtds.fitting.objective.Objective`) from ``x0``."""
        self.check(objective)
        progress, callback = self.progress, self.callback
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
