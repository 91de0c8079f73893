"""Mesh sums from the irreducible k-points (xtds.model.kmesh) against the full Γ-centred mesh."""

import numpy as np
import pytest
import torch

import xtds
from xtds.model.covariance import covariance_k
from xtds.model.kmesh import irreducible_mesh
from xtds.model.neutron import debye_waller, richardson

CRYSTALS = {
    "Al (Fm-3m, 1 atom)": lambda: xtds.Crystal.preset("Al"),
    "Mg (P6_3/mmc, 2 atoms exchanged by the screw axis)": lambda: xtds.Crystal.hcp("Mg"),
    "NaCl (Fm-3m, 2 species)": lambda: xtds.Crystal.rocksalt("Na", "Cl", 5.64),
    "Si (Fd-3m, 2 atoms exchanged by the glide)": lambda: xtds.Crystal.diamond("Si"),
}


def constants(model):
    """Central springs with a random non-central part: no symmetry beyond the crystal's."""
    rng = np.random.default_rng(0)
    return torch.as_tensor(model.central_force({1: 3.0, 2: 1.0, 3: 0.5}) + 0.02 * rng.standard_normal(model.n_free))


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_debye_waller_from_the_orbits_equals_the_full_mesh(name):
    """⟨u_s u_sᵀ⟩ per atom from one k per orbit, rotated and exchanged back, equals the plain mean
    over every k of the 8³ mesh and its sub-meshes (the same Richardson extrapolation) to 1e-12:
    only round-off separates them."""
    model = xtds.IFCModel(CRYSTALS[name](), shells=3)
    phi = constants(model)
    P = model.primitive

    def full(shape):
        C = covariance_k(model, phi, P.k_grid(shape).reshape(-1, 3), 300.0, quantum=True, cell=P)
        return torch.stack([C[:, 3 * s : 3 * s + 3, 3 * s : 3 * s + 3].real.mean(0) for s in range(P.n_atoms)])

    expect = richardson(full((8, 8, 8)), full((4, 4, 4)), full((2, 2, 2)))
    got = debye_waller(model, phi, 300.0, mesh=8)
    assert float((got - expect).abs().max()) < 1e-12 * float(expect.abs().max())
    irr = irreducible_mesh(P, (8, 8, 8))
    assert irr.weight.sum() == 512 and len(irr.k) < 512 / 4  # a real reduction


@pytest.mark.parametrize("name", ["Mg (P6_3/mmc, 2 atoms exchanged by the screw axis)", "NaCl (Fm-3m, 2 species)"])
def test_self_spectral_function_from_the_orbits_equals_the_full_mesh(name):
    """Per-atom scalars are exchanged, not rotated: the multiphonon self spectral function
    Σ_kν |e_sν(k)|² f(λ_kν) from the orbits of the 6³ mesh equals the sum over all 216 k-points
    (written out here with the same mode function) to 1e-12."""
    import math

    from xtds import dynamics
    from xtds.model.multiphonon import _spectral_on_mesh
    from xtds.model.neutron import mode_weight
    from xtds.model.spectral import BinnedSpectral

    model = xtds.IFCModel(CRYSTALS[name](), shells=3)
    phi = constants(model)
    P = model.primitive
    n = P.n_atoms
    grid = np.arange(-60.0, 60.01, 0.5)
    got = _spectral_on_mesh(model, phi, (6, 6, 6), grid, 300.0, 0.5, True)
    k = P.k_grid((6, 6, 6)).reshape(-1, 3)
    D = dynamics.dynamical_matrix(model, phi, torch.as_tensor(k))
    V = torch.diag(dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device)).to(D.dtype).repeat(len(k), 1)
    kidx = torch.arange(len(k)).repeat_interleave(3 * n)
    bidx = torch.arange(n).repeat_interleave(3).repeat(len(k))
    f_of = mode_weight(grid, 300.0, 2 * math.sqrt(2 * math.log(2)) * 0.5)
    expect = BinnedSpectral.apply(D, V, kidx, bidx, n, f_of, None) / (3 * len(k))
    assert float((got - expect).abs().max()) < 1e-12 * float(expect.abs().max())
    assert len(irreducible_mesh(P, (6, 6, 6)).k) < 216 / 4
