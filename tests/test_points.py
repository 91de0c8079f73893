"""Observables at scattered points (xtds.observables.points), the energy background of spectra, the
chopper resolution, and a joint fit of a powder spectrum with dispersion points."""

import numpy as np
import pytest
import torch

import xtds
from xtds.fitting import Background, Problem, fit_problems
from xtds.lattice import dynamics
from xtds.observables import DispersionPoints, PowderIntensity, PowderSpectrum, SQEPoints, TDSIntensity
from xtds.observables.neutron.sqe import chi_from_sqe, chopper_resolution, coherent_sqe
from xtds.thermal.geometry import InfiniteCrystal

AL = xtds.Crystal.preset("Al")
#: Al, 2 shells, near the published Born–von Kármán constants (eV/Å²).
TRUE = {"b0": -0.61, "b1": 0.10, "b2": -0.71, "c0": -0.155, "c1": 0.032}


@pytest.fixture(scope="module")
def model():
    return xtds.IFCModel(AL, shells=2)


def test_dispersion_points_are_the_sorted_frequencies(model):
    phi = model.vector(TRUE)
    q = AL.rlu_to_cartesian(np.array([[0.3, 0, 0], [0.5, 0.5, 0.5], [1.0, 0.2, 0.0]]))
    obs = DispersionPoints(model, np.repeat(q, 3, axis=0), np.tile([0, 1, 2], 3))
    nu = dynamics.frequencies(model, phi, q).detach().numpy().reshape(-1)
    np.testing.assert_allclose(obs(phi).detach().numpy(), nu, rtol=1e-12)
    with pytest.raises(ValueError, match="branch indices run from 0 to 2"):
        DispersionPoints(model, q, [0, 1, 3])
    with pytest.raises(ValueError, match="one branch index per q-point"):
        DispersionPoints(model, q, [0, 1])


def test_sqe_points_gather_the_spectra_and_differentiate(model):
    """A constant-Q and a constant-E scan: the points equal coherent_sqe on the grid of their Q and
    E (χ'' likewise), and the forward-mode Jacobian equals central differences."""
    phi = model.vector(TRUE)
    Q = AL.rlu_to_cartesian(np.array([[1.2, 0.3, 0.1], [2.1, 0.0, 0.4]]))
    E = np.array([8.0, 14.0, 20.0, 26.0])
    q = np.concatenate([np.repeat(Q[:1], 4, axis=0), np.repeat(Q[1:], 4, axis=0)])
    e = np.concatenate([E, E])
    res = chopper_resolution(50.0, 20.0, 10.0)
    obs = SQEPoints(model, q, e, 150.0, resolution=res)
    with torch.no_grad():
        grid = coherent_sqe(model, phi, Q, E, 150.0, resolution=res)
        # the distinct Q are rounded to 1e-12 Å⁻¹: agreement to 1e-8
        np.testing.assert_allclose(obs(phi).numpy(), grid.reshape(-1).numpy(), rtol=1e-8, atol=1e-14)
        chi = SQEPoints(model, q, e, 150.0, resolution=res, kind="chi")(phi)
        np.testing.assert_allclose(chi.numpy(), chi_from_sqe(grid, E, 150.0).reshape(-1).numpy(), rtol=1e-8,
                                   atol=1e-14)
    J = torch.func.jacfwd(obs)(phi)
    h = 1e-5
    fd = torch.stack([(obs(phi + h * u) - obs(phi - h * u)) / (2 * h) for u in torch.eye(5, dtype=phi.dtype)], -1)
    torch.testing.assert_close(J, fd.detach(), rtol=1e-5, atol=1e-6 * float(J.abs().max()))
    with pytest.raises(ValueError, match="one finite energy transfer"):
        SQEPoints(model, q, e[:-1], 150.0)


def test_powder_intensity_is_the_orientation_average(model):
    """PowderIntensity (product rule, Laue-reduced) equals the plain mean of the single-crystal
    intensity over 20,000 random directions within 4 of its standard errors (and 1 %)."""
    phi = model.vector(TRUE)
    qn = np.array([2.0, 3.6])  # off the (111) and (200) rings at 2.69 and 3.10 Å⁻¹
    obs = PowderIntensity(model, qn, 300.0, order=32, method="one_phonon")
    with torch.no_grad():
        avg = obs(phi).numpy()
        rng = np.random.default_rng(1)
        d = rng.standard_normal((20000, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        for x, a in zip(qn, avg, strict=True):
            vals = TDSIntensity(model, x * d, 300.0, method="one_phonon", geometry=InfiniteCrystal())(phi).numpy()
            se = vals.std() / np.sqrt(len(vals))
            assert abs(a - vals.mean()) < 4 * se and abs(a / vals.mean() - 1) < 1e-2, (x, a, vals.mean(), se)
    with pytest.raises(ValueError, match="Bragg rings"):
        PowderIntensity(model, [2 * np.pi / 4.05 * np.sqrt(3)], 300.0, method="one_phonon")


def test_chopper_resolution_propagates_the_timing_widths():
    """The closed form equals the brute-force propagation of the moderator and chopper timing
    jitter through the time-of-flight kinematics (numerical derivatives of the energy transfer a
    neutron detected at a fixed time is assigned), added in quadrature."""
    from scipy import constants as c

    Ei, tm, tc = 50.0, 20.0, 10.0
    L1, L2, L3 = 11.6, 2.0, 3.0
    mev = c.e * 1e-3

    def v(E):
        return np.sqrt(2 * E * mev / c.m_n)

    fwhm = chopper_resolution(Ei, tm, tc, (L1, L2, L3))
    for eps in (0.0, 15.0, 40.0):
        vi, vf = v(Ei), v(Ei - eps)
        t_det = L1 / vi + L2 / vi + L3 / vf  # nominal: leaves the moderator at 0, the chopper at L1/vi

        def transfer(d_m, d_c, vi=vi, t_det=t_det):
            # a neutron emitted at d_m passing the chopper at L1/vi + d_c, detected at t_det
            vi_ = L1 / (L1 / vi + d_c - d_m)
            t_s = L1 / vi + d_c + L2 / vi_
            vf_ = L3 / (t_det - t_s)
            return 0.5 * c.m_n * (vi_**2 - vf_**2) / mev

        h = 1e-9
        dm = (transfer(h, 0) - transfer(-h, 0)) / (2 * h) * tm * 1e-6
        dc = (transfer(0, h) - transfer(0, -h)) / (2 * h) * tc * 1e-6
        assert float(fwhm(torch.tensor(eps, dtype=torch.float64))) == pytest.approx(np.hypot(dm, dc), rel=1e-6)
    with pytest.raises(ValueError, match="timing widths"):
        chopper_resolution(Ei, 0.0, 0.0)


def test_energy_background_and_a_joint_powder_and_dispersion_fit(model):
    """A powder χ'' simulated from known constants, scaled, with a constant and a linear background
    in the energy transfer, fitted jointly with noise-free dispersion points from 10 % off: the
    constants and the background come back to 1e-6 relative."""
    true = model.vector(TRUE)
    Q = np.arange(1.0, 6.01, 0.25)
    E = np.arange(8.0, 40.1, 2.0)
    obs = PowderSpectrum(model, Q, E, 300.0, resolution=3.0, mesh=6, normalize=False, multiphonon=(), dw_mesh=8,
                         q_resolution=0.3)
    with torch.no_grad():
        spec = obs(true).numpy()
        sharp = PowderSpectrum(model, Q, E, 300.0, resolution=3.0, mesh=6, normalize=False, multiphonon=(),
                               dw_mesh=8)(true).numpy()
        # the |Q| resolution by hand: a Gaussian of σ = FWHM/2.355 over the bins, weighted by Q² × width
        S = PowderSpectrum(model, Q, E, 300.0, resolution=3.0, mesh=6, normalize=False, multiphonon=(), dw_mesh=8,
                           kind="sqe").spectrum(true).numpy()  # (E, Q)
        sig = 0.3 / (2 * np.sqrt(2 * np.log(2)))
        K = np.exp(-0.5 * ((Q[:, None] - Q[None]) / sig) ** 2) * (Q**2 * 0.25)[None]
        by_hand = (S @ (K / K.sum(1, keepdims=True)).T)
        smoothed = PowderSpectrum(model, Q, E, 300.0, resolution=3.0, mesh=6, normalize=False, multiphonon=(),
                                  dw_mesh=8, kind="sqe", q_resolution=0.3).spectrum(true).numpy()
    np.testing.assert_allclose(smoothed, by_hand, rtol=1e-10, atol=1e-12 * np.abs(S).max())
    assert np.abs(smoothed - S).max() > 1e-2 * np.abs(S).max()  # and it does change the spectrum
    assert spec.max() < sharp.max()
    y = 2 * (obs.point_energy - E.min()) / (E.max() - E.min()) - 1
    data = 3.0 * spec + 0.01 + 0.004 * y
    sig = np.full(len(data), 0.01 * np.abs(data).max())
    powder = Problem(obs, data, sigma=sig, loss="chi2", background=Background(energy=1), name="powder")
    assert powder.nuisance_names == ["log_scale", "background", "background_E1"]
    res = _fit_with_phonons(model, powder, [1, 0, 0], 4)
    assert float(res["powder_background_E1"]) == pytest.approx(0.004, rel=1e-5)
    assert float(res["powder_scale"]) == pytest.approx(3.0, rel=1e-6)
    q = AL.rlu_to_cartesian(np.eye(3))
    with pytest.raises(ValueError, match="energy transfers"):
        Problem(DispersionPoints(model, q, [0, 0, 0]), np.ones(3), sigma=np.ones(3), loss="chi2",
                background=Background(energy=1))


def _fit_with_phonons(model, problem, direction, n):
    """Fit ``problem`` jointly with noise-free frequencies of all branches at ``n`` wave vectors
    along ``direction`` (r.l.u.) from 10 % off the truth; assert the constants to 1e-6."""
    q = AL.rlu_to_cartesian(np.outer(np.linspace(0.2, 1.0, n), direction))
    disp = DispersionPoints(model, np.repeat(q, 3, axis=0), np.tile([0, 1, 2], len(q)))
    with torch.no_grad():
        nu = disp(model.vector(TRUE)).numpy()
    phonons = Problem(disp, nu, sigma=np.full(len(nu), 0.05), loss="chi2", background=False, name="phonons")
    res = fit_problems([problem, phonons], {k: 0.9 * v for k, v in TRUE.items()}, optimizer=xtds.LM(progress=False))
    np.testing.assert_allclose(res["ifc"].sel(constant=list(model.names)).values, list(TRUE.values()), rtol=1e-6)
    return res


def test_powder_xray_intensity_fits_jointly_with_dispersion_points(model):
    """Powder X-ray I(|Q|) simulated from known constants (one-phonon model, scaled) between the
    Bragg rings, fitted jointly with dispersion points from 10 % off: the constants to 1e-6."""
    true = model.vector(TRUE)
    qn = np.array([1.6, 2.0, 2.3, 3.4, 3.8, 4.7, 5.4, 5.9])
    obs = PowderIntensity(model, qn, 300.0, order=16, method="one_phonon")
    with torch.no_grad():
        I = obs(true).numpy()
    powder = Problem(obs, 2.0 * I, sigma=0.01 * I, loss="chi2", background=Background(constant=False), name="xray")
    res = _fit_with_phonons(model, powder, [1, 1, 0], 3)
    assert float(res["xray_scale"]) == pytest.approx(2.0, rel=1e-6)
