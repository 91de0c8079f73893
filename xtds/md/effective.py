"""Covariance-defined effective harmonic constants of MD frames.

A Gaussian (harmonic) model of a crystal whose displacements have the covariance C(k) reproduces
that covariance when its Fourier-transformed Hessian is H(k) = k_BT C(k)⁻¹ (classical statistics).
:func:`effective_constants` measures C(k) at the supercell's commensurate wave vectors (Γ, the
rigid translation, left out),

    C_ss'(k) = ⟨ũ_s(k) ũ_s'(k)†⟩,   ũ_s(k) = N_c^{-1/2} Σ_R u_{sR} e^{−ik·x_{sR}},

in the phase convention of :mod:`xtds.lattice.dynamics`, and projects k_BT C(k)⁻¹ on the model's
symmetry-reduced basis by linear least squares over those k (H(k) is linear in φ). C(k) is the
Fourier sum of the translation-averaged frame covariance (:func:`frame_covariance`, one FFT over
the cells). The frames' convergence is reported as halves fitted apart (several splits on request).
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
        Shape (n_free,), eV/Å²: the split-half standard error of ``phi``, |φ₁ − φ₂| / 2 (root mean
        square over the splits where :func:`effective_constants` was given several).
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
    return _k_covariance(traj, model, frame_covariance(traj))


def _k_covariance(traj: Trajectory, model: IFCModel, Cf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C_ss'(k) = Σ_Δ ⟨u_{s0} u_{s'Δ}ᵀ⟩ e^{ik·(x_{s'Δ} − x_{s0})} from the translation-averaged frame
    covariance ``Cf`` (:func:`frame_covariance`'s layout), averaged over the conventional atoms of
    each primitive site: a Fourier sum over the pairs of the supercell, not over the frames."""
    prim = model.primitive
    ideal = traj.ideal_positions
    n_conv = traj.crystal.n_atoms
    site = supercell_sites(prim, traj.supercell_lattice, ideal)[:n_conv]  # site of each home-cell atom
    k = commensurate_k(prim.lattice, traj.supercell_lattice)
    frac = k @ np.asarray(prim.lattice).T / (2 * np.pi)
    k = k[~np.all(np.abs(frac - np.round(frac)) < 1e-8, axis=1)]
    x = ideal.reshape(*traj.repeats, n_conv, 3).transpose(3, 0, 1, 2, 4).reshape(n_conv, -1, 3)  # (c', r, 3)
    d = x[None, :, :, :] - x[:, None, :1, :]  # x_{c',r} − x_{c,0}: (c, c', r, 3)
    phase = np.exp(1j * np.einsum("kx,cdrx->kcdr", k, d))
    Cr = Cf.reshape(n_conv, n_conv, -1, 3, 3)
    n = prim.n_atoms
    C = np.zeros((len(k), 3 * n, 3 * n), dtype=complex)
    for s in range(n):
        home = np.flatnonzero(site == s)
        for t in range(n):
            other = np.flatnonzero(site == t)
            block = np.einsum("kcdr,cdrab->kab", phase[:, home][:, :, other], Cr[home][:, other], optimize=True)
            C[:, 3 * s : 3 * s + 3, 3 * t : 3 * t + 3] = block / len(home)
    return k, 0.5 * (C + C.conj().transpose(0, 2, 1))


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


def _match_covariances(model: IFCModel, traj: Trajectory, Cf: np.ndarray, phi0: np.ndarray, iterations: int = 8):
    """φ whose classical pair covariances best match those of the frame covariance ``Cf``
    (Gauss–Newton), and the relative residual ‖B(φ) − B_MD‖/‖B_MD‖."""
    from xtds.thermal.covariance import lattice_covariance
    from xtds.thermal.geometry import PeriodicSupercell

    target = torch.as_tensor(_pair_differences(Cf)).reshape(-1)
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


def effective_constants(traj: Trajectory, model: IFCModel, metric: str = "force",
                        splits: int = 1) -> EffectiveConstants:
    """The effective harmonic constants of a trajectory on ``model``'s basis, with split halves.

    ``model`` must be of the trajectory's crystal (its conventional cell as the trajectory's).
    ``metric``: ``"force"`` (default) projects k_BT C(k)⁻¹ on the basis by linear least squares over
    the commensurate k; ``"covariance"`` finds instead the constants whose classical covariance
    reproduces every pair's ⟨ΔuΔuᵀ⟩ of the frames (Gauss–Newton from the ``"force"`` result):
    what a Gaussian (harmonic) TDS model of the crystal depends on. The two differ where the
    basis cannot hold k_BT C(k)⁻¹ (its range, the frames' noise); ``residual`` says how nearly it
    does.

    ``splits``: how many ways the frames are split in two halves for ``stderr``. One split (the
    default) is the first against the second half, a single difference, whose σ estimate is itself
    uncertain by about 75 %; split s = 2, 3, … alternates blocks of F/2^s frames between the halves,
    and ``stderr`` is the root mean square of the splits' |φ₁ − φ₂|/2 (keep F/2^splits frames well
    above the correlation time of the frames). ``halves`` are always the first split's.
    """
    if metric not in ("force", "covariance"):
        raise ValueError(f"metric must be 'force' or 'covariance', got {metric!r}")
    splits = int(splits)
    if splits < 1 or traj.n_frames < 2**splits:
        raise ValueError(f"splits must be ≥ 1 with at least 2^splits frames; got {splits} for {traj.n_frames} frames")

    def one(Cf):
        phi, res = _project(model, *_k_covariance(traj, model, Cf), traj.temperature)
        if metric == "covariance":
            phi, res = _match_covariances(model, traj, Cf, phi)
        return phi, res

    phi, resid = one(frame_covariance(traj))
    n_blocks = 2**splits
    size = traj.n_frames // n_blocks
    blocks = np.stack([frame_covariance(_frames(traj, slice(b * size, (b + 1) * size))) for b in range(n_blocks)])
    diffs, halves = [], None
    for level in range(1, splits + 1):
        group = (np.arange(n_blocks) // (n_blocks >> level)) % 2  # alternating runs of n_blocks/2^level blocks
        pair = np.stack([one(blocks[group == g].mean(0))[0] for g in (0, 1)])
        halves = pair if halves is None else halves
        diffs.append(pair[0] - pair[1])
    stderr = np.sqrt(np.mean(np.square(diffs), axis=0)) / 2
    return EffectiveConstants(phi=phi, halves=halves, stderr=stderr, residual=resid, names=tuple(model.names))


def _frames(traj: Trajectory, frames: slice) -> Trajectory:
    return Trajectory(traj.crystal, traj.repeats, traj.displacements[frames], traj.temperature, dict(traj.meta))
