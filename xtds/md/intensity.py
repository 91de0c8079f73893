"""The exact mean intensity of MD frames on the supercell's reciprocal grid.

For each frame, A(q) = Σ_j f_j(|q|) exp(i q·r_j) at every q = Σ n_i b_i / L_i of the supercell
(|n_i| ≤ n_max), with a type-1 non-uniform FFT (finufft): x_j = 2π × the fractional coordinates
of r_j in the supercell, modes n. The volume is ⟨|A(q)|²⟩ over the frames per primitive cell
(the normalization of :func:`xtds.observables.tds.exact.exact_supercell`), Bragg peaks included,
with a standard error from block means (frames are correlated in time).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xtds.md.trajectory import Trajectory
from xtds.observables.scattering import form_factor_table

__all__ = ["md_intensity", "gaussian_intensity"]


def md_intensity(traj: Trajectory, n_max: int, form_factor: str | None = "cromer-mann", blocks: int = 20,
                 eps: float = 1e-7, progress: bool = False) -> xr.Dataset:
    """⟨|Σ_j f_j e^{iq·r_j}|²⟩ of a trajectory on the (2 n_max + 1)³ grid of its supercell.

    Parameters
    ----------
    traj
        The frames (:func:`~xtds.md.trajectory.run_md`).
    n_max
        The grid reaches H = ±n_max / L1 (and so on) r.l.u. of the crystal's cell; the paper's Ni
        grid (81³, H from −8 to 8 on a 5×5×5 supercell) is ``n_max=40``.
    form_factor
        ``"cromer-mann"`` (default, as the TDS models) or None (the bare lattice sum).
    blocks
        The frames are cut into this many consecutive blocks; ``sigma`` is the standard deviation
        of the block means over √blocks.
    eps
        finufft's relative tolerance.

    Returns
    -------
    Dataset on (H, K, L) (r.l.u.) with ``intensity`` and ``sigma`` (electrons² per primitive cell)
    and attrs as :func:`xtds.simulate` writes them (``method="md"``, ``geometry`` the periodic
    supercell, ``quantum=0``: classical), so that ``ds.tds.fit`` models it on that supercell.
    The point q = 0 (N f² in every frame, σ = 0) is NaN: it carries no information.
    """
    import finufft

    if n_max < 1:
        raise ValueError(f"n_max must be a positive number of grid steps, got {n_max}")
    L = np.asarray(traj.repeats)
    n_modes = 2 * int(n_max) + 1
    n = np.arange(-n_max, n_max + 1)
    H = [n / L[i] for i in range(3)]
    hkl = np.stack(np.meshgrid(*H, indexing="ij"), -1).reshape(-1, 3)
    crystal = traj.crystal
    qnorm = np.linalg.norm(crystal.rlu_to_cartesian(hkl), axis=1)
    species = traj.species
    kinds = sorted(set(species))
    ff = form_factor_table(kinds, qnorm, form_factor).reshape(len(kinds), n_modes, n_modes, n_modes)
    sel = [np.array([s == k for s in species]) for k in kinds]
    ideal = traj.ideal_positions
    inv = np.linalg.inv(traj.supercell_lattice)
    n_prim = len(species) // crystal.primitive().n_atoms
    plan = finufft.Plan(1, (n_modes,) * 3, n_trans=1, eps=eps, isign=1, nthreads=1)
    B = max(1, min(int(blocks), traj.n_frames))
    edges = np.linspace(0, traj.n_frames, B + 1).astype(int)
    block_means = np.zeros((B, n_modes, n_modes, n_modes))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=traj.n_frames, desc="MD intensity", unit="frame")
    for b in range(B):
        acc = np.zeros((n_modes,) * 3)
        for f in range(edges[b], edges[b + 1]):
            x = 2 * np.pi * ((ideal + traj.displacements[f]) @ inv)
            x = x - 2 * np.pi * np.round(x / (2 * np.pi))
            A = np.zeros((n_modes,) * 3, dtype=complex)
            for k, m in enumerate(sel):
                plan.setpts(*np.ascontiguousarray(x[m].T))
                A += ff[k] * plan.execute(np.ones(int(m.sum()), dtype=complex))
            acc += A.real ** 2 + A.imag ** 2
            if bar is not None:
                bar.update()
        block_means[b] = acc / max(1, edges[b + 1] - edges[b]) / n_prim
    if bar is not None:
        bar.close()
    counts = np.diff(edges)
    mean = (block_means * counts[:, None, None, None]).sum(0) / counts.sum()
    sigma = block_means.std(axis=0, ddof=1) / np.sqrt(B) if B > 1 else np.full_like(mean, np.nan)
    # q = 0 is N f² in every frame: no information on the displacements, and σ = 0 there (a χ² fit
    # would weigh it without bound); it is left out (NaN, which the fits' invalid mask drops)
    mean[n_max, n_max, n_max] = np.nan
    sigma[n_max, n_max, n_max] = np.nan
    a = crystal.parameters
    coords = {d: (d, H[i], {"units": "r.l.u."}) for i, d in enumerate("HKL")}
    units = "electrons^2 per primitive cell" if form_factor else "per primitive cell (bare lattice sum)"
    return xr.Dataset(
        {"intensity": (("H", "K", "L"), mean, {"units": units, "long_name": "MD mean intensity"}),
         "sigma": (("H", "K", "L"), sigma, {"units": units, "long_name": f"standard error ({B} block means)"})},
        coords=coords,
        attrs={"unit_cell": [float(x) for x in a], "space_group": crystal.space_group,
               "temperature": float(traj.temperature), "method": "md",
               "geometry": f"PeriodicSupercell(repeats={tuple(int(x) for x in L)})", "quantum": 0,
               "form_factor": str(form_factor), "n_frames": traj.n_frames,
               "md": repr(traj.meta)},
    )


def gaussian_intensity(traj: Trajectory, grid: xr.Dataset, form_factor: str | None = None) -> xr.Dataset:
    """The intensity of a *Gaussian* crystal with the frames' own covariances, on ``grid``.

    Every pair's ⟨u_j u_j'ᵀ⟩ is taken from the frames (:func:`~xtds.md.effective.frame_covariance`)
    and the pair average exp(−½⟨(q·Δu)²⟩) made from it, exactly as a harmonic model would with
    those covariances: ``md_intensity − gaussian_intensity`` is what the frames' non-Gaussian
    (anharmonic) displacements add, free of any force-constant model and of its range. ``grid``: a
    dataset of :func:`md_intensity` of the same trajectory (its H, K, L, its form factor unless
    ``form_factor`` is given). Returns the same layout (``intensity``; NaN where ``grid`` is).
    """
    import torch

    from xtds.lattice.ifc import IFCModel
    from xtds.md.effective import frame_covariance
    from xtds.observables.tds.exact import covariance_intensity

    if grid.attrs.get("geometry") != f"PeriodicSupercell(repeats={tuple(int(x) for x in traj.repeats)})":
        raise ValueError(f"grid is of {grid.attrs.get('geometry')!r}, the trajectory of a {traj.repeats} supercell: "
                         "give the md_intensity of this trajectory")
    ff = form_factor if form_factor is not None else grid.attrs.get("form_factor", "cromer-mann")
    ff = None if ff == "None" else ff
    H, K, L = np.meshgrid(grid.H.values, grid.K.values, grid.L.values, indexing="ij")
    q = traj.crystal.rlu_to_cartesian(np.stack([H, K, L], -1).reshape(-1, 3))
    model = IFCModel(traj.crystal, shells=1)  # the crystal's sites and geometry only
    with torch.no_grad():
        values = covariance_intensity(model, frame_covariance(traj), q, ff).numpy().reshape(H.shape)
    out = grid[["intensity"]].copy()
    out["intensity"] = (("H", "K", "L"), np.where(np.isfinite(grid["intensity"].values), values, np.nan),
                        {**grid["intensity"].attrs, "long_name": "Gaussian intensity of the frames' covariances"})
    return out.assign_attrs(method="md-gaussian")
