"""Powder neutron spectra: the single-crystal S(Q, E) averaged over the orientations of |Q|.

    S(|Q|, E) = (1/4π) ∮ S(|Q| n̂, E) dn̂ ≈ Σ_d w_d S(|Q| n̂_d, E)

on a rule of :mod:`xtds.observables.sphere`: a Lebedev rule (scipy.integrate.lebedev_rule; exact for
spherical harmonics up to its order), reduced by the crystal's Laue group: S(g Q) = S(Q) for every
operation g, so directions equivalent under the group share one evaluation and their weights add (48
→ about 1/48 of the m-3m directions). The accuracy is controlled by the order and reported by
:func:`~xtds.observables.sphere.powder_average`'s ``check``: the same average on a finer rule, and
the largest difference relative to the largest value. A powder spectrum at fine energy resolution is
sharp on the sphere (the band where the dispersion surface meets E), which a Lebedev rule resolves
poorly (Al, 1.5 meV FWHM: 5–40 % off at order 131, measured); the default is therefore a
Gauss–Legendre × azimuth product rule whose arc spacing is fixed on every sphere (0.07 Å⁻¹: 4e-4 of
the peak at |Q| = 3.7 Å⁻¹, 1.6e-2 at 5.8 Å⁻¹ with 160 polar nodes, measured). It costs thousands of
evaluations per |Q|; whole spectra take the fast route of :func:`powder_sqe_mesh`, the modes of a
k-mesh over all Q = k + G binned in |Q| (one eigen-decomposition per k, one point per orbit of the
Laue group, :func:`powder_points`), which :class:`PowderSpectrum` fits. The same machinery averages
the coherent neutron S(Q, E) (:func:`powder_sqe`) and the X-ray TDS intensity of any single-crystal
observable (:mod:`xtds.observables.tds.powder`: the energy-integrated I(|Q|) that total-scattering
beamlines measure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.lattice.laue import LaueGroup
from xtds.observables.base import Observable
from xtds.observables.sphere import powder_average
from xtds.thermal.spectral import BinnedSpectral

__all__ = ["powder_sqe", "powder_sqe_mesh", "PowderSpectrum", "PowderPoints", "powder_points",
           "adaptive_mesh_widths", "ADAPTIVE"]

def powder_sqe(model, phi, qnorm, energies, temperature: float, resolution=1.0, order="auto",
               dw=None, scattering_lengths=None, quantum: bool = True, check: bool = False):
    """Coherent one-phonon powder S(|Q|, E) (mbarn/meV per atom), shape (Nq, E): the orientation
    average of :func:`xtds.observables.neutron.sqe.coherent_sqe` over each |Q| sphere, Laue-reduced;
    differentiable in ``phi``. The Debye–Waller matrices are computed once (``dw`` as there)."""
    from xtds.observables.neutron.sqe import coherent_sqe
    from xtds.thermal.debye_waller import resolve_dw

    dw = resolve_dw(model, phi, temperature, dw, quantum)
    return powder_average(lambda q: coherent_sqe(model, phi, q, energies, temperature, resolution=resolution, dw=dw,
                                                 scattering_lengths=scattering_lengths, quantum=quantum),
                          qnorm, order=order, crystal=model.crystal, check=check)


@dataclass(frozen=True, eq=False)
class PowderPoints:
    """The scattering vectors of a k-mesh powder average (:func:`powder_points`), fixed for a crystal,
    |Q| bins and mesh: reused by every evaluation of a fit.

    Attributes: ``q`` (P, 3) Cartesian Å⁻¹, one per orbit of the Laue group; ``weight`` (P,) the
    orbit's size (the points it stands for); ``k`` (K, 3) Å⁻¹ the distinct reduced wave vectors and
    ``kidx`` (P,) which one each Q is (Q = k + G, ``g`` (P, 3) = G); ``bins`` (P,) the |Q| bin;
    ``volume`` the Q-space volume of one point (Å⁻³); ``n_full`` the points before the reduction;
    ``symmetry`` how the set was reduced; ``k_irreducible`` one k of each orbit of ``k`` (where
    dynamical stability is checked) and ``korbit`` (K,) the orbit of each k (its row of
    ``k_irreducible``: k-points of one orbit share their eigenvalues). The points are chosen so that
    ``k`` holds about one k per orbit (the zone boundary may give an orbit two)."""

    q: np.ndarray
    weight: np.ndarray
    k: np.ndarray
    kidx: np.ndarray
    g: np.ndarray
    bins: np.ndarray
    n_bins: int
    volume: float
    n_full: int
    symmetry: str
    k_irreducible: np.ndarray
    mesh: int
    korbit: np.ndarray | None = None


#: Scale of the adaptive broadening of :func:`powder_sqe_mesh` (σ = ADAPTIVE × mesh step × |∇ε|).
ADAPTIVE = 0.2

#: Shifts of the Q grid tried by :func:`powder_points`, in half steps per reciprocal axis: the first
#: that the Laue group maps onto itself is used (a shifted grid never meets Γ).
_SHIFTS = ((1, 1, 1), (0, 0, 1), (1, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1))


def _grid_symmetry(crystal, laue: str | None):
    """The Laue group of the powder grid: (its name, its operations R (G, 3, 3) on the grid's
    integer coordinates, the half-step shift σ (3,) that R maps onto itself, a description). A
    group that maps no shifted grid onto itself falls back to the inversion alone."""
    group = LaueGroup.of(laue=laue) if laue is not None else LaueGroup.of(crystal)
    R = group.matrices
    sigma = next((np.array(sh) for sh in _SHIFTS if np.all((np.einsum("gij,j->gi", R, sh) - sh) % 2 == 0)), None)
    if sigma is None:  # keep the inversion (always a symmetry of S(Q, E) with time reversal)
        R = np.stack([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)])
        return group.name, R, np.array([1, 1, 1]), "inversion only (the grid is not invariant under the Laue group)"
    return group.name, R, sigma, f"{group.name} ({len(R)} operations)"


def _shifted_grid(crystal, edges: np.ndarray, M: int, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer coordinates t (N, 3) of every point Q = ((2n + σ)/2M)·B with edges[0] ≤ |Q| <
    edges[-1], and their |Q| (N,) Å⁻¹."""
    B = np.asarray(crystal.reciprocal)
    reach = np.ceil(2 * M * edges[-1] * np.linalg.norm(np.asarray(crystal.lattice), axis=1) / (2 * np.pi)).astype(int)
    axes = [np.arange(-(r // 2) - 1, r // 2 + 2) * 2 + sg for r, sg in zip(reach, sigma, strict=True)]
    t = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    qn = np.linalg.norm(t @ B / (2 * M), axis=1)
    inside = (qn >= edges[0]) & (qn < edges[-1])
    return t[inside], qn[inside]


def _zone_split(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wave vectors f (N, 3) in fractions of the reciprocal axes as k + G: k reduced to the first
    zone and rounded to 1e-10 (so that equal k compare equal, wherever they were computed), G the
    nearest lattice vector."""
    g = np.round(f)
    return np.round(f - g, 10), g


def split_wave_vectors(cell, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q (N, 3) Cartesian Å⁻¹ as k + G of ``cell`` (the primitive cell): k and G (N, 3) in fractions
    of its reciprocal axes (:func:`_zone_split`)."""
    return _zone_split(np.asarray(q) @ np.asarray(cell.lattice).T / (2 * np.pi))


def _reduced_k(t: np.ndarray, to_frac: np.ndarray) -> np.ndarray:
    """The wave vectors (N, 3) of grid points ``t`` in fractions of the primitive reciprocal axes,
    reduced to the first zone (:func:`_zone_split`)."""
    return _zone_split(t @ to_frac)[0]


def _canonical_k_images(t: np.ndarray, R: np.ndarray, to_frac: np.ndarray) -> np.ndarray:
    """For each grid point t (N, 3) of an orbit of the Laue group ``R`` (G, 3, 3) (integer action on
    t), the image g·t whose reduced wave vector is the lexicographically smallest of the orbit's.

    Every image of a point has the same S(Q, E), and the reduced wave vectors of the images of t
    are the whole k-orbit of its k, so points whose k lie on one k-orbit all land on the same
    k: the spectrum then needs the modes of one k per orbit (R instead of K eigen-decompositions,
    e.g. 270 instead of 6,910 for aluminium's 12-step mesh). Point by operation (O(N) memory)."""
    best_t = t.copy()
    best = _reduced_k(t, to_frac)
    for W in R:
        img = t @ W.T
        k = _reduced_k(img, to_frac)
        smaller = (k[:, 0] < best[:, 0]) | ((k[:, 0] == best[:, 0]) & (
            (k[:, 1] < best[:, 1]) | ((k[:, 1] == best[:, 1]) & (k[:, 2] < best[:, 2]))))
        best_t[smaller], best[smaller] = img[smaller], k[smaller]
    return best_t


def powder_points(model, q_edges, mesh: int = 8, laue: str | None = None) -> PowderPoints:
    """The Q-points of the k-mesh powder average with |Q| in the bins ``q_edges`` (Å⁻¹), reduced by
    the Laue group of ``model.crystal`` (or ``laue``).

    The points are the grid Q = ((2n + σ)/2M)·B of the crystal's reciprocal basis B (``mesh`` = M
    steps per reciprocal axis; the reciprocal lattice of the primitive cell is a sublattice, so the
    grid is a k-mesh of M³·N_lat points per zone repeated over all G), with a half-step shift σ the
    group maps onto itself (so that the grid has the full Laue symmetry and never meets Γ). S(Q, E)
    is the same on every image g·Q of a point, so only one point of each orbit is kept, weighted by
    the orbit's size: 1/48 of the work for a cubic crystal. The image kept is the one whose reduced
    wave vector k is its k-orbit's representative (:func:`_canonical_k_images`), so that the points
    need the modes of one k per orbit (aluminium, 12 steps: 270 k-points instead of 6,910). A group
    that does not map the grid onto itself (a non-standard setting) falls back to the inversion
    alone (``symmetry`` says which). The last few sets are kept (:data:`POINT_SETS`): the
    observables of a temperature series on one grid share theirs.
    """
    edges = np.asarray(q_edges, dtype=float)
    M = int(mesh)
    if M < 1 or M != mesh:
        raise ValueError(f"mesh must be a positive number of steps per reciprocal axis, got {mesh!r}")
    c = model.crystal
    key = (np.asarray(c.lattice, float).tobytes(), np.asarray(c.positions, float).tobytes(), tuple(c.species),
           edges.tobytes(), M, laue)
    hit = _POINT_SETS.get(key)
    if hit is None:
        hit = _POINT_SETS[key] = _powder_points(model, edges, M, laue)
        while len(_POINT_SETS) > POINT_SETS:
            _POINT_SETS.pop(next(iter(_POINT_SETS)))
    return hit


#: How many powder point sets :func:`powder_points` keeps (the most recent).
POINT_SETS = 4
_POINT_SETS: dict = {}


def _powder_points(model, edges: np.ndarray, M: int, laue: str | None) -> PowderPoints:
    crystal = model.crystal
    B = np.asarray(crystal.reciprocal)
    group_name, R, sigma, name = _grid_symmetry(crystal, laue)
    t, qn = _shifted_grid(crystal, edges, M, sigma)
    n_full = len(t)
    keys = LaueGroup(group_name, R).orbit_keys(t)
    if keys is None:
        raise ValueError("the powder grid is too large for exact orbit keys: use a smaller mesh or |Q| range")
    own, canon, size = keys
    keep = own == canon
    P = model.primitive
    t = _canonical_k_images(t[keep], R, B @ np.asarray(P.lattice).T / (2 * np.pi * 2 * M))
    weight, qn = size[keep].astype(float), qn[keep]  # |Q| and the orbit's size are the image's too
    q = t @ B / (2 * M)
    kf, gf = split_wave_vectors(P, q)
    kuniq, kidx = np.unique(kf, axis=0, return_inverse=True)
    Bp = np.asarray(P.reciprocal)
    bins = np.searchsorted(edges, qn, side="right") - 1
    volume = abs(np.linalg.det(B)) / M**3
    k = kuniq @ Bp
    # one k of each orbit: where dynamical stability must hold (the eigenvalues are the same on an orbit)
    tk = np.rint(k @ np.linalg.inv(B) * 2 * M).astype(np.int64)
    _, canon_k, _ = LaueGroup(group_name, R).orbit_keys(tk)
    _, first, korbit = np.unique(canon_k, return_index=True, return_inverse=True)
    return PowderPoints(q=q, weight=weight, k=k, kidx=kidx.reshape(-1), g=gf @ Bp, bins=bins,
                        n_bins=len(edges) - 1, volume=volume, n_full=n_full,
                        symmetry=f"{name}, grid shift {tuple(int(x) for x in sigma)}/2", k_irreducible=k[first],
                        mesh=M, korbit=korbit.reshape(-1))


def adaptive_mesh_widths(model, phi, points: PowderPoints, scale: float = ADAPTIVE) -> np.ndarray:
    """σ (K, 3n) meV of every mode at the k-points of ``points``: ``scale`` × mesh step × |∇ε|
    (:func:`xtds.thermal.spectral.mesh_mode_widths`)."""
    from xtds.thermal.spectral import mesh_mode_widths

    return mesh_mode_widths(model, phi, points.k, scale * points.volume ** (1 / 3)).cpu().numpy()


def longitudinal_directions(cell, k: np.ndarray) -> np.ndarray:
    """k̂ (K, 3): the unit vectors of wave vectors ``k`` (K, 3) Cartesian Å⁻¹ after reduction to the
    Wigner–Seitz cell of ``cell``'s reciprocal lattice (the shortest k + G): the direction along
    which a mode of k is longitudinal."""
    B = np.asarray(cell.reciprocal, dtype=float)
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T @ B  # (27, 3)
    k = np.asarray(k, dtype=float)
    for _ in range(3):  # a few passes reach the shortest image for any reduced k
        cand = k[:, None, :] + shifts[None]
        k = cand[np.arange(len(k)), np.argmin((cand**2).sum(-1), axis=1)]
    norm = np.linalg.norm(k, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("a wave vector at Γ has no longitudinal direction")
    return k / norm


def powder_sqe_mesh(model, phi, q_edges, energies, temperature: float, resolution=1.0, mesh=8, dw=None,
                    scattering_lengths=None, quantum: bool = True, points: PowderPoints | None = None,
                    laue: str | None = None, widths=ADAPTIVE, longitudinal: bool = False) -> torch.Tensor:
    """Coherent one-phonon powder S(|Q|, E) (mbarn/meV per atom) averaged over |Q| bins, shape
    (B, E) for bin edges ``q_edges`` (B + 1,) Å⁻¹: the modes of a k-mesh projected on every
    Q = k + G with |Q| in a bin (the eigenvectors at k + G are those at k with the phases
    e^{−iG·τ_s}), each Q standing for its volume of Q-space: the exact shell average of each bin as
    the mesh grows (compare two meshes for its accuracy). The Q-points are those of
    :func:`powder_points` (``mesh`` steps per reciprocal axis of ``model.crystal``, reduced by the
    Laue group; pass ``points`` to reuse them). Each mode is broadened, besides the resolution, by
    the spread of its energy over its mesh cell (adaptive broadening), which makes a coarse mesh
    converge: ``widths`` a number a (σ = a × step × |∇ε| at ``phi``, :func:`adaptive_mesh_widths`;
    derivatives then hold these widths fixed, so they are not those of finite differences), an
    array (K, 3n) of σ in meV made once by :func:`adaptive_mesh_widths` at reference constants (for
    gradients: the model is then one exactly differentiable function of φ, as
    :class:`PowderSpectrum` uses it), or None/0 (none). ``longitudinal=True``: shape (2, B, E), the
    spectrum and its longitudinal modes' share, made with Q replaced by its projection (Q·k̂)k̂ on
    each point's reduced wave vector (:func:`longitudinal_directions`; branch families of
    :mod:`xtds.observables.neutron.linewidth`), both from one eigen-decomposition and one set of
    mode weights f(λ) (the two sets of vectors are binned as 2B bins).
    Resolution, ``dw`` and the rest as
    :func:`xtds.observables.neutron.sqe.coherent_sqe`; differentiable in ``phi`` (forward and reverse mode)."""
    from xtds.errors import check_temperature
    from xtds.lattice import dynamics
    from xtds.observables.neutron.sqe import MBARN_PER_FM2, mode_weight
    from xtds.observables.scattering import scattering_lengths as lengths_of
    from xtds.thermal.debye_waller import resolve_dw

    T = check_temperature(temperature)
    edges = np.asarray(q_edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0) or edges[0] < 0:
        raise ValueError("q_edges must be increasing, non-negative |Q| bin edges (Å⁻¹), at least two")
    pts = powder_points(model, edges, mesh, laue) if points is None else points
    if pts.n_bins != len(edges) - 1:
        raise ValueError(f"the points were made for {pts.n_bins} |Q| bins, not {len(edges) - 1}")
    P = model.primitive
    n = P.n_atoms
    C0 = resolve_dw(model, phi, T, dw, quantum)
    b = torch.as_tensor(lengths_of(P.species) if scattering_lengths is None else np.asarray(scattering_lengths, float),
                        dtype=phi.dtype, device=phi.device)
    inv_sqrt_m = dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device).reshape(n, 3)[:, 0]
    tau = np.asarray(P.cartesian_positions)
    Qp = torch.as_tensor(pts.q, dtype=phi.dtype, device=phi.device)
    W = 0.5 * torch.einsum("pa,sab,pb->ps", Qp, C0, Qp)
    # e^{iG·τ_s} and √(orbit size): |c|² then counts every image of the point
    phase = torch.as_tensor(np.exp(1j * (pts.g @ tau.T)) * np.sqrt(pts.weight)[:, None], device=phi.device)
    amp = (b * torch.exp(-W) * inv_sqrt_m).to(phase.dtype) * phase  # (P, n)
    kidx, bins, n_bins = pts.kidx, pts.bins, pts.n_bins
    if longitudinal:  # the projected vectors as points of bins B…2B−1
        khat = torch.as_tensor(longitudinal_directions(P, pts.k)[pts.kidx], dtype=phi.dtype, device=phi.device)
        Qp = torch.cat([Qp, (Qp * khat).sum(1, keepdim=True) * khat])
        amp = torch.cat([amp, amp])
        kidx, bins, n_bins = np.concatenate([kidx, kidx]), np.concatenate([bins, bins + n_bins]), 2 * n_bins
    V = (amp[:, :, None] * Qp[:, None, :].to(phase.dtype)).reshape(len(Qp), 3 * n)
    D = dynamics.dynamical_matrix(model, phi, torch.as_tensor(pts.k, dtype=phi.dtype, device=phi.device))
    if isinstance(widths, np.ndarray | torch.Tensor):
        sigma = torch.as_tensor(np.asarray(widths, dtype=float), dtype=phi.dtype, device=phi.device)
    elif widths:
        sigma = torch.as_tensor(adaptive_mesh_widths(model, phi.detach(), pts, float(widths)), dtype=phi.dtype,
                                device=phi.device)
    else:
        sigma = None
    korbit = None if pts.korbit is None else torch.as_tensor(pts.korbit, device=phi.device)
    out = BinnedSpectral.apply(D, V.to(D.dtype), torch.as_tensor(kidx, device=phi.device),
                               torch.as_tensor(bins, device=phi.device), n_bins,
                               mode_weight(energies, T, resolution), sigma, korbit)
    # the mean over the points of each bin (their count fluctuates about shell volume / point volume
    # from bin to bin: dividing by it, not by the shell's volume, removes that noise)
    count = np.bincount(pts.bins, weights=pts.weight, minlength=pts.n_bins)
    if np.any(count == 0):
        empty = edges[:-1][count == 0]
        raise ValueError(f"{len(empty)} |Q| bins (from {empty.min():.3g} Å⁻¹) hold no point of the {pts.mesh}-step "
                         "mesh: use a finer mesh, or leave the lowest |Q| out of the mask")
    norm = torch.as_tensor(1.0 / count, dtype=phi.dtype, device=phi.device)
    if longitudinal:
        return out.reshape(2, pts.n_bins, -1) * norm[:, None] * (MBARN_PER_FM2 / n)
    return out * norm[:, None] * (MBARN_PER_FM2 / n)


class PowderSpectrum(Observable):
    """A powder neutron spectrum as an observable for the fit: the coherent one-phonon powder
    S(|Q|, E) of :func:`powder_sqe_mesh` (mbarn/meV per atom) or χ''(|Q|, E) (``kind="chi"``) on
    |Q| bins × energies, at the pixels of ``mask`` (E, Q) bool, flattened E-major: shape (P,).

    ``normalize=True`` applies the normalization the ARCS spectra of
    :func:`xtds.datasets.al_arcs` carry, (x − mean)/(max − min) over the valid pixels, which
    removes the overall scale and a constant background (the max and min are those of the model,
    differentiable only almost everywhere: a fit with ``normalize=False`` and a free scale and
    constant, ``Problem(..., background="constant")``, is smooth and fits the same data).
    ``multiphonon``: the orders n ≥ 2 added in the incoherent approximation
    (:func:`xtds.observables.neutron.multiphonon.multiphonon_sqe`, self spectral function on
    ``multiphonon_mesh``, smeared by 1 meV), or () to leave them out. ``q_centers`` (Q,) Å⁻¹ are
    bin centres whose edges are
    halfway between them; ``energies`` (E,) meV; ``resolution`` as
    :func:`xtds.observables.neutron.sqe.coherent_sqe`; ``mesh`` the steps per reciprocal axis of :func:`powder_points`;
    ``adaptive`` the scale of the adaptive broadening (:func:`powder_sqe_mesh`; 0: none), whose
    widths are made at ``reference`` constants or at the first evaluation and then kept;
    ``q_resolution``: FWHM (Å⁻¹) of a Gaussian |Q| resolution applied to the one-phonon term (the
    shell average weighted by Q² over neighbouring bins; bins outside the data's |Q| range are not
    computed, so the kernel is renormalized at the ends), None for none; ``dw_mesh`` the k-mesh of
    the Debye–Waller factor (:func:`xtds.thermal.debye_waller.debye_waller`).

    ``incoherent``: the incoherent scattering of each species (:mod:`xtds.observables.neutron.incoherent`,
    σ_inc from periodictable; a mapping element → barn or an array per atom overrides it; False
    leaves it out): its one-phonon term (:func:`~xtds.observables.neutron.incoherent.incoherent_sqe`:
    every mode of the ``incoherent_mesh`` for every |Q|, adaptive broadening) is added, and the
    multiphonon orders carry b_c² + σ_inc/4π. ``coherent_fraction``: how much of the sample's
    scattering is coherent; without the incoherent terms a mostly incoherent sample warns.

    ``incident_energy`` (meV): the data are the intensity of a direct-geometry spectrometer without
    the kᵢ/k_f correction, so the model carries k_f/kᵢ = √(1 − E/Eᵢ) (None: the data are S(Q, E)
    or χ'', as the shipped spectra).

    Linewidths: with a :class:`~xtds.observables.neutron.linewidth.LinewidthIFC` model the spectrum is
    computed on a fine energy grid around the data's energies and each energy's Lorentzian of
    FWHM Γ(|E|) (its parameters in φ) is applied (:mod:`xtds.observables.neutron.linewidth`); with
    ``Linewidths(branches=True)`` the longitudinal share of the coherent one-phonon term takes Γ_L,
    the rest of it Γ_T, and the incoherent and multiphonon terms their mode mean."""

    stochastic = False

    def __init__(self, model, q_centers, energies, temperature: float, mask=None, resolution=2.0, mesh=12,
                 kind: str = "chi", normalize: bool = True, multiphonon=(2, 3, 4, 5, 6), multiphonon_mesh=8,
                 adaptive: float | None = ADAPTIVE, reference=None, q_resolution: float | None = None,
                 dw_mesh: int = 16, incoherent=True, incoherent_mesh: int = 16, incident_energy: float | None = None,
                 dtype=torch.float64, device=None):
        from xtds.errors import check_temperature

        self.model, self.temperature = model, check_temperature(temperature)
        self.q_centers = np.array(q_centers, dtype=float)
        self.energies = np.array(energies, dtype=float)
        if kind not in ("chi", "sqe"):
            raise ValueError(f"kind must be 'chi' or 'sqe', got {kind!r}")
        self.kind, self.normalize, self.resolution, self.mesh = kind, bool(normalize), resolution, mesh
        self.multiphonon = tuple(int(n) for n in multiphonon) if multiphonon else ()
        if any(n < 2 for n in self.multiphonon):
            raise ValueError(f"multiphonon orders start at 2 (the one-phonon term is always there), got {multiphonon}")
        self.multiphonon_mesh = multiphonon_mesh
        self.adaptive = float(adaptive) if adaptive else 0.0
        self.reference = None if reference is None else model.vector(reference)
        self._widths = None
        self.mask = np.ones((len(self.energies), len(self.q_centers)), bool) if mask is None else np.asarray(mask, bool)
        if self.mask.shape != (len(self.energies), len(self.q_centers)):
            raise ValueError(f"mask must have shape (E, Q) = {(len(self.energies), len(self.q_centers))}, "
                             f"got {self.mask.shape}")
        if not self.mask.any():
            raise ValueError("the mask leaves no pixel")
        mid = 0.5 * (self.q_centers[1:] + self.q_centers[:-1])
        step0, step1 = self.q_centers[1] - self.q_centers[0], self.q_centers[-1] - self.q_centers[-2]
        self.q_edges = np.concatenate([[max(0.0, self.q_centers[0] - step0 / 2)], mid,
                                       [self.q_centers[-1] + step1 / 2]])
        #: energy transfer (meV) and |Q| (Å⁻¹) of each point, in the observable's order (E-major)
        self.point_energy = np.broadcast_to(self.energies[:, None], self.mask.shape)[self.mask].copy()
        self.point_qnorm = np.broadcast_to(self.q_centers[None, :], self.mask.shape)[self.mask].copy()
        used = self.mask.any(axis=0)
        self._cols = np.flatnonzero(used)  # only the |Q| bins with a valid pixel are computed
        self.dw_mesh = int(dw_mesh)
        self.q_resolution = None if q_resolution is None else float(q_resolution)
        lo, hi = self._cols.min(), self._cols.max()
        self._span = (lo, hi)  # the one-phonon bins: the used ones, and their neighbours within 3σ of |Q|
        if self.q_resolution is not None:
            if not self.q_resolution > 0:
                raise ValueError(f"q_resolution must be a positive FWHM in Å⁻¹, got {q_resolution!r}")
            sig = self.q_resolution / (2 * np.sqrt(2 * np.log(2)))
            qc = self.q_centers
            lo_e = int(np.searchsorted(qc, qc[lo] - 3 * sig))
            hi_e = int(np.searchsorted(qc, qc[hi] + 3 * sig, side="right")) - 1
            self._span = (lo_e, hi_e)
            src = qc[lo_e : hi_e + 1]
            width = np.diff(self.q_edges)[lo_e : hi_e + 1]
            K = np.exp(-0.5 * ((qc[lo : hi + 1, None] - src[None]) / sig) ** 2) * (src**2 * width)[None]
            self._q_kernel = torch.as_tensor(K / K.sum(1, keepdims=True), dtype=dtype, device=device)
        from xtds.observables.neutron.incoherent import coherent_fraction, incoherent_weights

        species = model.primitive.species
        self.incoherent = incoherent
        self._w_inc = None if incoherent is False or incoherent is None else incoherent_weights(species, incoherent)
        self._w_inc_barn = None if self._w_inc is None else self._w_inc * 4 * np.pi / 100  # σ_inc per atom, barn
        self.incoherent_mesh = int(incoherent_mesh)
        self.coherent_fraction = coherent_fraction(species)
        if self._w_inc is None and self.coherent_fraction < 0.5:
            import warnings

            warnings.warn(f"{'/'.join(sorted(set(species)))} scatters mostly incoherently (coherent fraction "
                          f"{self.coherent_fraction:.3g}); incoherent=False leaves that out of the model",
                          stacklevel=2)
        self.incident_energy = None if incident_energy is None else float(incident_energy)
        if self.incident_energy is not None:
            if not self.incident_energy > 0:
                raise ValueError(f"incident_energy must be a positive number of meV, got {incident_energy!r}")
            if np.any(self.energies[self.mask.any(axis=1)] >= self.incident_energy):
                raise ValueError(f"energy transfers at or above Eᵢ = {self.incident_energy:g} meV are in the mask: "
                                 "no neutron is scattered there (mask them)")
        from xtds.observables.neutron.linewidth import LinewidthIFC, fine_energies

        self._fine = None  # with linewidths: the fine grid of the undamped spectrum, and the data's places in it
        if isinstance(model, LinewidthIFC):
            lw = model.linewidths
            self._fine = fine_energies(self.energies, lw.step, lw.margin)
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return int(self.mask.sum())

    def spectrum(self, phi: torch.Tensor) -> torch.Tensor:
        """The full (E, Q) spectrum (NaN in |Q| bins without a valid pixel), before normalization."""
        from xtds.observables.neutron.multiphonon import multiphonon_sqe
        from xtds.observables.neutron.sqe import chi_from_sqe
        from xtds.thermal.debye_waller import debye_waller

        lo, hi = self._cols.min(), self._cols.max()
        energies = self.energies if self._fine is None else self._fine[0]
        C0 = debye_waller(self.model, phi, self.temperature, mesh=self.dw_mesh)
        branches = self._fine is not None and self.model.linewidths.branches
        coh = self._one_phonon(phi, energies, C0, longitudinal=branches)  # with branches: (whole, longitudinal)
        rest = self._incoherent_one_phonon(phi, energies, C0)  # no crystal momentum: the modes' mean width
        if self.multiphonon:
            w = None
            if self._w_inc is not None:
                from xtds.observables.scattering import scattering_lengths

                w = scattering_lengths(self.model.primitive.species) ** 2 + self._w_inc
            mp = multiphonon_sqe(self.model, phi, self.q_centers[lo : hi + 1], energies, self.temperature,
                                 orders=self.multiphonon, resolution=self.resolution, mesh=self.multiphonon_mesh,
                                 step=0.25, smearing=1.0, dw=C0, weights=w)
            rest = mp if rest is None else rest + mp
        if self._fine is None:
            S = coh if rest is None else coh + rest
        else:
            S = self._damped(phi, energies, coh, rest)
        if self.incident_energy is not None:  # k_f/kᵢ of the uncorrected intensity
            ratio = np.sqrt(np.clip(1 - self.energies / self.incident_energy, 0, None))
            S = S * torch.as_tensor(ratio, dtype=S.dtype, device=S.device)
        if self.kind == "chi":
            S = chi_from_sqe(S, self.energies, self.temperature)
        full = torch.full((len(self.q_centers), len(self.energies)), float("nan"), dtype=S.dtype, device=S.device)
        full[lo : hi + 1] = S
        return full.T

    def _one_phonon(self, phi, energies, C0, longitudinal: bool = False) -> torch.Tensor:
        """The coherent one-phonon term on the used |Q| bins (after the |Q| resolution), (Q_used, E);
        with ``longitudinal`` (2, Q_used, E): the term and its longitudinal share."""
        a, b = self._span
        S = powder_sqe_mesh(self.model, phi, self.q_edges[a : b + 2], energies, self.temperature,
                            resolution=self.resolution, dw=C0, points=self.points, widths=self.widths(phi),
                            longitudinal=longitudinal)
        return S if self.q_resolution is None else self._q_kernel.to(S) @ S

    def _incoherent_one_phonon(self, phi, energies, C0) -> torch.Tensor | None:
        """The incoherent one-phonon term on the used |Q| bins (None without it)."""
        if self._w_inc is None:
            return None
        from xtds.observables.neutron.incoherent import incoherent_sqe

        a, b = self._span
        S = incoherent_sqe(self.model, phi, self.q_centers[a : b + 1], energies, self.temperature, orders=(1,),
                           resolution=self.resolution, mesh=self.incoherent_mesh, incoherent=self._w_inc_barn,
                           dw=C0, adaptive=self.incoherent_widths(phi))
        return S if self.q_resolution is None else self._q_kernel.to(S) @ S

    def _damped(self, phi, energies, coh, rest) -> torch.Tensor:
        """The damping on the fine grid: each energy's Lorentzian of Γ(|E'|); with branch families
        (``coh`` then the coherent term and its longitudinal share) the share with Γ_L, the rest of
        the coherent term with Γ_T, the incoherent and multiphonon terms (``rest``) with the mean width."""
        from xtds.observables.neutron.linewidth import lorentzian_kernel

        grid = torch.as_tensor(energies, dtype=coh.dtype, device=coh.device)
        out = torch.as_tensor(self.energies, dtype=coh.dtype, device=coh.device)

        def damp(S, branch=None):
            return S @ lorentzian_kernel(out, grid, self.model.width(phi, grid, self.temperature, branch)).T

        if not self.model.linewidths.branches:
            return damp(coh if rest is None else coh + rest)
        S = damp(coh[1], "L") + damp(coh[0] - coh[1], "T")
        return S if rest is None else S + damp(rest)

    def __call__(self, phi: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        x = self.spectrum(phi)[torch.as_tensor(self.mask, device=phi.device)]
        if self.normalize:
            x = (x - x.mean()) / (x.max() - x.min())
        return x

    def mean(self, phi: torch.Tensor) -> torch.Tensor:
        return self(phi)

    def reset(self) -> None:
        """Forget the adaptive widths (and ``reference``): the next evaluation makes them anew at its
        constants. A training set (:func:`xtds.amortized.simulate`) calls it before every draw."""
        self.reference = None
        self._widths = None
        self._inc_widths = None

    def widths(self, phi: torch.Tensor):
        """The adaptive widths (K, 3n) meV, made once at ``reference`` or else at the constants of the
        first evaluation (a fit's start) and then kept, so that the model is one differentiable
        function of φ; None without adaptive broadening."""
        if not self.adaptive:
            return None
        if self._widths is None:
            at = phi if self.reference is None else self.reference.to(phi)
            try:
                self._widths = adaptive_mesh_widths(self.model, at, self.points, self.adaptive)
            except RuntimeError as err:  # under torch.func transforms the constants have no values
                raise RuntimeError("the adaptive widths are made at the first plain evaluation: evaluate the "
                                   "observable once (or pass reference=constants) before torch.func "
                                   "transforms") from err
        return self._widths

    def incoherent_widths(self, phi: torch.Tensor):
        """The adaptive widths of the incoherent term's mesh (made once, at ``reference`` or the first
        evaluation's constants, like :meth:`widths`); 0 (none) without adaptive broadening."""
        from xtds.observables.neutron.incoherent import ADAPTIVE_INCOHERENT
        from xtds.observables.neutron.multiphonon import mesh_widths

        if not self.adaptive:
            return 0.0
        if getattr(self, "_inc_widths", None) is None:
            at = phi if self.reference is None else self.reference.to(phi)
            try:
                self._inc_widths = mesh_widths(self.model, at, self.incoherent_mesh, ADAPTIVE_INCOHERENT)
            except RuntimeError as err:
                raise RuntimeError("the adaptive widths are made at the first plain evaluation: evaluate the "
                                   "observable once (or pass reference=constants) before torch.func "
                                   "transforms") from err
        return self._inc_widths

    @property
    def points(self) -> PowderPoints:
        """The Q-points of the one-phonon average (made once, on first use)."""
        if getattr(self, "_points", None) is None:
            a, b = self._span
            self._points = powder_points(self.model, self.q_edges[a : b + 2], self.mesh)
        return self._points

    def stability_k(self) -> np.ndarray:
        """Every k the spectrum sums over: the one-phonon average's, and the Debye–Waller and
        multiphonon meshes' (irreducible points): where an unstable mode would make it undefined."""
        from xtds.lattice.kmesh import irreducible_mesh

        P = self.model.primitive
        ks = [self.points.k_irreducible, irreducible_mesh(P, (self.dw_mesh,) * 3).k]
        if self.multiphonon:
            ks.append(irreducible_mesh(P, (self.multiphonon_mesh,) * 3).k)
        if self._w_inc is not None:
            ks.append(irreducible_mesh(P, (self.incoherent_mesh,) * 3).k)
        return np.concatenate(ks)
