"""The scattering-angle background of direct-geometry spectra: the angle of each (|Q|, E) point and
a fit that recovers an injected angle-dependent background."""

import numpy as np
import pytest

import xtds
from xtds.fitting import Background
from xtds.fitting.fit import fit_problems
from xtds.fitting.problem import Problem
from xtds.observables.neutron.sqe import direct_geometry_q_range, scattering_angle


def test_scattering_angle_inverts_the_kinematics():
    E = np.linspace(-20.0, 45.0, 14)
    for two_theta in (3.0, 30.0, 90.0, 135.0):
        q, _ = direct_geometry_q_range(50.0, E, two_theta, 150.0)
        np.testing.assert_allclose(scattering_angle(q, E, 50.0), two_theta, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="incident energy"):
        scattering_angle(12.0, 10.0, 20.0)  # |Q| beyond 2k_i: out of reach
    with pytest.raises(ValueError, match="no neutron leaves"):
        scattering_angle(3.0, 60.0, 50.0)


def test_angle_background_names_and_refusals():
    bg = Background(angle=2, angle_energy=2, incident_energy=80.0)
    assert bg.names == ["background", "background_A1", "background_A2", "background_A1E1", "background_A1E2",
                        "background_A2E1", "background_A2E2"]
    with pytest.raises(ValueError, match="incident energy"):
        Background(angle=3)
    with pytest.raises(ValueError, match="angle ≥ 1"):
        Background(angle_energy=2, incident_energy=80.0)


def test_an_angle_background_is_recovered(al_powder_sqe):
    """Data = model + a background that depends on 2θ (a quadratic in it, rising 20 % of the
    signal's maximum towards the low angles) + 1 % noise: the fit with angle terms returns the
    constants within 3σ and χ²ᵣ ≈ 1; the same fit with an energy background instead is off
    (χ²ᵣ > 2)."""
    model, true, obs, clean = al_powder_sqe
    Ei = 80.0
    tt = scattering_angle(obs.point_qnorm, obs.point_energy, Ei)
    z = 2 * (tt - tt.min()) / (tt.max() - tt.min()) - 1
    extra = 0.2 * clean.max() * (0.5 - z + 0.5 * z**2)
    sigma = 0.01 * clean.max() * np.ones_like(clean)
    data = clean + extra + sigma * np.random.default_rng(5).standard_normal(len(clean))
    res = {}
    for label, bg in (("angle", Background(angle=2, incident_energy=Ei)), ("energy", Background(energy=2))):
        prob = Problem(obs, data, sigma=sigma, loss="chi2", background=bg)
        res[label] = fit_problems([prob], true, optimizer=xtds.LM(progress=False))
    r = res["angle"]
    chi2r = {k: float(v["loss"].values[-1]) / (len(data) - model.n_free - 4) for k, v in res.items()}
    assert 0.8 < chi2r["angle"] < 1.2 and chi2r["energy"] > 2, chi2r
    for n in model.names:
        assert abs(float(r["ifc"].sel(constant=n)) - true[n]) < 3 * float(r["ifc_stderr"].sel(constant=n)), n
    # the fitted background (constant and angle terms) is the injected one within 5 % of its size
    np.testing.assert_allclose(r["model_background"].values, extra, rtol=0, atol=0.05 * 0.2 * clean.max())
