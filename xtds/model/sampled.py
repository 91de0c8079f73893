"""The paper's estimator: thermal configurations from the Cholesky factor of the Hessian.

Configurations x = x0 + δx with Lᵀ δx = √(k_BT) u, H = L Lᵀ and u ~ N(0, I), so that
Cov(δx) = k_BT H⁻¹ (classical statistics, as in Suchan et al. 2026). The three rigid
translations (H's null space) get a finite stiffness; they move the whole crystal and do not
change any intensity. Two solvers give the same distribution:

- ``dense``: the whole 3N×3N supercell Hessian (the paper's; for validation up to ~2,000 atoms);
- ``kspace``: the block-circulant Hessian is block-diagonal in k, so the same factorization is one
  3n×3n Cholesky factor per k-point of the supercell grid; the white noise is Fourier transformed
  (unitary FFT), solved per k, and transformed back.

Intensities of each configuration on the supercell's q-grid come from a type-1 NUFFT
(:mod:`xtds.model.nufft`), exact to its tolerance; gradients flow through the Cholesky factors
(reparameterization) and the NUFFT.
"""

from __future__ import annotations

import numpy as np
import torch

from xtds.ifc import IFCModel
from xtds.model.covariance import _check_temperature, grid_k
from xtds.phonons import UnstableError
from xtds.supercell import Supercell, supercell_hessian
from xtds.units import KB_EV_PER_K

__all__ = ["sample_displacements", "sampled_intensity"]

#: Stiffness (eV/Å²) given to the three rigid translations so that H is positive definite. A
#: constant, not a function of φ: the draw for fixed noise, and so its gradient, must not depend
#: on it through anything but H.
TRANSLATION_STIFFNESS = 1.0


def _noise(shape, generator, dtype, device):
    return torch.randn(*shape, generator=generator, dtype=dtype).to(device)


def _raise_unstable(where: str):
    raise UnstableError(f"the Hessian is not positive definite ({where}): the IFCs are dynamically unstable")


def sample_displacements(
    model: IFCModel,
    phi: torch.Tensor,
    temperature: float,
    repeats,
    n_samples: int,
    solver: str = "kspace",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Thermal displacements of a periodic L1×L2×L3 supercell of ``model.crystal``.

    Returns shape (n_samples, N, 3), Å, atoms ordered as :meth:`Supercell.from_crystal`
    (cells slowest, basis atoms fastest). Differentiable in φ. The noise comes from ``generator``
    (a seeded ``torch.Generator`` makes the draw reproducible; it is always drawn on the CPU).
    """
    T = _check_temperature(temperature)
    kBT = KB_EV_PER_K * T
    cell = model.crystal
    L = tuple(int(x) for x in np.broadcast_to(np.asarray(repeats, dtype=int), (3,)))
    n = cell.n_atoms
    N = n * int(np.prod(L))
    dt, dev = phi.dtype, phi.device
    if solver == "dense":
        sc = Supercell.from_crystal(model, L)
        H = supercell_hessian(model, phi, sc)
        U = torch.eye(3, dtype=dt, device=dev).repeat(N, 1) / np.sqrt(N)
        A = H + TRANSLATION_STIFFNESS * (U @ U.T)
        Lc, info = torch.linalg.cholesky_ex(A)
        if info != 0:
            _raise_unstable("dense supercell Hessian")
        u = _noise((3 * N, n_samples), generator, dt, dev)
        dx = np.sqrt(kBT) * torch.linalg.solve_triangular(Lc.T, u, upper=True)
        return dx.T.reshape(n_samples, N, 3)
    if solver != "kspace":
        raise ValueError(f"solver must be 'dense' or 'kspace', got {solver!r}")
    from xtds import dynamics

    k = grid_k(cell, L).reshape(-1, 3)
    H = dynamics.force_constant_matrix(model, phi, k, cell=cell)  # (K, 3n, 3n)
    # k = 0 is the only k ≡ G on the grid; there the rigid translations are the uniform vector
    U = torch.eye(3, dtype=H.dtype, device=dev).repeat(n, 1) / np.sqrt(n)
    reg = torch.zeros_like(H)
    reg[0] = TRANSLATION_STIFFNESS * (U @ U.mH)
    Lk, info = torch.linalg.cholesky_ex(H + reg)
    if torch.any(info != 0):
        bad = k[(info != 0).cpu().numpy()][0]
        _raise_unstable(f"at k = {bad.round(4)} Å⁻¹, H K L = {cell.cartesian_to_rlu(bad).round(4)}")
    u = _noise((n_samples, *L, n, 3), generator, dt, dev)
    uh = torch.fft.fftn(u.to(H.dtype), dim=(1, 2, 3), norm="ortho")  # Σ_r u_r e^{−ik·R}/√N
    kt = torch.as_tensor(k, dtype=dt, device=dev).reshape(*L, 3)
    tau = torch.tensor(np.array(cell.cartesian_positions), dtype=dt, device=dev)
    ph = torch.exp(-1j * torch.einsum("abcx,nx->abcn", kt, tau).to(H.dtype))  # e^{−ik·τ_c}
    uh = (uh * ph[None, ..., None]).reshape(n_samples, -1, 3 * n)  # (S, K, 3n)
    rhs = uh.permute(1, 2, 0)  # (K, 3n, S)
    y = torch.linalg.solve_triangular(Lk.mH, rhs, upper=True)  # Lᴴ y = û
    xh = np.sqrt(kBT) * y.permute(2, 0, 1).reshape(n_samples, *L, n, 3)
    xh = xh * ph.conj()[None, ..., None]
    dx = torch.fft.ifftn(xh, dim=(1, 2, 3), norm="ortho").real
    return dx.reshape(n_samples, N, 3)


def _configurations(model, phi, temperature, geom, sc, X, inv, groups, f, flat_t, shape, n_samples, solver, seed,
                    eps, batch, intensity):
    """Yield per-configuration intensities per primitive cell, (b, Q) tensors, batch by batch."""
    from xtds.model.nufft import structure_factor, structure_factor_direct

    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    n_prim_cells = sc.n_atoms / model.n_sites
    done = 0
    while done < n_samples:
        b = min(batch, n_samples - done)
        dx = sample_displacements(model, phi, temperature, geom.repeats, b, solver=solver, generator=gen)
        frac = (X[None] + dx) @ inv  # (b, N, 3)
        amp = 0
        for g, fs in zip(groups, f):
            sf = structure_factor(frac[:, g], shape, eps=eps) if intensity == "nufft" else structure_factor_direct(frac[:, g], shape)
            amp = amp + fs[None] * sf.reshape(b, -1)[:, flat_t]
        yield amp.abs() ** 2 / n_prim_cells
        done += b


def configuration_intensities(model, phi, q, temperature, repeats, n_samples, solver="kspace", seed=None,
                              form_factor="cromer-mann", eps=1e-6, batch=32):
    """The intensity of each of ``n_samples`` configurations (no averaging): shape (n_samples, Q),
    electrons² per primitive cell. For noise models (the Monte-Carlo noise of a sampled mean)."""
    parts = _setup(model, phi, q, repeats, form_factor)
    with torch.no_grad():
        return torch.cat(list(_configurations(model, phi, temperature, *parts, n_samples, solver, seed, eps, batch,
                                              "nufft")))


def _setup(model, phi, q, repeats, form_factor):
    from xtds.model.geometry import PeriodicSupercell

    geom = PeriodicSupercell(repeats)
    cell = model.crystal
    qt = torch.as_tensor(q, dtype=phi.dtype, device=phi.device)
    nidx = geom.grid_indices(cell, qt.detach().cpu().numpy())
    half = np.abs(nidx).max(axis=0) if len(nidx) else np.zeros(3, int)
    shape = tuple(int(2 * h + 1) for h in half)
    flat = ((nidx + half) * np.array([shape[1] * shape[2], shape[2], 1])).sum(axis=1)
    flat_t = torch.as_tensor(flat, device=phi.device)
    sc = Supercell.from_crystal(model, geom.repeats)
    X = torch.as_tensor(np.array(sc.positions), dtype=phi.dtype, device=phi.device)
    inv = torch.as_tensor(np.linalg.inv(sc.lattice), dtype=phi.dtype, device=phi.device)
    species = [cell.species[i % cell.n_atoms] for i in range(sc.n_atoms)]
    uniq = sorted(set(species))
    groups = [torch.as_tensor([i for i, s in enumerate(species) if s == u], device=phi.device) for u in uniq]
    if form_factor is None:
        f = torch.ones(len(uniq), len(flat), dtype=phi.dtype, device=phi.device)
    else:
        from xtds.formfactor import form_factors

        f = torch.as_tensor(
            form_factors(uniq, np.linalg.norm(qt.detach().cpu().numpy(), axis=1)), dtype=phi.dtype, device=phi.device
        )
    return geom, sc, X, inv, groups, f, flat_t, shape


def sampled_intensity(
    model: IFCModel,
    phi: torch.Tensor,
    q,
    temperature: float,
    repeats,
    n_samples: int = 15,
    solver: str = "kspace",
    seed: int | None = None,
    form_factor="cromer-mann",
    eps: float = 1e-6,
    batch: int = 32,
    intensity: str = "nufft",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean intensity per primitive cell over ``n_samples`` configurations, and its standard error.

    Parameters
    ----------
    q
        Shape (Q, 3), Å⁻¹, on the supercell's reciprocal grid.
    seed
        Seed of the noise (reproducible draws); None draws fresh noise.
    eps
        NUFFT relative tolerance (default 1e-6: far below the Monte-Carlo error of any feasible
        number of configurations, and about 3.7× faster than 1e-10 on the paper's grid).
    intensity
        ``"nufft"`` (finufft) or ``"direct"`` (exact sum, small systems and tests).

    Returns
    -------
    mean, stderr
        Shape (Q,) each, electrons² per primitive cell; stderr = std / √n_samples (no gradient).
    """
    if n_samples < 2:
        raise ValueError("n_samples must be at least 2 (the standard error needs two)")
    geom, sc, X, inv, groups, f, flat_t, shape = _setup(model, phi, q, repeats, form_factor)
    sums, sq = 0.0, 0.0
    for Ic in _configurations(model, phi, temperature, geom, sc, X, inv, groups, f, flat_t, shape, n_samples, solver,
                              seed, eps, batch, intensity):
        sums = sums + Ic.sum(0)
        sq = sq + (Ic.detach() ** 2).sum(0)
    mean = sums / n_samples
    var = (sq - n_samples * mean.detach() ** 2) / (n_samples - 1)
    return mean, torch.sqrt(var.clamp(min=0) / n_samples)
