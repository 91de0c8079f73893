"""Differentiable TDS forward models: from force constants φ to the diffuse intensity.

The observable :class:`TDSIntensity` (:mod:`xtds.model.observable`) is built once from the IFC
model, the q-points, the temperature and the method with its options, and called with φ; the
function :func:`tds_intensity` builds one and calls it once; :class:`TDSModel` is a thin
``torch.nn.Module`` holding φ as its parameter. Methods:

- ``"exact"``: the harmonic ensemble average to all orders (:mod:`xtds.model.exact`), on a
  :class:`PeriodicSupercell` (q on its grid, Bragg peaks included) or an :class:`InfiniteCrystal`
  (any q, Bragg peaks excluded); classical or quantum statistics.
- ``"one_phonon"``: first-order TDS with the Debye–Waller factor (Xu & Chiang), any q.
- ``"sampled"``: the paper's Cholesky-sampling estimator with NUFFT intensities
  (:mod:`xtds.model.sampled`), on a periodic supercell; classical.

:func:`simulate` (:mod:`xtds.model.simulate`) evaluates a model on a volume's (H, K, L) grid.
Other kinds of data are observables of the same protocol: :class:`PowderSpectrum` (powder
neutron χ''/S(|Q|, E), :mod:`xtds.model.powder`), :class:`SQEPoints`, :class:`DispersionPoints`
and :class:`PowderIntensity` (powder X-ray I(|Q|)) (:mod:`xtds.model.points`).
Intensities are in electrons² per primitive cell (``form_factor=None``: the bare lattice sum,
per primitive cell). q is Cartesian, Å⁻¹, 2π included.
"""

from __future__ import annotations

import torch

from xtds.ifc import IFCModel
from xtds.model.geometry import InfiniteCrystal, PeriodicSupercell, auto_geometry, supercell_q_grid
from xtds.model.observable import METHODS, Observable, TDSIntensity
from xtds.model.points import DispersionPoints, PowderIntensity, SQEPoints
from xtds.model.powder import PowderSpectrum
from xtds.model.sampled import sample_displacements, sampled_intensity
from xtds.model.simulate import simulate

__all__ = [
    "tds_intensity",
    "TDSModel",
    "TDSIntensity",
    "Observable",
    "PowderSpectrum",
    "PowderIntensity",
    "SQEPoints",
    "DispersionPoints",
    "PeriodicSupercell",
    "InfiniteCrystal",
    "auto_geometry",
    "supercell_q_grid",
    "sample_displacements",
    "sampled_intensity",
    "simulate",
    "METHODS",
]


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
    argument is that of :class:`~xtds.model.observable.TDSIntensity`.

    Returns shape (Q,) tensor, electrons² per primitive cell (and the standard error if asked).
    """
    obs = TDSIntensity(model, q, temperature, method=method, geometry=geometry, quantum=quantum,
                       form_factor=form_factor, laue_reduce=laue_reduce, orbit_average=orbit_average,
                       n_samples=n_samples, solver=solver, seed=seed, dtype=dtype, device=device)
    phi = model.vector(ifc, dtype=dtype, device=device)
    if return_stderr:
        return obs.sampled(phi, stderr=True)
    return obs(phi)


class TDSModel(torch.nn.Module):
    """A thin Module holding the free constants φ as a parameter; ``forward()`` returns ⟨I(q)⟩.

    The observable (q-set, temperature, method and its options) is built once, with its Laue
    reduction. ``ifc`` gives the starting values; other keywords as in :class:`TDSIntensity`.

    Examples
    --------
    >>> import xtds, torch
    >>> from xtds.model import TDSModel, PeriodicSupercell, supercell_q_grid
    >>> m = xtds.IFCModel(xtds.Crystal.preset("Ni"), shells=2)
    >>> q = supercell_q_grid(m.crystal, 2, 2)
    >>> tds = TDSModel(m, q, 300.0, ifc={"b0": -1.0, "b1": 0.05, "b2": -1.0, "c0": 0.1, "c1": 0.0},
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
