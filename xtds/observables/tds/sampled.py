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
(:mod:`xtds.observables.tds.nufft`), exact to its tolerance, on the smallest box of modes that holds each q
or its Friedel mate; the estimator only needs the configuration sums of the species-pair products
Re F_s F_t* there. Gradients flow through the Cholesky factors (reparameterization) and the NUFFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.errors import UnstableError, check_temperature
from xtds.lattice.ifc import IFCModel
from xtds.lattice.laue import LaueGroup
from xtds.lattice.supercell import Supercell, supercell_hessian
from xtds.observables.scattering import form_factor_table
from xtds.observables.tds.nufft import DEFAULT_EPS, ModeBox, pair_sums, species_pairs
from xtds.thermal.geometry import PeriodicSupercell, k_grid, shape_of
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
    T = check_temperature(temperature)
    kBT = KB_EV_PER_K * T
    cell = model.crystal
    L = shape_of(repeats)
    n = cell.n_atoms
    N = n * int(np.prod(L))
    dt, dev = phi.dtype, phi.device
    if solver == "dense":
        if model.crystal.polar:
            raise ValueError("the dense solver holds the short-range Hessian only: use solver='kspace' for a polar "
                             "crystal (Born charges set), whose k-space blocks include the dipole–dipole term")
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
    from xtds.lattice import dynamics

    k = k_grid(cell, L).reshape(-1, 3)
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


@dataclass(frozen=True)
class _Layout:
    """What the sampled estimator needs besides the draws, computed once per call.

    Each q stands for a set of member modes in the box: itself, or, with orbit averaging, the
    distinct members of its Laue orbit (all with the same |q|, so the same form factors).
    """

    repeats: tuple[int, int, int]
    X: torch.Tensor  # (N, 3) Å, perfect positions of the supercell
    inv: torch.Tensor  # (3, 3) Å⁻¹, inverse of the supercell lattice (rows)
    group: np.ndarray  # (N,) int, species index of each atom
    box: ModeBox  # the modes evaluated
    flat: torch.Tensor  # (n_members,) int, each member's mode (or its Friedel mate) in the box
    owner: torch.Tensor | None  # (n_members,) int, the q each member belongs to; None: one member per q
    orbit_size: torch.Tensor | None  # (Q,), members per q
    weight: torch.Tensor  # (n_pairs, Q): (2 − δ_st) f_s(|q|) f_t(|q|), electrons²
    n_prim_cells: float

    def intensities(self, P: torch.Tensor) -> torch.Tensor:
        """Σ_p w_p(q) P_p averaged over each q's members, per primitive cell: (..., n_pairs, *box) → (..., Q)."""
        Pm = P.reshape(*P.shape[:-3], -1)[..., self.flat]  # (..., n_pairs, n_members)
        if self.owner is not None:
            zero = Pm.new_zeros(*Pm.shape[:-1], self.weight.shape[-1])
            Pm = torch.index_add(zero, -1, self.owner, Pm) / self.orbit_size
        return (self.weight * Pm).sum(-2) / self.n_prim_cells


def _orbit_members(cell, geom: PeriodicSupercell, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct supercell modes of each q's Laue orbit: modes (n_members, 3) int and their
    owners (n_members,) int, grouped by owner."""
    n = geom.grid_indices(cell, q)
    try:
        return LaueGroup.of(crystal=cell).images(n, scale=1.0 / np.asarray(geom.repeats))
    except ValueError as err:
        raise ValueError(
            f"orbit averaging needs a supercell that the Laue group maps onto itself; the {geom.repeats} supercell "
            "is not (use equal repeats along axes the group permutes, or orbit_average=False)"
        ) from err


def _layout(model, phi, q, repeats, form_factor, orbit_average=False) -> _Layout:
    geom = PeriodicSupercell(shape_of(repeats))
    cell = model.crystal
    qn = torch.as_tensor(q).detach().cpu().numpy().astype(float)
    if orbit_average:
        modes, owner = _orbit_members(cell, geom, qn)
    else:
        modes, owner = geom.grid_indices(cell, qn), None
    box, flat = ModeBox.covering(modes)
    sc = Supercell.from_crystal(model, geom.repeats)
    species = [cell.species[i % cell.n_atoms] for i in range(sc.n_atoms)]
    uniq = sorted(set(species))
    group = np.array([uniq.index(s) for s in species])
    f = form_factor_table(uniq, np.linalg.norm(qn, axis=1), form_factor)
    weight = np.stack([(1 if s == t else 2) * f[s] * f[t] for s, t in species_pairs(len(uniq))])

    def tensor(x, dtype=None):
        return torch.as_tensor(x, dtype=dtype, device=phi.device)

    return _Layout(
        repeats=geom.repeats,
        X=tensor(np.array(sc.positions), phi.dtype),
        inv=tensor(np.linalg.inv(sc.lattice), phi.dtype),
        group=group,
        box=box,
        flat=tensor(flat),
        owner=None if owner is None else tensor(owner),
        orbit_size=None if owner is None else tensor(np.bincount(owner, minlength=len(qn)), phi.dtype),
        weight=tensor(weight, phi.dtype),
        n_prim_cells=sc.n_atoms / model.n_sites,
    )


def _batches(model, phi, temperature, lay: _Layout, n_samples, solver, seed, batch):
    """Yield the fractional coordinates of the configurations, shape (b, N, 3), batch by batch."""
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    done = 0
    while done < n_samples:
        b = min(batch, n_samples - done)
        dx = sample_displacements(model, phi, temperature, lay.repeats, b, solver=solver, generator=gen)
        yield (lay.X[None] + dx) @ lay.inv
        done += b


def configuration_intensities(model, phi, q, temperature, repeats, n_samples, solver="kspace", seed=None,
                              form_factor="cromer-mann", eps=DEFAULT_EPS, batch=32, orbit_average=False):
    """The intensity of each of ``n_samples`` configurations (no averaging over them): shape
    (n_samples, Q), electrons² per primitive cell. For noise models (the Monte-Carlo noise of a
    sampled mean). Arguments as :func:`sampled_intensity`."""
    lay = _layout(model, phi, q, repeats, form_factor, orbit_average)
    with torch.no_grad():
        return torch.cat([lay.intensities(pair_sums(frac, lay.group, lay.box, eps=eps, each=True)[1])
                          for frac in _batches(model, phi, temperature, lay, n_samples, solver, seed, batch)])


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
    eps: float = DEFAULT_EPS,
    batch: int = 32,
    intensity: str = "nufft",
    stderr: bool = True,
    orbit_average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean intensity per primitive cell over ``n_samples`` configurations, and its standard error.

    Parameters
    ----------
    q
        Shape (Q, 3), Å⁻¹, on the supercell's reciprocal grid.
    seed
        Seed of the noise (reproducible draws); None draws fresh noise.
    eps
        NUFFT relative tolerance (default 1e-6: on the paper's grid with 15 configurations it
        changes the mean by at most 8e-5 of its Monte-Carlo standard error, and is 3.4× faster
        than 1e-10).
    intensity
        ``"nufft"`` (finufft) or ``"direct"`` (exact sum, small systems and tests).
    stderr
        Compute the standard error (False skips it and returns None).
    orbit_average
        Average each configuration's intensity over the Laue orbit of every q (the orbits need
        not be in ``q``). The mean intensity is Laue-invariant, so this estimates the same mean
        with less Monte-Carlo noise, at the cost of transforming the orbits' modes: for the
        irreducible points of a cubic grid, half the full grid's modes instead of one octant.
        The supercell must map onto itself under the Laue group.

    Returns
    -------
    mean, stderr
        Shape (Q,) each, electrons² per primitive cell; stderr = std / √n_samples (no gradient).
    """
    if n_samples < 2:
        raise ValueError("n_samples must be at least 2 (the standard error needs two)")
    lay = _layout(model, phi, q, repeats, form_factor, orbit_average)
    S1, M2 = 0, 0
    for frac in _batches(model, phi, temperature, lay, n_samples, solver, seed, batch):
        s1, P = pair_sums(frac, lay.group, lay.box, eps=eps, method=intensity, each=stderr)
        S1 = S1 + s1
        if stderr:
            M2 = M2 + (lay.intensities(P) ** 2).sum(0)  # Σ_c I_c(q)²
    mean = lay.intensities(S1) / n_samples
    if not stderr:
        return mean, None
    var = (M2 - n_samples * mean.detach() ** 2) / (n_samples - 1)
    return mean, torch.sqrt(var.clamp(min=0) / n_samples)
