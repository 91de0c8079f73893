"""The exact and one-phonon TDS models against independent computations."""

import numpy as np
import pytest
import torch

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.lattice.laue import LaueGroup
from xtds.observables import InfiniteCrystal, PeriodicSupercell, TDSModule, supercell_q_grid, tds_intensity
from xtds.observables.scattering import form_factors
from xtds.thermal.covariance import is_gamma
from xtds.units import H_EV_S, KB_EV_PER_K, RAD_PER_S_PER_SQRT_EV_A2_AMU


@pytest.fixture(scope="module")
def ni3():
    m = xtds.IFCModel(xtds.Crystal.fcc("Ni", a=3.52), shells=3)
    return m, m.vector({k: v for k, v in paper_ni_ifcs("target").items() if k in m.names})


@pytest.fixture(scope="module")
def si2():
    m = xtds.IFCModel(xtds.Crystal.preset("Si"), shells=2)
    rng = np.random.default_rng(0)
    return m, torch.tensor(m.central_force({1: 6.0, 2: 1.0}) + 0.05 * rng.standard_normal(m.n_free))


def brute_force(m, phi, L, T, q):
    """Direct double sum over the supercell's atom pairs, covariances from the dense pseudo-inverse."""
    sc = xtds.Supercell.from_crystal(m, L)
    H = xtds.supercell_hessian(m, phi, sc)
    C = KB_EV_PER_K * T * torch.linalg.pinv(H, hermitian=True, rtol=1e-10)
    N = sc.n_atoms
    C = C.reshape(N, 3, N, 3).permute(0, 2, 1, 3)
    X = torch.tensor(np.array(sc.positions))
    species = [m.crystal.species[i % m.crystal.n_atoms] for i in range(N)]
    out = []
    for qq in torch.as_tensor(q):
        f = torch.tensor(form_factors(species, [float(qq.norm())])[:, 0])
        qCq = torch.einsum("a,ijab,b->ij", qq, C, qq)
        d = torch.diagonal(qCq)
        qBq = d[:, None] + d[None, :] - qCq - qCq.T
        ph = torch.exp(1j * (X @ qq))
        amp = f[:, None] * f[None, :] * ph[:, None] * ph.conj()[None, :]
        out.append((amp * torch.exp(-0.5 * qBq)).sum().real / (N / m.n_sites))
    return torch.stack(out)


@pytest.mark.parametrize("which, L", [("ni", 2), ("ni", 3), ("si", 2)])
def test_exact_equals_brute_force(which, L, ni3, si2):
    m, phi = ni3 if which == "ni" else si2
    q = supercell_q_grid(m.crystal, L, 4)
    q = q[np.random.default_rng(L).choice(len(q), 40, replace=False)]
    got = tds_intensity(m, phi, q, 300.0, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False)
    ref = brute_force(m, phi, L, 300.0, q)
    assert ((got - ref).abs() / ref.abs()).max() < 1e-10


def test_laue_reduction_equals_full_grid(ni3):
    m, phi = ni3
    q = supercell_q_grid(m.crystal, 3, 6)
    irr = LaueGroup.of(crystal=m.crystal).reduce_q(m.crystal, q)
    assert irr is not None and irr.reduction > 20  # 26× on 13³; 43× on the paper's 81³
    full = tds_intensity(m, phi, q, 300.0, geometry=PeriodicSupercell(3), laue_reduce=False)
    red = tds_intensity(m, phi, q, 300.0, geometry=PeriodicSupercell(3), laue_reduce=True)
    assert torch.allclose(full, red, rtol=1e-10, atol=0)  # rotated points: roundoff only
    # invariance: every Laue image has the same intensity (independent of the reduction)
    R = LaueGroup.of(crystal=m.crystal).cartesian(m.crystal)
    assert len(R) == 48
    sub = q[:50]
    base = tds_intensity(m, phi, sub, 300.0, geometry=PeriodicSupercell(3), laue_reduce=False)
    for g in R[::7]:
        rot = tds_intensity(m, phi, sub @ g.T, 300.0, geometry=PeriodicSupercell(3), laue_reduce=False)
        assert torch.allclose(rot, base, rtol=1e-11)
    with pytest.raises(ValueError, match="not closed"):
        tds_intensity(m, phi, q[:-1], 300.0, geometry=PeriodicSupercell(3), laue_reduce=True)


def _xu_chiang(m, phi, q, T, W):
    """One-phonon TDS from eigenvectors (Xu & Chiang), classical and quantum: an independent route."""
    from xtds.lattice import dynamics

    cell = m.crystal
    n = cell.n_atoms
    D = dynamics.dynamical_matrix(m, phi, q, cell=cell)
    lam, E = torch.linalg.eigh(D)
    f = torch.tensor(form_factors(list(cell.species), np.linalg.norm(q, axis=1)).T)  # (Q, n)
    a = f * torch.exp(-W)
    M = torch.tensor(np.repeat(cell.masses, 3))
    v = (a[:, :, None] * torch.as_tensor(q)[:, None, :]).reshape(len(q), 3 * n) / torch.sqrt(M)
    amp = torch.einsum("qi,qij->qj", v.to(E.dtype), E.conj()).abs() ** 2  # |Σ_s a_s (q·e_s)/√M_s|²
    kT = KB_EV_PER_K * T
    hw = H_EV_S / (2 * np.pi) * RAD_PER_S_PER_SQRT_EV_A2_AMU * torch.sqrt(lam)
    g_cl = kT / lam
    g_qu = hw / 2 / torch.tanh(hw / (2 * kT)) / lam
    return (amp * g_cl).sum(1) * m.n_sites / n, (amp * g_qu).sum(1) * m.n_sites / n


@pytest.mark.heavy
@pytest.mark.parametrize("which", ["ni", "si"])
def test_one_phonon_equals_eigenvector_formula(which, ni3, si2):
    m, phi = ni3 if which == "ni" else si2
    q = np.random.default_rng(1).normal(size=(20, 3)) * 3
    from xtds.observables.tds.infinite import InfinitePlan, _covariances
    from xtds.thermal.covariance import q_products as _qq
    from xtds.thermal.covariance import symmetric_components as _c6

    site = m.pair_table(m.crystal).site  # primitive site of each atom of the cell
    for quantum, T in ((False, 300.0), (True, 300.0), (True, 20.0)):
        c_inf, _ = _covariances(InfinitePlan(m, 8), phi, T, quantum)
        W = (0.5 * _qq(torch.tensor(q)) @ _c6(c_inf).T)[:, site]
        cl, qu = _xu_chiang(m, phi, q, T, W)
        got = tds_intensity(m, phi, q, T, method="one_phonon", geometry=InfiniteCrystal(8), quantum=quantum)
        ref = qu if quantum else cl
        assert ((got - ref).abs() / ref).max() < 1e-10


def test_multiphonon_remainder_scales_as_T_squared(ni3):
    """exact − Bragg − one-phonon is O(T²) at low classical T (off the Bragg positions)."""
    m, phi = ni3
    L = 4
    q = supercell_q_grid(m.crystal, L, 5)
    q = q[~is_gamma(m.primitive, q)][::7]
    rem = []
    for T in (5.0, 10.0, 20.0):
        ex = tds_intensity(m, phi, q, T, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False)
        op = tds_intensity(m, phi, q, T, quantum=False, method="one_phonon", geometry=PeriodicSupercell(L),
                           laue_reduce=False)
        rem.append((ex - op).numpy())
    r1, r2 = rem[1] / rem[0], rem[2] / rem[1]
    assert np.all(rem[0] > 0)
    assert np.allclose(r1, 4.0, rtol=2e-3) and np.allclose(r2, 4.0, rtol=4e-3)


def test_quantum_limits(ni3):
    m, phi = ni3
    L = 4
    q = supercell_q_grid(m.crystal, L, 8)
    q = q[~is_gamma(m.primitive, q)][::11]
    geo = PeriodicSupercell(L)
    cl = tds_intensity(m, phi, q, 3000.0, quantum=False, geometry=geo, laue_reduce=False)
    qu = tds_intensity(m, phi, q, 3000.0, geometry=geo, quantum=True, laue_reduce=False)
    rel = ((qu - cl) / cl).abs().numpy()
    # per mode, (ħω/2) coth(ħω/2k_BT) / (k_BT) − 1 ≤ (hν/k_BT)²/12: 1.4e-3 for ν_max = 8.1 THz at
    # 3000 K, so no q can deviate more; most deviate far less
    from xtds.lattice import dynamics

    nu_max = float(dynamics.frequencies(m, phi, np.random.default_rng(0).normal(size=(400, 3)) * 2).max())
    bound = (H_EV_S * nu_max * 1e12 / (KB_EV_PER_K * 3000.0)) ** 2 / 12
    assert rel.max() <= bound and np.median(rel) < 1e-3
    # the leading high-T correction exactly: C(0) += ħ²/(12 k_BT M) 1, nothing else
    hbar2_over_M = (H_EV_S / (2 * np.pi) * RAD_PER_S_PER_SQRT_EV_A2_AMU) ** 2 / m.primitive.masses[0]
    delta = hbar2_over_M / (12 * KB_EV_PER_K * 3000.0)  # Å²
    from xtds.observables.tds.exact import Terms, _sum_pairs
    from xtds.thermal.covariance import lattice_covariance

    Cr = lattice_covariance(m, phi, L, 3000.0).clone()
    n = m.crystal.n_atoms
    for c in range(n):
        Cr[c, c, 0, 0, 0] += delta * torch.eye(3, dtype=Cr.dtype)
    pred = _sum_pairs(Terms(m, Cr), torch.tensor(q), "cromer-mann", "all", 4096)
    assert (((qu - pred) / (qu - cl)).abs()).max() < 0.05  # next order is (ħω/k_BT)² smaller
    # zero-point motion at 10 K: the quantum diffuse intensity far exceeds the classical one
    cl10 = tds_intensity(m, phi, q, 10.0, quantum=False, geometry=geo, laue_reduce=False)
    qu10 = tds_intensity(m, phi, q, 10.0, geometry=geo, quantum=True, laue_reduce=False)
    assert torch.median(qu10 / cl10) > 3


def test_rocksalt_exact_and_one_phonon():
    m = xtds.IFCModel(xtds.Crystal.preset("NaCl"), shells=2)
    phi = torch.tensor(m.central_force({1: 2.0, 2: 0.3}))
    assert xtds.stability(m, phi).stable
    L = 2
    q = supercell_q_grid(m.crystal, L, 3)
    q = q[np.random.default_rng(4).choice(len(q), 25, replace=False)]
    got = tds_intensity(m, phi, q, 300.0, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False)
    assert ((got - brute_force(m, phi, L, 300.0, q)).abs() / got).max() < 1e-10


@pytest.mark.parametrize("method, geometry", [("exact", PeriodicSupercell(2)), ("exact", InfiniteCrystal(8)),
                                               ("one_phonon", InfiniteCrystal(8))])
@pytest.mark.heavy
@pytest.mark.parametrize("quantum", [False, True])
def test_gradcheck(method, geometry, quantum, si2):
    m, phi0 = si2
    q = supercell_q_grid(m.crystal, 2, 1)[[1, 5, 11, 20]]
    phi = phi0.clone().requires_grad_(True)
    # log I: intensities near Bragg peaks are ~1e3, whose finite differences would be noise-limited
    assert torch.autograd.gradcheck(
        lambda p: torch.log(
            tds_intensity(m, p, q, 300.0, method=method, geometry=geometry, quantum=quantum, laue_reduce=False)
        ),
        (phi,),
        eps=1e-4,  # central differences converge to 1e-10 here; smaller steps hit roundoff
        atol=1e-8,
        rtol=1e-5,
    )


def test_module_and_errors(ni3):
    m, phi = ni3
    q = supercell_q_grid(m.crystal, 2, 2)
    tds = TDSModule(m, q, 300.0, ifc=phi, geometry=PeriodicSupercell(2))
    I = tds()
    I.sum().backward()
    assert tds.phi.grad is not None and torch.isfinite(tds.phi.grad).all()
    with pytest.raises(ValueError, match="not on the reciprocal grid"):
        tds_intensity(m, phi, q + 0.01, 300.0, geometry=PeriodicSupercell(2))
    with pytest.raises(ValueError, match="temperature"):
        tds_intensity(m, phi, q, None, geometry=PeriodicSupercell(2))
    with pytest.raises(ValueError, match="shape"):
        tds_intensity(m, phi, q[:, :2], 300.0)
    bad = phi.clone()
    bad[0] = 2.0  # b0 > 0: anti-bonding nearest neighbours
    with pytest.raises(xtds.UnstableError):
        tds_intensity(m, bad, q, 300.0, geometry=PeriodicSupercell(2))
    with pytest.raises(ValueError, match="method"):
        tds_intensity(m, phi, q, 300.0, method="two_phonon")
    # the bare lattice sum at q = 0 is exactly N per primitive cell... times N: (Σ 1)² / N_prim
    I0 = tds_intensity(m, phi, np.zeros((1, 3)), 300.0, geometry=PeriodicSupercell(2), form_factor=None)
    assert float(I0[0]) == pytest.approx(32.0, rel=1e-12)


def test_form_factors_from_table():
    f = form_factors(["Ni", "Si"], [0.0, 5.0, 10.0])
    assert f[0, 0] == pytest.approx(28.0, abs=0.1) and f[1, 0] == pytest.approx(14.0, abs=0.1)
    assert np.all(np.diff(f, axis=1) < 0)
