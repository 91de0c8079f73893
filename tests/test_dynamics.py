"""Lattice dynamics: against phonopy, against the supercell Hessian, and gradients."""

import numpy as np
import pytest
import torch

from xtds import Supercell, supercell_hessian
from xtds.lattice import dynamics as dyn

phonopy = pytest.importorskip("phonopy")
from xtds.io import phonopy as phonopy_io  # noqa: E402


def _phonopy_frequencies(ph, k):
    qred = k @ np.asarray(ph.primitive.cell).T / (2 * np.pi)
    ph.run_qpoints(qred)
    return np.asarray(ph.qpoints.frequencies)


def _path_and_random(model, n=12):
    from xtds.lattice.kpath import standard_path

    rng = np.random.default_rng(5)
    return np.concatenate([standard_path(model.crystal, density=8).k, rng.normal(size=(n, 3))])


@pytest.mark.heavy
def test_ni_target_against_phonopy(ni_model, paper_tables):
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    ph = phonopy_io.to_phonopy(ni_model, phi, 4)  # 14.08 Å cube > 2 × 5.57 Å cutoff
    k = _path_and_random(ni_model)
    ours = dyn.frequencies(ni_model, phi, k).numpy()
    theirs = _phonopy_frequencies(ph, k)
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() / scale < 1e-6
    # away from the acoustic zeros, each frequency agrees to 1e-6 relative
    big = np.abs(theirs) > 0.1
    assert np.abs((ours - theirs)[big] / theirs[big]).max() < 1e-6
    # the paper's X-point values quoted in CONVENTIONS.md
    x = ni_model.crystal.rlu_to_cartesian([0, 1, 0])
    assert dyn.frequencies(ni_model, phi, x[None]).numpy()[0] == pytest.approx([5.51, 5.51, 8.11], abs=5e-3)


def test_si_against_phonopy(si_model, si_phi):
    phi = torch.tensor(si_phi)
    ph = phonopy_io.to_phonopy(si_model, phi, 2)  # 10.86 Å cube > 2 × 4.50 Å cutoff
    k = _path_and_random(si_model)
    ours = dyn.frequencies(si_model, phi, k).numpy()
    theirs = _phonopy_frequencies(ph, k)
    big = np.abs(theirs) > 0.1
    assert np.abs((ours - theirs)[big] / theirs[big]).max() < 1e-6
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-6


def test_hermitian_and_periodic(si_model, si_phi):
    phi = torch.tensor(si_phi)
    k = torch.tensor(np.random.default_rng(0).normal(size=(6, 3)))
    D = dyn.dynamical_matrix(si_model, phi, k)
    assert torch.allclose(D, D.conj().transpose(-1, -2), atol=1e-12)
    G = torch.tensor(si_model.primitive.reciprocal[0] - 2 * si_model.primitive.reciprocal[2])
    assert torch.allclose(dyn.frequencies(si_model, phi, k), dyn.frequencies(si_model, phi, k + G), atol=1e-9)


@pytest.mark.parametrize("repeats", [2, 3])
def test_supercell_hessian_matches_kspace(ni_model, paper_tables, repeats):
    """The dense supercell Hessian's spectrum is the union of D(k) over the commensurate k."""
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    sc = Supercell.from_crystal(ni_model, repeats)
    H = supercell_hessian(ni_model, phi, sc)
    assert torch.allclose(H, H.T, atol=1e-13)
    assert H.reshape(-1, 3, H.shape[1]).sum(0).abs().max() < 1e-12  # sum rule
    m = ni_model.primitive.masses[0]
    nu_sc = np.sort(dyn.eigenvalues_to_thz(torch.linalg.eigvalsh(H / m)).numpy())
    # commensurate k: conventional grid 2π/(L a) n, folded with the 4 FCC sub-lattice vectors
    n = np.stack(np.meshgrid(*[np.arange(repeats)] * 3, indexing="ij"), -1).reshape(-1, 3) / repeats
    shifts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    k = ni_model.crystal.rlu_to_cartesian((n[:, None] + shifts[None]).reshape(-1, 3))
    nu_k = np.sort(dyn.frequencies(ni_model, phi, k).numpy().reshape(-1))
    assert np.abs(nu_sc - nu_k).max() < 1e-6  # acoustic zeros: √(roundoff) ≈ 1e-7 THz


def test_gradcheck_frequencies(si_model, si_phi):
    k = torch.tensor(np.random.default_rng(2).normal(size=(3, 3)))

    def f(phi):
        return dyn.frequencies(si_model, phi, k)

    phi = torch.tensor(si_phi, requires_grad=True)
    assert torch.autograd.gradcheck(f, (phi,), eps=1e-6, atol=1e-6)


def test_gradcheck_supercell_hessian(ni_model):
    sc = Supercell.from_crystal(ni_model, 2)
    phi = torch.tensor(np.random.default_rng(4).normal(size=ni_model.n_free), requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: supercell_hessian(ni_model, p, sc)[:12, :30], (phi,))


def test_gamma_gradient_is_finite(ni_model, paper_tables):
    phi = ni_model.vector(paper_tables["target_EAM_U3"]).requires_grad_(True)
    nu = dyn.frequencies(ni_model, phi, torch.zeros(1, 3, dtype=torch.float64))
    nu.sum().backward()
    assert torch.isfinite(phi.grad).all()


def test_units_mev(ni_model, paper_tables):
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    k = ni_model.crystal.rlu_to_cartesian([[0, 1, 0]])
    thz = dyn.frequencies(ni_model, phi, k)
    assert torch.allclose(dyn.frequencies(ni_model, phi, k, unit="meV"), thz * 4.135667696)
    with pytest.raises(ValueError, match="unit"):
        dyn.frequencies(ni_model, phi, k, unit="cm-1")
    with pytest.raises(ValueError, match="Cartesian"):
        dyn.frequencies(ni_model, phi, np.zeros((2, 2)))
