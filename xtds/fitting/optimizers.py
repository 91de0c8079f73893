"""The optimizer interface of the fit: :class:`Optimizer`, its result, checkpoints.

Every optimizer is a frozen settings object whose :meth:`Optimizer.minimize` takes the fit's
objective (:class:`~xtds.fitting.objective.Objective`) and a start, and returns an
:class:`OptimizeResult` (the optimum, the history, the Jacobian of the deterministic residuals
there, and the optimizer's own scatter where it has one). The fit, the result Dataset and the
command line use this interface alone: a new optimizer is a subclass with a ``name`` (it is then
found by :meth:`Optimizer.named` and the CLI's ``--optimizer``), and nothing else changes.

Two are shipped: :class:`~xtds.fitting.lm.LM` (Levenberg–Marquardt, the default for deterministic
observables) and :class:`~xtds.fitting.adam.Adam` (the default for stochastic ones).

Run-time settings every optimizer has (not part of a fit's identity, so that a rerun with
another progress setting still resumes its checkpoint):

- ``checkpoint``: a file; progress is saved there and a restarted fit resumes from it;
- ``progress``: a progress bar;
- ``callback``: called as ``callback(iteration, x, loss)`` after every accepted iteration.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

__all__ = ["Optimizer", "OptimizeResult", "Checkpoint", "jacobian", "progress_bar"]

_RUN = {"describe": False}  # run-time settings: left out of describe() (fingerprints, settings)


@dataclass
class OptimizeResult:
    """What an optimizer returns."""

    x: np.ndarray
    loss: float
    history: list = field(default_factory=list)  # (iteration, loss, seconds) rows
    iterations: int = 0
    converged: bool = False
    message: str = ""
    resumed_from: int | None = None
    #: the optimizer's own scatter of x (e.g. Adam's iterates), added to the Gauss–Newton covariance
    x_cov: np.ndarray | None = None
    #: what ``x_cov`` is, for the result's labels
    x_cov_label: str = ""
    jacobian: np.ndarray | None = None  # of the deterministic residuals at x
    start_condition: float | None = None  # preconditioned optimizers: condition number of JᵀJ at the start
    identifiability: dict = field(default_factory=dict)  # rank and condition of the (scaled) Jacobian


@dataclass(frozen=True)
class Optimizer(abc.ABC):
    """An optimizer's settings and its :meth:`minimize` (the module docstring).

    Subclasses are frozen dataclasses with a class attribute ``name`` (the CLI's
    ``--optimizer``), ``stochastic`` (True: it minimizes a stochastic loss; False: the residuals of
    deterministic observables) and ``default`` (True: the default for its kind of objective).
    """

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    default: ClassVar[bool] = False
    registry: ClassVar[dict[str, type]] = {}

    checkpoint: str | os.PathLike | None = field(default=None, kw_only=True, metadata=_RUN)
    progress: bool = field(default=True, kw_only=True, metadata=_RUN)
    callback: Callable | None = field(default=None, kw_only=True, metadata=_RUN, repr=False)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            Optimizer.registry[cls.name] = cls

    @abc.abstractmethod
    def minimize(self, objective, x0, checkpoint: Checkpoint | None = None) -> OptimizeResult:
        """Minimize ``objective`` from ``x0``, resuming from and saving to ``checkpoint`` (made by
        the fit from :attr:`checkpoint` and the fit's fingerprint). The result carries the
        Jacobian of the deterministic residuals at its ``x`` and the identifiability at the start."""

    def check(self, objective) -> None:
        """A ``ValueError`` when this optimizer cannot minimize ``objective``."""
        if objective.stochastic and not self.stochastic:
            others = [n for n, c in Optimizer.registry.items() if c.stochastic]
            raise ValueError(f"a stochastic observable (method='sampled') needs a stochastic optimizer "
                             f"({', '.join(others)}), not {self.name}")

    @staticmethod
    def named(name: str, **options) -> Optimizer:
        """The registered optimizer ``name`` with ``options`` (its fields); a ``ValueError`` listing
        the names or the fields otherwise."""
        cls = Optimizer.registry.get(str(name).lower())
        if cls is None:
            raise ValueError(f"no optimizer named {name!r}: choose one of {sorted(Optimizer.registry)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"the {cls.name} optimizer has no setting {unknown}; its settings: {sorted(fields)}")
        return cls(**options)

    @staticmethod
    def default_for(stochastic: bool, **options) -> Optimizer:
        """The default optimizer for a stochastic or deterministic objective, with ``options``."""
        for cls in Optimizer.registry.values():
            if cls.default and cls.stochastic == bool(stochastic):
                return Optimizer.named(cls.name, **options)
        raise ValueError(f"no default optimizer for a {'stochastic' if stochastic else 'deterministic'} objective")


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


def progress_bar(total, desc, enabled):
    """A tqdm bar (disabled unless ``enabled``)."""
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
