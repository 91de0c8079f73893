"""The single-crystal TDS intensity at a set of q-points: the observable :class:`TDSIntensity`.

A frozen object built once from (IFC model, q, temperature, method and its options, form factors,
dtype/device) and called with the free constants φ; it implements the observable protocol of
:mod:`xtds.observables.base`. The forward models it dispatches to: :mod:`~xtds.observables.tds.exact`
(periodic supercell, one phonon), :mod:`~xtds.observables.tds.infinite` (infinite crystal) and
:mod:`~xtds.observables.tds.sampled` (the paper's Cholesky sampling).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from xtds.errors import UnstableError, check_temperature
from xtds.lattice.ifc import IFCModel
from xtds.lattice.laue import LaueGroup, Orbits
from xtds.observables.base import Observable, as_q
from xtds.observables.scattering import check_form_factor, form_factor_table
from xtds.observables.tds.exact import cumulant_jacobian, exact_supercell, one_phonon
from xtds.observables.tds.infinite import InfinitePlan, converge_mesh, infinite_intensity, plan_of
from xtds.observables.tds.sampled import configuration_intensities, sampled_intensity
from xtds.thermal.geometry import InfiniteCrystal, PeriodicSupercell

__all__ = ["TDSIntensity", "tds_intensity", "TDSModule", "METHODS", "statistics_of", "JITTER"]

#: Offset from a supercell's grid (in grid steps) above which a point counts as jittered and is
#: moved onto the grid; below it the difference is round-off.
JITTER = 1e-9

#: The forward-model methods of :class:`TDSIntensity`.
METHODS = ("exact", "one_phonon", "sampled")


@dataclass(frozen=True, eq=False)
class TDSIntensity(Observable):
    """The single-crystal TDS intensity ⟨I(q)⟩ at fixed q-points: an :class:`Observable`.

    Parameters
    ----------
    model
        The :class:`~xtds.IFCModel` (crystal and cutoff).
    q
        Shape (Q, 3), Cartesian Å⁻¹ (2π included). On a :class:`PeriodicSupercell` every q must lie
        on its grid within :data:`xtds.lattice.laue.GRID_TOL` of a step, and is moved onto it.
    temperature
        K; required.
    method
        ``"exact"`` (the harmonic average to all orders), ``"one_phonon"`` (Xu & Chiang, with the
        Debye–Waller factor) or ``"sampled"`` (the paper's Cholesky-sampling estimator).
    geometry
        :class:`PeriodicSupercell` (default for ``exact``/``sampled``: the 5×5×5 cells of the
        paper) or :class:`InfiniteCrystal` (default for ``one_phonon``; required for arbitrary q
        with ``exact``: :mod:`xtds.observables.tds.infinite`, its mesh resolved for the crystal).
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
        :func:`~xtds.observables.tds.sampled.sampled_intensity`).
    n_samples, solver, seed
        ``sampled`` only: configurations per call, ``"kspace"`` or ``"dense"``, and the seed of
        the noise (``seed + epoch`` on each call; None draws fresh noise).
    dtype, device
        Of the tensors the observable computes with.
    mesh_tolerance
        ``exact`` on an :class:`InfiniteCrystal` only: before a fit, :meth:`refine` refines the
        k-mesh until the model changes by at most this much at the starting constants
        (:func:`~xtds.observables.tds.infinite.converge_mesh`; ``TDSModel(geometry="auto")`` sets
        it); None keeps the mesh.

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
    mesh_tolerance: float | None = None
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
        if getattr(self.model, "cumulant_ranks", None) and (
                self.method != "exact" or not isinstance(geometry, PeriodicSupercell)):
            raise NotImplementedError(
                f"the anharmonic (cumulant) terms are summed in the exact model on a periodic supercell only; got "
                f"method={self.method!r} on {geometry!r}. Use TDSModel(method='exact', "
                "geometry=PeriodicSupercell(L)) (data simulated on a supercell, e.g. MD), or a harmonic model")
        if getattr(self.model, "_bond_maps", None) and self.quantum:
            raise NotImplementedError(
                "the cubic bond constants' third cumulants (Anharmonic(cubic_shells=...)) are the classical "
                "first-order result: use TDSModel(quantum=False) (classical MD, or temperatures well above the Debye "
                "temperature), or Anharmonic(cubic_shells=0) with per-shell K₃ (shells=...)")
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
        T = self.temperature
        if isinstance(self.geometry, InfiniteCrystal):
            ff = self._form_factors(self.plan.cell.species)
            out = infinite_intensity(self.plan, phi, q, T, quantum=self.quantum, form_factor=ff,
                                     multi_phonon=self.method == "exact", cache=self.__dict__.setdefault("_cache", {}),
                                     q_values=self.q if orb is None else self.q[orb.index])
        elif self.method == "one_phonon":
            ff = self._form_factors(self.model.crystal.species)
            out = one_phonon(self.model, phi, q, T, mesh=self.geometry.shape, quantum=self.quantum, form_factor=ff)
        else:
            ff = self._form_factors(self.model.crystal.species)
            out = exact_supercell(self.model, phi, q, T, self.geometry, quantum=self.quantum, form_factor=ff)
        return out if orb is None else out[torch.as_tensor(orb.inverse, device=out.device)]

    def cumulant_jacobian(self, phi: torch.Tensor) -> torch.Tensor:
        """∂I/∂θ (Q, n_θ) in an anharmonic model's cumulant parameters at ``phi``
        (:func:`~xtds.observables.tds.exact.cumulant_jacobian`: the fit's Jacobian takes these columns
        from here and differentiates the rest of the model in the force constants only)."""
        phi = self.model.vector(phi, dtype=self.dtype, device=self.device).detach()
        orb, q = self._orbits, self._qt
        if orb is not None:
            q = q[torch.as_tensor(orb.index, device=q.device)]
        ff = self._form_factors(self.model.crystal.species)
        J = cumulant_jacobian(self.model, phi, q, self.temperature, self.geometry, quantum=self.quantum,
                              form_factor=ff)
        return J if orb is None else J[torch.as_tensor(orb.inverse, device=J.device)]

    def _form_factors(self, species) -> torch.Tensor:
        """(Q', n) form factors of ``species`` at the evaluated q (the irreducible ones under a Laue
        reduction), made once from the numpy q, so that the model has no step that reads q's values
        (forward-mode Jacobians through ``torch.func`` cannot)."""
        key = ("_ff", tuple(species))
        table = self.__dict__.get(key)
        if table is None:
            q = self.q if self._orbits is None else self.q[self._orbits.index]
            table = torch.as_tensor(form_factor_table(species, np.linalg.norm(q, axis=1), self.form_factor).T,
                                    dtype=self.dtype, device=self.device)
            self.__dict__[key] = table
        return table

    @property
    def plan(self) -> InfinitePlan:
        """The pair set and window of the infinite-crystal model (built once, on first use)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = plan_of(self.model, self.geometry.shape)
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

    def refine(self, phi0: torch.Tensor) -> tuple[TDSIntensity, str]:
        """Before a fit: with ``mesh_tolerance``, this observable with its infinite crystal's k-mesh
        converged at the starting constants ``phi0``, and what was tried; else itself and ''.
        Unstable starting constants are left to the fit's check."""
        if self.mesh_tolerance is None or self.method != "exact" or not isinstance(self.geometry, InfiniteCrystal):
            return self, ""
        try:
            obs, note = converge_mesh(self, phi0, self.mesh_tolerance)
        except UnstableError:
            return self, ""
        logging.getLogger("xtds.observables").info("infinite crystal: %s", note)
        return obs, note

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
        logging.getLogger("xtds.observables").info(
            "quantum=None: the data were simulated with %s statistics; using them",
            "quantum" if chosen else "classical")
        return chosen
    return True


def tds_intensity(
    model: IFCModel,
    ifc,
    q,
    temperature: float,
    method: str = "exact",
    geometry: PeriodicSupercell | InfiniteCrystal | None = None,
    quantum: bool = True,
    form_factor: str | None = "cromer-mann",
    laue_reduce: bool | str = "auto",
    orbit_average: bool = False,
    n_samples: int = 15,
    solver: str = "kspace",
    seed: int | None = None,
    return_stderr: bool = False,
    dtype: torch.dtype = torch.float64,
    device=None,
):
    """The TDS intensity ⟨I(q)⟩ for force constants ``ifc``: ``TDSIntensity(...)(ifc)``.

    ``ifc``: the free constants as a mapping, DataArray, array or tensor (a tensor with
    ``requires_grad`` makes the result differentiable). ``q``: shape (Q, 3), Cartesian Å⁻¹.
    ``return_stderr`` (``sampled`` only) also returns the Monte-Carlo standard error. Every other
    argument is that of :class:`TDSIntensity`.

    Returns shape (Q,) tensor, electrons² per primitive cell (and the standard error if asked).
    """
    obs = TDSIntensity(model, q, temperature, method=method, geometry=geometry, quantum=quantum,
                       form_factor=form_factor, laue_reduce=laue_reduce, orbit_average=orbit_average,
                       n_samples=n_samples, solver=solver, seed=seed, dtype=dtype, device=device)
    phi = model.vector(ifc, dtype=dtype, device=device)
    if return_stderr:
        return obs.sampled(phi, stderr=True)
    return obs(phi)


class TDSModule(torch.nn.Module):
    """A thin Module holding the free constants φ as a parameter; ``forward()`` returns ⟨I(q)⟩.

    The observable (q-set, temperature, method and its options) is built once, with its Laue
    reduction. ``ifc`` gives the starting values; other keywords as in :class:`TDSIntensity`.

    Examples
    --------
    >>> import xtds, torch
    >>> from xtds.observables import TDSModule, PeriodicSupercell, supercell_q_grid
    >>> m = xtds.IFCModel(xtds.datasets.paper_ni_crystal(), shells=2)
    >>> q = supercell_q_grid(m.crystal, 2, 2)
    >>> tds = TDSModule(m, q, 300.0, ifc={"b0": -1.0, "b1": 0.05, "b2": -1.0, "c0": 0.1, "c1": 0.0},
    ...                geometry=PeriodicSupercell(2))
    >>> tds().shape
    torch.Size([125])
    """

    def __init__(self, model: IFCModel, q, temperature: float, ifc, dtype=torch.float64, device=None, **options):
        super().__init__()
        self.observable = TDSIntensity(model, q, temperature, dtype=dtype, device=device, **options)
        self.phi = torch.nn.Parameter(model.vector(ifc, dtype=dtype, device=device).clone())

    @property
    def names(self) -> tuple[str, ...]:
        return self.observable.model.names

    def forward(self, epoch: int = 0) -> torch.Tensor:
        return self.observable(self.phi, epoch)
