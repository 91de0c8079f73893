"""Mesh sums from the irreducible k-points (xtds.lattice.kmesh) against the full Γ-centred mesh."""

import numpy as np
import pytest
import torch

import xtds
from xtds.lattice.kmesh import irreducible_mesh
from xtds.thermal.covariance import covariance_k
from xtds.thermal.debye_waller import debye_waller, richardson

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

    from xtds.lattice import dynamics
    from xtds.observables.neutron.multiphonon import _spectral_on_mesh
    from xtds.observables.neutron.sqe import mode_weight
    from xtds.thermal.spectral import BinnedSpectral

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
    expect = BinnedSpectral.apply(D, V, kidx, bidx, n, f_of, None, None) / (3 * len(k))
    assert float((got - expect).abs().max()) < 1e-12 * float(expect.abs().max())
    assert len(irreducible_mesh(P, (6, 6, 6)).k) < 216 / 4


@pytest.mark.parametrize("name", ["Mg (P6_3/mmc, 2 atoms exchanged by the screw axis)", "NaCl (Fm-3m, 2 species)"])
def test_self_spectral_tensor_from_the_orbits_equals_the_full_mesh(name):
    """Per-atom tensors are exchanged and rotated: T_s^{αβ}(E) = Σ_kν Re(e_sα e_sβ*) f(λ_kν)/N_k
    from the orbits of the 6³ mesh (six projections per atom and the rotations of the group) equals
    the sum over all 216 k-points, written out here from the eigenvectors, to 1e-12; for Mg it is
    anisotropic (T^{zz} ≠ T^{xx}), for NaCl a multiple of the identity."""
    import math

    from xtds.lattice import dynamics
    from xtds.observables.neutron.multiphonon import _spectral_on_mesh
    from xtds.observables.neutron.sqe import mode_weight

    model = xtds.IFCModel(CRYSTALS[name](), shells=3)
    phi = constants(model)
    P = model.primitive
    n = P.n_atoms
    grid = np.arange(-60.0, 60.01, 0.5)
    got = _spectral_on_mesh(model, phi, (6, 6, 6), grid, 300.0, 0.5, True, tensor=True)
    k = P.k_grid((6, 6, 6)).reshape(-1, 3)
    lam, U = torch.linalg.eigh(dynamics.dynamical_matrix(model, phi, torch.as_tensor(k)))
    f = mode_weight(grid, 300.0, 2 * math.sqrt(2 * math.log(2)) * 0.5)(lam)  # (K, 3n, G)
    e = U.reshape(len(k), n, 3, 3 * n) * dynamics.inverse_sqrt_mass(model, phi.dtype, phi.device).reshape(n, 3)[
        None, :, :, None]
    expect = torch.einsum("ksav,ksbv,kvg->sabg", e, e.conj(), f.to(e.dtype)).real / len(k)
    assert float((got - expect).abs().max()) < 1e-12 * float(expect.abs().max())
    zz, xx = float(expect[0, 2, 2].abs().sum()), float(expect[0, 0, 0].abs().sum())
    assert (abs(zz / xx - 1) > 1e-3) == name.startswith("Mg")


def _every_k(model, pts):
    """``pts`` with each point moved to a random image under the Laue group: powder_points keeps
    the image whose k is its orbit's representative, so its k rarely share an orbit; here they do
    (korbit: the orbit of each k, that of the point's original k)."""
    import dataclasses

    from xtds.lattice.laue import LaueGroup
    from xtds.observables.neutron.powder import split_wave_vectors

    R = LaueGroup.of(model.crystal).cartesian(model.crystal)
    q = np.einsum("pij,pj->pi", R[np.random.default_rng(5).integers(len(R), size=len(pts.q))], pts.q)
    P = model.primitive
    kf, G = split_wave_vectors(P, q)
    ku, kidx = np.unique(kf, axis=0, return_inverse=True)
    kidx = kidx.reshape(-1)
    korbit = np.empty(len(ku), dtype=np.int64)
    korbit[kidx] = pts.korbit[pts.kidx]
    korbit = np.unique(korbit, return_inverse=True)[1].reshape(-1)  # numbered 0 … orbits − 1
    Bp = np.asarray(P.reciprocal)
    return dataclasses.replace(pts, q=q, k=ku @ Bp, kidx=kidx, g=G @ Bp, korbit=korbit)


@pytest.mark.parametrize("name", ["Al (Fm-3m, 1 atom)", "Si (Fd-3m, 2 atoms exchanged by the glide)"])
def test_powder_spectrum_from_the_k_orbits_equals_every_k(name):
    """The powder mesh's k-points of one orbit share their eigenvalues: the binned spectrum with
    f(λ) made once per orbit (``korbit``) equals the one made at every k, in value, in forward-mode
    Jacobian and in reverse-mode gradient, to 1e-8 of the largest value: the reduced k are rounded
    to 10 digits, which moves equivalent eigenvalues apart by about 1e-10 relative (measured:
    2.5e-10 for Al). With adaptive widths the orbit uses its representative's; the full sum is
    given the same (at degenerate modes the Hellmann–Feynman widths depend on the eigenvector basis
    eigh picks, which differs from k to k of an orbit)."""
    from xtds.lattice import dynamics
    from xtds.observables.neutron.powder import adaptive_mesh_widths, powder_points
    from xtds.observables.neutron.sqe import chopper_resolution, mode_weight
    from xtds.thermal.spectral import BinnedSpectral

    model = xtds.IFCModel(CRYSTALS[name](), shells=3)
    phi = constants(model)
    pts = _every_k(model, powder_points(model, np.linspace(1.0, 4.5, 15), mesh=6))
    assert len(np.unique(pts.korbit)) < len(pts.k) / 4  # the orbits do reduce the work
    m = 3 * model.primitive.n_atoms
    V = torch.as_tensor(np.random.default_rng(3).standard_normal((len(pts.q), m)), dtype=torch.complex128)
    kt, kidx, bidx = torch.as_tensor(pts.k), torch.as_tensor(pts.kidx), torch.as_tensor(pts.bins)
    fn = mode_weight(np.linspace(-10.0, 60.0, 41), 300.0, chopper_resolution(50.0, 40, 20))
    rep = np.unique(pts.korbit, return_index=True)[1]
    widths = adaptive_mesh_widths(model, phi, pts)[rep][pts.korbit]
    for sigma in (None, torch.as_tensor(widths)):
        def spectrum(p, orbits, sigma=sigma):
            D = dynamics.dynamical_matrix(model, p, kt)
            korbit = torch.as_tensor(pts.korbit) if orbits else None
            return BinnedSpectral.apply(D, V, kidx, bidx, pts.n_bins, fn, sigma, korbit)

        for transform in (lambda g: g, torch.func.jacfwd, lambda g: torch.func.grad(lambda p: (g(p) ** 2).sum())):
            got = transform(lambda p: spectrum(p, True))(phi)
            expect = transform(lambda p: spectrum(p, False))(phi)
            assert float((got - expect).abs().max()) <= 1e-8 * float(expect.abs().max())


@pytest.mark.parametrize("repeats", [(3, 3, 3), (5, 2, 7)])
def test_commensurate_k_is_exact(repeats):
    """The wave vectors of a primitive FCC cell commensurate with a supercell of conventional cells:
    one per class, and k·T/2π an integer to round-off for every supercell vector T (1/3, 1/7 not
    rounded to 8 decimals: that put k off by 1e-9 and C(k) of MD frames off by 1e-8)."""
    from xtds.lattice.kmesh import commensurate_k

    conv = xtds.Crystal.fcc("Cu", a=3.61)
    prim = xtds.IFCModel(conv, shells=1).primitive
    sup = np.asarray(conv.lattice) * np.asarray(repeats)[:, None]
    k = commensurate_k(prim.lattice, sup)
    assert len(k) == 4 * np.prod(repeats)
    n = sup @ k.T / (2 * np.pi)
    assert np.abs(n - np.round(n)).max() < 1e-12
    frac = k @ np.asarray(prim.lattice).T / (2 * np.pi)
    assert frac.min() > -1e-12 and frac.max() < 1 - 1e-6
    assert len(np.unique(np.round(frac, 6), axis=0)) == len(k)
