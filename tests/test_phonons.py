"""Labelled outputs: dispersion, DOS, stability."""

import numpy as np
import pytest
import torch

from xtds import Crystal, IFCModel, dispersion, dos, stability, standard_path
from xtds.lattice import dynamics as dyn
from xtds.units import THZ_PER_SQRT_EV_A2_AMU


def test_dispersion_dataarray(ni_model, paper_tables):
    da = dispersion(ni_model, paper_tables["target_EAM_U3"], density=10)
    assert da.dims == ("k", "branch") and da.sizes["branch"] == 3
    assert da.attrs["units"] == "THz"
    labels = [lab for lab in da["label"].values if lab]
    assert labels == ["Γ", "X", "U|K", "Γ", "L", "W", "X"]
    x = da.where(da["label"] == "X", drop=True)
    assert np.allclose(x.values, [[5.5092, 5.5092, 8.1073]] * 2, atol=1e-4)
    assert np.all(np.diff(da["distance"].values) >= 0)
    # H, K, L and qx, qy, qz are the same points
    hkl = np.stack([da[c].values for c in "HKL"], -1)
    q = np.stack([da[c].values for c in ("qx", "qy", "qz")], -1)
    assert np.allclose(ni_model.crystal.rlu_to_cartesian(hkl), q)
    mev = dispersion(ni_model, paper_tables["target_EAM_U3"], density=10, unit="meV")
    assert np.allclose(mev.values, da.values * 4.135667696)


def test_bcc_and_diamond_paths():
    labels = [lab for lab in standard_path(Crystal.preset("Fe")).labels if lab]
    assert labels[0] == "Γ" and "H" in labels and "N" in labels and "P" in labels
    labels = [lab for lab in standard_path(Crystal.preset("Si")).labels if lab]
    assert labels[:2] == ["Γ", "X"] and "L" in labels


def test_dos_normalization_and_second_moment(ni_model, paper_tables):
    """∫g = 3n, and the second moment equals the trace sum rule Σ_s Tr Φ_ss / M_s / 3n + σ²."""
    tab = paper_tables["target_EAM_U3"]
    sigma = 0.1
    g = dos(ni_model, tab, mesh=12, sigma=sigma, n_points=2001)
    f = g["frequency"].values
    assert np.trapezoid(g.values, f) == pytest.approx(3.0, rel=1e-6)
    # signed ν: ⟨ν²⟩ from ω² = trace of D averaged over a complete mesh
    a0 = float(ni_model.derived(ni_model.vector(tab))[0])
    mean_nu2 = a0 / ni_model.primitive.masses[0] * THZ_PER_SQRT_EV_A2_AMU**2  # THz²
    second = np.trapezoid(g.values * f**2, f) / 3.0
    assert second == pytest.approx(mean_nu2 + sigma**2, rel=1e-5)
    assert g.attrs["units"] == "states/THz/primitive cell"


def test_stability_names_unstable_points(ni_model, paper_tables):
    assert stability(ni_model, paper_tables["target_EAM_U3"]).stable
    bad = dict(paper_tables["target_EAM_U3"])
    bad["c0"] = 1.2  # a strongly anti-bonding second-neighbour xx term
    bad.pop("a0")
    rep = stability(ni_model, bad)
    assert not rep.stable and len(rep.k) > 0
    # every reported point really has an imaginary mode
    nu = dyn.frequencies(ni_model, ni_model.vector(bad), rep.k[np.isfinite(rep.min_frequency)]).numpy()
    assert np.all(nu.min(axis=1) < -1e-6)
    # each special point that has an imaginary mode (computed here directly) is named
    path = standard_path(ni_model.crystal, density=1)
    named = [(k, lab) for k, lab in zip(path.k, path.labels, strict=True) if lab and lab != "U|K"]
    soft = {lab for k, lab in named if dyn.frequencies(ni_model, ni_model.vector(bad), k[None]).min() < -1e-6}
    assert soft and soft <= set(rep.labels)
    with pytest.raises(ValueError, match="unstable"):
        rep.raise_if_unstable()
    assert "H K L" in str(rep)


def test_long_wave_instability_is_reported():
    m = IFCModel(Crystal.fcc("Ni", a=3.52), shells=1)
    phi = m.central_force({1: 1.0})
    phi[1] = 0.6  # b1 (zz): a positive off-site diagonal weakens a shear
    rep = stability(m, phi)
    assert not rep.stable


def test_gradients_through_dispersion(ni_model, paper_tables):
    phi = ni_model.vector(paper_tables["target_EAM_U3"]).requires_grad_(True)
    path = standard_path(ni_model.crystal, density=5)
    nu = dyn.frequencies(ni_model, phi, path.k)
    nu[:, -1].sum().backward()
    assert torch.isfinite(phi.grad).all()
