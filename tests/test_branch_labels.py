"""Dispersion points labelled by polarization (L, T1, LO, TA, …) follow their branch through
crossings where sorting by frequency swaps branches."""

import numpy as np
import pytest
import torch

import xtds
from xtds.fitting.fit import fit_problems
from xtds.fitting.problem import Problem
from xtds.lattice import dynamics
from xtds.observables.dispersion import DispersionPoints, branch_label

A = 5.64


def _nacl():
    model = xtds.IFCModel(xtds.Crystal.rocksalt("Na", "Cl", a=A), shells=2)
    return model, dict(zip(model.names, model.central_force({1: 1.5, 2: 0.4}), strict=True))


def _line():
    xs = np.linspace(0.05, 1.0, 20)
    return np.stack([2 * np.pi / A * xs, 0 * xs, 0 * xs], 1)  # Γ → X along [100]


def test_labels_follow_polarization_through_the_lo_to_crossing():
    """Along [100] of this NaCl model LO crosses TO at ξ ≈ 0.75 (measured): the label LO gives the
    longitudinal optical mode on both sides (numpy: the mode of largest q̂ projection among the
    optical three), while sorted index 3 changes branch there."""
    model, true = _nacl()
    q = _line()
    phi = model.vector(true)
    lo = DispersionPoints(model, q, ["LO"] * len(q))(phi).detach().numpy()
    D = dynamics.dynamical_matrix(model, phi, torch.as_tensor(q)).numpy()
    ref, crossed = [], []
    for Dk, qk in zip(D, q, strict=True):
        w, v = np.linalg.eigh(Dk)
        e = v.reshape(2, 3, 6)
        frac = (np.abs(np.einsum("a,sam->sm", qk / np.linalg.norm(qk), e)) ** 2).sum(0)
        optical = [3, 4, 5]
        j = optical[int(np.argmax(frac[optical]))]
        ref.append(dynamics.eigenvalues_to_thz(torch.tensor(w[j])).item())
        crossed.append(j != 3)
    np.testing.assert_allclose(lo, ref, rtol=1e-12)
    assert any(crossed) and not all(crossed)
    sorted3 = DispersionPoints(model, q, [3] * len(q))(phi).detach().numpy()
    assert np.abs(sorted3 - lo).max() > 0.3  # THz: the sorted index jumps to TO past the crossing


def test_label_parsing():
    assert branch_label("LA", 2) == ("L", 0) and branch_label("LO", 2) == ("L", 1)
    assert branch_label("t2", 1) == ("T", 1) and branch_label("TO1", 2) == ("T", 2)
    with pytest.raises(ValueError, match="branch label"):
        branch_label("X", 1)
    with pytest.raises(ValueError, match="1 atom"):
        branch_label("LO", 1)
    model, _ = _nacl()
    with pytest.raises(ValueError, match="q ≠ 0"):
        DispersionPoints(model, np.zeros((1, 3)), ["L"])


@pytest.mark.heavy
def test_labelled_dispersion_fit_recovers_the_constants_sorted_indices_do_not():
    """Frequencies of all six branches along [100], [110] and [111] (20 points each) from known
    constants: with the labels the fit from 10 % off returns the constants to 1e-7; with the
    branches taken as sorted indices (what a label-free fit must do) it cannot fit the points past
    the crossings."""
    model, true = _nacl()
    xs = np.linspace(0.05, 1.0, 20)[:, None]
    q = np.concatenate([2 * np.pi / A * xs * np.array(d) for d in ([1, 0, 0], [0.75, 0.75, 0], [0.5, 0.5, 0.5])])
    labels = ["TA1", "TA2", "LA", "TO1", "TO2", "LO"]
    qs = np.concatenate([q] * len(labels))
    lab = sum(([b] * len(q) for b in labels), [])
    obs = DispersionPoints(model, qs, lab)
    with torch.no_grad():
        nu = obs(model.vector(true)).numpy()
    start = {k: 0.9 * v for k, v in true.items()}
    prob = Problem(obs, nu, sigma=np.full(len(nu), 0.01), loss="chi2", background=False)
    res = fit_problems([prob], start, optimizer=xtds.LM(progress=False))
    np.testing.assert_allclose(res["ifc"].sel(constant=list(model.names)).values, list(true.values()), atol=1e-7)
    idx = obs.mode_index(model.vector(true)).numpy()
    wrong = DispersionPoints(model, qs, [{"TA1": 0, "TA2": 1, "LA": 2, "TO1": 3, "TO2": 4, "LO": 5}[b] for b in lab])
    assert np.any(idx != wrong.branch)
    res2 = fit_problems([Problem(wrong, nu, sigma=np.full(len(nu), 0.01), loss="chi2", background=False)], start,
                        optimizer=xtds.LM(progress=False))
    assert float(res2.attrs["final_loss"]) > 1e3 * max(float(res.attrs["final_loss"]), 1e-12)


def test_assign_branches_names_measured_points_by_the_model():
    """Frequencies of the model itself with 0.5 % noise, unlabelled, at the points of [100] on four
    branches (T1, L, T3, L2 = LO): assign_branches, from constants 1 % off, names each point's mode
    (the same frequency as its true label: the transverse pairs are degenerate along [100]) wherever
    its mode is more than 3 % from every other, the LO/TO crossing included."""
    from xtds.observables.dispersion import assign_branches

    model, true = _nacl()
    q = _line()
    labels = ["T1", "L", "T3", "L2"]
    qs = np.concatenate([q] * len(labels))
    lab = sum(([b] * len(q) for b in labels), [])
    phi = model.vector(true)
    nu = DispersionPoints(model, qs, lab)(phi).detach().numpy()
    noisy = nu * (1 + 0.005 * np.random.default_rng(0).standard_normal(len(nu)))
    got = assign_branches(model, {k: 1.01 * v for k, v in true.items()}, qs, noisy)
    back = DispersionPoints(model, qs, got)(phi).detach().numpy()
    modes = dynamics.eigenvalues_to_thz(torch.linalg.eigvalsh(dynamics.dynamical_matrix(model, phi,
                                                                                         torch.as_tensor(qs)))).numpy()
    gap = np.array([np.sort(np.abs(m - v) / v)[1:].min() if np.sum(np.isclose(m, v)) == 1 else
                    np.sort(np.abs(m[~np.isclose(m, v)] - v) / v).min() for m, v in zip(modes, nu, strict=True)])
    clear = gap > 0.03
    assert clear.sum() > 50 and np.allclose(back[clear], nu[clear], rtol=1e-10)
    with pytest.raises(ValueError, match="one frequency per q-point"):
        assign_branches(model, true, qs, noisy[:3])
