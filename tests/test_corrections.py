"""Polarization and absorption factors against independent computations."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

import xtds
from xtds.observables.scattering import two_theta
from xtds.observables.tds.corrections import (
    Corrections,
    absorption_factor,
    attenuation_coefficient,
    polarization_factor,
)


def test_absorption_of_a_sphere():
    assert np.allclose(absorption_factor([0.0, 1.0, 3.0], 0.0), 1.0)
    for mu_r in (0.3, 1.0, 2.5):
        # forward (2θ = 0): every point sees the chord c through it; ⟨e^{−μc}⟩ = (3/8) ∫₀² c² e^{−μc} dc (R = 1)
        exact = 3 / 8 * quad(lambda c, m=mu_r: c * c * np.exp(-m * c), 0, 2)[0]
        assert absorption_factor(0.0, mu_r) == pytest.approx(exact, rel=2e-3)
        # 2θ = 90°: plain Monte Carlo over 10⁶ random points of the sphere (an independent sampler)
        rng = np.random.default_rng(3)
        p = rng.normal(size=(1_000_000, 3))
        p *= (rng.random(len(p)) ** (1 / 3) / np.linalg.norm(p, axis=1))[:, None]
        l_in = p[:, 2] + np.sqrt(1 - p[:, 0] ** 2 - p[:, 1] ** 2)  # back along the beam (+z) to the surface
        l_out = -p[:, 0] + np.sqrt(1 - p[:, 1] ** 2 - p[:, 2] ** 2)  # out along +x
        mc = np.exp(-mu_r * (l_in + l_out)).mean()
        assert absorption_factor(math.pi / 2, mu_r) == pytest.approx(mc, rel=3e-3)
    # a strongly absorbing sphere scatters more at high angles (the back half is reached)
    a = absorption_factor(np.linspace(0, 3, 7), 2.0)
    assert np.all(np.diff(a) > 0)


def test_polarization_average_and_attenuation():
    tt = np.linspace(0, math.pi, 9)
    phi = np.linspace(0, 2 * math.pi, 721)[:-1]
    avg = np.mean([polarization_factor(tt, 0.93, azimuth=np.full_like(tt, f)) for f in phi], axis=0)
    np.testing.assert_allclose(polarization_factor(tt, 0.93), avg, rtol=1e-12)
    np.testing.assert_allclose(polarization_factor(tt, 0.93), (1 + np.cos(tt) ** 2) / 2, rtol=1e-12)
    assert polarization_factor(math.pi / 2, 1.0, azimuth=0.0) == pytest.approx(0.0, abs=1e-15)  # along E: none
    ni = xtds.datasets.paper_ni_crystal()
    import xraylib

    density = 4 * 58.6934 / 6.02214076e23 / (ni.lattice[0, 0] * 1e-8) ** 3  # g/cm³
    assert attenuation_coefficient(ni, 20.0) == pytest.approx(xraylib.CS_Total(28, 20.0) * density / 10, rel=1e-3)
    with pytest.raises(ValueError, match="Ewald sphere"):
        two_theta([30.0], 0.5)
    with pytest.raises(ValueError, match="wavelength"):
        Corrections.from_attrs({})
