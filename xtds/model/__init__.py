"""Differentiable TDS forward models: from force constants φ to the diffuse intensity.

One entry point, :func:`tds_intensity`, and a thin :class:`TDSModel` (``torch.nn.Module``) that
holds φ as its parameter. Methods:

- ``"exact"``: the harmonic ensemble average to all orders (:mod:`xtds.model.exact`), on a
  :class:`PeriodicSupercell` (q on its grid, Bragg peaks included) or an :class:`InfiniteCrystal`
  (any q, Bragg peaks excluded); classical or quantum statistics.
- ``"one_phonon"``: first-order TDS with the Debye–Waller factor (Xu & Chiang), any q.
- ``"sampled"``: the paper's Cholesky-sampling estimator with NUFFT intensities
  (:mod:`xtds.model.sampled`), on a periodic supercell; classical.

Intensities are in electrons² per primitive cell (``form_factor=None``: the bare lattice sum,
per primitive cell). q is Cartesian, Å⁻¹, 2π included.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.ifc import IFCModel
from xtds.laue import IrreducibleQ, irreducible, laue_rotations
from xtds.model.exact import exact_infinite, exact_supercell, one_phonon
from xtds.model.geometry import InfiniteCrystal, PeriodicSupercell, supercell_q_grid
from xtds.model.sampled import sample_displacements, sampled_intensity

__all__ = [
    "tds_intensity",
    "TDSModel",
    "PeriodicSupercell",
    "InfiniteCrystal",
    "supercell_q_grid",
    "sample_displacements",
    "sampled_intensity",
    "irreducible_q",
    "METHODS",
]

METHODS = ("exact", "one_phonon", "sampled")


def irreducible_q(model: IFCModel, q) -> IrreducibleQ | None:
    """The Laue-irreducible part of ``q`` (None when the set is not closed under the Laue group)."""
    return irreducible(np.asarray(q, dtype=float), laue_rotations(model.crystal))


def _as_q(q, dtype, device) -> torch.Tensor:
    if hasattr(q, "dims"):
        raise TypeError("pass q as a (Q, 3) array of Cartesian Å⁻¹; convert labelled r.l.u. with "
                        "crystal.rlu_to_cartesian")
    qt = torch.as_tensor(np.asarray(q.detach().cpu() if isinstance(q, torch.Tensor) else q, dtype=float))
    if qt.ndim != 2 or qt.shape[1] != 3:
        raise ValueError(f"q must have shape (Q, 3), Cartesian Å⁻¹, got {tuple(qt.shape)}")
    return qt.to(dtype=dtype, device=device)


def tds_intensity(
    model: IFCModel,
    ifc,
    q,
    temperature: float,
    method: str = "exact",
    geometry: PeriodicSupercell | InfiniteCrystal | None = None,
    quantum: bool = False,
    form_factor: str | None = "cromer-mann",
    symmetrize: bool | str = "auto",
    n_samples: int = 15,
    solver: str = "kspace",
    seed: int | None = None,
    return_stderr: bool = False,
    dtype: torch.dtype = torch.float64,
    device=None,
    irreducible_set: IrreducibleQ | None = None,
):
    """The TDS intensity ⟨I(q)⟩ for force constants ``ifc``.

    Parameters
    ----------
    model
        The :class:`~xtds.IFCModel` (crystal and cutoff).
    ifc
        The free constants: a mapping, DataArray, array or tensor (a tensor with ``requires_grad``
        makes the result differentiable).
    q
        Shape (Q, 3), Cartesian Å⁻¹ (2π included).
    temperature
        K; required.
    method
        ``"exact"``, ``"one_phonon"`` or ``"sampled"``.
    geometry
        :class:`PeriodicSupercell` (default for ``exact``/``sampled``: the 5×5×5 cells of the paper)
        or :class:`InfiniteCrystal` (default for ``one_phonon``: a 16³ mesh for the Debye–Waller
        factor; required for arbitrary q with ``exact``).
    quantum
        Bose–Einstein statistics with zero-point motion (``exact`` and ``one_phonon``).
    form_factor
        ``"cromer-mann"`` (periodictable's tabulation, per species) or None for the bare lattice sum.
    symmetrize
        ``exact`` and ``one_phonon``: evaluate only the Laue-irreducible q and expand (``"auto"``:
        when the set is closed under the group; ``True``: require it). ``sampled``: ``True``
        averages every configuration's intensity over the Laue orbit of each q (a lower-noise
        estimate of the same mean; see :func:`~xtds.model.sampled.sampled_intensity`), ``"auto"``
        and ``False`` keep the paper's per-point estimator.
    n_samples, solver, seed
        ``sampled`` only: configurations, ``"kspace"`` or ``"dense"``, noise seed.
    return_stderr
        ``sampled`` only: also return the Monte-Carlo standard error.
    irreducible_set
        A precomputed :func:`irreducible_q` for this q (saves the set-up on repeated calls).

    Returns
    -------
    Shape (Q,) tensor, electrons² per primitive cell (and the standard error for ``sampled`` if asked).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if form_factor not in ("cromer-mann", None):
        raise ValueError(f"form_factor must be 'cromer-mann' or None, got {form_factor!r}")
    phi = model.vector(ifc, dtype=dtype, device=device)
    qt = _as_q(q, phi.dtype, phi.device)
    if geometry is None:
        geometry = InfiniteCrystal(16) if method == "one_phonon" else PeriodicSupercell(5)
    if method == "sampled":
        if not isinstance(geometry, PeriodicSupercell):
            raise ValueError("the sampled model needs a PeriodicSupercell geometry")
        if quantum:
            raise ValueError("the sampled model is classical (the paper's); use method='exact' for quantum statistics")
        mean, se = sampled_intensity(
            model, phi, qt, temperature, geometry.repeats, n_samples=n_samples, solver=solver,
            seed=seed, form_factor=form_factor, stderr=return_stderr, orbit_average=symmetrize is True,
        )
        return (mean, se) if return_stderr else mean
    if return_stderr:
        raise ValueError("return_stderr applies to method='sampled' only")
    if isinstance(geometry, PeriodicSupercell):
        geometry.grid_indices(model.crystal, qt.detach().cpu().numpy())  # validates q
    irr = irreducible_set
    if irr is None and symmetrize:
        irr = irreducible_q(model, qt.detach().cpu().numpy())
        if irr is None and symmetrize is True:
            raise ValueError("symmetrize=True, but the q-set is not closed under the Laue group")
    q_eval = qt if irr is None else qt[torch.as_tensor(irr.index, device=qt.device)]
    if method == "one_phonon":
        mesh = geometry.mesh if isinstance(geometry, InfiniteCrystal) else geometry.repeats
        out = one_phonon(model, phi, q_eval, temperature, mesh=mesh, quantum=quantum, form_factor=form_factor)
    elif isinstance(geometry, PeriodicSupercell):
        out = exact_supercell(model, phi, q_eval, temperature, geometry.repeats, quantum=quantum,
                              form_factor=form_factor)
    else:
        out = exact_infinite(model, phi, q_eval, temperature, geometry.mesh, quantum=quantum, form_factor=form_factor)
    return out if irr is None else out[torch.as_tensor(irr.inverse, device=out.device)]


class TDSModel(torch.nn.Module):
    """A thin Module holding the free constants φ as a parameter; ``forward()`` returns ⟨I(q)⟩.

    The q-set, temperature and settings are fixed at construction; the Laue reduction is computed
    once. ``ifc`` gives the starting values. All other keywords as in :func:`tds_intensity`.

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

    def __init__(self, model: IFCModel, q, temperature: float, ifc, dtype=torch.float64, device=None, **settings):
        super().__init__()
        self.ifc_model = model
        self.temperature = float(temperature)
        self.settings = settings
        self.phi = torch.nn.Parameter(model.vector(ifc, dtype=dtype, device=device).clone())
        self.register_buffer("q", _as_q(q, dtype, device))
        irr = None
        if settings.get("method", "exact") != "sampled" and settings.get("symmetrize", "auto"):
            irr = irreducible_q(model, self.q.cpu().numpy())
        self._irreducible = irr

    @property
    def names(self) -> tuple[str, ...]:
        return self.ifc_model.names

    def forward(self) -> torch.Tensor:
        settings = dict(self.settings)
        settings.setdefault("irreducible_set", self._irreducible)
        if settings.get("method", "exact") == "sampled":
            settings.pop("irreducible_set")
        return tds_intensity(self.ifc_model, self.phi, self.q, self.temperature, **settings)
