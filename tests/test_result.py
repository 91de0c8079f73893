"""A fit result is complete: saved to a file, it rebuilds its model and phonons in a new process."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.model import PeriodicSupercell, tds_intensity

MG = xtds.Crystal.from_parameters(3.209, 3.209, 5.211, 90.0, 90.0, 120.0,
                                  [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]], ["Mg", "Mg"], name="Mg")


@pytest.fixture(scope="module")
def mg_fit():
    """hcp Mg: a volume on the 4×4×4 supercell grid from central springs, fitted without
    symmetrization (the hexagonal class mixes H and K)."""
    model = xtds.IFCModel(MG, shells=2)
    truth = model.central_force({1: 1.2, 2: 1.0})
    c = np.arange(-4, 5) / 4.0
    hkl = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        I = tds_intensity(model, truth, MG.rlu_to_cartesian(hkl), 300.0, geometry=PeriodicSupercell(4))
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(9, 9, 9))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    start = truth * (1 + 0.05 * np.cos(np.arange(model.n_free)))
    res = ds.tds.fit(MG, shells=2, initial=start, symmetrize=False, progress=False)
    return model, truth, res


def test_the_hcp_fit_recovers_the_truth(mg_fit):
    model, truth, res = mg_fit
    got = res["ifc"].sel(constant=list(model.names)).values
    np.testing.assert_allclose(got, truth, atol=1e-8)
    assert res["crystal_species"].values.tolist() == ["Mg", "Mg"] and res.attrs["ifc_cutoff_A"] == model.cutoff


@pytest.mark.parametrize("ext", ["nc", "zarr"])
def test_open_fit_rebuilds_the_model_in_a_new_process(mg_fit, tmp_path, ext):
    model, _, res = mg_fit
    path = str(tmp_path / f"mg_fit.{ext}")
    xtds.write_volume(res, path)
    script = (f"import numpy as np, xtds; r = xtds.open_fit({path!r}); "
              f"np.save({str(tmp_path / 'disp.npy')!r}, r.dispersion().values); print(r.model.names)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(model.names)
    np.testing.assert_allclose(np.load(tmp_path / "disp.npy"), res["dispersion"].values, rtol=1e-12, atol=1e-12)


def test_open_fit_refuses_a_volume(tmp_path):
    from xtds.datasets import paper_ni_volume

    path = str(tmp_path / "volume.nc")
    xtds.write_volume(paper_ni_volume(n_max=2), path)
    with pytest.raises(ValueError, match="not an xtds fit result"):
        xtds.open_fit(path)


def test_an_unstable_result_is_flagged_and_a_stable_one_is_not(mg_fit):
    """Constants stable on the fit's own 2×2×2 k-grid but with a negative long-wavelength stiffness
    (the elastic tensor not positive definite): the fit ends there, and says so."""
    from xtds.errors import UnstableResultWarning

    assert mg_fit[2].attrs["stable"] == 1
    model = xtds.IFCModel(xtds.Crystal.preset("Ni"), shells=2)
    bad = np.array([-0.786, -0.665, -1.043, 0.534, -0.783])
    c = np.arange(-4, 5) / 2.0
    hkl = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        I = tds_intensity(model, bad, model.crystal.rlu_to_cartesian(hkl), 300.0, geometry=PeriodicSupercell(2))
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(9, 9, 9))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"}, attrs={"temperature": 300.0})
    with pytest.warns(UnstableResultWarning, match="elastic tensor not positive definite"):
        res = ds.tds.fit("Ni", shells=2, initial=bad, progress=False)
    assert res.attrs["stable"] == 0 and "Γ" in res.attrs["stability"]
