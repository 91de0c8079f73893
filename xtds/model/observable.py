"""Observables: what a kind of data predicts from the force constants, built once and called often.

An observable is a frozen object built from (IFC model, where it is observed, temperature, method
and its options, form factors, dtype/device). The fit (:mod:`xtds.fitting`) needs only the
:class:`Observable` protocol: call it with the free constants φ to get the predicted values at its
points, ask it for its deterministic mean (for Jacobians and covariances), and for the k-points at
which the force constants must be stable. A new kind of data (a powder spectrum, dispersion points)
is a new module with a class of this shape; the fit loop does not change.

:class:`TDSIntensity` is the first kind: the single-crystal TDS intensity at a set of q-points.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from xtds.errors import check_temperature
from xtds.formfactor import check_form_factor
from xtds.ifc import IFCModel
from xtds.laue import LaueGroup, Orbits
from xtds.model.exact import exact_supercell, one_phonon
from xtds.model.geometry import InfiniteCrystal, PeriodicSupercell
from xtds.model.infinite import InfinitePlan, _plan, infinite_intensity
from xtds.model.sampled import configuration_intensities, sampled_intensity

__all__ = ["Observable", "TDSIntensity", "METHODS", "statistics_of"]

#: Offset from a supercell's grid (in grid steps) above which a point counts as jittered and is
#: moved onto the grid; below it the difference is round-off.
JITTER = 1e-9

#: The forward-model methods of :class:`TDSIntensity`.
METHODS = ("exact", "one_phonon", "sampled")


@runtime_checkable
class Observable(Protocol):
    """What the fit needs of a kind of data.

    Attributes
    ----------
    model
        The :class:`~xtds.IFCModel` whose free constants φ the observable depends on.
    stochastic
        True when ``__call__`` draws random numbers (then the fit uses a stochastic optimizer and
        ``mean`` for its Jacobians).
    """

    model: IFCModel
    stochastic: bool

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """The predicted values at the observable's points, shape (P,), differentiable in ``phi``
        (shape (n_free,), eV/Å²). ``epoch`` selects the random draws of a stochastic observable."""
        ...

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        """The deterministic expectation of ``__call__`` (itself for a deterministic observable)."""
        ...

    def stability_k(self) -> np.ndarray:
        """The k-points (shape (K, 3), Å⁻¹) at which the force constants must be stable for the
        observable to be defined."""
        ...


def as_q(q, dtype=torch.float64, device=None) -> torch.Tensor:
    """q as a (Q, 3) tensor of Cartesian Å⁻¹; a labelled or misshapen input is an error."""
    if hasattr(q, "dims"):
        raise TypeError("pass q as a (Q, 3) array of Cartesian Å⁻¹; convert labelled r.l.u. with "
                        "crystal.rlu_to_cartesian")
    qt = torch.as_tensor(np.asarray(q.detach().cpu() if isinstance(q, torch.Tensor) else q, dtype=float))
    if qt.ndim != 2 or qt.shape[1] != 3:
        raise ValueError(f"q must have shape (Q, 3), Cartesian Å⁻¹, got {tuple(qt.shape)}")
    return qt.to(dtype=dtype, device=device)


@dataclass(frozen=True, eq=False)
class TDSIntensity:
    """The single-crystal TDS intensity ⟨I(q)⟩ at fixed q-points: an :class:`Observable`.

    Parameters
    ----------
    model
        The :class:`~xtds.IFCModel` (crystal and cutoff).
    q
        Shape (Q, 3), Cartesian Å⁻¹ (2π included). On a :class:`PeriodicSupercell` every q must lie
        on its grid within :data:`xtds.laue.GRID_TOL` of a step, and is moved onto it.
    temperature
        K; required.
    method
        ``"exact"`` (the harmonic average to all orders), ``"one_phonon"`` (Xu & Chiang, with the
        Debye–Waller factor) or ``"sampled"`` (the paper's Cholesky-sampling estimator).
    geometry
        :class:`PeriodicSupercell` (default for ``exact``/``sampled``: the 5×5×5 cells of the
        paper) or :class:`InfiniteCrystal` (default for ``one_phonon``; required for arbitrary q
        with ``exact``: :mod:`xtds.model.infinite`, its mesh resolved for the crystal).
    quantum
        Bose–Einstein statistics with zero-point motion (default: what a measured crystal
        obeys; ``exact`` and ``one_phonon``). False: classical statistics (the paper's choice,
        the only one of ``sampled``).
    form_factor
        ``"cromer-mann"`` (periodictable's tabulation) or None for the bare lattice sum.
    laue_reduce
        ``exact`` and ``one_phonon``, a pure speed-up: evaluate only the Laue-irreducible q and
        expand. ``"auto"``: when the q-set is closed under the group and the geometry keeps it;
        ``True``: require it; ``False``: evaluate every q.
    orbit_average
        ``sampled`` only, a change of estimator: average each configuration's intensity over the
        Laue orbit of every q (the same mean with less Monte-Carlo noise; see
        :func:`~xtds.model.sampled.sampled_intensity`).
    n_samples, solver, seed
        ``sampled`` only: configurations per call, ``"kspace"`` or ``"dense"``, and the seed of
        the noise (``seed + epoch`` on each call; None draws fresh noise).
    dtype, device
        Of the tensors the observable computes with.

    Intensities are in electrons² per primitive cell.
    """

    model: IFCModel
    q: np.ndarray
    temperature: float
    method: str = "exact"
    geometry: PeriodicSupercell | InfiniteCrystal | None = None
    quantum: bool = True
    form_factor: str | None = "cromer-mann"
    laue_reduce: bool | str = "auto"
    orbit_average: bool = False
    n_samples: int = 15
    solver: str = "kspace"
    seed: int | None = 0
    dtype: torch.dtype = torch.float64
    device: str | torch.device | None = None
    _qt: torch.Tensor = field(init=False, repr=False)
    _orbits: Orbits | None = field(init=False, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_form_factor(self.form_factor)
        set_ = object.__setattr__
        set_(self, "temperature", check_temperature(self.temperature))
        geometry = self.geometry
        if geometry is None:
            geometry = InfiniteCrystal() if self.method == "one_phonon" else PeriodicSupercell(5)
        if not isinstance(geometry, (PeriodicSupercell, InfiniteCrystal)):
            raise TypeError(f"geometry must be a PeriodicSupercell or an InfiniteCrystal, got {geometry!r}")
        if isinstance(geometry, InfiniteCrystal):
            geometry = geometry.resolve(self.model.crystal)
        set_(self, "geometry", geometry)
        qt = as_q(self.q, self.dtype, self.device)
        if isinstance(geometry, PeriodicSupercell):  # validated on the grid; jittered points moved onto it
            crystal, L = self.model.crystal, np.asarray(geometry.repeats)
            qn = qt.detach().cpu().numpy()
            n = geometry.grid_indices(crystal, qn)
            off = np.abs(crystal.cartesian_to_rlu(qn) * L - n).max(axis=1) > JITTER if len(qn) else []
            if np.any(off):  # (points on the grid to round-off keep their q bit for bit)
                qn = qn.copy()
                qn[off] = crystal.rlu_to_cartesian(n[off] / L)
                qt = as_q(qn, self.dtype, self.device)
        set_(self, "q", qt.detach().cpu().numpy().astype(float))
        set_(self, "_qt", qt)
        if self.method == "sampled":
            if not isinstance(geometry, PeriodicSupercell):
                raise ValueError("the sampled model needs a PeriodicSupercell geometry")
            if self.quantum:
                raise ValueError("the sampled model is classical (the paper's): pass quantum=False with "
                                 "method='sampled', or use method='exact' for quantum statistics (the default)")
            if self.n_samples < 2:
                raise ValueError("n_samples must be at least 2 (the standard error needs two)")
        elif self.orbit_average:
            raise ValueError("orbit_average is an estimator of the sampled method; for exact and one_phonon the "
                             "Laue reduction (laue_reduce) is the speed-up")
        set_(self, "_orbits", self._laue_orbits())

    def _laue_orbits(self) -> Orbits | None:
        if self.method == "sampled" or not self.laue_reduce:
            return None
        group = LaueGroup.of(crystal=self.model.crystal)
        # an infinite crystal's model is Laue-symmetric for any q-set (its mesh and window are)
        kept = isinstance(self.geometry, InfiniteCrystal) or group.keeps(self.geometry.shape)
        orbits = group.reduce_q(self.model.crystal, self.q) if kept else None
        if orbits is None and self.laue_reduce is True:
            raise ValueError("laue_reduce=True, but the q-set is not closed under the Laue group (or the geometry "
                             f"{self.geometry} is not): use laue_reduce='auto' or False")
        return orbits

    # ------------------------------------------------------------------ the protocol
    @property
    def stochastic(self) -> bool:
        return self.method == "sampled"

    @property
    def orbits(self) -> Orbits | None:
        """The Laue reduction in use (None: every q is evaluated)."""
        return self._orbits

    def __len__(self) -> int:
        return len(self.q)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """⟨I(q)⟩, shape (Q,), electrons² per primitive cell."""
        phi = self.model.vector(phi, dtype=self.dtype, device=self.device)
        if self.method == "sampled":
            return self.sampled(phi, epoch, stderr=False)[0]
        orb, q = self._orbits, self._qt
        if orb is not None:
            q = q[torch.as_tensor(orb.index, device=q.device)]
        T, ff = self.temperature, self.form_factor
        if isinstance(self.geometry, InfiniteCrystal):
            out = infinite_intensity(self.plan, phi, q, T, quantum=self.quantum, form_factor=ff,
                                     multi_phonon=self.method == "exact", cache=self.__dict__.setdefault("_cache", {}))
        elif self.method == "one_phonon":
            out = one_phonon(self.model, phi, q, T, mesh=self.geometry.shape, quantum=self.quantum, form_factor=ff)
        else:
            out = exact_supercell(self.model, phi, q, T, self.geometry, quantum=self.quantum, form_factor=ff)
        return out if orb is None else out[torch.as_tensor(orb.inverse, device=out.device)]

    @property
    def plan(self) -> InfinitePlan:
        """The pair set and window of the infinite-crystal model (built once, on first use)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = _plan(self.model, self.geometry.shape)
            object.__setattr__(self, "_plan", plan)
        return plan

    def sampled(self, phi: torch.Tensor, epoch: int = 0, stderr: bool = True):
        """``sampled`` only: (mean, standard error or None), each shape (Q,)."""
        if self.method != "sampled":
            raise ValueError("a Monte-Carlo standard error exists for method='sampled' only")
        seed = None if self.seed is None else int(self.seed) + int(epoch)
        return sampled_intensity(self.model, phi, self._qt, self.temperature, self.geometry, n_samples=self.n_samples,
                                 solver=self.solver, seed=seed, form_factor=self.form_factor, stderr=stderr,
                                 orbit_average=bool(self.orbit_average))

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        """The deterministic intensity: for ``sampled`` the exact classical average it estimates."""
        if not self.stochastic:
            return self(phi)
        twin = self.__dict__.get("_exact_twin")
        if twin is None:
            twin = dataclasses.replace(self, method="exact", orbit_average=False)
            object.__setattr__(self, "_exact_twin", twin)
        return twin(phi)

    def stability_k(self) -> np.ndarray:
        """The geometry's k-grid, shape (K, 3), Å⁻¹; for an infinite crystal its M/4 sub-mesh (the
        whole mesh is checked anyway: the covariances raise :class:`~xtds.errors.UnstableError`)."""
        k = self.geometry.k_grid(self.model.crystal)
        if isinstance(self.geometry, InfiniteCrystal):
            k = k[::4, ::4, ::4]
        return k.reshape(-1, 3)

    # ------------------------------------------------------------------ noise of sampled data
    def configuration_noise(self, phi: torch.Tensor, draws: int, seed: int, multiplicity=None) -> np.ndarray:
        """Relative noise of data that are means over single sampled configurations, shape
        (draws, Q): (I_c − ⟨I⟩)/⟨I⟩ of one configuration c averaged over each point's Laue orbit
        (the voxels a point stands for), at ``phi``. With ``multiplicity`` (valid voxels per point,
        fewer than the orbit in a wedge) the orbit mean averages fewer independent values, and the
        noise is scaled up by √(orbit size / multiplicity)."""
        if not isinstance(self.geometry, PeriodicSupercell):
            raise ValueError("the noise of sampled configurations is defined on a periodic supercell")
        crystal = self.model.crystal
        group = LaueGroup.of(crystal=crystal)
        n = self.geometry.grid_indices(crystal, self.q)
        members, owner = group.images(n, scale=1.0 / np.asarray(self.geometry.repeats))
        size = np.bincount(owner, minlength=len(n)).astype(float)
        q_members = crystal.rlu_to_cartesian(members / np.asarray(self.geometry.repeats))
        m = size if multiplicity is None else np.minimum(np.asarray(multiplicity, dtype=float), size)
        inflate = torch.as_tensor(np.sqrt(size / m), dtype=self.dtype)
        own = torch.as_tensor(owner)
        with torch.no_grad():
            exact = dataclasses.replace(self, method="exact", orbit_average=False, laue_reduce=False, device="cpu")
            Ie = exact(phi.detach().cpu())
            out = []
            for start in range(0, draws, 25):
                b = min(25, draws - start)
                Ic = configuration_intensities(self.model, phi.detach().cpu(), q_members, self.temperature,
                                               self.geometry.repeats, b, seed=seed + start,
                                               form_factor=self.form_factor)
                orb = torch.zeros(b, len(n), dtype=self.dtype).index_add_(1, own, Ic.to(self.dtype))
                out.append((orb / torch.as_tensor(size, dtype=self.dtype) / Ie - 1.0) * inflate)
        return torch.cat(out).numpy()


def statistics_of(attrs, quantum: bool | None) -> bool:
    """The statistics of a fit: ``quantum`` when given; else what the data say they were simulated
    with (``attrs['quantum']``, 0/1, written by :func:`xtds.simulate`); else quantum, as a measured
    crystal obeys."""
    if quantum is not None:
        return bool(quantum)
    if "quantum" in attrs:
        chosen = bool(int(attrs["quantum"]))
        logging.getLogger("xtds.model").info("quantum=None: the data were simulated with %s statistics; using them",
                                             "quantum" if chosen else "classical")
        return chosen
    return True
