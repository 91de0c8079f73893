import numpy as np
import periodictable
import pytest

from xtds import Crystal


@pytest.mark.parametrize(
    "name, sg, n, nprim",
    [
        ("Ni", "Fm-3m (225)", 4, 1),
        ("Al", "Fm-3m (225)", 4, 1),
        ("Cu", "Fm-3m (225)", 4, 1),
        ("Fe", "Im-3m (229)", 2, 1),
        ("Nb", "Im-3m (229)", 2, 1),
        ("Si", "Fd-3m (227)", 8, 2),
        ("MgO", "Fm-3m (225)", 8, 2),
        ("NaCl", "Fm-3m (225)", 8, 2),
    ],
)
def test_presets(name, sg, n, nprim):
    c = Crystal.preset(name)
    assert c.space_group == sg
    assert c.n_atoms == n
    p = c.primitive()
    assert p.n_atoms == nprim
    assert p.volume == pytest.approx(c.volume * nprim / n, rel=1e-12)
    # primitive vectors are translations of the crystal, same orientation
    frac = p.lattice @ np.linalg.inv(c.lattice)
    assert np.all(np.isclose(frac * 2, np.round(frac * 2)))


def test_masses_from_periodictable():
    c = Crystal.preset("NaCl")
    assert c.masses[0] == periodictable.Na.mass
    assert c.masses[-1] == periodictable.Cl.mass


def test_reciprocal_and_rlu_round_trip():
    c = Crystal.from_parameters(4.0, 5.0, 6.0, 80, 95, 110, [[0, 0, 0]], ["Cu"])
    assert np.allclose(c.reciprocal @ c.lattice.T, 2 * np.pi * np.eye(3), atol=1e-12)
    hkl = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(c.cartesian_to_rlu(c.rlu_to_cartesian(hkl)), hkl, atol=1e-12)
    ni = Crystal.fcc("Ni", a=3.52)
    assert np.allclose(ni.rlu_to_cartesian([2, 0, 0]), [4 * np.pi / 3.52, 0, 0])
    assert c.parameters == pytest.approx((4.0, 5.0, 6.0, 80, 95, 110))


def test_frozen_and_hashable():
    a, b = Crystal.fcc("Ni", a=3.52), Crystal.fcc("Ni", a=3.52)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        a.lattice[0, 0] = 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lattice=np.eye(3), positions=[[0, 0, 0]], species=["Xx"]), "unknown species"),
        (dict(lattice=np.eye(2), positions=[[0, 0, 0]], species=["Ni"]), "shape"),
        (dict(lattice=-np.eye(3), positions=[[0, 0, 0]], species=["Ni"]), "left-handed"),
        (dict(lattice=np.eye(3), positions=[[0, 0, 0], [1, 0, 0]], species=["Ni", "Ni"]), "same position"),
        (dict(lattice=np.eye(3), positions=[[0, 0, 0]], species=["Ni", "Ni"]), "species"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Crystal(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="choose one of"):
        Crystal.preset("unobtainium")
