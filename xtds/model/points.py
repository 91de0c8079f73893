"""Observables at scattered points: measured phonon frequencies, single-crystal S(Q, E) points and
the powder X-ray TDS I(|Q|).

Each is an :class:`~xtds.model.observable.Observable` (deterministic), so each becomes a
:class:`~xtds.fitting.problem.Problem` and fits alone or jointly with TDS volumes and powder
spectra, one set of force constants shared (:func:`xtds.fitting.fit_problems`):

- :class:`DispersionPoints`: phonon frequencies (THz) at wave vectors q and branch indices, the
  classic Born–von Kármán fit to triple-axis or IXS dispersion data (``loss="chi2"`` with the
  measured σ and ``background=False``: the frequencies are absolute);
- :class:`SQEPoints`: the coherent one-phonon neutron S(Q, E) (or χ'') of a single crystal at
  points (Q, E), such as constant-Q or constant-E scans, with the energy resolution of the
  instrument (:func:`xtds.model.neutron.coherent_sqe`);
- :class:`PowderIntensity`: the energy-integrated X-ray TDS of a powder, I(|Q|), the orientation
  average of a single-crystal :class:`~xtds.model.observable.TDSIntensity` over each |Q| sphere
  (:func:`xtds.model.powder.sphere_rule`, reduced by the Laue group), which total-scattering
  (PDF) beamlines measure between the Bragg rings.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds import dynamics
from xtds.errors import check_temperature

__all__ = ["DispersionPoints", "SQEPoints", "PowderIntensity"]


def _q_array(q, what: str) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if q.ndim != 2 or q.shape[1] != 3 or len(q) == 0:
        raise ValueError(f"{what} must be Cartesian wave vectors of shape (P, 3) in Å⁻¹, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{what} hold NaN or inf")
    return q


class DispersionPoints:
    """Phonon frequencies (THz) of branch ``branch[p]`` (0 = lowest, modes sorted by frequency) at
    Cartesian wave vectors ``q[p]`` (Å⁻¹): shape (P,). Differentiable (eigenvalue derivatives;
    at a degenerate level the branches share a value, whatever their split)."""

    stochastic = False

    def __init__(self, model, q, branch, dtype=torch.float64, device=None):
        self.model = model
        self.q = _q_array(q, "q")
        self.branch = np.asarray(branch, dtype=int).reshape(-1)
        m = 3 * model.primitive.n_atoms
        if self.branch.shape != (len(self.q),):
            raise ValueError(f"give one branch index per q-point: {len(self.branch)} for {len(self.q)}")
        if np.any((self.branch < 0) | (self.branch >= m)):
            raise ValueError(f"branch indices run from 0 to {m - 1} (3 × atoms of the primitive cell), got "
                             f"{sorted(set(self.branch[(self.branch < 0) | (self.branch >= m)].tolist()))}")
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return len(self.q)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        k = torch.as_tensor(self.q, dtype=phi.dtype, device=phi.device)
        lam = torch.linalg.eigvalsh(dynamics.dynamical_matrix(self.model, phi, k))
        lam = lam[torch.arange(len(k), device=phi.device), torch.as_tensor(self.branch, device=phi.device)]
        return dynamics.eigenvalues_to_thz(lam)

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        return self.q


class SQEPoints:
    """The coherent one-phonon S(Q, E) (mbarn/meV per atom; ``kind="chi"``: χ''(Q, E)) of a single
    crystal at points (``q[p]`` Cartesian Å⁻¹, ``energy[p]`` meV): shape (P,). ``resolution``: the
    energy FWHM (meV, a number, polynomial or callable such as
    :func:`xtds.model.neutron.chopper_resolution`). Points sharing a Q (a constant-Q scan) share one
    eigen-decomposition: the spectra are computed on the distinct Q × distinct E and gathered."""

    stochastic = False

    def __init__(self, model, q, energy, temperature: float, resolution=1.0, kind: str = "sqe", dw=None,
                 dtype=torch.float64, device=None):
        from xtds.model.neutron import as_resolution

        self.model, self.temperature = model, check_temperature(temperature)
        self.q = _q_array(q, "q")
        self.energy = np.asarray(energy, dtype=float).reshape(-1)
        if self.energy.shape != (len(self.q),) or not np.all(np.isfinite(self.energy)):
            raise ValueError(f"give one finite energy transfer (meV) per q-point: shape {self.energy.shape} for "
                             f"{len(self.q)} points")
        if kind not in ("sqe", "chi"):
            raise ValueError(f"kind must be 'sqe' or 'chi', got {kind!r}")
        as_resolution(resolution)  # validates
        self.kind, self.resolution, self.dw = kind, resolution, dw
        self.point_energy = self.energy
        self._qu, self._qi = np.unique(self.q.round(12), axis=0, return_inverse=True)
        self._eu, self._ei = np.unique(self.energy, return_inverse=True)
        self._qi, self._ei = self._qi.reshape(-1), self._ei.reshape(-1)
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return len(self.q)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        from xtds.model.neutron import chi_from_sqe, coherent_sqe

        S = coherent_sqe(self.model, phi, self._qu, self._eu, self.temperature, resolution=self.resolution,
                         dw=self.dw)  # (Qu, Eu)
        if self.kind == "chi":
            S = chi_from_sqe(S, self._eu, self.temperature)
        return S[torch.as_tensor(self._qi, device=S.device), torch.as_tensor(self._ei, device=S.device)]

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def stability_k(self) -> np.ndarray:
        return self._qu


class PowderIntensity:
    """Powder X-ray TDS I(|Q|) at ``qnorm`` (Nq,) Å⁻¹: the orientation average of
    :class:`~xtds.model.observable.TDSIntensity` (``method``, ``geometry`` and the rest passed on;
    default the exact all-order model of an infinite crystal) on a product rule of ``order`` polar
    nodes (:func:`xtds.model.powder.sphere_rule`, Laue-reduced), in electrons² per primitive cell:
    shape (Nq,). The single-crystal model diverges at Bragg peaks: keep each |Q| away from the
    |G| of the rings (the average over a sphere that touches a G is not defined). The quadrature's
    accuracy: compare two orders (the intensity near a ring is sharp on the sphere)."""

    stochastic = False

    def __init__(self, model, qnorm, temperature: float, order: int = 24, method: str = "exact", geometry=None,
                 **tds_options):
        from xtds.model.geometry import InfiniteCrystal
        from xtds.model.observable import TDSIntensity
        from xtds.model.powder import sphere_rule

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


def _bragg_norms(model, qmax: float) -> np.ndarray:
    """|G| (Å⁻¹) of the reciprocal lattice points of the primitive cell up to qmax + 0.1 Å⁻¹."""
    P = model.primitive
    reach = np.ceil((qmax + 0.1) * np.linalg.norm(np.asarray(P.lattice), axis=1) / (2 * np.pi)).astype(int)
    n = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    G = np.linalg.norm(n @ np.asarray(P.reciprocal), axis=1)
    return G[G <= qmax + 0.1]
