"""Symmetry-reduced IFCs, checked against independent numerical computations."""

import numpy as np
import pytest
import spglib
import torch
import xarray as xr

from xtds import Crystal, IFCModel

PAPER_NAMES = ["b0", "b1", "b2", "c0", "c1", "d0", "d1", "d2", "d3", "e0", "e1", "e2", "f0", "f1", "f2", "f3"]


def test_fcc_names_and_order(ni_model):
    assert list(ni_model.names) == PAPER_NAMES
    assert ni_model.derived_names == ("a0",)
    a = 3.52
    expect = {"b": (1, 1, 0), "c": (2, 0, 0), "d": (2, 1, 1), "e": (2, 2, 0), "f": (3, 1, 0)}
    elements = dict(b="xx zz xy", c="xx yy", d="xx yy yz xy", e="xx zz xy", f="xx yy zz xy")
    for info in ni_model.info:
        letter = info.name[0]
        assert np.allclose(np.array(info.neighbour) / (a / 2), expect[letter])
        assert info.element == elements[letter].split()[int(info.name[1])]
    counts = {i.shell: i.count for i in ni_model.info}
    assert counts == {1: 12, 2: 6, 3: 24, 4: 12, 5: 24}


def _cartesian_ops(crystal):
    """Cartesian rotations and translations of the crystal's own (conventional) cell, via spglib."""
    sym = spglib.get_symmetry(crystal.spglib_cell, symprec=1e-5)
    A = crystal.lattice
    R = np.einsum("ji,gjk,kl->gil", A, sym["rotations"], np.linalg.inv(A).T)
    t = sym["translations"] @ A
    return R, t


def _pair_lookup(model):
    prim = model.primitive
    x = prim.cartesian_positions
    Ainv = np.linalg.inv(prim.lattice)

    def site_of(y):
        d = (y - x) @ Ainv
        err = np.linalg.norm((d - np.round(d)) @ prim.lattice, axis=1)
        assert err.min() < 1e-6
        return int(err.argmin())

    pairs = enumerate(zip(model.pair_src, model.pair_vector, strict=True))
    key = {(int(s), tuple(np.round(d, 6))): p for p, (s, d) in pairs}
    return x, site_of, key


@pytest.mark.heavy
@pytest.mark.parametrize("preset, shells", [("Ni", 5), ("Fe", 4), ("Si", 4), ("NaCl", 4)])
def test_every_block_symmetric_and_sum_rule(preset, shells):
    """Φ(gR) = g Φ(R) gᵀ for every operation and every pair, index symmetry, and the sum rule."""
    model = IFCModel(Crystal.preset(preset), shells=shells)
    rng = np.random.default_rng(1)
    phi = torch.tensor(rng.normal(size=model.n_free))
    blocks = model.blocks(phi).numpy()
    x, site_of, key = _pair_lookup(model)
    R, t = _cartesian_ops(model.crystal)
    assert len(R) >= 48
    worst = 0.0
    for g in range(len(R)):
        for p, (s, d) in enumerate(zip(model.pair_src, model.pair_vector, strict=True)):
            s2 = site_of(R[g] @ x[s] + t[g])
            q = key[(s2, tuple(np.round(R[g] @ d, 6)))]
            worst = max(worst, np.abs(blocks[q] - R[g] @ blocks[p] @ R[g].T).max())
    assert worst < 1e-12
    # index symmetry Φ(s, R+s') = Φ(s', -R+s)ᵀ
    for p, (t_, d) in enumerate(zip(model.pair_dst, model.pair_vector, strict=True)):
        q = key[(int(t_), tuple(np.round(-d, 6)))]
        assert np.abs(blocks[q] - blocks[p].T).max() < 1e-12
    # acoustic sum rule per site
    for s in range(model.n_sites):
        assert np.abs(blocks[model.pair_src == s].sum(axis=0)).max() < 1e-12


def test_paper_sum_rule_eq3(ni_model, paper_tables):
    tab = paper_tables["target_EAM_U3"]
    phi = ni_model.vector(tab)
    a0 = float(ni_model.derived(phi)[0])
    v = tab
    eq3 = -(
        8 * v["b0"] + 4 * v["b1"] + 2 * v["c0"] + 4 * v["c1"] + 8 * v["d0"] + 16 * v["d1"]
        + 8 * v["e0"] + 4 * v["e1"] + 8 * v["f0"] + 8 * v["f1"] + 8 * v["f2"]
    )
    assert a0 == pytest.approx(eq3, abs=1e-12)
    assert a0 == pytest.approx(v["a0"], abs=1e-3)  # the table rounds to 4 digits
    # the self block is isotropic a0·1
    self_block = ni_model.blocks(phi)[ni_model.pair_shell == 0][0].numpy()
    assert np.allclose(self_block, a0 * np.eye(3), atol=1e-12)


def _numerical_free_count(crystal, x_a, x_b):
    """Null-space dimension of the symmetry constraints on Φ(a, b), by SVD, from spglib's
    operations of the conventional cell (an independent route to the one in xtds.lattice.ifc)."""
    R, t = _cartesian_ops(crystal)
    A = crystal.lattice
    Ainv = np.linalg.inv(A)

    def same(y, z):
        d = (y - z) @ Ainv
        return np.linalg.norm((d - np.round(d)) @ A) < 1e-6

    P = np.zeros((9, 9))
    for k in range(9):
        P[3 * (k % 3) + k // 3, k] = 1.0
    rows = []
    for g in range(len(R)):
        ya, yb = R[g] @ x_a + t[g], R[g] @ x_b + t[g]
        K = np.kron(R[g], R[g])
        # same pair (up to a lattice translation of both atoms)
        if same(ya, x_a) and np.allclose(yb - ya, x_b - x_a, atol=1e-6):
            rows.append(K - np.eye(9))
        if same(ya, x_b) and np.allclose(yb - ya, x_a - x_b, atol=1e-6):
            rows.append(P @ K - np.eye(9))  # g maps (a, b) onto (b, a): Φᵀ = R Φ Rᵀ
    rows.append(np.zeros((1, 9)))
    s = np.linalg.svd(np.vstack(rows), compute_uv=False)
    return int(9 - np.sum(s > 1e-8))


@pytest.mark.parametrize("preset, shells", [("Ni", 5), ("Fe", 5), ("Si", 5), ("NaCl", 5), ("MgO", 3)])
@pytest.mark.heavy
def test_free_counts_equal_numerical_null_space(preset, shells):
    model = IFCModel(Crystal.preset(preset), shells=shells)
    x = model.primitive.cartesian_positions
    total = 0
    for orbit in model.orbits:
        p = orbit.rep
        xa = x[model.pair_src[p]]
        xb = xa + model.pair_vector[p]
        assert len(orbit.elements) == _numerical_free_count(model.crystal, xa, xb)
        if orbit.shell > 0:
            total += len(orbit.elements)
    assert total == model.n_free


def test_known_counts():
    # literature: FCC 1NN 3, 2NN 2; BCC 1NN 2, 2NN 2; diamond 1NN 2, 2NN 4; rocksalt 1NN 2
    assert [n for sh, _, _, n in IFCModel(Crystal.preset("Cu"), shells=2).orbit_sizes if sh] == [3, 2]
    assert [n for sh, _, _, n in IFCModel(Crystal.preset("Fe"), shells=2).orbit_sizes if sh] == [2, 2]
    assert [n for sh, _, _, n in IFCModel(Crystal.preset("Si"), shells=2).orbit_sizes if sh] == [2, 4]
    rs = IFCModel(Crystal.preset("NaCl"), shells=2)
    assert rs.names == ("b0", "b1", "c0_Na-Na", "c1_Na-Na", "c2_Na-Na", "c0_Cl-Cl", "c1_Cl-Cl", "c2_Cl-Cl")
    assert rs.derived_names == ("a0_Na", "a0_Cl")


def test_cutoff_equals_shells():
    c = Crystal.preset("Ni")
    by_shell = IFCModel(c, shells=3)
    by_radius = IFCModel(c, cutoff=by_shell.cutoff + 0.01)
    assert by_radius.names == by_shell.names
    assert np.array_equal(by_radius.basis, by_shell.basis)


def test_vector_inputs_and_errors(ni_model, paper_tables):
    tab = paper_tables["target_EAM_U3"]
    phi = ni_model.vector(tab)
    da = ni_model.to_dataarray(phi)
    assert isinstance(da, xr.DataArray) and da.dims == ("constant",)
    assert da.attrs["units"] == "eV/Å^2"
    assert list(da["constant"].values[:3]) == ["a0", "b0", "b1"]
    assert bool(da.sel(constant="a0")["derived"])
    assert float(da.sel(constant="b2")) == tab["b2"]
    assert torch.equal(ni_model.vector(da), phi)
    with pytest.raises(ValueError, match="unknown IFC names"):
        ni_model.vector({**tab, "z9": 1.0})
    with pytest.raises(ValueError, match="missing"):
        ni_model.vector({"b0": 1.0})
    with pytest.raises(ValueError, match="acoustic sum rule"):
        ni_model.vector({**tab, "a0": 9.0})
    with pytest.raises(ValueError, match="units"):
        ni_model.vector(da.assign_attrs(units="N/m"))
    with pytest.raises(ValueError, match="exactly one"):
        IFCModel(Crystal.preset("Ni"))


def test_project_recovers_and_reports_residual(ni_model):
    rng = np.random.default_rng(3)
    phi = rng.normal(size=ni_model.n_free)
    blocks = ni_model.blocks(torch.tensor(phi)).numpy()
    got, resid = ni_model.project(blocks)
    assert np.allclose(got, phi, atol=1e-12) and resid < 1e-13
    noisy = blocks + 0.1 * rng.normal(size=blocks.shape)
    _, resid = ni_model.project(noisy)
    assert resid > 0.01


def test_central_force_nearest_neighbour(ni_model):
    phi = ni_model.central_force({1: 2.0})
    named = dict(zip(ni_model.names, phi, strict=True))
    # Φ(110) = −k/2 [[1,1,0],[1,1,0],[0,0,0]]
    assert named["b0"] == pytest.approx(-1.0) and named["b2"] == pytest.approx(-1.0)
    assert abs(named["b1"]) < 1e-14 and all(abs(v) < 1e-14 for n, v in named.items() if n[0] != "b")
