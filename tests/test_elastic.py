"""Elastic constants from the long-wavelength limit, checked against the dispersion's slopes."""

import numpy as np
import pytest
import torch

from xtds import Crystal, IFCModel, elastic_constants, sound_speeds
from xtds.lattice import dynamics as dyn
from xtds.units import GPA_PER_EV_A3


def test_nearest_neighbour_central_fcc():
    model = IFCModel(Crystal.fcc("Ni", a=3.52), shells=1)
    k = 2.0  # eV/Å²
    C = elastic_constants(model, model.central_force({1: k}))
    c11, c12, c44 = (float(C.values[i, j]) for i, j in ((0, 0), (0, 1), (3, 3)))
    assert c11 == pytest.approx(2 * c12, rel=1e-12)
    assert c11 == pytest.approx(2 * c44, rel=1e-12)
    assert c11 == pytest.approx(2 * k / 3.52 * GPA_PER_EV_A3, rel=1e-12)  # C11 = 2k/a
    assert C.attrs["units"] == "GPa" and C.attrs["huang_residual"] < 1e-12


def _slopes(model, phi, direction, h=1e-4):
    """ν(k)/|k| at |k| = h Å⁻¹ (THz·Å), from the full dynamical matrix."""
    n = np.asarray(direction, float) / np.linalg.norm(direction)
    return dyn.frequencies(model, torch.as_tensor(phi), (h * n)[None]).numpy()[0, :3] / h


@pytest.mark.parametrize("direction", [(1, 0, 0), (1, 1, 0), (1, 1, 1)])
def test_ni_slopes_equal_sound_speeds(ni_model, paper_tables, direction):
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    C = elastic_constants(ni_model, phi)
    v = sound_speeds(C.values, ni_model.crystal.density, direction)  # THz·Å·2π
    assert np.allclose(_slopes(ni_model, phi, direction), v / (2 * np.pi), rtol=1e-6)


def test_cubic_sound_speed_formulas(ni_model, paper_tables):
    """The textbook cubic formulas along [100] and [110] (independent of sound_speeds)."""
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    C = elastic_constants(ni_model, phi).values / GPA_PER_EV_A3
    c11, c12, c44 = C[0, 0], C[0, 1], C[3, 3]
    rho = ni_model.crystal.density
    conv = 15.633302  # THz per sqrt(eV/(Å² amu)) to 7 digits (phonopy's VaspToTHz)
    s100 = np.sort(np.sqrt(np.array([c44, c44, c11]) / rho)) * conv
    s110 = np.sort(np.sqrt(np.array([c44, (c11 - c12) / 2, (c11 + c12 + 2 * c44) / 2]) / rho)) * conv
    assert np.allclose(_slopes(ni_model, phi, (1, 0, 0)), s100, rtol=1e-6)
    assert np.allclose(_slopes(ni_model, phi, (1, 1, 0)), s110, rtol=1e-6)


def test_si_relaxed_ion_slopes(si_model, si_phi):
    """Two-atom cell: the internal-relaxation term is needed to match the acoustic slopes."""
    C = elastic_constants(si_model, si_phi)
    for direction in [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 2, 3)]:
        v = sound_speeds(C.values, si_model.crystal.density, direction)
        assert np.allclose(_slopes(si_model, si_phi, direction), v / (2 * np.pi), rtol=1e-5)


def test_gradient_flows(ni_model, paper_tables):
    from xtds.lattice.elastic import elastic_tensor

    phi = ni_model.vector(paper_tables["target_EAM_U3"]).requires_grad_(True)
    C, _ = elastic_tensor(ni_model, phi)
    C[0, 0].backward()
    assert torch.isfinite(phi.grad).all() and phi.grad.abs().sum() > 0
