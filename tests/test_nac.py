"""Polar crystals: the dipole–dipole term (LO–TO splitting) against phonopy's non-analytic correction."""

import numpy as np
import pytest
import torch

import xtds
from xtds.io.phonopy import from_phonopy, polar_crystal, to_phonopy
from xtds.lattice import dynamics

pytest.importorskip("phonopy")

CASES = {  # rock salts, Born charges (e) and ε∞ of the order of the measured ones; short-range springs (eV/Å²)
    "NaCl": (("Na", "Cl", 5.64), {"Na": 1.1, "Cl": -1.1}, 2.4, {1: 2.0, 2: 0.3}),
    "MgO": (("Mg", "O", 4.21), {"Mg": 1.96, "O": -1.96}, 3.0, {1: 6.0, 2: 0.8}),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.heavy
def test_lo_to_splitting_equals_phonopy(name):
    rocksalt, born, eps, springs = CASES[name]
    crystal = xtds.Crystal.rocksalt(*rocksalt).with_born(born, eps)
    model = xtds.IFCModel(crystal, shells=2)
    phi = torch.tensor(model.central_force(springs))
    ph = to_phonopy(model, phi, 2)  # full force constants (short range + dipole part) with nac_params
    assert ph.nac_params is not None
    for direction in ([1, 0, 0], [1, 1, 0], [1, 1, 1]):
        k = crystal.rlu_to_cartesian(1e-6 * np.asarray(direction, dtype=float))  # 10⁻⁶ r.l.u. from Γ
        nu = dynamics.frequencies(model, phi, k[None]).numpy()[0]
        ph.run_qpoints([[0, 0, 0]], nac_q_direction=k @ np.asarray(ph.primitive.cell).T)
        ref = ph.qpoints.frequencies[0]
        np.testing.assert_allclose(nu[3:], ref[3:], atol=1e-3)  # TO, TO, LO (THz)
        assert nu[5] - nu[4] > 1.0  # the splitting is there (NaCl ≈ 2.0, MgO ≈ 7.5 THz)
    # without the direction phonopy gives the TO limit, as xtds at Γ exactly
    ph.run_qpoints([[0, 0, 0]])
    np.testing.assert_allclose(dynamics.frequencies(model, phi, np.zeros((1, 3))).numpy()[0][3:],
                               ph.qpoints.frequencies[0][3:], atol=1e-3)
    # the round trip: phonopy's full force constants back onto the polar model
    back = from_phonopy(ph, xtds.IFCModel(polar_crystal(xtds.Crystal.rocksalt(*rocksalt), ph), shells=2))
    np.testing.assert_allclose(back.phi, phi.numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="Born charges"):
        from_phonopy(ph, xtds.IFCModel(xtds.Crystal.rocksalt(*rocksalt), shells=2))


def test_dipole_term_keeps_translations_and_hermiticity():
    crystal = xtds.Crystal.rocksalt("Mg", "O", 4.21).with_born({"Mg": 1.96, "O": -1.96}, 3.0)
    model = xtds.IFCModel(crystal, shells=2)
    phi = torch.tensor(model.central_force({1: 6.0, 2: 0.8}))
    k = np.random.default_rng(1).normal(size=(5, 3))
    H = dynamics.force_constant_matrix(model, phi, k).numpy()
    np.testing.assert_allclose(H, np.conj(np.transpose(H, (0, 2, 1))), atol=1e-12)
    H0 = dynamics.force_constant_matrix(model, phi, np.zeros((1, 3))).numpy()[0]
    np.testing.assert_allclose(H0 @ np.tile(np.eye(3), (2, 1)), 0, atol=1e-10)  # rigid translations cost nothing
    # periodic in the reciprocal lattice (up to the phase convention's diagonal phases)
    G = crystal.primitive().reciprocal[0]
    tau = crystal.primitive().cartesian_positions
    Hg = dynamics.force_constant_matrix(model, phi, k[:1] + G).numpy()[0]
    P = np.diag(np.repeat(np.exp(1j * tau @ G), 3))
    np.testing.assert_allclose(P.conj().T @ Hg @ P, H[0], atol=1e-9)


def test_polar_input_is_checked():
    nacl = xtds.Crystal.rocksalt("Na1+", "Cl1-", 5.64)  # ions: their form factors, the elements' masses
    assert nacl.masses[0] == pytest.approx(22.99, abs=0.01)
    with pytest.raises(ValueError, match="charge neutrality"):
        nacl.with_born({"Na1+": 1.1, "Cl1-": -0.9}, 2.4)
    with pytest.raises(ValueError, match="both"):
        xtds.Crystal(nacl.lattice, nacl.positions, nacl.species, born=np.zeros((8, 3, 3)))
    with pytest.raises(ValueError, match="eigenvalues"):
        nacl.with_born({"Na1+": 1.1, "Cl1-": -1.1}, 0.5)
