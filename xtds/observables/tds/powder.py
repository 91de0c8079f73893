"""The powder X-ray TDS: the energy-integrated I(|Q|) that total-scattering (PDF) beamlines
measure between the Bragg rings, as the orientation average of a single-crystal
:class:`~xtds.observables.tds.intensity.TDSIntensity` over each |Q| sphere
(:func:`xtds.observables.sphere.sphere_rule`, reduced by the Laue group)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from xtds.errors import check_temperature
from xtds.observables.base import Observable
from xtds.observables.sphere import powder_average, sphere_rule
from xtds.observables.tds.intensity import TDSIntensity
from xtds.thermal.geometry import InfiniteCrystal

__all__ = ["PowderIntensity", "powder_tds"]


def powder_tds(observable_factory: Callable[[np.ndarray], Callable], phi, qnorm, order="auto",
               crystal=None, check: bool = False):
    """Powder X-ray TDS I(|Q|) (energy-integrated; the units of the observable): the orientation
    average of a single-crystal observable. ``observable_factory(q)`` builds it at Cartesian q (P, 3)
    (e.g. ``lambda q: xtds.TDSIntensity(model, q, T, geometry=InfiniteCrystal())``), called once
    per rule; it is then evaluated at ``phi`` (differentiable)."""
    return powder_average(lambda q: observable_factory(q)(phi), qnorm, order=order, crystal=crystal, check=check)


class PowderIntensity(Observable):
    """Powder X-ray TDS I(|Q|) at ``qnorm`` (Nq,) Å⁻¹: the orientation average of
    :class:`~xtds.observables.tds.intensity.TDSIntensity` (``method``, ``geometry`` and the rest passed on;
    default the exact all-order model of an infinite crystal) on a product rule of ``order`` polar
    nodes (:func:`xtds.observables.sphere.sphere_rule`, Laue-reduced), in electrons² per primitive cell:
    shape (Nq,). The single-crystal model diverges at Bragg peaks: keep each |Q| away from the
    |G| of the rings (the average over a sphere that touches a G is not defined). The quadrature's
    accuracy: compare two orders (the intensity near a ring is sharp on the sphere)."""

    stochastic = False

    def __init__(self, model, qnorm, temperature: float, order: int = 24, method: str = "exact", geometry=None,
                 **tds_options):
        self.model, self.temperature = model, check_temperature(temperature)
        self.qnorm = np.asarray(qnorm, dtype=float).reshape(-1)
        if len(self.qnorm) == 0 or np.any(self.qnorm <= 0) or not np.all(np.isfinite(self.qnorm)):
            raise ValueError("qnorm must be positive, finite |Q| values (Å⁻¹)")
        G = _bragg_norms(model, self.qnorm.max())
        close = [x for x in self.qnorm if np.any(np.abs(G - x) < 1e-3)]
        if close:
            raise ValueError(f"|Q| = {close} lie on Bragg rings (|G| of the crystal), where the TDS diverges: "
                             "move them off the rings")
        dirs, w = sphere_rule(int(order), model.crystal)
        self.order, self.n_directions = int(order), len(dirs)
        q = (self.qnorm[:, None, None] * dirs[None]).reshape(-1, 3)
        geometry = InfiniteCrystal() if geometry is None else geometry
        self._tds = TDSIntensity(model, q, temperature, method=method, geometry=geometry, **tds_options)
        self._w = torch.as_tensor(w, dtype=self._tds.dtype)  # the rule's weights, the same on every sphere
        self.dtype, self.device = self._tds.dtype, self._tds.device

    def __len__(self) -> int:
        return len(self.qnorm)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        I = self._tds.mean(phi).reshape(len(self.qnorm), self.n_directions)
        return I @ self._w.to(I)

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        return self._tds.stability_k()

    def at_temperature(self, temperature: float) -> PowderIntensity:
        """A copy at another temperature (K): the single-crystal observable inside it too."""
        new = copy.copy(self)
        new.temperature = check_temperature(temperature)
        new._tds = self._tds.at_temperature(new.temperature)
        return new

    def describe(self) -> dict:
        """The protocol's description, with the single-crystal observable it averages (its method,
        geometry and options)."""
        return {**super().describe(), "single_crystal": self._tds.describe()}


def _bragg_norms(model, qmax: float) -> np.ndarray:
    """|G| (Å⁻¹) of the reciprocal lattice points of the primitive cell up to qmax + 0.1 Å⁻¹."""
    P = model.primitive
    reach = np.ceil((qmax + 0.1) * np.linalg.norm(np.asarray(P.lattice), axis=1) / (2 * np.pi)).astype(int)
    n = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    G = np.linalg.norm(n @ np.asarray(P.reciprocal), axis=1)
    return G[G <= qmax + 0.1]
