"""Third cumulants of every pair from cubic bond constants (xtds.observables.tds.cubic): the FFT
form against a direct sum over every bond and pair of a dense supercell, in the intensity; its
Jacobian; its symmetry; its refusal of quantum statistics; a fit that returns the constants."""

import numpy as np
import pytest
import torch

import xtds
from xtds import Anharmonic, AnharmonicIFC
from xtds.lattice.cumulants import component_embedding, multisets, q_monomials
from xtds.observables import PeriodicSupercell, supercell_q_grid, tds_intensity
from xtds.observables.scattering import form_factors
from xtds.units import KB_EV_PER_K

T = 300.0
BONDS_ONLY = Anharmonic(shells=0, quartic_shells=0, site=False, cubic_shells=1)


@pytest.fixture(scope="module")
def cu():
    m = AnharmonicIFC(xtds.Crystal.fcc("Cu", a=3.61), shells=2, anharmonic=BONDS_ONLY)
    phi = m.vector({"b0": -1.2, "b1": -0.1, "b2": -1.3, "c0": 0.1, "c1": -0.02, "p3b0": -4.0, "p3b1": -6.0,
                    "p3b2": 1.0})
    return m, phi


@pytest.fixture(scope="module")
def si():
    m = AnharmonicIFC(xtds.Crystal.preset("Si"), shells=2, anharmonic=BONDS_ONLY)
    rng = np.random.default_rng(0)
    phi = torch.zeros(m.n_free, dtype=torch.float64)
    phi[: m.n_harmonic] = torch.as_tensor(xtds.IFCModel(m.crystal, shells=2).central_force({1: 6.0, 2: 1.0}))
    phi[: m.n_harmonic] += 0.05 * torch.as_tensor(rng.standard_normal(m.n_harmonic))
    phi[m.n_harmonic :] = torch.as_tensor(rng.normal(0, 3.0, m.n_free - m.n_harmonic))
    return m, phi


def brute_force(m, phi, L, q):
    """Σ_jj' f f e^{iq·d} exp(−κ₂/2 − iκ₃/6) over every ordered pair of the dense supercell, with
    K₃(j, j') = −(1/2k_BT) Σ_{ordered bonds l→l'} Ψ X X X, X = C_{j'l'} − C_{j'l} − C_{jl'} + C_{jl},
    every bond found by its vector among the supercell's atoms, C the dense pseudo-inverse."""
    sc = xtds.Supercell.from_crystal(m, L)
    H = xtds.supercell_hessian(m, phi, sc)
    N = sc.n_atoms
    C = (KB_EV_PER_K * T * torch.linalg.pinv(H, hermitian=True, rtol=1e-10)).reshape(N, 3, N, 3)
    C = C.permute(0, 2, 1, 3).numpy()  # C[i, j] = ⟨u_i u_jᵀ⟩
    X = np.array(sc.positions)
    site = np.array(sc.site)
    sup = np.asarray(sc.lattice)
    fr = (X[None, :, :] - X[:, None, :]) @ np.linalg.inv(sup)
    dmin = (fr - np.round(fr)) @ sup
    P = m.cumulant_pairs
    theta = phi[m.n_harmonic :].numpy()
    E = component_embedding(3)
    K = np.zeros((N, N, 3, 3, 3))
    for p, M in m._bond_maps.items():
        psi = (E @ (M @ theta)).reshape(3, 3, 3)
        for l in np.nonzero(site == P.pair_src[p])[0]:
            lp = int(np.argmin(np.linalg.norm(dmin[l] - P.pair_vector[p], axis=1)))
            assert np.linalg.norm(dmin[l, lp] - P.pair_vector[p]) < 1e-6
            # Xb[j, j'] = ⟨(u_j' − u_j) Δᵀ⟩ for Δ = u_l' − u_l
            Xb = C[:, lp][None] - C[:, l][None] - C[:, lp][:, None] + C[:, l][:, None]
            K += np.einsum("def,jkad,jkbe,jkcf->jkabc", psi, Xb, Xb, Xb)
    K *= -1 / (2 * KB_EV_PER_K * T)
    ms = multisets(3)
    comps = np.stack([K[..., a, b, c] for a, b, c in ms], -1)
    species = [m.primitive.species[s] for s in site]
    d = X[None, :, :] - X[:, None, :]
    diag = C[np.arange(N), np.arange(N)]
    B = diag[:, None] + diag[None, :] - C - np.swapaxes(C, -1, -2)
    out = []
    for qq in np.asarray(q):
        f = form_factors(species, [float(np.linalg.norm(qq))])[:, 0]
        k3 = comps @ q_monomials(torch.as_tensor(qq[None]), 3)[0].numpy()
        k2 = np.einsum("a,ijab,b->ij", qq, B, qq)
        terms = f[:, None] * f[None, :] * np.exp(1j * d @ qq) * np.exp(-0.5 * k2 - 1j * k3 / 6)
        out.append(terms.sum().real / (N / m.n_sites))
    return np.array(out), comps


@pytest.mark.parametrize("which", ["cu", "si"])
def test_bond_cumulants_equal_the_direct_sum(which, cu, si):
    """FCC (one site, inversion: no site K₃) and diamond Si (two sites without inversion: the
    R-independent sums are the sites' K₃ and do not cancel)."""
    m, phi = cu if which == "cu" else si
    L = 2
    q = supercell_q_grid(m.crystal, L, 6)
    q = q[np.random.default_rng(1).choice(len(q), 25, replace=False)]
    got = tds_intensity(m, phi, q, T, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False).numpy()
    ref, comps = brute_force(m, phi, L, q)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-10
    harmonic = phi.clone()
    harmonic[m.n_harmonic :] = 0
    h = tds_intensity(m, harmonic, q, T, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False).numpy()
    assert np.abs(got / h - 1).max() > 1e-3  # the bonds' K₃ matter at these q
    # every pair has its K₃ (not only near ones), odd under reversing the pair, zero for Δu = 0
    N = comps.shape[0]
    assert np.abs(comps[np.arange(N), np.arange(N)]).max() < 1e-12 * np.abs(comps).max()
    np.testing.assert_allclose(comps, -np.swapaxes(comps, 0, 1), atol=1e-12 * np.abs(comps).max())
    assert (np.abs(comps).max(-1) > 1e-3 * np.abs(comps).max()).mean() > 0.5


@pytest.mark.parametrize("which", ["cu", "si"])
def test_cumulant_jacobian_with_bonds_equals_forward_mode(which, cu, si):
    m, phi = cu if which == "cu" else si
    q = supercell_q_grid(m.crystal, 2, 5)
    obs = xtds.TDSIntensity(m, q, T, quantum=False, geometry=PeriodicSupercell(2), laue_reduce="auto")
    full = torch.func.jacfwd(obs.mean)(phi)
    fast = obs.cumulant_jacobian(phi)
    assert float((full[:, m.n_harmonic :] - fast).abs().max() / full[:, m.n_harmonic :].abs().max()) < 1e-12
    assert torch.isfinite(full[:, : m.n_harmonic]).all()  # through the covariances into the bonds' K₃


def test_names_units_and_refusals(cu):
    m = cu[0]
    assert m.names[m.n_harmonic :] == ("p3b0", "p3b1", "p3b2")
    assert set(m.units[m.n_harmonic :]) == {"eV/Å^3"}
    both = AnharmonicIFC(m.crystal, shells=2, anharmonic=Anharmonic(shells=1, cubic_shells=2))
    assert [n for n in both.names if n.startswith("p3")] == ["p3b0", "p3b1", "p3b2", "p3c0", "p3c1"]
    assert "k3b0" in both.names and "k4a0" in both.names
    with pytest.raises(ValueError, match="cubic_shells"):
        Anharmonic(cubic_shells=-1)
    q = supercell_q_grid(m.crystal, 2, 4)
    with pytest.raises(NotImplementedError, match="quantum=False"):
        xtds.TDSIntensity(m, q, T, quantum=True, geometry=PeriodicSupercell(2))


@pytest.mark.parametrize("harmonic", [False, True])
def test_fit_returns_the_bond_constants(cu, harmonic):
    """Noise-free data made with bond constants: the fit from 5 % off returns every constant;
    made without (harmonic data), the bond constants come out zero and the force constants exact."""
    import xarray as xr

    m, phi = cu
    if harmonic:
        phi = phi.clone()
        phi[m.n_harmonic :] = 0
    n = np.arange(-6, 7) / 3
    grid = xr.Dataset(coords={d: (d, n, {"units": "rlu"}) for d in "HKL"},
                      attrs={"unit_cell": [float(x) for x in m.crystal.parameters],
                             "space_group": m.crystal.space_group, "temperature": T})
    data = xtds.simulate(grid, m, phi.numpy(), temperature=T,
                         model=xtds.TDSModel(geometry=PeriodicSupercell(3), quantum=False))
    data.attrs["geometry"] = "PeriodicSupercell(repeats=(3, 3, 3))"
    start = {k: 1.05 * float(v) if v else 0.3 for k, v in zip(m.names, phi.numpy(), strict=True)}
    res = data.tds.fit(m, initial=start, model=xtds.TDSModel(quantum=False))
    for name, v in zip(m.names, phi.numpy(), strict=True):
        assert abs(float(res.ifc.sel(constant=name)) - v) < 1e-6 * max(1.0, abs(v)), name


def test_frame_covariance_is_the_direct_average():
    from xtds.md import Trajectory, frame_covariance

    rng = np.random.default_rng(2)
    cr = xtds.Crystal.fcc("Cu", a=3.61)
    traj = Trajectory(cr, (2, 2, 2), rng.normal(size=(7, 32, 3)), 300.0)
    C = frame_covariance(traj)  # (n, n, 2, 2, 2, 3, 3)
    U = traj.displacements.reshape(7, 2, 2, 2, 4, 3)
    for c, cp, r in ((0, 0, (1, 0, 1)), (1, 3, (0, 1, 1)), (2, 2, (0, 0, 0))):
        direct = np.zeros((3, 3))
        for r0 in np.ndindex(2, 2, 2):
            r1 = tuple((np.array(r0) + r) % 2)
            direct += np.einsum("fa,fb->ab", U[(slice(None), *r0, c)], U[(slice(None), *r1, cp)])
        np.testing.assert_allclose(C[(c, cp, *r)], direct / (7 * 8), atol=1e-12)


@pytest.mark.heavy
def test_bond_constants_measured_from_md_frames():
    """EMT copper at 900 K: the cubic bond constants measured from the frames (every pair's K₃)
    agree between the two halves of the run (within 10 %), and Gaussian frames with the same
    covariance give constants near zero (the third moments are then noise)."""
    from xtds.md import Trajectory, equilibrium_lattice_constant, measured_bond_constants, run_md

    pytest.importorskip("asap3")
    traj = run_md(xtds.Crystal.fcc("Cu", a=equilibrium_lattice_constant("Cu")), 3, 900.0, n_frames=1500,
                  stride=10, seed=1)
    m = AnharmonicIFC(traj.crystal, shells=2, anharmonic=BONDS_ONLY)
    psi = [measured_bond_constants(h, m) for h in traj.halves()]
    for name in ("p3b0", "p3b1", "p3b2"):
        assert abs(psi[0][name] / psi[1][name] - 1) < 0.1, (name, psi)
    U = traj.displacements.reshape(traj.n_frames, -1)
    cov = np.cov(U.T)
    gauss = np.random.default_rng(0).multivariate_normal(np.zeros(len(cov)), cov, size=traj.n_frames // 2,
                                                         method="eigh")
    control = measured_bond_constants(Trajectory(traj.crystal, traj.repeats, gauss.reshape(-1, 108, 3), 900.0), m)
    for name in ("p3b0", "p3b1"):
        assert abs(control[name]) < 0.1 * abs(psi[0][name]), (name, control)


def test_jacobian_in_the_force_constants_equals_finite_differences(cu):
    """The bonds' K₃ move with the force constants (through the covariances); the forward-mode
    Jacobian (which takes that dependence as a term of value zero) equals central differences, in
    the force constants and in the bond constants."""
    m, phi = cu
    q = supercell_q_grid(m.crystal, 2, 5)
    obs = xtds.TDSIntensity(m, q, T, quantum=False, geometry=PeriodicSupercell(2), laue_reduce=False)
    J = torch.func.jacfwd(obs.mean)(phi)
    for i in range(m.n_free):
        h = 1e-6 if i < m.n_harmonic else 1e-3  # (the intensity is 10⁵× its derivative in Ψ: round-off)
        e = torch.zeros_like(phi)
        e[i] = h
        fd = (obs.mean(phi + e) - obs.mean(phi - e)) / (2 * h)
        assert float((J[:, i] - fd).abs().max() / fd.abs().max()) < 1e-6, m.names[i]


def test_validity_names_the_bonds_largest_phase(cu):
    """validity() with bond constants: their largest |κ₃|/6 over every pair, equal to the direct
    sum's (brute_force above), and a clear error without the supercell."""
    m, phi = cu
    q = supercell_q_grid(m.crystal, 2, 6)
    got = m.validity(phi, q, temperature=T, repeats=2)["kappa3_bonds"]
    _, comps = brute_force(m, phi, 2, q[:1])
    mono = q_monomials(torch.as_tensor(q), 3).numpy()  # (Q, 10)
    ref = np.abs(np.einsum("qs,jks->qjk", mono, comps)).max() / 6
    assert abs(got / ref - 1) < 1e-9 and got > 0
    with pytest.raises(ValueError, match="repeats"):
        m.validity(phi, q)
