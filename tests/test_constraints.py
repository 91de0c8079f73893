"""Fixed constants and Gaussian priors (xtds.Constraints) in any fit, and χ² errors that widen with
the reduced χ² (Errors(chi2_scale=...)): a 5-shell Born–von Kármán fit
to dispersion points on the symmetry lines only (the situation of the measured Cu dispersion,
Nicklow 1967) is rank-deficient alone and fits with a constant fixed or given a prior; the
covariance with a prior is the Gauss–Newton algebra's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import xtds
from xtds.fitting import fit_problems
from xtds.fitting.problem import Problem
from xtds.observables import DispersionPoints

CU = xtds.Crystal.preset("Cu")


@pytest.fixture(scope="module")
def model():
    return xtds.IFCModel(CU, shells=5)


@pytest.fixture(scope="module")
def truth(model):
    """A stable 5-shell set: the paper's Ni Target constants (16 free ones)."""
    return {k: v for k, v in xtds.datasets.paper_ni_ifcs("target").items() if k in model.names}


def dispersion_problem(model, truth, lines, n=8, general=0):
    """Noise-free frequencies (σ = 0.05 THz) of all three branches at ``n`` points on each symmetry
    line (r.l.u. directions) and at ``general`` random wave vectors."""
    hkl = np.concatenate([np.outer(np.linspace(0.1, 1.0, n), d) for d in lines])
    hkl = np.concatenate([hkl, np.random.default_rng(3).uniform(-1, 1, (general, 3))])
    q = np.repeat(CU.rlu_to_cartesian(hkl), 3, axis=0)
    disp = DispersionPoints(model, q, np.tile([0, 1, 2], len(hkl)))
    with torch.no_grad():
        nu = disp(model.vector(truth)).numpy()
    return Problem(disp, nu, sigma=np.full(len(nu), 0.05), loss="chi2", background=False)


SYMMETRY_LINES = ([1, 0, 0], [1, 1, 0], [0.5, 0.5, 0.5])


def start_of(truth):
    return {k: 0.9 * v for k, v in truth.items()}


def test_symmetry_lines_leave_a_combination_free_and_constraints_pin_it(model, truth):
    """Dispersion on [100], [110], [111] alone cannot determine 16 constants (the fit is refused,
    naming the rank and the way out); fixing two constants at their values, or tight priors on
    them, makes the fit recover every other constant to 1e-6 (noise-free data), with the fixed
    ones' errors 0."""
    prob = dispersion_problem(model, truth, SYMMETRY_LINES)
    with pytest.raises(ValueError, match=r"rank 14 of 16 \(unconstrained: .*\).*Constraints"):
        fit_problems([prob], start_of(truth), optimizer=xtds.LM(progress=False))
    name, other = "e2", "d0"  # the largest of the two free combinations (pivoted QR of the null space)
    res = fit_problems([prob], start_of(truth), optimizer=xtds.LM(progress=False),
                       constraints=xtds.Constraints(fixed={name: truth[name], other: truth[other]}))
    got = res["ifc"].sel(constant=list(model.names)).values
    np.testing.assert_allclose(got, [truth[n] for n in model.names], rtol=1e-6, atol=1e-9)
    assert float(res["ifc_stderr"].sel(constant=name)) == 0.0
    assert float(res["ifc_stderr"].sel(constant="b0")) > 0
    assert json.loads(res.attrs["constraints"])["fixed"] == {name: truth[name], other: truth[other]}
    assert res.attrs["n_parameters"] == 14
    tight = fit_problems([prob], start_of(truth), optimizer=xtds.LM(progress=False),
                         constraints={"priors": {name: (truth[name], 1e-4), other: (truth[other], 1e-4)}})
    np.testing.assert_allclose(tight["ifc"].sel(constant=list(model.names)).values,
                               [truth[n] for n in model.names], rtol=1e-6, atol=1e-9)
    assert float(tight["ifc_stderr"].sel(constant=name)) == pytest.approx(1e-4, rel=1e-6)  # the data say nothing


def test_fixed_at_the_start_and_in_a_volume_fit(model, truth):
    """A list of names holds them at their starting values; the same constraints reach ds.tds.fit."""
    prob = dispersion_problem(model, truth, SYMMETRY_LINES, general=10)
    start = start_of(truth)
    res = fit_problems([prob], start, optimizer=xtds.LM(progress=False), constraints={"fixed": ["e0", "e1"]})
    assert float(res["ifc"].sel(constant="e0")) == start["e0"] and float(res["ifc_stderr"].sel(constant="e1")) == 0
    ds = xtds.datasets.paper_ni_volume(n_max=6)
    ni = xtds.IFCModel(xtds.datasets.paper_ni_crystal(), shells=5)
    target = xtds.datasets.paper_ni_ifcs("target")
    fit = ds.tds.fit(ni, initial=xtds.datasets.paper_ni_ifcs("starting"), optimizer=xtds.LM(progress=False),
                     constraints=xtds.Constraints(fixed={"f3": target["f3"]}))
    assert float(fit["ifc"].sel(constant="f3")) == target["f3"]
    np.testing.assert_allclose(fit["ifc"].sel(constant=["b0", "b1", "b2", "c0"]).values,
                               [target[n] for n in ("b0", "b1", "b2", "c0")], rtol=1e-6)


def test_a_prior_enters_the_covariance_as_a_measurement(model, truth):
    """At the optimum of a χ² fit (unit variance), a prior of σ_p on constant i gives the covariance
    (C⁻¹ + e_i e_iᵀ/σ_p²)⁻¹, C the covariance without it (Gauss–Newton algebra; to 1e-6)."""
    prob = dispersion_problem(model, truth, SYMMETRY_LINES, general=30)
    opts = dict(optimizer=xtds.LM(progress=False))
    free = fit_problems([prob], start_of(truth), **opts)
    C = free["ifc_cov"].sel(constant=list(model.names), constant_=list(model.names)).values
    i, sp = model.names.index("c1"), 0.5 * float(free["ifc_stderr"].sel(constant="c1"))
    post = fit_problems([prob], start_of(truth), constraints={"priors": {"c1": (truth["c1"], sp)}}, **opts)
    got = post["ifc_cov"].sel(constant=list(model.names), constant_=list(model.names)).values
    e = np.zeros(len(model.names))
    e[i] = 1.0
    want = np.linalg.inv(np.linalg.inv(C) + np.outer(e, e) / sp**2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    assert got[i, i] < C[i, i] / 4  # the prior halves the error bar's length or better


def test_bad_constraints_are_named(model, truth):
    prob = dispersion_problem(model, truth, SYMMETRY_LINES, general=10)
    start = start_of(truth)
    cases = [({"fixed": {"zz9": 0.0}}, "not free constants of this model"),
             ({"fixed": {"a0": 0.0}}, "derived from the sum rule"),
             ({"priors": {"b0": (0.0, 0.0)}}, "positive σ"),
             ({"priors": {"b0": 1.0}}, r"as \(mean, sigma\)"),
             ({"fixed": {"b0": -1.0}, "priors": {"b0": (-1.0, 0.1)}}, "both fixed and given a prior"),
             ({"fixed": list(model.names)}, "every force constant is fixed"),
             ({"fixd": ["b0"]}, "has no setting")]
    for given, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            fit_problems([prob], start, optimizer=xtds.LM(progress=False), constraints=given)


def test_the_command_line_fixes_and_priors(tmp_path, capsys):
    """``xtds fit --fix NAME=VALUE --prior NAME=MEAN,SIGMA``: the result records them, the fixed
    constant keeps its value with error 0; a malformed option is named (exit 2)."""
    import xarray as xr

    from xtds.cli import main

    path = xtds.datasets.small_ni_nexus(tmp_path / "ni.nxs", n_max=6)
    out = tmp_path / "fit.nc"
    target = xtds.datasets.paper_ni_ifcs("target")
    code = main(["fit", str(path), "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--quiet",
                 "--fix", f"f3={target['f3']}", "--prior", "e0=0,0.05", "--out", str(out)])
    assert code == 0
    res = xr.open_dataset(out)
    assert float(res["ifc"].sel(constant="f3")) == target["f3"] and float(res["ifc_stderr"].sel(constant="f3")) == 0
    assert json.loads(res.attrs["constraints"]) == {"fixed": {"f3": target["f3"]}, "priors": {"e0": [0.0, 0.05]}}
    res.close()
    capsys.readouterr()
    try:
        code = main(["fit", str(path), "--crystal", "Ni", "--shells", "5", "--initial", "starting", "--fix", "f3=x"])
    except SystemExit as done:  # as the interpreter would turn it into an exit status
        code, message = 2, str(done)
    else:
        message = capsys.readouterr().err
    assert code == 2 and "--fix 'f3=x': give NAME=VALUE" in message


def test_chi2_errors_widen_when_the_residuals_exceed_the_sigma(model, truth):
    """χ² with σ three times too small (noise of 0.15 THz, σ = 0.05 THz stated): by default
    (``chi2_scale="auto"``) the variances take the reduced χ² (about 9), so the errors are its
    square root times those of the stated σ ("never"), exactly; on data whose σ are right the
    default leaves them as the σ give (the factor is 1 when χ²ᵣ ≤ 1)."""
    prob = dispersion_problem(model, truth, SYMMETRY_LINES, general=40)
    with torch.no_grad():
        clean = prob.observable(model.vector(truth)).numpy()
    rng = np.random.default_rng(5)
    noisy = Problem(prob.observable, clean + rng.normal(0, 0.15, len(prob)),
                    sigma=np.full(len(prob), 0.05), loss="chi2", background=False)
    opts = dict(optimizer=xtds.LM(progress=False))
    auto = fit_problems([noisy], start_of(truth), **opts)
    never = fit_problems([noisy], start_of(truth), errors={"chi2_scale": "never"}, **opts)
    stat = json.loads(auto.attrs["problems"])[0]
    assert 6 < stat["chi2_reduced"] < 12 and stat["error_scale"] == pytest.approx(np.sqrt(stat["chi2_reduced"]))
    np.testing.assert_allclose(auto["ifc_stderr"].values, stat["error_scale"] * never["ifc_stderr"].values,
                               rtol=1e-9)
    honest = Problem(prob.observable, clean + rng.normal(0, 0.05, len(prob)) * 0.5,
                     sigma=np.full(len(prob), 0.05), loss="chi2", background=False)  # χ²ᵣ about 0.25
    a = fit_problems([honest], start_of(truth), **opts)
    n = fit_problems([honest], start_of(truth), errors={"chi2_scale": "never"}, **opts)
    assert json.loads(a.attrs["problems"])[0]["error_scale"] == 1.0
    np.testing.assert_allclose(a["ifc_stderr"].values, n["ifc_stderr"].values, rtol=1e-12)
    with pytest.raises(ValueError, match="chi2_scale"):
        xtds.Errors(chi2_scale="sometimes")
