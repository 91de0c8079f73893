"""Covariance-defined effective harmonic constants of MD frames.

A Gaussian (harmonic) model of a crystal whose displacements have the covariance C(k) reproduces
that covariance when its Fourier-transformed Hessian is H(k) = k_BT C(k)⁻¹ (classical statistics).
:func:`effective_constants` measures C(k) at the supercell's commensurate wave vectors (Γ, the
rigid translation, left out),

    C_ss'(k) = ⟨ũ_s(k) ũ_s'(k)†⟩,   ũ_s(k) = N_c^{-1/2} Σ_R u_{sR} e^{−ik·x_{sR}},

in the phase convention of :mod:`xtds.lattice.dynamics`, and projects k_BT C(k)⁻¹ on the model's
symmetry-reduced basis by linear least squares over those k (H(k) is linear in φ). The frames'
convergence is reported as two halves fitted apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.lattice.dynamics import force_constant_matrix
from xtds.lattice.ifc import IFCModel
from xtds.lattice.kmesh import commensurate_k
from xtds.lattice.supercell import supercell_sites
from xtds.md.trajectory import Trajectory
from xtds.units import KB_EV_PER_K

__all__ = ["EffectiveConstants", "effective_constants", "displacement_covariance", "pair_covariances"]


@dataclass(frozen=True)
class EffectiveConstants:
    """The projection of k_BT C(k)⁻¹ on a model's basis.

    Attributes
    ----------
    phi
        Shape (n_free,), eV/Å²: from every frame.
    halves
        Shape (2, n_free), eV/Å²: from the first and the second half of the frames.
    stderr
        Shape (n_free,), eV/Å²: |φ₁ − φ₂| / 2, the split-half standard error of ``phi``.
    residual
        ‖k_BT C⁻¹ − H(φ)‖ / ‖k_BT C⁻¹‖ over the k-points: what the model's range leaves out.
    names
        The model's constant names.
    """

    phi: np.ndarray
    halves: np.ndarray
    stderr: np.ndarray
    residual: float
    names: tuple[str, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, map(float, self.phi), strict=True))


def displacement_covariance(traj: Trajectory, model: IFCModel) -> tuple[np.ndarray, np.ndarray]:
    """(k (K, 3) Å⁻¹, C(k) (K, 3n, 3n) complex Å²) of the frames at the supercell's commensurate wave
    vectors other than Γ, for the atoms of the model's primitive cell."""
    prim = model.primitive
    ideal = traj.ideal_positions
    site = supercell_sites(prim, traj.supercell_lattice, ideal)
    k = commensurate_k(prim.lattice, traj.supercell_lattice)
    frac = k @ np.asarray(prim.lattice).T / (2 * np.pi)
    k = k[~np.all(np.abs(frac - np.round(frac)) < 1e-8, axis=1)]
    n = prim.n_atoms
    n_cells = len(ideal) // n
    U = np.zeros((traj.n_frames, len(k), 3 * n), dtype=complex)
    for s in range(n):
        m = site == s
        phase = np.exp(-1j * ideal[m] @ k.T) / np.sqrt(n_cells)  # (N_s, K)
        U[:, :, 3 * s : 3 * s + 3] = np.einsum("fja,jk->fka", traj.displacements[:, m], phase)
    C = np.einsum("fki,fkj->kij", U, U.conj()) / traj.n_frames
    return k, C


def _project(model: IFCModel, k: np.ndarray, C: np.ndarray, temperature: float) -> tuple[np.ndarray, float]:
    target = KB_EV_PER_K * temperature * np.linalg.inv(C)
    target = 0.5 * (target + target.conj().transpose(0, 2, 1))
    eye = torch.eye(model.n_free, dtype=torch.float64)
    cols = [force_constant_matrix(model, eye[i], k).numpy().reshape(len(k), -1) for i in range(model.n_free)]
    A = np.stack(cols, -1).reshape(-1, model.n_free)  # (K·9n², n_free), complex
    A = np.concatenate([A.real, A.imag])
    b = target.reshape(-1)
    b = np.concatenate([b.real, b.imag])
    phi = np.linalg.lstsq(A, b, rcond=None)[0]
    resid = float(np.linalg.norm(A @ phi - b) / np.linalg.norm(b))
    return phi, resid


def frame_covariance(traj: Trajectory) -> np.ndarray:
    """⟨u_{c,0} u_{c',r}ᵀ⟩ of the frames, averaged over the supercell's translations (FFT over the
    cells): shape (n, n, L1, L2, L3, 3, 3) Å², the layout of
    :func:`xtds.thermal.covariance.lattice_covariance`."""
    L = traj.repeats
    n = traj.crystal.n_atoms
    U = traj.displacements.reshape(traj.n_frames, *L, n, 3)
    Uk = np.fft.fftn(U, axes=(1, 2, 3))
    # C[c, c', r] = ⟨u_{c,0} u_{c',r}ᵀ⟩ = IFFT_r ⟨Ũ_c(k)* Ũ_c'(k)ᵀ⟩ / N_c
    S = np.einsum("fxyzca,fxyzdb->xyzcadb", Uk.conj(), Uk, optimize=True) / traj.n_frames
    C = np.fft.ifftn(S, axes=(0, 1, 2)).real / np.prod(L)
    return C.transpose(3, 5, 0, 1, 2, 4, 6)  # (c, c', r1, r2, r3, a, b)


def pair_covariances(traj: Trajectory) -> np.ndarray:
    """⟨(u_j' − u_j)(u_j' − u_j)ᵀ⟩ of the frames for every pair, averaged over the supercell's
    translations: shape (n, n, L1, L2, L3, 3, 3) Å², for atom c of the home cell and atom c' of
    cell r (the layout of :func:`xtds.thermal.covariance.lattice_covariance`)."""
    return _pair_differences(frame_covariance(traj))


def _pair_differences(C):
    """B(c, c', r) = C(c,c,0) + C(c',c',0) − C(c,c',r) − C(c,c',r)ᵀ from the covariances C."""
    lib = torch if isinstance(C, torch.Tensor) else np
    n = C.shape[0]
    self_c = lib.stack([C[c, c, 0, 0, 0] for c in range(n)])  # (n, 3, 3)
    sw = (lambda x: x.transpose(-1, -2)) if lib is torch else (lambda x: np.swapaxes(x, -1, -2))
    return (self_c[:, None, None, None, None] + self_c[None, :, None, None, None] - C - sw(C))


def _match_covariances(model: IFCModel, traj: Trajectory, phi0: np.ndarray, iterations: int = 8):
    """φ whose classical pair covariances best match the frames' (Gauss–Newton), and the relative
    residual ‖B(φ) − B_MD‖/‖B_MD‖."""
    from xtds.thermal.covariance import lattice_covariance
    from xtds.thermal.geometry import PeriodicSupercell

    target = torch.as_tensor(pair_covariances(traj)).reshape(-1)
    geom = PeriodicSupercell(traj.repeats)

    def resid(p):
        return _pair_differences(lattice_covariance(model, p, geom, traj.temperature)).reshape(-1) - target

    phi = torch.as_tensor(phi0, dtype=torch.float64)
    for _ in range(iterations):
        r = resid(phi)
        J = torch.func.jacfwd(resid)(phi)
        step = torch.linalg.lstsq(J, -r[:, None]).solution[:, 0]
        phi = phi + step
        if float(step.abs().max()) < 1e-9 * float(phi.abs().max()):
            break
    return phi.numpy(), float(resid(phi).norm() / target.norm())


def effective_constants(traj: Trajectory, model: IFCModel, metric: str = "force") -> EffectiveConstants:
    """The effective harmonic constants of a trajectory on ``model``'s basis, with split halves.

    ``model`` must be of the trajectory's crystal (its conventional cell as the trajectory's).
    ``metric``: ``"force"`` (default) projects k_BT C(k)⁻¹ on the basis by linear least squares over
    the commensurate k; ``"covariance"`` finds instead the constants whose classical covariance
    reproduces every pair's ⟨ΔuΔuᵀ⟩ of the frames (Gauss–Newton from the ``"force"`` result):
    what a Gaussian (harmonic) TDS model of the crystal depends on. The two differ where the
    basis cannot hold k_BT C(k)⁻¹ (its range, the frames' noise); ``residual`` says how nearly it
    does.
    """
    if metric not in ("force", "covariance"):
        raise ValueError(f"metric must be 'force' or 'covariance', got {metric!r}")

    def one(t):
        phi, res = _project(model, *displacement_covariance(t, model), t.temperature)
        if metric == "covariance":
            phi, res = _match_covariances(model, t, phi)
        return phi, res

    phi, resid = one(traj)
    halves = np.stack([one(h)[0] for h in traj.halves()])
    return EffectiveConstants(phi=phi, halves=halves, stderr=np.abs(halves[0] - halves[1]) / 2, residual=resid,
                              names=tuple(model.names))
