"""The sampled (Cholesky) estimator against the exact average, and its NUFFT intensities."""

import numpy as np
import pytest
import torch

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.lattice.laue import LaueGroup
from xtds.observables import (
    PeriodicSupercell,
    sample_displacements,
    sampled_intensity,
    supercell_q_grid,
    tds_intensity,
)
from xtds.observables.tds.nufft import ModeBox, pair_sums
from xtds.units import KB_EV_PER_K

pytest.importorskip("finufft")

L = 2


@pytest.fixture(scope="module")
def ni():
    m = xtds.IFCModel(xtds.Crystal.fcc("Ni", a=3.52), shells=3)
    return m, m.vector({k: v for k, v in paper_ni_ifcs("target").items() if k in m.names})


def test_mode_box_covers_each_mode_or_its_friedel_mate():
    n = np.stack(np.meshgrid(*[np.arange(-40, 41)] * 3, indexing="ij"), -1).reshape(-1, 3)
    box, flat = ModeBox.covering(n)
    assert box.size == 81 * 81 * 41  # the paper's grid: half the modes
    m = np.stack(np.unravel_index(flat, box.shape), -1) + np.asarray(box.lo)
    assert np.all((m == n).all(1) | (m == -n).all(1))
    wedge = n[(n[:, 0] >= n[:, 1]) & (n[:, 1] >= n[:, 2]) & (n[:, 2] >= 0)]  # an m-3m wedge
    assert ModeBox.covering(wedge)[0].shape == (41, 41, 41)
    far = np.array([[30, -5, 2], [40, 5, -3], [35, 0, 0]])  # off-centre: flipping would not help
    box, flat = ModeBox.covering(far)
    assert box.lo == (30, -5, -3) and box.shape == (11, 11, 6)
    assert ModeBox.covering(far, friedel=False)[0] == box


def _two_species(seed, b=2, M=30):
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(b, M, 3, generator=g, dtype=torch.float64) * 3 - 1  # any real coordinates
    group = np.arange(M) % 3 // 2  # species 0, 0, 1, 0, 0, 1, …
    return frac, group, g


@pytest.mark.parametrize("box", [ModeBox((-4, -4, -3), (9, 8, 7)), ModeBox((3, -6, -1), (5, 4, 6))])
def test_pair_sums_nufft_equals_direct_sum(box):
    frac, group, g = _two_species(0)
    a1, none = pair_sums(frac, group, box, eps=1e-12)
    b1, b2 = pair_sums(frac, group, box, method="direct", each=True)
    M = frac.shape[1]
    assert a1.shape == (3, *box.shape) and none is None
    assert (a1 - b1).abs().max() / M**2 < 1e-10  # relative to the largest possible |F|² = M²
    _, pa = pair_sums(frac, group, box, eps=1e-12, each=True)
    assert pa.shape == (2, 3, *box.shape)
    assert (pa - b2).abs().max() / M**2 < 1e-10
    w = torch.rand(3, *box.shape, generator=g, dtype=torch.float64)
    grads = []
    for method in ("nufft", "direct"):
        x = frac.clone().requires_grad_(True)
        (pair_sums(x, group, box, eps=1e-12, method=method)[0] * w).sum().backward()
        grads.append(x.grad)
    assert ((grads[0] - grads[1]).abs().max() / grads[1].abs().max()) < 1e-9


def test_pair_sums_gradcheck():
    frac, group, g = _two_species(1, b=2, M=6)
    box = ModeBox((-1, 2, -2), (3, 4, 3))
    w = torch.rand(3, *box.shape, generator=g, dtype=torch.float64)
    x = frac.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: (pair_sums(f, group, box, eps=1e-14)[0] * w).sum(), (x,), eps=1e-6,
                                    atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("solver", ["dense", "kspace"])
def test_sample_covariance(solver, ni):
    m, phi = ni
    S = 20000
    dx = sample_displacements(m, phi, 300.0, L, S, solver=solver, generator=torch.Generator().manual_seed(3))
    dx = dx - dx.mean(1, keepdim=True)  # drop the rigid translation, as the pseudo-inverse does
    emp = torch.einsum("sia,sjb->ijab", dx, dx) / S
    sc = xtds.Supercell.from_crystal(m, L)
    N = sc.n_atoms
    C = KB_EV_PER_K * 300.0 * torch.linalg.pinv(xtds.supercell_hessian(m, phi, sc), hermitian=True, rtol=1e-10)
    C = C.reshape(N, 3, N, 3).permute(0, 2, 1, 3)
    var = torch.einsum("iiaa,jjbb->ijab", C, C) + C**2  # Var of a Gaussian product moment
    z = (emp - C) / torch.sqrt(var / S)
    assert z.abs().max() < 6  # 9216 entries: a 6σ excursion has probability ~1e-5


RUNS, CONFIGS = 8, 4000


def _pooled(m, phi, L, solver, seed0):
    """χ²/dof of RUNS independent runs of CONFIGS configurations each, averaged.

    Within one run the q-points are correlated (they share the configurations), so one run's
    χ²/dof scatters with a standard deviation of about 0.15 (measured over 12 seeds); the average
    of 8 runs has about 0.055, which puts the [0.8, 1.2] window 3.6σ away. Intensities by the
    direct sum (test_nufft_path_gives_the_same_draws ties the NUFFT path to it).
    """
    q = torch.tensor(supercell_q_grid(m.crystal, L, 3))
    exact = tds_intensity(m, phi, q, 300.0, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False)
    chis, means, ses = [], [], []
    for r in range(RUNS):
        mean, se = sampled_intensity(
            m, phi, q, 300.0, L, n_samples=CONFIGS, solver=solver, seed=seed0 + r, batch=2000, intensity="direct"
        )
        random = se > 1e-9 * mean  # q = 0 and its kind are the same in every configuration
        assert random.sum() > 300
        assert torch.allclose(mean[~random], exact[~random], rtol=1e-9)
        chis.append((((mean - exact) / se)[random] ** 2).mean().item())
        means.append(mean)
        ses.append(se)
    mean = torch.stack(means).mean(0)
    se = torch.sqrt((torch.stack(ses) ** 2).sum(0)) / RUNS
    return float(np.mean(chis)), mean, se


@pytest.fixture(scope="module")
def ni_pooled(ni):
    m, phi = ni
    return {solver: _pooled(m, phi, L, solver, seed0) for solver, seed0 in (("dense", 100), ("kspace", 200))}


@pytest.mark.heavy
@pytest.mark.parametrize("solver", ["dense", "kspace"])
def test_sampled_mean_agrees_with_exact(solver, ni_pooled):
    chi2, _, _ = ni_pooled[solver]
    assert 0.8 <= chi2 <= 1.2


def test_dense_and_kspace_agree(ni_pooled):
    (_, m1, s1), (_, m2, s2) = ni_pooled["dense"][:3], ni_pooled["kspace"][:3]
    random = (s1 > 1e-9 * m1) & (s2 > 1e-9 * m2)
    chi2 = (((m1 - m2) ** 2 / (s1**2 + s2**2))[random]).mean().item()
    assert 0.7 <= chi2 <= 1.3  # a single comparison of 32,000 against 32,000 configurations


def test_nufft_path_gives_the_same_draws(ni):
    m, phi = ni
    q = torch.tensor(supercell_q_grid(m.crystal, L, 4))
    a = sampled_intensity(m, phi, q, 300.0, L, n_samples=40, solver="kspace", seed=9, intensity="nufft", eps=1e-10)
    b = sampled_intensity(m, phi, q, 300.0, L, n_samples=40, solver="kspace", seed=9, intensity="direct")
    assert ((a[0] - b[0]).abs() / b[0]).max() < 1e-8  # NUFFT tolerance eps = 1e-10
    assert ((a[1] - b[1]).abs() / b[0]).max() < 1e-8  # stderr: zero at q = 0, roundoff there
    c = sampled_intensity(m, phi, q, 300.0, L, n_samples=40, solver="kspace", seed=9)  # default eps = 1e-6
    err = ((c[0] - b[0]).abs() / b[0]).max()
    assert 1e-12 < err < 1e-5  # the amplitude error ~eps doubles in |F|²; well under the MC error
    random = b[1] > 1e-6 * b[0]  # q-points with Monte-Carlo scatter (not q = 0 and its kind)
    assert ((c[0] - b[0]).abs()[random] < 1e-3 * b[1][random]).all()


@pytest.mark.parametrize("solver", ["dense", "kspace"])
def test_seeds_and_gradcheck(solver, ni):
    m, phi0 = ni
    q = torch.tensor(supercell_q_grid(m.crystal, L, 1))
    a, _ = sampled_intensity(m, phi0, q, 300.0, L, n_samples=3, solver=solver, seed=5)
    b, _ = sampled_intensity(m, phi0, q, 300.0, L, n_samples=3, solver=solver, seed=5)
    assert torch.allclose(a, b, rtol=1e-10)  # same noise; finufft's threaded sums may reorder
    phi = phi0.clone().requires_grad_(True)
    for intensity in ("direct", "nufft"):
        def log_mean(p, intensity=intensity):
            kw = dict(n_samples=3, solver=solver, seed=5, intensity=intensity, eps=1e-14)
            return torch.log(sampled_intensity(m, p, q[1:6], 300.0, L, **kw)[0])

        assert torch.autograd.gradcheck(
            log_mean,
            (phi,),
            eps=1e-4,
            atol=1e-7,
            rtol=1e-4,
        )


def test_sampled_errors(ni):
    m, phi = ni
    q = supercell_q_grid(m.crystal, L, 1)
    with pytest.raises(ValueError, match="classical"):
        tds_intensity(m, phi, q, 300.0, method="sampled", geometry=PeriodicSupercell(L), quantum=True)
    with pytest.raises(ValueError, match="solver"):
        tds_intensity(m, phi, q, 300.0, method="sampled", quantum=False, geometry=PeriodicSupercell(L), solver="qr")
    with pytest.raises(ValueError, match="PeriodicSupercell"):
        tds_intensity(m, phi, q, 300.0, method="sampled", quantum=False, geometry=xtds.observables.InfiniteCrystal(4))
    mean, se = tds_intensity(m, phi, q, 300.0, method="sampled", quantum=False, geometry=PeriodicSupercell(L), seed=1,
                             return_stderr=True)
    assert mean.shape == se.shape == (len(q),)


@pytest.mark.slow
def test_silicon_sampled_matches_exact():
    """A two-atom basis: the k-space sampler's phases for τ ≠ 0 (also covered, with two species,
    by the rocksalt test below; this one runs with `make bench` to keep the default run short)."""
    m = xtds.IFCModel(xtds.Crystal.preset("Si"), shells=2)
    phi = torch.tensor(m.central_force({1: 6.0, 2: 1.0}) + 0.05 * np.random.default_rng(0).standard_normal(m.n_free))
    chi2, _, _ = _pooled(m, phi, L, "kspace", 300)
    assert 0.8 <= chi2 <= 1.2


@pytest.mark.heavy
def test_rocksalt_sampled_matches_exact():
    """Two species: the cross terms 2 f_Na f_Cl Re F_Na F_Cl* of the pair sums."""
    m = xtds.IFCModel(xtds.Crystal.preset("NaCl"), shells=2)
    phi = torch.tensor(m.central_force({1: 2.0, 2: 0.3}))
    chi2, _, _ = _pooled(m, phi, L, "kspace", 400)
    assert 0.8 <= chi2 <= 1.2
    q = torch.tensor(supercell_q_grid(m.crystal, L, 3))
    a = sampled_intensity(m, phi, q, 300.0, L, n_samples=6, seed=2, intensity="nufft", eps=1e-12)
    b = sampled_intensity(m, phi, q, 300.0, L, n_samples=6, seed=2, intensity="direct")
    assert ((a[0] - b[0]).abs() / b[0]).max() < 1e-8


def test_orbit_average_is_the_mean_over_each_orbit(ni):
    """Orbit averaging at irreducible points equals the per-point intensities of each configuration
    on the full grid (the estimator the χ² tests above validate), averaged over each orbit with
    numpy: the same draws, since they depend on the seed only. Mean and standard error."""
    from xtds.observables.tds.sampled import configuration_intensities

    m, phi = ni
    q = supercell_q_grid(m.crystal, L, 3)
    irr = LaueGroup.of(crystal=m.crystal).reduce_q(m.crystal, q)
    S = 40
    each = configuration_intensities(m, phi, q, 300.0, L, S, seed=11, eps=1e-12).numpy()  # (S, Q)
    size = np.bincount(irr.inverse)
    by_orbit = np.stack([np.bincount(irr.inverse, weights=row) for row in each]) / size  # (S, Q_irr)
    mean, se = sampled_intensity(m, phi, q[irr.index], 300.0, L, n_samples=S, seed=11, eps=1e-12, orbit_average=True)
    assert np.allclose(mean.numpy(), by_orbit.mean(0), rtol=1e-10)
    assert np.allclose(se.numpy(), by_orbit.std(0, ddof=1) / np.sqrt(S), rtol=1e-8, atol=1e-10 * mean.numpy())
    _, se_point = sampled_intensity(m, phi, q[irr.index], 300.0, L, n_samples=S, seed=11, eps=1e-12)
    big = size > 8  # orbits with many members: much less Monte-Carlo noise
    assert np.median((se / se_point).numpy()[big]) < 0.5


def test_orbit_average_needs_a_supercell_the_group_keeps(ni):
    m, phi = ni
    q = supercell_q_grid(m.crystal, (2, 2, 1), 1)
    with pytest.raises(ValueError, match="maps onto itself"):
        sampled_intensity(m, phi, q, 300.0, (2, 2, 1), n_samples=2, orbit_average=True)
