"""The anharmonic (cumulant) TDS model against a brute-force pair sum, its symmetry, its harmonic
limit, and the MD tools that give its truth (covariance-defined constants, measured cumulants)."""

import numpy as np
import pytest
import torch

import xtds
from xtds import Anharmonic, AnharmonicIFC, TDSModel
from xtds.lattice.cumulants import invariant_basis, q_monomials, rotate_components
from xtds.md import Trajectory, effective_constants, md_intensity, measured_cumulants
from xtds.observables import PeriodicSupercell, supercell_q_grid, tds_intensity
from xtds.observables.scattering import form_factors
from xtds.units import KB_EV_PER_K


@pytest.fixture(scope="module")
def cu():
    m = AnharmonicIFC(xtds.Crystal.fcc("Cu", a=3.61), shells=2, anharmonic=Anharmonic(shells=1))
    base = m.vector({"b0": -1.2, "b1": -0.1, "b2": -1.3, "c0": 0.1, "c1": -0.02})
    rng = np.random.default_rng(3)
    phi = base.clone()
    phi[m.n_harmonic :] = torch.as_tensor(rng.normal(0, 1, len(m.names) - m.n_harmonic)) * 3e-5
    return m, base, phi


@pytest.fixture(scope="module")
def si():
    m = AnharmonicIFC(xtds.Crystal.preset("Si"), shells=2, anharmonic=Anharmonic(shells=1))
    rng = np.random.default_rng(0)
    phi = torch.zeros(m.n_free, dtype=torch.float64)
    phi[: m.n_harmonic] = torch.as_tensor(xtds.IFCModel(m.crystal, shells=2).central_force({1: 6.0, 2: 1.0}))
    phi[: m.n_harmonic] += 0.05 * torch.as_tensor(rng.standard_normal(m.n_harmonic))
    phi[m.n_harmonic :] = torch.as_tensor(rng.normal(0, 1, len(m.names) - m.n_harmonic)) * 3e-5
    return m, phi


def _tensor_components(m, rank, key, theta, pair=True):
    maps = (m._pair_maps if pair else m._site_maps)[rank]
    return maps[key] @ theta if key in maps else np.zeros(len(q_monomials(torch.zeros(1, 3), rank)[0]))


def brute_force(m, phi, L, T, q):
    """Σ_jj' f f e^{iq·(x_j'−x_j)} exp(−κ₂/2 − iκ₃/6 + κ₄/24) over every ordered pair of the
    supercell: κ₂ from the dense pseudo-inverse, κ₃, κ₄ from the site and pair tensors."""
    sc = xtds.Supercell.from_crystal(m, L)
    H = xtds.supercell_hessian(m, phi, sc)
    C = KB_EV_PER_K * T * torch.linalg.pinv(H, hermitian=True, rtol=1e-10)
    N = sc.n_atoms
    C = C.reshape(N, 3, N, 3).permute(0, 2, 1, 3).numpy()
    diag = C[np.arange(N), np.arange(N)]
    B = diag[:, None] + diag[None, :] - C - np.swapaxes(C, -1, -2)  # (N, N, 3, 3)
    X = np.array(sc.positions)
    site = np.array(sc.site)
    theta = phi[m.n_harmonic :].numpy()
    sup = np.asarray(sc.lattice)
    d = X[None, :, :] - X[:, None, :]
    fr = d @ np.linalg.inv(sup)
    dmin = (fr - np.round(fr)) @ sup
    P = m.cumulant_pairs
    comps = {}
    for r in (3, 4):
        n_sym = len(q_monomials(torch.zeros(1, 3), r)[0])
        site_c = np.stack([_tensor_components(m, r, int(s), theta, pair=False) for s in site])  # (N, n_sym)
        K = site_c[None, :, :] + (-1) ** r * site_c[:, None, :]
        for j in range(N):
            for jp in range(N):
                dist = np.linalg.norm(P.pair_vector - dmin[j, jp], axis=1)
                dist[(P.pair_src != site[j]) | (P.pair_dst != site[jp])] = np.inf
                p = int(dist.argmin())
                if dist[p] < 1e-4:
                    K[j, jp] += _tensor_components(m, r, p, theta)
        K[np.arange(N), np.arange(N)] = np.zeros(n_sym)  # Δu = 0
        comps[r] = K
    species = [m.primitive.species[s] for s in site]
    out = []
    for qq in np.asarray(q):
        f = form_factors(species, [float(np.linalg.norm(qq))])[:, 0]
        qt = torch.as_tensor(qq[None])
        k3 = comps[3] @ q_monomials(qt, 3)[0].numpy()
        k4 = comps[4] @ q_monomials(qt, 4)[0].numpy()
        k2 = np.einsum("a,ijab,b->ij", qq, B, qq)
        terms = f[:, None] * f[None, :] * np.exp(1j * d @ qq) * np.exp(-0.5 * k2 - 1j * k3 / 6 + k4 / 24)
        out.append(terms.sum().real / (N / m.n_sites))
    return np.array(out)


@pytest.mark.parametrize("which", ["cu", "si"])
def test_anharmonic_equals_brute_force(which, cu, si):
    """Site K₄ (both), site K₃ (Si: no inversion at the atom), pair K₃ and K₄, two sites (Si)."""
    m, phi = (cu[0], cu[2]) if which == "cu" else si
    L = 2
    q = supercell_q_grid(m.crystal, L, 6)
    q = q[np.random.default_rng(1).choice(len(q), 25, replace=False)]
    got = tds_intensity(m, phi, q, 300.0, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False).numpy()
    ref = brute_force(m, phi, L, 300.0, q)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-10
    harmonic = tds_intensity(m, torch.cat([phi[: m.n_harmonic], torch.zeros(m.n_free - m.n_harmonic,
                                                                            dtype=phi.dtype)]),
                             q, 300.0, quantum=False, geometry=PeriodicSupercell(L), laue_reduce=False).numpy()
    assert np.abs(got / harmonic - 1).max() > 1e-3  # the cumulants matter at these q


def test_zero_cumulants_are_the_exact_model(cu):
    m, base, _ = cu
    h = xtds.IFCModel(m.crystal, shells=2)
    q = supercell_q_grid(m.crystal, 3, 5)
    a = tds_intensity(m, base, q, 300.0, quantum=False, geometry=PeriodicSupercell(3))
    b = tds_intensity(h, base[: m.n_harmonic], q, 300.0, quantum=False, geometry=PeriodicSupercell(3))
    assert ((a - b).abs() / b).max() < 1e-11


def test_symmetry_of_the_parameterization(cu, si):
    # cubic site: K4 has xxxx and xxyy, K3 is forbidden; the Si site (-43m) has K3_xyz
    cubic = xtds.IFCModel(xtds.Crystal.fcc("Ni", a=3.52), shells=1)._ops.cartesian
    assert invariant_basis(cubic, [1] * len(cubic), 4)[0] == ("xxxx", "xxyy")
    assert invariant_basis(cubic, [1] * len(cubic), 3)[0] == ()
    m_si = si[0]
    assert [n for n in m_si.names if n.startswith("k3a")] == ["k3a0"]
    assert m_si.info[m_si.names.index("k3a0")].element == "xyz"
    # every member tensor is its representative's image: T(g p) = R_g T(p), reversed pairs (−1)^r
    for m in (cu[0], m_si):
        theta = np.random.default_rng(5).normal(size=m.n_free - m.n_harmonic)
        for r in m.cumulant_ranks:
            maps, P = m._pair_maps[r], m.cumulant_pairs
            for p, M in maps.items():
                for g in range(0, len(P._ops), 7):
                    q = P._image(g, p)
                    np.testing.assert_allclose(maps[q] @ theta, rotate_components(P._ops.cartesian[g], r) @ M @ theta,
                                               atol=1e-12)
                np.testing.assert_allclose(maps[P._transposed(p)] @ theta, (-1) ** r * M @ theta, atol=1e-12)


def test_settings_and_errors(cu):
    m = cu[0]
    assert m.names[m.n_harmonic :][:2] == ("k4a0", "k4a1")
    da = m.to_dataarray(cu[2])
    assert set(da["units"].values) == {"eV/Å^2", "Å^3", "Å^4"}
    assert torch.equal(m.vector(da), cu[2])
    with pytest.raises(ValueError, match="shells"):
        Anharmonic(shells=-1)
    with pytest.raises(ValueError, match="order"):
        Anharmonic(order=5)
    far = AnharmonicIFC(m.crystal, shells=2, anharmonic=Anharmonic(shells=3, quartic_shells=0))
    assert far.cumulant_pairs.n_shells == 3 and "k3d0" in far.names and not any(n.startswith("k4b") for n in far.names)
    with pytest.raises(ValueError, match="no terms"):
        Anharmonic(shells=0, site=False, quartic_shells=0)
    q = supercell_q_grid(m.crystal, 3, 2)
    with pytest.raises(NotImplementedError, match="periodic supercell only"):
        tds_intensity(m, cu[2], q[1:], 300.0, method="one_phonon")
    obs, _ = TDSModel(anharmonic=Anharmonic(shells=1), geometry=PeriodicSupercell(3), quantum=False).observable(
        xtds.IFCModel(m.crystal, shells=2), q, 300.0)
    assert obs.model.names == m.names


def _gaussian_frames(model, phi, L, T, n, seed):
    """Frames drawn from the harmonic covariance k_BT H⁺ of a supercell (exact Gaussian truth)."""
    sc = xtds.Supercell.from_crystal(model, L)
    H = xtds.supercell_hessian(model, phi, sc).numpy()
    lam, V = np.linalg.eigh(H)
    keep = lam > 1e-8 * lam.max()
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, int(keep.sum())))
    u = (z * np.sqrt(KB_EV_PER_K * T / lam[keep])) @ V[:, keep].T
    return Trajectory(model.crystal, L, u.reshape(n, -1, 3), T)


def test_effective_constants_and_cumulants_of_gaussian_frames(cu):
    m, base, _ = cu
    h = xtds.IFCModel(m.crystal, shells=2)
    tr = _gaussian_frames(h, base[: m.n_harmonic], 3, 300.0, 4000, seed=2)
    eff = effective_constants(tr, h)
    big = np.abs(base[: m.n_harmonic].numpy()) > 0.5
    err = np.abs(eff.phi - base[: m.n_harmonic].numpy())
    assert np.all(err[big] / np.abs(base[: m.n_harmonic].numpy()[big]) < 0.01)
    assert np.all(err < 5 * eff.stderr + 2e-3)
    # Gaussian frames have no third or fourth cumulants: within their sampling noise
    cum = measured_cumulants(tr, m)
    u2 = float(np.mean(tr.displacements ** 2))
    for name, v in cum.items():
        scale = u2 ** (1.5 if name.startswith("k3") else 2)
        assert abs(v) < 0.05 * scale, name


@pytest.mark.parametrize("preset", ["Cu", "Si"])
def test_displacement_covariance_is_the_sum_over_frames(preset):
    """C(k) from the translation-averaged frame covariance equals ⟨ũ(k) ũ(k)†⟩ summed over the frames
    and atoms directly (random frames of a conventional cell, primitive model: 4 → 1 and 8 → 2
    sites); ``splits=1`` is the first against the second half."""
    from xtds.lattice.kmesh import commensurate_k
    from xtds.lattice.supercell import supercell_sites
    from xtds.md.effective import displacement_covariance

    crystal = xtds.Crystal.fcc("Cu", a=3.61) if preset == "Cu" else xtds.Crystal.preset("Si")
    model = xtds.IFCModel(crystal, shells=1)
    L = (3, 2, 2)
    n_atoms = crystal.n_atoms * 12
    rng = np.random.default_rng(5)
    tr = Trajectory(crystal, L, rng.normal(0, 0.05, (40, n_atoms, 3)) + rng.normal(0, 0.02, (1, n_atoms, 3)), 300.0)
    k, C = displacement_covariance(tr, model)
    prim, x = model.primitive, tr.ideal_positions
    site = supercell_sites(prim, tr.supercell_lattice, x)
    k_all = commensurate_k(prim.lattice, tr.supercell_lattice)
    frac = k_all @ np.asarray(prim.lattice).T / (2 * np.pi)
    assert np.allclose(k, k_all[~np.all(np.abs(frac - np.round(frac)) < 1e-8, axis=1)])
    n_cells = n_atoms // prim.n_atoms
    U = np.concatenate([np.einsum("fja,jk->fka", tr.displacements[:, site == s],
                                  np.exp(-1j * x[site == s] @ k.T) / np.sqrt(n_cells)) for s in range(prim.n_atoms)],
                       axis=-1)
    direct = np.einsum("fki,fkj->kij", U, U.conj()) / tr.n_frames
    assert np.abs(C - direct).max() < 1e-12 * np.abs(direct).max()
    eff, eff3 = effective_constants(tr, model), effective_constants(tr, model, splits=3)
    halves = [effective_constants(h, model).phi for h in tr.halves()]
    assert np.allclose(eff.halves, halves, rtol=1e-12, atol=1e-12)
    assert np.allclose(eff.stderr, np.abs(halves[0] - halves[1]) / 2, rtol=1e-12, atol=1e-12)
    assert np.allclose(eff3.phi, eff.phi, rtol=1e-12) and np.all(eff3.stderr > 0)
    with pytest.raises(ValueError, match="splits"):
        effective_constants(tr, model, splits=6)


def test_gaussian_intensity_of_the_frames_is_the_direct_sum():
    """xtds.md.gaussian_intensity: Σ_j' cos(q·d) exp(−½ qᵀ B̄ q) over every atom j' from atom 0 of the
    home cell, with B̄ the pair covariances of the frames averaged over the translations by explicit
    loops (f = 1); NaN where the grid is; a grid of another supercell is refused."""
    from xtds.md import gaussian_intensity

    crystal = xtds.Crystal.fcc("Cu", a=3.61)
    L = (2, 2, 2)
    rng = np.random.default_rng(8)
    n_atoms = 4 * 8
    u = rng.normal(0, 0.06, (30, n_atoms, 3)) + 0.03 * np.roll(rng.normal(0, 1, (30, n_atoms, 3)), 1, axis=1)
    tr = Trajectory(crystal, L, u, 300.0)
    grid = md_intensity(tr, 2, form_factor=None)
    got = gaussian_intensity(tr, grid)["intensity"].values
    x, U = tr.ideal_positions, tr.displacements
    cells = x.reshape(8, 4, 3)
    H, K, Lz = np.meshgrid(grid.H.values, grid.K.values, grid.L.values, indexing="ij")
    q = crystal.rlu_to_cartesian(np.stack([H, K, Lz], -1).reshape(-1, 3))
    sup = tr.supercell_lattice
    want = np.zeros(len(q))
    for jp in range(n_atoms):
        B = np.zeros((3, 3))
        for R in range(8):  # translate the pair (atom 0 of cell 0, j') by every cell R
            j0 = 4 * R
            shift = cells[R, 0] - cells[0, 0]
            f = (x[jp] + shift) @ np.linalg.inv(sup)
            target = (f - np.floor(f + 1e-9)) @ sup
            jt = int(np.linalg.norm(((x - target) @ np.linalg.inv(sup) + 0.5) % 1 - 0.5, axis=1).argmin())
            du = U[:, jt] - U[:, j0]
            B += du.T @ du / len(U)
        B /= 8
        d = x[jp] - x[0]
        want += np.cos(q @ d) * np.exp(-0.5 * np.einsum("qa,ab,qb->q", q, B, q))
    want = want.reshape(H.shape)
    ok = np.isfinite(grid["intensity"].values)
    assert np.isnan(got[~ok]).all() and np.abs(got[ok] - want[ok]).max() < 1e-10 * np.abs(want).max()
    with pytest.raises(ValueError, match="supercell"):
        gaussian_intensity(Trajectory(crystal, (3, 3, 3), rng.normal(0, 0.05, (4, 108, 3)), 300.0), grid)


def test_md_intensity_is_the_direct_sum():
    cr = xtds.Crystal.fcc("Cu", a=3.61)
    rng = np.random.default_rng(0)
    tr = Trajectory(cr, 2, 0.05 * rng.standard_normal((3, 32, 3)), 300.0)
    ds = md_intensity(tr, 4, blocks=3)
    hkl = np.stack(np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij"), -1).reshape(-1, 3)
    q = cr.rlu_to_cartesian(hkl)
    f = form_factors(["Cu"], np.linalg.norm(q, axis=1))[0]
    ref = np.mean([np.abs(np.exp(1j * q @ (tr.ideal_positions + u).T).sum(1)) ** 2 for u in tr.displacements], 0)
    got = ds.intensity.values.reshape(-1)
    origin = np.all(hkl == 0, axis=1)
    assert np.isnan(got[origin]).all()  # q = 0: N f² in every frame, no information, left out
    np.testing.assert_allclose(got[~origin], (ref * f ** 2 / 32)[~origin], rtol=1e-6,
                               atol=1e-9 * float(ref.max() * f.max() ** 2))
    assert ds.attrs["geometry"] == "PeriodicSupercell(repeats=(2, 2, 2))" and ds.attrs["quantum"] == 0
    assert np.all(ds.sigma.values.reshape(-1)[~origin] >= 0)


def test_trajectory_roundtrip(tmp_path):
    cr = xtds.Crystal.fcc("Cu", a=3.61)
    tr = Trajectory(cr, 2, np.zeros((2, 32, 3)), 300.0, {"seed": 1})
    tr.save(tmp_path / "t.npz")
    back = Trajectory.load(tmp_path / "t.npz")
    assert back.repeats == (2, 2, 2) and back.meta == {"seed": 1} and back.displacements.shape == (2, 32, 3)
    with pytest.raises(ValueError, match="shape"):
        Trajectory(cr, 2, np.zeros((2, 31, 3)), 300.0)


@pytest.mark.heavy
def test_fit_of_harmonic_data_finds_no_anharmonicity(cu):
    """Exact harmonic data: the cumulants come out zero and the constants as the harmonic fit's."""
    m, base, _ = cu
    h = xtds.IFCModel(m.crystal, shells=2)
    n = np.arange(-6, 7) / 3
    grid = xr_volume(m.crystal, n)
    data = xtds.simulate(grid, h, base[: m.n_harmonic].numpy(), temperature=300.0,
                         model=TDSModel(geometry=PeriodicSupercell(3), quantum=False))
    data.attrs["geometry"] = "PeriodicSupercell(repeats=(3, 3, 3))"
    start = {k: 1.05 * float(v) for k, v in zip(h.names, base[: m.n_harmonic].numpy(), strict=True)}
    settings = TDSModel(quantum=False)
    fh = data.tds.fit(h, initial=start, model=settings)
    fa = data.tds.fit(h, initial=start, model=TDSModel(quantum=False, anharmonic=Anharmonic(shells=1)))
    for name in h.names:
        assert abs(float(fa.ifc.sel(constant=name)) - float(fh.ifc.sel(constant=name))) < 1e-6
        assert abs(float(fa.ifc.sel(constant=name)) - float(base[h.names.index(name)])) < 1e-6
    for name in m.names[m.n_harmonic :]:
        assert abs(float(fa.ifc.sel(constant=name))) < 1e-9, name
    assert fa.ifc.attrs["anharmonic"] == repr(Anharmonic(shells=1))
    cmp = xtds.compare_fits(fh, fa)
    assert not cmp["supported"] and cmp["delta_parameters"] == len(m.names) - m.n_harmonic


def test_compare_fits_takes_the_loss_of_the_fits(cu):
    """χ² fits are compared on their χ² (the loss is read from each problem's settings): Δχ² is the
    difference of the final losses, and the second shell that made the data is supported."""
    m, base, _ = cu
    h1, h2 = xtds.IFCModel(m.crystal, shells=1), xtds.IFCModel(m.crystal, shells=2)
    n = np.linspace(-2, 2, 7)
    data = xtds.simulate(xr_volume(m.crystal, n), h2, base[: m.n_harmonic].numpy(), temperature=300.0,
                         model=TDSModel(geometry=PeriodicSupercell(3), quantum=False))
    data.attrs["geometry"] = "PeriodicSupercell(repeats=(3, 3, 3))"
    rng = np.random.default_rng(1)
    sigma = 0.01 * np.abs(data["intensity"]) + 1e-3
    data["intensity"] = data["intensity"] + sigma * rng.standard_normal(sigma.shape)
    data["sigma"] = sigma
    kw = dict(model=TDSModel(quantum=False), loss="chi2", background=False)
    f1 = data.tds.fit(h1, initial={k: 1.05 * float(v) for k, v in zip(h1.names, base[:3].numpy(), strict=True)}, **kw)
    f2 = data.tds.fit(h2, initial={k: 1.05 * float(v) for k, v in zip(h2.names, base[:5].numpy(), strict=True)}, **kw)
    cmp = xtds.compare_fits(f1, f2)
    assert cmp["loss"] == "chi2" and cmp["delta_parameters"] == 2
    assert cmp["delta_chi2"] == pytest.approx(f1.attrs["final_loss"] - f2.attrs["final_loss"], rel=1e-12)
    assert cmp["supported"]


def xr_volume(crystal, n):
    import xarray as xr

    return xr.Dataset(coords={d: (d, n, {"units": "rlu"}) for d in "HKL"},
                      attrs={"unit_cell": [float(x) for x in crystal.parameters], "space_group": crystal.space_group,
                             "temperature": 300.0})


@pytest.mark.heavy
def test_md_effective_constants_at_low_temperature_are_the_static_hessian():
    """asap3 EMT copper at 20 K: k_BT C(k)⁻¹ from MD equals the potential's own Hessian (finite
    differences of its forces), projected on the same basis, within the frames' noise."""
    pytest.importorskip("asap3")
    from asap3 import EMT

    from xtds.md import equilibrium_lattice_constant, run_md
    from xtds.md.trajectory import _atoms

    a = equilibrium_lattice_constant("Cu")
    cr = xtds.Crystal.fcc("Cu", a=a)
    model = xtds.IFCModel(cr, shells=3)
    atoms = _atoms(cr, 3)
    atoms.calc = EMT()
    pos0 = atoms.get_positions().copy()
    h = 1e-3
    block = np.zeros((len(atoms), 3, 3))
    for i in range(3):
        F = []
        for s in (1, -1):
            p = pos0.copy()
            p[0, i] += s * h
            atoms.set_positions(p)
            F.append(atoms.get_forces())
        block[:, i, :] = -(F[0] - F[1]) / (2 * h)  # Φ(0, j)_{ij} = −∂F_j/∂u_0
    sup = np.asarray(atoms.cell)
    blocks = np.zeros((model.n_pairs, 3, 3))
    for p in range(model.n_pairs):
        f = (pos0 + 0 - pos0[0] - model.pair_vector[p]) @ np.linalg.inv(sup)
        j = int(np.linalg.norm((f - np.round(f)) @ sup, axis=1).argmin())
        blocks[p] = block[j]
    static, _ = model.project(blocks)
    traj = run_md(cr, 3, 20.0, n_frames=1500, stride=25, equilibrate_steps=1000, seed=4)
    eff = effective_constants(traj, model)
    for name in ("b0", "b2"):
        i = model.names.index(name)
        # 1500 frames 100 fs apart: the split-half error of b0 is about 1 %
        assert abs(eff.phi[i] / static[i] - 1) < 0.03, (name, eff.phi[i], static[i])
        assert abs(eff.phi[i] - static[i]) < 4 * eff.stderr[i] + 0.01 * abs(static[i])


def test_run_md_refuses_what_it_cannot_do():
    pytest.importorskip("asap3")
    from xtds.md import run_md

    with pytest.raises(ValueError, match="EMT"):
        run_md(xtds.Crystal.preset("Si"), 2, 300.0, n_frames=2)


@pytest.mark.parametrize("which", ["cu", "si"])
def test_cheap_cumulant_jacobian_equals_forward_mode(which, cu, si):
    """The fit's cumulant columns (far pairs summed once, only the shells differentiated) equal the
    full forward-mode Jacobian, site K₃ phases (Si) included."""
    m, phi = (cu[0], cu[2]) if which == "cu" else si
    q = supercell_q_grid(m.crystal, 2, 5)
    obs = xtds.TDSIntensity(m, q, 300.0, quantum=False, geometry=PeriodicSupercell(2), laue_reduce="auto")
    full = torch.func.jacfwd(obs.mean)(phi)[:, m.n_harmonic :]
    fast = obs.cumulant_jacobian(phi)
    assert float((full - fast).abs().max() / full.abs().max()) < 1e-12
