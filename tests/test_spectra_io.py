"""Measured powder spectra from files (xtds.io.spectra) and the problem made from them
(xtds.fitting.powder): a simulated Ni spectrum written in the layouts of Mantid's SaveMD,
SaveNexusProcessed and SaveNXSPE and as plain HDF5 counts, read back, and fitted."""

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.fitting.powder import powder_problem
from xtds.io.spectra import load_powder_spectrum
from xtds.observables.neutron.powder import PowderSpectrum
from xtds.observables.neutron.sqe import NEUTRON_E_PER_K2

EI = 50.0
E_EDGES = np.arange(2.0, 46.01, 1.0)
Q_EDGES = np.arange(0.5, 7.01, 0.1)
E = 0.5 * (E_EDGES[1:] + E_EDGES[:-1])
Q = 0.5 * (Q_EDGES[1:] + Q_EDGES[:-1])


@pytest.fixture(scope="module")
def truth():
    model = xtds.IFCModel(xtds.Crystal.preset("Ni"), shells=2)
    phi = dict(zip(model.names, model.central_force({1: 3.8, 2: 0.25}), strict=True))
    obs = PowderSpectrum(model, Q, E, 300.0, resolution=1.5, mesh=8, kind="sqe", normalize=False,
                         multiphonon=(2,), multiphonon_mesh=8)
    with torch.no_grad():
        S = obs.spectrum(model.vector(phi)).numpy()  # (E, Q)
    kfki = np.sqrt(1 - E / EI)[:, None]
    measured = 40.0 * S * kfki + 0.02  # uncorrected intensity, arbitrary units, flat background
    rng = np.random.default_rng(5)
    sigma = 0.01 * np.nanmax(measured) * np.ones_like(measured)
    noisy = measured + sigma * rng.standard_normal(measured.shape)
    return model, phi, S, noisy, sigma


def _write_mdhisto(path, I, sigma):
    with h5py.File(path, "w") as f:
        g = f.create_group("MDHistoWorkspace")
        d = g.create_group("data")
        # dimensions: D0 = |Q|, D1 = DeltaE, D2 = an integrated one-bin dimension; signal stored D2, D1, D0
        for name, edges, long, units in (("D0", Q_EDGES, "|Q|", "Angstrom^-1"), ("D1", E_EDGES, "DeltaE", "meV"),
                                         ("D2", np.array([-1.0, 1.0]), "Temperature", "K")):
            ax = d.create_dataset(name, data=edges)
            ax.attrs["long_name"], ax.attrs["units"] = long, units
        d.create_dataset("signal", data=I[None])
        d.create_dataset("errors_squared", data=(sigma**2)[None])
        d.create_dataset("mask", data=np.zeros((1,) + I.shape, np.int8))
        exp = g.create_group("experiment0")
        exp.create_dataset("instrument/name", data=b"ARCS")
        exp.create_dataset("logs/Ei/value", data=np.array([EI]))


def _write_processed(path, I, sigma):
    with h5py.File(path, "w") as f:
        w = f.create_group("mantid_workspace_1/workspace")
        w.create_dataset("values", data=I.T)
        w.create_dataset("errors", data=sigma.T)
        w.create_dataset("axis1", data=E_EDGES).attrs["units"] = "DeltaE"
        w.create_dataset("axis2", data=Q_EDGES).attrs["units"] = "MomentumTransfer"
        f.create_dataset("mantid_workspace_1/instrument/name", data=b"ARCS")
        f.create_dataset("mantid_workspace_1/logs/Ei/value", data=np.array([EI]))


def test_mantid_layouts_read_back_exactly(truth, tmp_path):
    _, _, _, I, sigma = truth
    for writer, fmt in ((_write_mdhisto, "mdhisto"), (_write_processed, "mantid_processed")):
        path = tmp_path / f"{fmt}.nxs"
        writer(path, I, sigma)
        ds = load_powder_spectrum(path)
        assert ds.attrs["source_format"] == fmt and ds.attrs["instrument"] == "ARCS"
        assert ds.attrs["incident_energy_meV"] == EI
        np.testing.assert_allclose(ds["E"].values, E)
        np.testing.assert_allclose(ds["Q"].values, Q)
        np.testing.assert_allclose(ds["intensity"].values, I, rtol=1e-14)
        np.testing.assert_allclose(ds["sigma"].values, sigma, rtol=1e-14)
    with h5py.File(tmp_path / "bad.nxs", "w") as f:
        f.create_dataset("foo", data=np.ones(3))
    with pytest.raises(ValueError, match="not a powder spectrum"):
        load_powder_spectrum(tmp_path / "bad.nxs")


def test_plain_hdf5_counts_and_xarray(truth, tmp_path):
    _, _, _, I, _ = truth
    counts = np.random.default_rng(1).poisson(np.clip(I, 0, None) * 20).astype(float)
    with h5py.File(tmp_path / "counts.h5", "w") as f:
        f.create_dataset("intensity", data=counts.T)  # stored (Q, E): the reader turns it
        f.create_dataset("Q", data=Q)
        f.create_dataset("energy", data=E_EDGES)
        f.attrs["Ei"] = EI
        f.attrs["instrument"] = "ARCS"
    ds = load_powder_spectrum(tmp_path / "counts.h5")
    assert ds.attrs["counts"] and ds.attrs["incident_energy_meV"] == EI and "sigma" not in ds
    np.testing.assert_array_equal(ds["intensity"].values, counts)
    again = load_powder_spectrum(xr.Dataset({"S": (("Q", "DeltaE"), counts.T)}, coords={"Q": Q, "DeltaE": E}))
    np.testing.assert_array_equal(again["intensity"].values, counts)


def test_nxspe_detectors_into_q_bins(truth, tmp_path):
    """Detectors at 2θ = 3°…135° with the spectrum of their own |Q| (interpolated from the model's
    grid): averaged into |Q| bins they give back the spectrum within the interpolation's error."""
    _, _, S, _, sigma = truth
    I = 40.0 * S * np.sqrt(1 - E / EI)[:, None] + 0.02  # the noise-free intensity
    two_theta = np.linspace(3.0, 135.0, 600)
    ki = np.sqrt(EI / NEUTRON_E_PER_K2)
    kf = np.sqrt((EI - E) / NEUTRON_E_PER_K2)
    Qd = np.sqrt(ki**2 + kf[None] ** 2 - 2 * ki * kf[None] * np.cos(np.radians(two_theta))[:, None])
    data = np.array([[np.interp(Qd[d, e], Q, I[e], left=np.nan, right=np.nan) for e in range(len(E))]
                     for d in range(len(two_theta))])
    with h5py.File(tmp_path / "run.nxspe", "w") as f:
        entry = f.create_group("run")
        info = entry.create_group("NXSPE_info")
        info.create_dataset("fixed_energy", data=[EI])
        info.create_dataset("ki_over_kf_scaling", data=[0])
        info.create_dataset("psi", data=[0.0])
        d = entry.create_group("data")
        d.create_dataset("data", data=np.nan_to_num(data, nan=-1e30))
        d.create_dataset("error", data=np.full(data.shape, sigma[0, 0]))
        d.create_dataset("energy", data=E_EDGES)
        d.create_dataset("polar", data=two_theta)
        d.create_dataset("azimuthal", data=np.zeros_like(two_theta))
        entry.create_dataset("instrument/name", data=b"ARCS")
    ds = load_powder_spectrum(tmp_path / "run.nxspe", q_bins=Q_EDGES)
    assert ds.attrs["ki_over_kf_scaling"] is False and ds.attrs["incident_energy_meV"] == EI
    both = ds["valid"].values & np.isfinite(I)
    assert both.sum() > 0.5 * np.isfinite(I).sum()
    err = np.abs(ds["intensity"].values[both] - I[both])
    assert np.median(err) < 0.01 * np.nanmax(I), np.median(err)  # the |Q| of each detector is right
    # and each bin is the mean of its detectors (np.histogram, not the reader's bincount)
    for e in (3, 20, 40):
        ok = np.isfinite(data[:, e])
        n, _ = np.histogram(Qd[ok, e], bins=Q_EDGES)
        tot, _ = np.histogram(Qd[ok, e], bins=Q_EDGES, weights=data[ok, e])
        with np.errstate(invalid="ignore"):
            expect = tot / n
        got = ds["intensity"].values[e]
        np.testing.assert_allclose(got[n > 0], expect[n > 0], rtol=1e-12)
        np.testing.assert_allclose(ds["sigma"].values[e][n > 0], sigma[0, 0] / np.sqrt(n[n > 0]), rtol=1e-12)


@pytest.mark.heavy
def test_problem_from_a_file_is_fitted(truth, tmp_path):
    """The MDHisto file through powder_problem (k_f/kᵢ because the file is not corrected, χ² with its
    errors, the coverage of Ei, a free scale and background): the constants within 3σ, the choices
    recorded."""
    model, phi, _, I, sigma = truth
    _write_mdhisto(tmp_path / "ni.nxs", I, sigma)
    ds = load_powder_spectrum(tmp_path / "ni.nxs").assign_attrs(ki_over_kf_scaling=False)
    prob = powder_problem(ds, model, 300.0, resolution=1.5, mesh=8, multiphonon=(2,), multiphonon_mesh=8,
                          screen="keep")
    choices = prob.data_attrs["choices"]
    assert "k_f/kᵢ" in choices and "loss chi2" in choices and "coverage" in choices
    res = xtds.fit_problems([prob], {k: 0.95 * v for k, v in phi.items()}, optimizer=xtds.LM(progress=False))
    got = res["ifc"].sel(constant=list(model.names)).values
    err = res["ifc_stderr"].sel(constant=list(model.names)).values
    z = (got - np.array(list(phi.values()))) / err
    assert np.all(np.abs(z) < 3), z
    assert abs(float(res["scale"]) - 40.0) < 3 * float(res["scale_stderr"])


def test_problem_choices_follow_the_file(truth, tmp_path):
    """Counts → Poisson; errors → χ²; neither → refused; no resolution and no chopper settings →
    refused, naming the instrument; resins' model from the recorded instrument and Ei."""
    model, _, _, I, sigma = truth
    counts = np.random.default_rng(2).poisson(np.clip(I, 0, None) * 5).astype(float)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("intensity", data=counts)
        f.create_dataset("Q", data=Q)
        f.create_dataset("E", data=E)
        f.attrs["Ei"], f.attrs["instrument"] = EI, "ARCS"
    ds = load_powder_spectrum(tmp_path / "c.h5")
    prob = powder_problem(ds, model, 300.0, resolution=1.5, mesh=6, multiphonon=(), screen=False)
    assert prob.loss == "poisson" and "raw counts" in prob.data_attrs["choices"]
    pytest.importorskip("resins")
    prob = powder_problem(ds, model, 300.0, settings=dict(chopper_package="ARCS-100-1.5-AST", chopper_frequency=600),
                          mesh=6, multiphonon=(), screen=False)
    assert "resins/PyChop" in prob.data_attrs["choices"]
    with pytest.raises(ValueError, match="ARCS"):
        powder_problem(ds, model, 300.0, mesh=6)
    bare = ds.drop_attrs().assign_attrs(counts=False)
    with pytest.raises(ValueError, match="neither errors nor raw counts"):
        powder_problem(bare, model, 300.0, resolution=1.5, mesh=6)
