"""Adam for the IFC fit: :class:`Adam`, the paper's optimizer and the default for stochastic
observables (the ``sampled`` model), with the eigenvalue penalty of Eq. 12–13 and a
Gauss–Newton preconditioner.

:func:`adam` runs the paper's Adam with a learning rate halved every ``halve_every`` epochs down
to ``lr_min``; a checkpoint (JSON, replaced atomically) is written every ``checkpoint_every``
epochs when a path is given, and a killed fit restarted with the same settings resumes from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from xtds.fitting.optimizers import Checkpoint, Optimizer, OptimizeResult, jacobian, progress_bar

__all__ = ["Adam", "adam", "whitening", "WHITENING_FLOOR"]


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
    bar = progress_bar(epochs, "Adam", progress)
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
class Adam(Optimizer):
    """Adam on the stochastic loss (the paper's optimizer), with the Eq. 12–13 eigenvalue penalty.

    ``epochs``; ``lr`` halves at 40% and 80% of them. ``precondition`` (default): Adam runs in
    coordinates z with x = x0 + P z, P = (JᵀJ)^(−1/2) from the Jacobian J of the deterministic
    residuals at the start (2p evaluations), so that the loss's narrow valleys become round; ``lr``
    (default 0.003) is then a step in units of the residual norm. Without it, ``lr`` (default
    0.01) is in eV/Å². ``penalty`` is α of Eq. 12; a checkpoint is written every
    ``checkpoint_every`` epochs. The result is the mean of the last 10% of the iterates, and their
    scatter is reported (``x_cov``).
    """

    name = "adam"
    stochastic = True
    default = True

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

    def minimize(self, objective, x0, checkpoint=None) -> OptimizeResult:
        """Minimize ``objective.loss(x, epoch)`` from ``x0``; also returns the deterministic Jacobian."""
        progress, callback = self.progress, self.callback

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
        res.x_cov_label = "the scatter of the Adam iterates over the last 10% of epochs"
        res.jacobian = jacobian(objective.residuals, res.x, self.h)  # the covariance: the mean model's Jacobian
        res.identifiability = identifiability or objective.check_identifiable(res.jacobian, raise_=False)
        return res
