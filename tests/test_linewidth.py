"""Phonon linewidths (xtds.observables.neutron.linewidth): reduction to the undamped model, the
spectrum against mode-by-mode Voigt lines (scipy), and a damped spectrum fitted back."""

import numpy as np
import pytest
import torch
from scipy.special import voigt_profile

import xtds
from xtds.observables.neutron import sqe
from xtds.observables.neutron.linewidth import LinewidthIFC, Linewidths, fine_energies, lorentzian_kernel
from xtds.observables.neutron.powder import PowderSpectrum
from xtds.units import HBAR_OMEGA_EV, KB_EV_PER_K

Q = np.arange(2.0, 6.01, 0.25)
E = np.arange(6.0, 42.1, 0.5)


def _models():
    base = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=2)
    lw = LinewidthIFC.of(base, Linewidths())
    return base, lw, dict(zip(base.names, base.central_force({1: 1.6, 2: 0.3}), strict=True))


def test_zero_linewidth_is_the_undamped_model_and_kernel_rows_sum_to_one():
    base, lw, true = _models()
    kw = dict(resolution=1.5, mesh=6, kind="sqe", normalize=False, multiphonon=(2,), multiphonon_mesh=8)
    a = PowderSpectrum(base, Q, E, 300.0, **kw)(base.vector(true)).detach()
    b = PowderSpectrum(lw, Q, E, 300.0, **kw)(lw.vector(true)).detach()
    torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    grid, idx = fine_energies(E, 0.25, 10.0)
    np.testing.assert_allclose(grid[idx], E, atol=1e-12)
    K = lorentzian_kernel(torch.tensor(E), torch.tensor(grid), torch.full((len(grid),), 0.8, dtype=torch.float64))
    # a Lorentzian's weight beyond ±d is (2/π) atan(Γ/2d): rows far from the ends miss only that
    inner = (E > E[0] + 5) & (E < E[-1] - 5)
    assert np.all(np.abs(K.sum(1).numpy()[inner] - 1) < 2 / np.pi * np.arctan(0.4 / 10.0) + 1e-9)
    with pytest.raises(ValueError, match="uniformly"):
        fine_energies([1.0, 2.0, 4.0], 0.25, 5.0)
    with pytest.raises(ValueError, match="powers"):
        Linewidths(powers=(1, 1))


def _voigt_weight(T, fwhm_res, lw_model, gamma):
    """A mode_weight whose lines are Voigt profiles (scipy): Gaussian σ of the resolution (and the
    mesh's adaptive width) at ε, Lorentzian FWHM Γ(ε) of the model: the damping applied mode by mode."""
    kT = 1e3 * KB_EV_PER_K * T
    unit = 1e3 * HBAR_OMEGA_EV

    def make(energies, temperature, resolution, quantum=True):
        grid = np.asarray(energies, dtype=float)

        def f_of(lam, extra=None):
            eps = unit * np.sqrt(np.clip(lam.detach().numpy(), 0, None))
            live = eps > sqe.MIN_ENERGY
            e = np.where(live, eps, 1.0)[..., None]
            sig = fwhm_res / (2 * np.sqrt(2 * np.log(2))) * np.ones_like(e)
            if extra is not None:
                sig = np.sqrt(sig**2 + extra.detach().numpy()[..., None] ** 2)
            g = lw_model.linewidths.width(torch.as_tensor(gamma), torch.as_tensor(e), T).numpy() / 2  # HWHM
            nb = 1 / np.expm1(e / kT)
            val = sqe.HBAR2_OVER_AMU / (2 * e) * ((nb + 1) * voigt_profile(grid - e, sig, g)
                                                   + nb * voigt_profile(grid + e, sig, g))
            return torch.as_tensor(np.where(live[..., None], val, 0.0))

        return f_of

    return make


def test_damped_spectrum_equals_mode_by_mode_voigt_lines(monkeypatch):
    """The coherent one-phonon powder S(|Q|, E) with Γ = 0.4 meV × (ε/10 meV) at 600 K (Γ up to 3 meV at
    the top of the band), from the energy-axis convolution, against the same sum with every mode a
    Voigt line of its own Γ(ε) (scipy.special.voigt_profile): within 3 % of the peak everywhere and
    0.5 % rms (measured 2.5 % at 7.5 meV, 1.2 % above 8 meV, 0.21 % rms: the two differ by Γ(|E'|)
    against Γ(ε) within a resolution width, which matters most where Γ/ε changes fastest, at low
    energy), while the damping itself changes the spectrum by 34 % of its peak."""
    base, lw, true = _models()
    T, res = 600.0, 1.5
    gamma = [0.4]
    kw = dict(resolution=res, mesh=6, kind="sqe", normalize=False, multiphonon=(), incoherent=False, adaptive=0)
    phi = lw.vector({**true, "gamma1": gamma[0]})
    ours = PowderSpectrum(lw, Q, E, T, **kw).spectrum(phi).detach().numpy()
    monkeypatch.setattr(sqe, "mode_weight", _voigt_weight(T, res, lw, gamma))
    ref = PowderSpectrum(base, Q, E, T, **kw).spectrum(base.vector(true)).detach().numpy()
    monkeypatch.undo()
    undamped = PowderSpectrum(base, Q, E, T, **kw).spectrum(base.vector(true)).detach().numpy()
    assert np.abs(ours - ref).max() < 0.03 * ref.max(), np.abs(ours - ref).max() / ref.max()
    assert np.sqrt(((ours - ref) ** 2).mean()) < 0.005 * ref.max()
    assert np.abs(undamped - ref).max() > 0.2 * ref.max()


@pytest.mark.heavy
def test_damped_spectrum_is_fitted_back_with_its_linewidth():
    """Al powder S(|Q|, E) at 640 K with Γ = 0.3 meV × (ε/10 meV) × T/300 K, 1.5 meV resolution, a
    scale of 2 and a constant background, 1 % noise: the constants, γ₁, the scale and the background
    come back within 3 of their reported σ from 10 % off and γ₁ = 0.05 meV."""
    from xtds.fitting.fit import fit_problems
    from xtds.fitting.problem import Problem

    base, lw, true = _models()
    truth = {**true, "gamma1": 0.3}
    obs = PowderSpectrum(lw, Q, E, 640.0, resolution=1.5, mesh=6, kind="sqe", normalize=False,
                         multiphonon=(2,), multiphonon_mesh=8)
    with torch.no_grad():
        clean = obs(lw.vector(truth)).numpy()
    bg = 0.05 * clean.max()
    clean = 2.0 * clean + bg
    sigma = 0.01 * clean.max() * np.ones_like(clean)
    data = clean + sigma * np.random.default_rng(3).standard_normal(len(clean))
    start = {**{k: 0.9 * v for k, v in true.items()}, "gamma1": 0.05}
    res = fit_problems([Problem(obs, data, sigma=sigma, loss="chi2", background="constant")], start,
                       optimizer=xtds.LM(progress=False))
    names = list(lw.names)
    got = res["ifc"].sel(constant=names).values
    err = res["ifc_stderr"].sel(constant=names).values
    z = (got - np.array([truth[n] for n in names])) / err
    assert np.all(np.abs(z) < 3), z
    assert err[-1] < 0.1 * truth["gamma1"]
    for name, value in (("scale", 2.0), ("background", bg)):
        assert abs(float(res[name]) - value) < 3 * float(res[f"{name}_stderr"]), (name, float(res[name]))
        assert 0 < float(res[f"{name}_stderr"]) < 0.05 * value


def test_klemens_law_against_the_occupation_of_two_half_energy_phonons():
    """g(ε, T) = (ε/4k_BT_ref)(1 + 2n(ε/2)) with n the Bose factor written out (numpy), its
    classical limit T/T_ref and its T → 0 limit ε/4k_BT_ref, and Γ = γ (ε/ε_s) g."""
    lin, kle = Linewidths(), Linewidths(temperature_law="klemens")
    eps = torch.tensor([0.0, 1e-9, 0.5, 5.0, 20.0, 40.0], dtype=torch.float64)
    for T in (5.0, 50.0, 280.0, 640.0):
        kT = 1e3 * KB_EV_PER_K * T
        e = eps.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            n_half = 1 / np.expm1(e / 2 / kT)
            expected = np.where(e > 0, e / (4e3 * KB_EV_PER_K * 300.0) * (1 + 2 * n_half), T / 300.0)
        np.testing.assert_allclose(kle.occupation(eps, T).numpy(), expected, rtol=1e-9)
        np.testing.assert_allclose(lin.occupation(eps, T).numpy(), T / 300.0, rtol=0)
        gamma = torch.tensor([0.7], dtype=torch.float64)
        np.testing.assert_allclose(kle.width(gamma, eps, T).numpy(), 0.7 * e / 10.0 * expected, rtol=1e-9)
    # classical limit: ε ≪ 4k_BT (ε = 0.5 meV at 640 K: y = 0.0023, y coth y − 1 = y²/3 = 1.7e-6)
    assert abs(float(kle.occupation(eps[2:3], 640.0)) / (640 / 300) - 1) < 2e-6
    # T → 0: the spontaneous decay, ε/4k_BT_ref (40 meV at 5 K: coth(23) = 1 to 1e-19)
    np.testing.assert_allclose(float(kle.occupation(eps[5:], 5.0)), 40.0 / (4e3 * KB_EV_PER_K * 300.0), rtol=1e-12)
    # differentiable in ε at ε = 0 (no NaN from 0/tanh 0)
    x = torch.tensor([0.0, 3.0], dtype=torch.float64, requires_grad=True)
    kle.occupation(x, 50.0).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="temperature_law"):
        Linewidths(temperature_law="quantum")


def _line_points(model, qs, ks):
    """PowderPoints (one |Q| bin) at scattering vectors ``qs`` (P, 3) Å⁻¹ whose reduced wave vectors
    are ``ks`` (P, 3): what powder_sqe_mesh sums over, made by hand."""
    from xtds.observables.neutron.powder import PowderPoints

    qs, ks = np.asarray(qs, float), np.asarray(ks, float)
    return PowderPoints(q=qs, weight=np.ones(len(qs)), k=ks, kidx=np.arange(len(qs)), g=qs - ks,
                        bins=np.zeros(len(qs), int), n_bins=1, volume=1.0, n_full=len(qs), symmetry="by hand",
                        k_irreducible=ks, mesh=1)


def test_longitudinal_share_is_exact_where_the_modes_are_pure():
    """Along [100] of fcc Al every mode is purely longitudinal or transverse. With Q ∥ k (Q = (2+x)
    2π/a x̂) the transverse modes are invisible and the longitudinal projection is the whole
    one-phonon spectrum (to 1e-12); with Q = 2·2π/a ŷ + k both are seen, and with a resolution
    narrow against the L–T splitting the projection holds the whole spectrum at ε_L (to 1e-9) and
    nothing at ε_T (below 1e-12 of it), the frequencies from the dynamical matrix. The Wigner–Seitz
    reduction of k̂ against a brute-force search over G within ±2 reciprocal vectors."""
    from xtds.lattice import dynamics
    from xtds.observables.neutron.powder import longitudinal_directions, powder_sqe_mesh

    base, _, true = _models()
    phi = base.vector(true)
    a = float(base.crystal.lattice[0][0])  # the cubic cell's edge, Å
    x = np.array([0.13, 0.37, 0.61, 0.86])
    ks = np.stack([x * 2 * np.pi / a, 0 * x, 0 * x], 1)
    kw = dict(resolution=0.2, widths=None)
    qs = ks + np.array([2, 0, 0]) * 2 * np.pi / a
    pts = _line_points(base, qs, ks)
    energies = np.arange(1.0, 45.0, 0.5)
    full = powder_sqe_mesh(base, phi, [0.0, 100.0], energies, 300.0, points=pts, **kw)
    both = powder_sqe_mesh(base, phi, [0.0, 100.0], energies, 300.0, points=pts, longitudinal=True, **kw)
    torch.testing.assert_close(both[0], full, rtol=1e-13, atol=0)  # the whole term, as without the share
    lon = both[1]
    assert float(full.max()) > 0
    torch.testing.assert_close(lon, full, rtol=0, atol=1e-12 * float(full.max()))
    mev = 4.135667696  # meV per THz
    for k in ks:
        f = dynamics.frequencies(base, phi, torch.tensor(k[None])).detach().numpy()[0] * mev  # T, T, L
        eps_t, eps_l = float(f[0]), float(f[2])
        assert eps_l - eps_t > 2.0  # the resolution's FWHM is 0.2 meV: tails at 2 meV are e^{-280}
        pts = _line_points(base, (k + np.array([0, 2, 0]) * 2 * np.pi / a)[None], k[None])
        at = np.array([eps_t, eps_l])
        S, L = powder_sqe_mesh(base, phi, [0.0, 100.0], at, 300.0, points=pts, longitudinal=True, **kw)[:, 0]
        assert float(S[0]) > 0 and float(S[1]) > 0
        assert abs(float(L[1]) / float(S[1]) - 1) < 1e-9
        assert abs(float(L[0])) < 1e-12 * float(S[0])
    cell = base.primitive
    B = np.asarray(cell.reciprocal)
    rng = np.random.default_rng(0)
    k = rng.uniform(-0.5, 0.5, (200, 3)) @ B
    got = longitudinal_directions(cell, k)
    shifts = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T @ B
    cand = k[:, None] + shifts[None]
    best = cand[np.arange(len(k)), np.argmin((cand**2).sum(-1), 1)]
    np.testing.assert_allclose(got, best / np.linalg.norm(best, axis=1, keepdims=True), atol=1e-12)


def test_branch_families_with_equal_widths_are_the_single_family_model():
    """γ_T = γ_L = γ: the longitudinal share damped with Γ_L plus the rest with Γ_T plus the
    incoherent and multiphonon terms with the mean width is the one-family damped spectrum to 1e-12;
    with γ_L > γ_T the spectrum differs, and the names and the mean width are the documented ones."""
    base, _, true = _models()
    one = LinewidthIFC.of(base, Linewidths(temperature_law="klemens"))
    two = LinewidthIFC.of(base, Linewidths(temperature_law="klemens", branches=True))
    assert two.names[-2:] == ("gamma1_T", "gamma1_L")
    kw = dict(resolution=1.5, mesh=6, kind="sqe", normalize=False, multiphonon=(2,), multiphonon_mesh=8)
    a = PowderSpectrum(one, Q, E, 450.0, **kw)(one.vector({**true, "gamma1": 0.4})).detach()
    b = PowderSpectrum(two, Q, E, 450.0, **kw)(two.vector({**true, "gamma1_T": 0.4, "gamma1_L": 0.4})).detach()
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * float(a.abs().max()))
    c = PowderSpectrum(two, Q, E, 450.0, **kw)(two.vector({**true, "gamma1_T": 0.1, "gamma1_L": 1.0})).detach()
    assert float((c - a).abs().max()) > 0.01 * float(a.abs().max())
    eps = torch.tensor([5.0, 20.0], dtype=torch.float64)
    g = torch.tensor([0.1, 1.0], dtype=torch.float64)
    lw = two.linewidths
    mean = (2 * lw.width(g, eps, 300.0, "T") + lw.width(g, eps, 300.0, "L")) / 3
    torch.testing.assert_close(lw.width(g, eps, 300.0), mean)
    torch.testing.assert_close(lw.width(g, eps, 300.0, "L"), 1.0 * eps / 10 * lw.occupation(eps, 300.0))


def test_branch_family_derivatives_equal_central_differences():
    """The branch-family spectrum (whole term and longitudinal share from one binned call) in
    forward mode (the Jacobian) and reverse mode (a vector-Jacobian product) against central
    differences of step 1e-6: within 1e-7 of the largest entry (measured 6e-10), the widths'
    columns included."""
    base, _, true = _models()
    m = LinewidthIFC.of(base, Linewidths(temperature_law="klemens", branches=True))
    phi = m.vector({**true, "gamma1_T": 0.2, "gamma1_L": 0.7})
    obs = PowderSpectrum(m, np.arange(2.0, 5.01, 0.25), np.arange(6.0, 40.1, 1.0), 450.0, resolution=1.5, mesh=6,
                         kind="sqe", normalize=False, multiphonon=(2,))
    with torch.no_grad():
        obs(phi)  # the adaptive widths, made at the first plain evaluation
    fwd = torch.func.jacfwd(obs)(phi)
    h = 1e-6
    fd = torch.stack([(obs(phi + h * e) - obs(phi - h * e)) / (2 * h) for e in torch.eye(len(phi), dtype=phi.dtype)],
                     1).detach()
    scale = float(fd.abs().max())
    assert float(fd[:, -2:].abs().max()) > 1e-3 * scale  # the widths move the spectrum
    assert float((fwd - fd).abs().max()) < 1e-7 * scale
    # reverse mode: one vector-Jacobian product with a random vector
    v = torch.as_tensor(np.random.default_rng(0).standard_normal(fd.shape[0]))
    x = phi.clone().requires_grad_(True)
    (obs(x) @ v).backward()
    assert float((x.grad - v @ fd).abs().max()) < 1e-7 * scale * float(v.abs().sum())
