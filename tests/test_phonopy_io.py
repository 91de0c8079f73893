"""Round trips between xtds and phonopy force constants."""

import numpy as np
import pytest
import torch

pytest.importorskip("phonopy")
from phonopy.file_IO import write_FORCE_CONSTANTS  # noqa: E402

from xtds.io import phonopy as phonopy_io  # noqa: E402


@pytest.mark.heavy
def test_round_trip_ni(ni_model, paper_tables):
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    ph = phonopy_io.to_phonopy(ni_model, phi, 4)
    fc0 = ph.force_constants.copy()
    res = phonopy_io.from_phonopy(ph, ni_model)
    assert np.abs(res.phi - phi.numpy()).max() < 1e-12
    assert res.residual < 1e-12 and res.beyond_cutoff == 0.0
    ph2 = phonopy_io.to_phonopy(ni_model, res.phi, 4)
    assert np.abs(ph2.force_constants - fc0).max() < 1e-12
    da = res.ifc(ni_model)
    assert da.attrs["projection_residual"] == res.residual


def test_round_trip_si_compact_and_file(si_model, si_phi, tmp_path):
    ph = phonopy_io.to_phonopy(si_model, si_phi, 2)
    fc = ph.force_constants
    # compact form (n_prim rows) with phonopy's p2s map
    compact = fc[ph.primitive.p2s_map]
    sc = ph.supercell
    supercell = phonopy_io.Supercell.from_positions(si_model, sc.cell, sc.scaled_positions @ sc.cell)
    res = phonopy_io.from_force_constants(si_model, compact, supercell, p2s_map=ph.primitive.p2s_map)
    assert np.abs(res.phi - si_phi).max() < 1e-12
    # a FORCE_CONSTANTS file plus the unit cell
    path = tmp_path / "FORCE_CONSTANTS"
    write_FORCE_CONSTANTS(fc, filename=str(path))
    res = phonopy_io.read_force_constants(si_model, path, 2)
    assert np.abs(res.phi - si_phi).max() < 1e-9  # the file keeps 15 significant digits
    assert res.residual < 1e-10


@pytest.mark.heavy
def test_out_of_basis_part_is_reported(ni_model, paper_tables):
    """Force constants beyond the cutoff, or breaking symmetry, show up in the residual."""
    phi = ni_model.vector(paper_tables["target_EAM_U3"])
    ph = phonopy_io.to_phonopy(ni_model, phi, 4)
    fc = ph.force_constants.copy()
    rng = np.random.default_rng(0)
    noise = 1e-3 * rng.normal(size=fc.shape)
    sc = ph.supercell
    supercell = phonopy_io.Supercell.from_positions(ni_model, sc.cell, sc.scaled_positions @ sc.cell)
    res = phonopy_io.from_force_constants(ni_model, fc + noise, supercell)
    expected = np.linalg.norm(noise) / np.linalg.norm(fc + noise)
    assert 0.5 * expected < res.residual < 1.01 * expected
    assert res.beyond_cutoff > 0  # noise sits on pairs the 5-shell model does not reach
    assert np.abs(res.phi - phi.numpy()).max() < 1e-3  # the symmetric part survives the averaging


@pytest.mark.heavy
def test_smaller_model_projects_larger_one(ni_model, paper_tables):
    """Projecting 5-shell force constants onto a 2-shell model: the reported residual equals the
    misfit recomputed from the exported 2-shell force constants, and the constants stay close."""
    from xtds import Crystal, IFCModel

    small = IFCModel(Crystal.fcc("Ni", a=3.52), shells=2)
    tab = paper_tables["target_EAM_U3"]
    ph = phonopy_io.to_phonopy(ni_model, ni_model.vector(tab), 4)
    res = phonopy_io.from_phonopy(ph, small)
    refit = phonopy_io.to_phonopy(small, res.phi, 4).force_constants
    fc = ph.force_constants
    assert res.residual == pytest.approx(np.linalg.norm(fc - refit) / np.linalg.norm(fc), rel=1e-10)
    assert res.beyond_cutoff > 0
    # shells 3–5 are small in this set, so shells 1–2 move little (≤ 0.05 eV/Å²)
    assert np.allclose(res.phi, [tab[n] for n in small.names], atol=0.05)


def test_supercell_too_small_is_refused(ni_model):
    with pytest.raises(ValueError, match="larger|wider"):
        phonopy_io.to_phonopy(ni_model, torch.zeros(ni_model.n_free, dtype=torch.float64), 2)
