"""The observable protocol: what every kind of data offers the fit, the series, the amortized
simulator and the command line.

An observable predicts the data at its points from the free force constants φ. It is built once
(from the IFC model, where it is observed, the temperature and its own settings) and called
often. :class:`Observable` declares, in one place, everything the rest of the package reads of
one; a new kind of data is a subclass that implements three methods (``__len__``, ``__call__``
and ``stability_k``) and sets ``model`` (and ``temperature``, if it has one). Everything else has a
default that a subclass may override:

========================  =================================================================
member                    read by
========================  =================================================================
``model``                 the fit (one IFCModel shared by every problem)
``__call__(phi, epoch)``  the stochastic optimizer (one draw per epoch when ``stochastic``)
``mean(phi)``             the Levenberg–Marquardt fit, Jacobians, covariances, simulations
``stability_k()``         the fit's stability check of every iterate
``temperature``           errors with σ_T, series of temperatures, training sets
``at_temperature(T)``     joint temperature series, temperature draws of training sets
``temperature_derivative``  the σ_T term of the covariance
``describe()``            checkpoint fingerprints, the result's settings, series stores,
                          training-set provenance (stable across processes)
``q``, ``point_energy``   backgrounds in |q| and in energy, corrections, robust blocks
``geometry``              the result's provenance (where the intensity was computed)
``dtype``, ``device``     the fit's parameter vector
``configuration_noise``   data that are a mean of sampled configurations (their noise model)
``refine(phi0)``          the fit, before it starts (settings converged at the start)
``reset()``               training sets (state a first evaluation fixes, made anew per draw)
========================  =================================================================

:func:`describe` turns any settings object (observables, problems, optimizers, grouped settings)
into JSON-able data whose text is the same in every process: arrays and tensors by shape and
digest, functions by name and a digest of their code, other objects by their public attributes.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import hashlib
import inspect

import numpy as np
import torch

from xtds.errors import check_temperature
from xtds.lattice.ifc import IFCModel

__all__ = ["Observable", "describe", "as_q", "check_points_q"]


class Observable(abc.ABC):
    """What a kind of data must offer the fit (the module docstring lists who reads what).

    Subclasses implement :meth:`__len__`, :meth:`__call__` and :meth:`stability_k`, and set
    ``model`` (the :class:`~xtds.IFCModel` whose free constants φ they depend on) and, if the
    prediction depends on it, ``temperature`` (K). The class attributes below are the defaults
    of the optional members.
    """

    #: The :class:`~xtds.IFCModel` of the free constants φ (set by every subclass).
    model: IFCModel
    #: True when ``__call__`` draws random numbers (the fit then uses a stochastic optimizer and
    #: :meth:`mean` for Jacobians and covariances).
    stochastic: bool = False
    #: K; None for an observable that does not depend on temperature (e.g. phonon frequencies).
    temperature: float | None = None
    #: Of the tensors the observable computes with (the fit's parameter vector follows the first
    #: problem's).
    dtype: torch.dtype = torch.float64
    device: str | torch.device | None = None
    #: (P, 3) Cartesian wave vectors of the points (Å⁻¹), where the points have one: backgrounds
    #: in |q|, corrections and the robust covariance's |q| shells read it. None otherwise.
    q: np.ndarray | None = None
    #: (P,) energy transfers of the points (meV), for a spectrum: energy backgrounds read it.
    point_energy: np.ndarray | None = None
    #: Where the intensity is computed (:mod:`xtds.thermal.geometry`), if that applies.
    geometry: object = None
    #: The seed of the observable's random draws (stochastic observables, noise models).
    seed: int | None = None

    # ------------------------------------------------------------------ what every one implements
    @abc.abstractmethod
    def __len__(self) -> int:
        """P, the number of points (the length of :meth:`__call__`'s output)."""

    @abc.abstractmethod
    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """The predicted values at the points, shape (P,), differentiable in ``phi`` (shape
        (n_free,), eV/Å²). ``epoch`` selects the random draws of a stochastic observable."""

    @abc.abstractmethod
    def stability_k(self) -> np.ndarray:
        """The k-points (K, 3), Å⁻¹, at which the force constants must be dynamically stable for
        the observable to be defined."""

    # ------------------------------------------------------------------ defaults
    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        """The deterministic expectation of :meth:`__call__` (itself for a deterministic
        observable; a stochastic one must override it)."""
        if self.stochastic:
            raise NotImplementedError(f"{type(self).__name__} is stochastic: it must define mean(phi)")
        return self(phi)

    def at_temperature(self, temperature: float) -> Observable:
        """A copy of this observable at another temperature (K); this one is left as it is.

        The default replaces the ``temperature`` field of a dataclass (``dataclasses.replace``)
        or of a shallow copy; an observable whose state depends on the temperature beyond that
        attribute must override it."""
        if self.temperature is None:
            raise TypeError(f"{type(self).__name__} does not depend on temperature: it has no at_temperature "
                            "(no temperature draws, temperature series or temperature_stderr for it)")
        T = check_temperature(temperature)
        if dataclasses.is_dataclass(self):
            return dataclasses.replace(self, temperature=T)
        new = copy.copy(self)
        new.temperature = T
        return new

    def temperature_derivative(self, phi: torch.Tensor, rel_step: float = 1e-3) -> torch.Tensor:
        """∂mean/∂T (P,) at fixed φ, per K: central differences of :meth:`mean` at T ± h, h =
        ``rel_step``·T, through :meth:`at_temperature` (an observable with an analytic derivative
        may override it)."""
        if self.temperature is None:
            raise TypeError(f"{type(self).__name__} does not depend on temperature")
        T = float(self.temperature)
        h = rel_step * T
        with torch.no_grad():
            up = self.at_temperature(T + h).mean(phi)
            down = self.at_temperature(T - h).mean(phi)
        return (up - down) / (2 * h)

    def describe(self) -> dict:
        """A JSON-able description of the observable's settings, the same in every process: its
        type, and its public fields (a dataclass's) or attributes, arrays by shape and digest
        (:func:`describe`). Checkpoints, series stores and training sets are keyed on it."""
        cls = type(self)
        if dataclasses.is_dataclass(self):
            names = [f.name for f in dataclasses.fields(self) if not f.name.startswith("_")]
        else:
            names = sorted(n for n in vars(self) if not n.startswith("_"))
        return {"type": f"{cls.__module__}.{cls.__qualname__}", **{n: describe(getattr(self, n)) for n in names}}

    def refine(self, phi0: torch.Tensor) -> tuple[Observable, str]:
        """Settings the observable adapts to the starting constants before a fit (e.g. an infinite
        crystal's k-mesh converged there): the observable to fit and a note for the record ('' when
        nothing changed). The default changes nothing."""
        return self, ""

    def reset(self) -> None:  # noqa: B027 - a default that does nothing, not an abstract method
        """Forget state that a first evaluation fixed (e.g. adaptive widths), so that the next
        evaluation makes it anew; the default holds none."""

    @property
    def has_noise_model(self) -> bool:
        """Whether :meth:`configuration_noise` is implemented."""
        return type(self).configuration_noise is not Observable.configuration_noise

    def configuration_noise(self, phi: torch.Tensor, draws: int, seed: int, multiplicity=None) -> np.ndarray:
        """Relative noise (draws, P) of data that are means over single sampled configurations
        (``Problem(noise_configurations=N)``); observables without a noise model raise."""
        raise NotImplementedError(f"{type(self).__name__} has no noise model of sampled configurations")


def as_q(q, dtype=torch.float64, device=None) -> torch.Tensor:
    """q as a (Q, 3) tensor of Cartesian Å⁻¹; a labelled or misshapen input is an error."""
    if hasattr(q, "dims"):
        raise TypeError("pass q as a (Q, 3) array of Cartesian Å⁻¹; convert labelled r.l.u. with "
                        "crystal.rlu_to_cartesian")
    qt = torch.as_tensor(np.asarray(q.detach().cpu() if isinstance(q, torch.Tensor) else q, dtype=float))
    if qt.ndim != 2 or qt.shape[1] != 3:
        raise ValueError(f"q must have shape (Q, 3), Cartesian Å⁻¹, got {tuple(qt.shape)}")
    return qt.to(dtype=dtype, device=device)


def check_points_q(q, what: str = "q") -> np.ndarray:
    """Wave vectors of scattered points as a finite, non-empty (P, 3) array of Cartesian Å⁻¹."""
    q = np.asarray(q, dtype=float)
    if q.ndim != 2 or q.shape[1] != 3 or len(q) == 0:
        raise ValueError(f"{what} must be Cartesian wave vectors of shape (P, 3) in Å⁻¹, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{what} hold NaN or inf")
    return q


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def describe(obj, _depth: int = 0):
    """A JSON-able description of a settings object whose text is the same in every process.

    Objects with a ``describe()`` method (observables) give their own; dataclasses their public
    fields; arrays and tensors their shape and a digest; functions their qualified name and a
    digest of their code; an :class:`~xtds.IFCModel` its crystal, cutoff and constants; dtypes
    their name; other objects their type and public attributes. Nothing is described by a
    memory address."""
    if _depth > 12:
        raise ValueError("describe: settings nested more than 12 levels deep (a cycle?)")
    d = _depth + 1
    if isinstance(obj, IFCModel):
        c = obj.crystal
        return {"type": "IFCModel", "crystal": repr(c), "lattice": describe(np.asarray(c.lattice, dtype=float)),
                "positions": describe(np.asarray(c.positions, dtype=float)), "masses": describe(np.asarray(c.masses)),
                "cutoff_A": obj.cutoff, "constants": list(obj.names)}
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        arr = np.ascontiguousarray(obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj)
        if arr.dtype == object:
            return {"shape": list(arr.shape), "values": [describe(v, d) for v in arr.ravel().tolist()]}
        return {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": _digest(arr.tobytes())}
    if isinstance(obj, (torch.dtype, torch.device, np.dtype)):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): describe(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v, d) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v, d) for v in obj), key=repr)
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    own = getattr(obj, "describe", None)
    if callable(own) and not isinstance(obj, type) and inspect.ismethod(own):
        return own()
    if dataclasses.is_dataclass(obj):
        public = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")
                  and f.metadata.get("describe", True)]
        cls = type(obj)
        return {"type": cls.__qualname__, **{n: describe(getattr(obj, n), d) for n in public}}
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        code = getattr(obj, "__code__", None)
        key = {"function": f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"}
        if code is not None:
            key["code"] = _digest(code.co_code + repr(code.co_consts).encode())
        return key
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None:
        cls = type(obj)
        return {"type": f"{cls.__module__}.{cls.__qualname__}",
                **{k: describe(v, d) for k, v in sorted(attrs.items()) if not k.startswith("_")}}
    text = repr(obj)
    if " at 0x" in text:
        raise TypeError(f"describe: {type(obj).__name__} has no stable description (its repr names a memory "
                        "address): give it a describe() method or public attributes")
    return text
