"""Exact Jacobians for the fit: the mode function's written-out derivative, the forward-mode
Jacobian of a whole problem against central differences, and Levenberg–Marquardt on it (with a
secant second-order term) against the finite-difference Levenberg–Marquardt."""

import numpy as np
import pytest
import torch

import xtds
from xtds.fitting import LM, Background, Problem, fit_problems
from xtds.fitting.objective import Objective, initial_vector
from xtds.fitting.optimizers import jacobian
from xtds.observables import DispersionPoints, PowderSpectrum
from xtds.observables.neutron.sqe import chopper_resolution, mode_weight

AL = xtds.Crystal.preset("Al")
TRUE = {"b0": -0.61, "b1": 0.10, "b2": -0.71, "c0": -0.155, "c1": 0.032}


@pytest.mark.parametrize("quantum", [True, False])
@pytest.mark.parametrize("resolution", [1.5, (1.0, 0.02, 1e-4), "chopper"])
def test_mode_weight_derivative_equals_forward_mode(quantum, resolution):
    """f(λ) and ∂f/∂λ written out equal forward-mode differentiation of f to 1e-13 (relative to
    the largest value), with and without per-mode widths added in quadrature."""
    if resolution == "chopper":
        resolution = chopper_resolution(50.0, 40, 20)
    rng = np.random.default_rng(1)
    lam = torch.as_tensor(rng.uniform(1e-5, 0.02, (40, 3)))
    lam[0, 0] = 0.0  # a zero mode: weight zero, derivative zero
    E = np.linspace(-20, 45, 66)
    f_of = mode_weight(E, 280.0, resolution, quantum=quantum)
    for extra in (None, torch.as_tensor(rng.uniform(0.1, 2.0, (40, 3)))):
        f0, fp0 = torch.func.jvp(lambda x, extra=extra: f_of(x, extra), (lam,), (torch.ones_like(lam),))
        f1, fp1 = f_of.with_derivative(lam, extra)
        assert float((f1 - f0).abs().max()) <= 1e-13 * float(f0.abs().max())
        assert float((fp1 - fp0).abs().max()) <= 1e-13 * float(fp0.abs().max())
        assert float(fp1[0, 0].abs().max()) == 0.0


def powder_problem(model, mesh=6, multiphonon=(2, 3)):
    Q = np.arange(1.5, 5.01, 0.5)
    E = np.arange(6.0, 40.1, 3.0)
    obs = PowderSpectrum(model, Q, E, 300.0, resolution=chopper_resolution(50.0, 40, 20), mesh=mesh,
                         normalize=False, multiphonon=multiphonon, dw_mesh=8)
    with torch.no_grad():
        clean = obs(model.vector(TRUE)).numpy()
    noise = np.random.default_rng(2).normal(0, 0.03 * clean.std(), clean.shape)  # a misfit: large residuals
    data = 2.5 * clean + 0.1 * clean.mean() + noise
    return Problem(obs, data, sigma=np.full(len(data), 0.03 * clean.std()), loss="chi2",
                   background=Background(energy=1), name="powder")


def test_value_and_jacobian_equals_central_differences():
    """A powder spectrum (one phonon on a reduced k-mesh, adaptive widths, Debye–Waller factor and
    multiphonon terms, all depending on φ) with scale and a linear energy background, jointly with
    dispersion points: the forward-mode Jacobian equals central differences (h = 1e-5, error
    O(h²) ≈ 1e-10 of the columns) to 1e-6 of each column's largest entry, and the residuals are
    those of the plain evaluation."""
    model = xtds.IFCModel(AL, shells=2)
    powder = powder_problem(model)
    q = AL.rlu_to_cartesian(np.array([[0.5, 0, 0], [1.0, 0, 0], [0.5, 0.5, 0.5]]))
    disp = DispersionPoints(model, np.repeat(q, 3, axis=0), np.tile([0, 1, 2], 3))
    with torch.no_grad():
        nu = disp(model.vector(TRUE)).numpy()
    points = Problem(disp, nu * 1.01, sigma=np.full(len(nu), 0.05), loss="chi2", background=None, name="phonons")
    objective = Objective((powder, points), model, powder.observable.stability_k())
    phi0 = initial_vector(model, {k: 0.95 * v for k, v in TRUE.items()})
    x0 = np.concatenate([phi0.numpy(), powder.initial_nuisance(phi0), points.initial_nuisance(phi0)])
    r, J = objective.value_and_jacobian(x0)
    np.testing.assert_allclose(r, objective.residuals(x0), rtol=0, atol=1e-12 * np.abs(r).max())
    Jfd = jacobian(objective.residuals, x0, 1e-5)
    assert J.shape == Jfd.shape == (len(r), len(x0))
    scale = np.abs(Jfd).max(0)
    assert np.all(np.abs(J - Jfd).max(0) <= 1e-6 * scale), np.abs(J - Jfd).max(0) / scale


@pytest.mark.heavy
def test_exact_lm_reaches_the_finite_difference_optimum_in_fewer_evaluations():
    """The misfitting powder problem (residuals far above the noise at the optimum, where
    Gauss–Newton alone converges linearly): the exact-Jacobian fit ends at the loss of the
    finite-difference fit (whose polish steps take it to the optimum) or below it, at the same
    constants to 1e-6, with fewer model evaluations, and says which Jacobian it used."""
    model = xtds.IFCModel(AL, shells=2)
    start = {k: 0.9 * v for k, v in TRUE.items()}
    out = {}
    for how in ("exact", "differences"):
        prob = powder_problem(model, multiphonon=())
        calls = [0]
        spectrum = prob.observable.spectrum

        def counted(phi, calls=calls, spectrum=spectrum):
            calls[0] += 1
            return spectrum(phi)

        prob.observable.spectrum = counted
        res = fit_problems([prob], start, optimizer=LM(jacobian=how, progress=False))
        out[how] = (res, calls[0])
    (exact, n_exact), (fd, n_fd) = out["exact"], out["differences"]
    assert "exact Jacobians" in exact.attrs["message"] and "exact" not in fd.attrs["message"]
    assert float(exact["loss"][-1]) <= float(fd["loss"][-1]) * (1 + 1e-10)
    np.testing.assert_allclose(exact["ifc"].values, fd["ifc"].values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(exact["ifc_stderr"].values, fd["ifc_stderr"].values, rtol=1e-3)
    assert n_exact < n_fd


class NoForwardMode(torch.autograd.Function):
    """The identity, with a backward but no jvp: a model operation without forward-mode derivatives."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


def test_a_model_without_forward_mode_falls_back_to_differences():
    """LM(jacobian='auto') fits with finite differences and says why; 'exact' refuses; a bad
    option is named."""
    model = xtds.IFCModel(AL, shells=2)
    q = AL.rlu_to_cartesian(np.array([[0.5, 0, 0], [1.0, 0, 0], [0.5, 0.5, 0.5], [0.3, 0.2, 0.1]]))
    disp = DispersionPoints(model, np.repeat(q, 3, axis=0), np.tile([0, 1, 2], 4))

    class Wrapped(xtds.Observable):

        def __init__(self, inner):
            self.inner, self.model = inner, inner.model

        def __len__(self):
            return len(self.inner)

        def mean(self, phi):
            return NoForwardMode.apply(self.inner(phi))

        __call__ = mean

        def stability_k(self):
            return self.inner.stability_k()

    with torch.no_grad():
        nu = disp(model.vector(TRUE)).numpy()
    prob = Problem(Wrapped(disp), nu, sigma=np.full(len(nu), 0.01), loss="chi2", background=None)
    start = {k: 0.95 * v for k, v in TRUE.items()}
    res = fit_problems([prob], start, optimizer=LM(progress=False))
    assert "finite differences: no forward-mode derivative" in res.attrs["message"]
    fd = fit_problems([prob], start, optimizer=LM(jacobian="differences", progress=False))
    np.testing.assert_array_equal(res["ifc"].values, fd["ifc"].values)  # the same path
    with pytest.raises(RuntimeError, match="no forward-mode derivative"):
        fit_problems([prob], start, optimizer=LM(jacobian="exact", progress=False))
    with pytest.raises(ValueError, match="'auto', 'exact' or 'differences'"):
        LM(jacobian="analytic")
