"""How the TDS of a volume is modelled, as one settings object: :class:`TDSModel`.

``ds.tds.fit(crystal, shells=5, initial=..., model=TDSModel(method="one_phonon"))`` and every
other entry point (``fit_points``, ``fit_series``, ``simulate``, the CLI) take the forward model's
choices together: the method, where the intensity is computed, the statistics, the form factors
and the options of the sampled estimator. :meth:`TDSModel.observable` turns them into a
:class:`~xtds.observables.tds.intensity.TDSIntensity` for given q-points, resolving the
``"auto"`` choices from what the data say (``attrs``) and checking that the model is defined
there.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from xtds.lattice.ifc import IFCModel
from xtds.lattice.reflections import is_allowed
from xtds.observables.scattering import check_form_factor
from xtds.observables.tds.anharmonic import Anharmonic, as_anharmonic_model
from xtds.observables.tds.infinite import MESH_TOLERANCE
from xtds.observables.tds.intensity import METHODS, TDSIntensity, statistics_of
from xtds.thermal.geometry import InfiniteCrystal, PeriodicSupercell, auto_geometry

__all__ = ["TDSModel", "as_tds_model", "check_range", "check_bragg_free", "BRAGG_FREE_RLU"]

log = logging.getLogger("xtds.observables")

#: Points of an infinite crystal closer than this (r.l.u., in every component) to an allowed
#: reciprocal-lattice point are refused: there measured data are Bragg peaks (a jittered coordinate
#: does not make them diffuse). Half the finest step of a measured volume (0.01 r.l.u.).
BRAGG_FREE_RLU = 5e-3


@dataclass(frozen=True)
class TDSModel:
    """The forward model of a TDS volume: its method and options.

    Parameters
    ----------
    method
        ``"exact"`` (the harmonic average to all orders, default), ``"one_phonon"`` (Xu & Chiang)
        or ``"sampled"`` (the paper's Cholesky-sampling estimator, classical).
    geometry
        ``"auto"`` (default): an :class:`~xtds.thermal.geometry.InfiniteCrystal` for measured data,
        or the :class:`~xtds.thermal.geometry.PeriodicSupercell` the data say they were simulated
        on (:func:`~xtds.thermal.geometry.auto_geometry`); or either object.
    quantum
        None (default): the statistics the data say they were simulated with (``attrs['quantum']``),
        else Bose–Einstein statistics, those of a measured crystal; True or False to choose.
    form_factor
        ``"cromer-mann"`` (default) or None (the bare lattice sum).
    n_samples, solver, orbit_average, seed
        ``sampled`` only: configurations per epoch, the Cholesky solver (``"kspace"`` or
        ``"dense"``), whether each point averages every configuration over its Laue orbit (the
        same mean with less noise), and the seed of the noise (``seed + epoch`` per epoch).
    dtype, device
        Of the computation (``device="cuda"``: the GPU path).
    anharmonic
        None (default): the Gaussian (harmonic) pair average. An
        :class:`~xtds.observables.tds.anharmonic.Anharmonic`: add the third and fourth cumulants of
        the pair displacements, fitted with the constants (``method="exact"`` on a periodic
        supercell; the fit's constants then include them, e.g. ``k4a0`` in Å⁴).
    """

    method: str = "exact"
    geometry: PeriodicSupercell | InfiniteCrystal | str = "auto"
    quantum: bool | None = None
    form_factor: str | None = "cromer-mann"
    n_samples: int = 15
    solver: str = "kspace"
    orbit_average: bool = True
    seed: int = 0
    dtype: torch.dtype = torch.float64
    device: str | torch.device | None = None
    anharmonic: Anharmonic | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"TDSModel(method=...) must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.geometry, str):
            if self.geometry != "auto":
                raise ValueError(f"the geometry must be 'auto', a PeriodicSupercell or an InfiniteCrystal "
                                 f"(TDSModel(geometry=...)), got {self.geometry!r}")
        elif not isinstance(self.geometry, (PeriodicSupercell, InfiniteCrystal)):
            raise TypeError(f"the geometry must be 'auto', a PeriodicSupercell or an InfiniteCrystal "
                            f"(TDSModel(geometry=...)), got {self.geometry!r}")
        if self.quantum is not None and not isinstance(self.quantum, (bool, np.bool_)):
            raise TypeError(f"TDSModel(quantum=...) must be True, False or None, got {self.quantum!r}")
        check_form_factor(self.form_factor)
        if self.anharmonic is not None and not isinstance(self.anharmonic, Anharmonic):
            raise TypeError(f"TDSModel(anharmonic=...) must be None or an xtds.Anharmonic(...), "
                            f"got {self.anharmonic!r}")

    def geometry_for(self, hkl, attrs=None) -> tuple[PeriodicSupercell | InfiniteCrystal, str]:
        """The geometry for points at ``hkl`` (N, 3) r.l.u. of a volume with ``attrs``, and why."""
        if not isinstance(self.geometry, str):
            return self.geometry, "given"
        geometry, why = auto_geometry(hkl, attrs or {}, method=self.method)
        log.info("geometry='auto' chose %r for %d points: %s", geometry, len(hkl), why)
        return geometry, why

    def observable(self, model: IFCModel, q, temperature: float, hkl=None, attrs=None, check: bool = True
                   ) -> tuple[TDSIntensity, str]:
        """The :class:`~xtds.observables.tds.intensity.TDSIntensity` of points at ``q`` (P, 3)
        Cartesian Å⁻¹ (``hkl`` (P, 3) their r.l.u., default from ``q``), with the statistics and
        geometry resolved from ``attrs``, and the reason for the geometry. Raises where the model is
        not defined: force constants reaching beyond half a periodic supercell, or points of an
        infinite crystal on allowed Bragg reflections."""
        model = as_anharmonic_model(model, self.anharmonic)
        q = np.asarray(q, dtype=float)
        hkl = model.crystal.cartesian_to_rlu(q) if hkl is None else np.asarray(hkl, dtype=float)
        attrs = attrs or {}
        geometry, why = self.geometry_for(hkl, attrs)
        if check:
            check_range(model, geometry)
            check_bragg_free(model, geometry, hkl)
        obs = TDSIntensity(model, q, temperature, method=self.method, geometry=geometry,
                           quantum=statistics_of(attrs, self.quantum), form_factor=self.form_factor,
                           laue_reduce="auto", orbit_average=bool(self.orbit_average) and self.method == "sampled",
                           n_samples=self.n_samples, solver=self.solver, seed=self.seed, dtype=self.dtype,
                           device=self.device, mesh_tolerance=MESH_TOLERANCE if why != "given" else None)
        return obs, why


def as_tds_model(model) -> TDSModel:
    """A :class:`TDSModel` from None (the defaults), a mapping of its fields, or itself."""
    if model is None:
        return TDSModel()
    if isinstance(model, TDSModel):
        return model
    if isinstance(model, dict):
        unknown = set(model) - {f.name for f in dataclasses.fields(TDSModel)}
        if unknown:
            raise TypeError(f"model: TDSModel has no setting {sorted(unknown)}; its settings are "
                            f"{[f.name for f in dataclasses.fields(TDSModel)]}")
        return TDSModel(**model)
    raise TypeError(f"model must be a TDSModel (e.g. TDSModel(method='one_phonon')) or a dict of its settings, "
                    f"got {type(model).__name__}")


def check_bragg_free(model: IFCModel, geometry, hkl: np.ndarray) -> None:
    """A ``ValueError`` when an infinite crystal is to be modelled at q = 0 or at allowed Bragg
    reflections (non-vanishing structure factor), where its diffuse intensity is undefined and
    measured data are Bragg peaks. Forbidden reflections (e.g. 001 of hcp) are fine."""
    if not isinstance(geometry, InfiniteCrystal):
        return
    hkl = np.asarray(hkl, dtype=float)
    on = np.all(np.abs(hkl - np.round(hkl)) < BRAGG_FREE_RLU, axis=1)
    if np.any(on):
        on[np.flatnonzero(on)] = is_allowed(model.crystal, np.round(hkl[on]))
    if np.any(on):
        raise ValueError(
            f"{int(on.sum())} points lie on (within {BRAGG_FREE_RLU} r.l.u. of) reciprocal-lattice points (e.g. H K L "
            f"= {hkl[on][0].round(6)}), where an "
            "infinite crystal has Bragg peaks and no defined diffuse intensity: mask them (e.g. ds.tds.mask(bragg=0.1) "
            "or fit(..., prepare=Preparation(bragg=0.1))), or, for a volume simulated on a periodic supercell, pass "
            "TDSModel(geometry=PeriodicSupercell(L)) (or keep its attrs['geometry'])"
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
            "of more repeats (data on a finer grid) or TDSModel(geometry=InfiniteCrystal(...))"
        )
