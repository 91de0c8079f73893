"""Backgrounds and the overall scale: the nuisance terms of a problem's model.

A measured diffuse volume is the TDS times an unknown scale, plus scattering that is not TDS. The
model of a point at |q| is

    I_model = s · (I_TDS + a_C · C(|q|)) + b + Σ_{n=1..N} c_n T_n(x),

- s: the overall scale (fitted as log s);
- C(|q|): the Compton (incoherent) scattering of the cell, Σ_atoms S_Z(|q|/4π) in electrons² per
  primitive cell, the same units as I_TDS, from xraylib's incoherent scattering functions
  (Hubbell et al. 1975, as tabulated by xraylib's ``SF_Compt``), optionally times the Breit–Dirac
  recoil factor (E'/E)² of an energy-integrating detector; a_C is its free amplitude (1 when the
  data are on the absolute scale of the model and nothing else attenuates the Compton part);
- b: a constant (data units);
- T_n(x): Chebyshev polynomials of x = |q| mapped onto [−1, 1] over the problem's |q| range: a
  smooth background of low order N (air, fluorescence, the tails of a broad amorphous signal);
- for a spectrum (an observable with ``point_energy``, e.g. a powder neutron spectrum), also
  Σ_{n=1..N_E} e_n T_n(y), y the energy transfer mapped onto [−1, 1]: an energy-dependent
  background (multiple scattering, the sample environment, what a subtraction left);
- for a spectrum of a direct-geometry spectrometer, also Σ_{i=1..N_θ} g_i T_i(z) +
  Σ_{i≤N_θ, j≤N_θE} h_ij T_i(z) T_j(y), z the scattering angle 2θ of each (|Q|, E) point
  (:func:`xtds.observables.neutron.sqe.scattering_angle`, from the incident energy) mapped onto
  [−1, 1]: a background that depends on the detector (sample environment and can scattering seen at
  each angle, detector efficiency) and that an energy-only subtraction leaves behind. It shows as
  bands along the coverage edges, which are curves of constant 2θ.

Which to use: a constant always (detector offset, fluorescence); Compton at energies and |q| where
it is comparable to the TDS (high |q|, light elements: it rises towards Z per atom while the TDS
falls with f²); a polynomial only when the diagnostics (:func:`xtds.fitting.diagnostics`) still
show structure in |q| after those, and of the lowest order that removes it, because a smooth
background trades off against the Debye–Waller factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.observables.scattering import compton

__all__ = ["Background", "as_background"]


@dataclass(frozen=True)
class Background:
    """The nuisance terms of a problem besides the scale: which are fitted.

    Parameters
    ----------
    constant
        A constant b (data units).
    compton
        The Compton scattering of the cell with a free amplitude a_C (see the module docstring).
    polynomial
        N: Chebyshev terms T_1…T_N in |q| (data units); 0 for none.
    energy_keV
        Incident energy for the Breit–Dirac factor of the Compton term (None: left out).
    energy
        N_E: Chebyshev terms T_1…T_N_E in the energy transfer (spectra; data units); 0 for none.
    angle
        N_θ: Chebyshev terms T_1…T_N_θ in the scattering angle 2θ (direct-geometry spectra; needs
        ``incident_energy``); 0 for none.
    angle_energy
        N_θE: products T_i(2θ) T_j(E), i = 1…N_θ, j = 1…N_θE (the angle background's change with
        energy transfer); 0 for none.
    incident_energy
        Eᵢ (meV) of the spectrometer, for 2θ of each point (the angle terms).
    """

    constant: bool = True
    compton: bool = False
    polynomial: int = 0
    energy_keV: float | None = None
    energy: int = 0
    angle: int = 0
    angle_energy: int = 0
    incident_energy: float | None = None

    def __post_init__(self):
        for what in ("polynomial", "energy", "angle", "angle_energy"):
            v = getattr(self, what)
            if int(v) != v or v < 0:
                raise ValueError(f"{what} must be a non-negative order, got {v!r}")
        if self.angle_energy and not self.angle:
            raise ValueError("angle_energy multiplies the angle terms: give angle ≥ 1 as well")
        if self.angle and not (self.incident_energy is not None and self.incident_energy > 0):
            raise ValueError("an angle background needs the spectrometer's incident energy: "
                             "Background(angle=N, incident_energy=Ei_meV)")

    @property
    def names(self) -> list[str]:
        """The nuisance parameters after log_scale, in order."""
        return (["background"] if self.constant else []) + (["compton_amplitude"] if self.compton else []) + [
            f"background_T{n}" for n in range(1, int(self.polynomial) + 1)] + [
            f"background_E{n}" for n in range(1, int(self.energy) + 1)] + [
            f"background_A{n}" for n in range(1, int(self.angle) + 1)] + [
            f"background_A{i}E{j}" for i in range(1, int(self.angle) + 1) for j in range(1, int(self.angle_energy) + 1)]

    @property
    def needs_q(self) -> bool:
        return bool(self.compton or self.polynomial)

    def basis(self, model, q: np.ndarray | None, energy: np.ndarray | None = None,
              n: int | None = None, qnorm: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """(C(|q|) or None, the additive columns (P, n_add): ones, T_n(|q|), T_n(E), T_i(2θ) and
        T_i(2θ) T_j(E)) at Cartesian q (P, 3) or their norms ``qnorm`` (P,) 1/Å, and energy transfers
        ``energy`` (P,) meV (each needed only by the terms using it)."""
        qn = np.asarray(qnorm, dtype=float) if qnorm is not None else (
            None if q is None else np.linalg.norm(np.asarray(q, dtype=float).reshape(-1, 3), axis=1))
        size = len(qn) if qn is not None else (len(energy) if energy is not None else int(n))
        C = compton(model.primitive.species, qn, self.energy_keV) if self.compton else None
        cols = [np.ones(size)] if self.constant else []
        for order, x in ((self.polynomial, qn), (self.energy, energy)):
            if order:
                cols += list(_chebyshev(np.asarray(x, dtype=float), order).T)
        if self.angle:
            from xtds.observables.neutron.sqe import scattering_angle

            Ta = _chebyshev(scattering_angle(qn, energy, self.incident_energy), self.angle)
            cols += list(Ta.T)
            if self.angle_energy:
                Te = _chebyshev(np.asarray(energy, dtype=float), self.angle_energy)
                cols += list((Ta[:, :, None] * Te[:, None, :]).reshape(size, -1).T)
        return C, np.stack(cols, 1) if cols else np.zeros((size, 0))

    def apply(self, I: torch.Tensor, eta: torch.Tensor, C: torch.Tensor | None, A: torch.Tensor) -> torch.Tensor:
        """s (I + a_C C) + b + Σ c_n T_n + Σ e_n T_n(E) for eta = (log s, [b], [a_C], c_1…c_N, e_1…);
        ``C`` and ``A`` from :meth:`basis` (as tensors)."""
        model = torch.exp(eta[0]) * (I if C is None else I + eta[1 + int(self.constant)] * C)
        if A.shape[1] == 0:
            return model
        b = eta[1:2] if self.constant else eta[:0]
        c = eta[1 + int(self.constant) + int(self.compton) :]
        return model + A @ torch.cat([b, c])


def _chebyshev(x: np.ndarray, order: int) -> np.ndarray:
    """T_1…T_order of x mapped onto [−1, 1] over its range, (P, order)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    y = 2 * (x - lo) / (hi - lo) - 1 if hi > lo else np.zeros_like(x)
    return np.polynomial.chebyshev.chebvander(y, int(order))[:, 1:]


def as_background(background, loss: str) -> Background | None:
    """The :class:`Background` of a problem's ``background`` setting (None: scale-free, no terms).

    None: the loss's default (none for ``var_log``, a constant for ``chi2``); False: none; True or
    ``"constant"``: a constant; ``"compton"``: Compton and a constant; ``"polynomial"``: a constant
    and a quadratic in |q|; or a :class:`Background`.
    """
    if isinstance(background, Background):
        return background
    if background is None:
        background = loss in ("chi2", "poisson")
    if background is False:
        return None
    if background is True or background == "constant":
        return Background()
    if background == "compton":
        return Background(compton=True)
    if background == "polynomial":
        return Background(polynomial=2)
    raise ValueError(f"background must be None, True/False, 'constant', 'compton', 'polynomial' or a "
                     f"xtds.Background(...), got {background!r}")


