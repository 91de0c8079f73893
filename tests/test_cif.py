"""Crystals from CIF files (gemmi) reproduce the built-in ones; the CLI takes a CIF."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.observables import PeriodicSupercell, tds_intensity

pytest.importorskip("gemmi")

MG_CIF = """data_Mg
_cell_length_a 3.2093
_cell_length_b 3.2093
_cell_length_c {c}
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_symmetry_space_group_name_H-M 'P 63/m m c'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Mg1 Mg 0.333333333333 0.666666666667 0.25 {occ}
"""

RUTILE_CIF = """data_TiO2
_cell_length_a 4.5937
_cell_length_b 4.5937
_cell_length_c 2.9587
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 42/m n m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Ti1 Ti 0 0 0
O1 O2- 0.30478 0.30478 0
"""


def same_structure(a, b):
    np.testing.assert_allclose(a.lattice, b.lattice, atol=1e-6)
    def key(c):
        return sorted((s, *np.round(np.mod(p, 1.0) % 1.0, 5)) for s, p in zip(c.species, c.positions, strict=True))

    assert key(a) == key(b)


def test_cif_reproduces_the_presets(tmp_path):
    mg = tmp_path / "Mg.cif"
    mg.write_text(MG_CIF.format(c=5.2103, occ=1.0))  # the preset: Wyckoff (1963), 298 K
    got = xtds.Crystal.from_cif(mg)
    same_structure(got, xtds.Crystal.preset("Mg"))
    assert got.space_group == "P6_3/mmc (194)" and xtds.lattice.crystal.as_crystal(str(mg)).n_atoms == 2
    rut = tmp_path / "rutile.cif"
    rut.write_text(RUTILE_CIF)
    got = xtds.Crystal.from_cif(rut)
    ref = xtds.Crystal.preset("TiO2")
    assert got.species.count("O2-") == 4  # the ion of the type symbol is kept (its form factor)
    same_structure(xtds.Crystal(got.lattice, got.positions, [s.rstrip("2-") for s in got.species]), ref)
    assert got.space_group == ref.space_group == "P4_2/mnm (136)"


def test_bad_cif_is_refused(tmp_path):
    part = tmp_path / "part.cif"
    part.write_text(MG_CIF.format(c=5.21, occ=0.5))
    with pytest.raises(ValueError, match="partially occupied"):
        xtds.Crystal.from_cif(part)
    with pytest.raises(FileNotFoundError):
        xtds.Crystal.from_cif(tmp_path / "none.cif")
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a CIF\n")
    with pytest.raises(ValueError, match="not a readable CIF"):
        xtds.Crystal.from_cif(junk)


@pytest.mark.heavy
def test_cli_fits_a_mg_volume_from_its_cif(tmp_path):
    mg = tmp_path / "Mg.cif"
    mg.write_text(MG_CIF.format(c=5.2103, occ=1.0))  # the preset: Wyckoff (1963), 298 K
    crystal = xtds.Crystal.from_cif(mg)
    model = xtds.IFCModel(crystal, shells=2)
    truth = model.central_force({1: 1.2, 2: 1.0})
    c = np.arange(-3, 4) / 3.0
    hkl = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        I = tds_intensity(model, truth, crystal.rlu_to_cartesian(hkl), 300.0, geometry=PeriodicSupercell(3))
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(7, 7, 7))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={**xtds.io.crystal_attrs(crystal), "temperature": 300.0,
                           "geometry": repr(PeriodicSupercell(3))})  # made on a supercell: auto follows
    path = str(tmp_path / "mg.nc")
    xtds.write_volume(ds, path)
    start = tmp_path / "start.json"
    start.write_text(str(dict(zip(model.names, (truth * 1.05).tolist(), strict=True))).replace("'", '"'))
    out = subprocess.run([sys.executable, "-m", "xtds.cli", "fit", path, "--crystal", str(mg), "--shells", "2",
                          "--initial", str(start), "--quiet", "--no-symmetrize"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for name, value in zip(model.names, truth, strict=True):
        line = next(row for row in out.stdout.splitlines() if row.startswith(name + " ") or row.split()[0] == name)
        assert float(line.split()[1]) == pytest.approx(float(value), abs=1e-6)
