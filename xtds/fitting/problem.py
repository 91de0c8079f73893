"""A fitting problem: an observable, its data and how they are compared.

A :class:`Problem` is one observable (:class:`xtds.observables.base.Observable`) with the data it predicts,
their weights or uncertainties, the loss, and the nuisance parameters of that comparison (an
overall scale and a background). A fit is a sum of problems sharing one vector of force
constants: several volumes, temperatures or kinds of data are a list of problems
(:func:`xtds.fitting.fit_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from xtds.fitting.background import Background, as_background
from xtds.fitting.losses import LOSSES, residuals
from xtds.lattice.ifc import IFCModel
from xtds.observables.base import Observable
from xtds.transforms import TRANSFORMS

__all__ = ["Problem"]


@dataclass(frozen=True, eq=False)
class Problem:
    """One observable compared with its data.

    Parameters
    ----------
    observable
        An :class:`~xtds.observables.tds.intensity.Observable` (e.g. :class:`~xtds.observables.TDSIntensity`).
    data
        Shape (P,): the measured values at the observable's points.
    weight
        Shape (P,): the weight of each point in the ``var_log`` loss (the number of voxels it
        stands for); default 1.
    sigma
        Shape (P,): standard uncertainties of the data, required by ``loss="chi2"``.
    loss
        ``"var_log"`` (the paper's Eq. 11, scale-free), ``"chi2"``, or ``"poisson"`` (raw counts: the
        Poisson deviance, :mod:`xtds.fitting.losses`; no ``sigma``, the default background as ``chi2``'s).
    background
        The nuisance terms fitted with an overall scale s (:mod:`xtds.fitting.background`): True or
        ``"constant"`` (a constant b), ``"compton"`` (Compton scattering of free amplitude and a
        constant), ``"polynomial"`` (a constant and a quadratic in |q|), or a
        :class:`~xtds.fitting.background.Background`. None (default): the loss's own choice, none
        for ``var_log`` (which is scale-free) and a constant for ``chi2``; False with ``chi2``
        compares the model unscaled.
    corrections
        A :class:`~xtds.observables.tds.corrections.Corrections` (polarization, absorption): its factor at each
        point multiplies the observable (and the Compton term) before the scale; None: none.
    temperature_stderr
        Standard uncertainty of the observable's temperature (K): propagated into the covariance
        of the fitted parameters (0: the temperature is taken as exact).
    noise_configurations
        The data are a mean over this many sampled configurations (the paper's synthetic target):
        the covariance then comes from the observable's noise model
        (``observable.configuration_noise``) instead of the residuals.
    name
        Prefix of this problem's variables in a joint fit's result.
    coords
        Per-point coordinates for the result: name → (P,) array or ``(array, attrs)``.
    data_name, data_attrs
        The name and attrs of the data variable in the result (``"intensity"`` for TDS).
    geometry_reason
        Why the observable's geometry was chosen (``geometry="auto"``), for the result's attrs.
    censored
        Shape (P,) of −1, 0, +1 (``loss="chi2"`` only): points whose datum is a limit set by the
        reduction — the true value at or below it (−1: negative intensities set to zero, as
        :func:`~xtds.observables.neutron.screen.screen_spectrum` names clipped pixels) or at or
        above it (+1, a saturated detector) — taken by their censored likelihood
        (:func:`~xtds.fitting.losses.residuals`); 0 or None: measured values.
    """

    observable: Observable
    data: np.ndarray
    weight: np.ndarray | None = None
    sigma: np.ndarray | None = None
    loss: str = "var_log"
    background: bool | str | Background | None = None
    temperature_stderr: float = 0.0
    corrections: object = None
    noise_configurations: int | None = None
    name: str = ""
    coords: dict = field(default_factory=dict)
    data_name: str = "intensity"
    data_attrs: dict = field(default_factory=dict)
    geometry_reason: str = ""
    censored: np.ndarray | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        if not isinstance(self.observable, Observable):
            raise TypeError(f"Problem(observable=...) must be an xtds.observables.Observable (subclass it: implement "
                            f"__len__, __call__ and stability_k), got {type(self.observable).__name__}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        data = np.asarray(self.data, dtype=float).reshape(-1)
        n = len(data)
        set_(self, "data", data)
        set_(self, "weight", np.ones(n) if self.weight is None else np.asarray(self.weight, dtype=float).reshape(-1))
        if self.sigma is not None:
            set_(self, "sigma", np.asarray(self.sigma, dtype=float).reshape(-1))
        for what in ("weight", "sigma"):
            v = getattr(self, what)
            if v is not None and len(v) != n:
                raise ValueError(f"{what} has {len(v)} values for {n} data points")
        if n == 0:
            raise ValueError("the problem has no data points")
        if len(self.observable) != n:
            raise ValueError(f"{n} data points for an observable of {len(self.observable)} points "
                             f"({type(self.observable).__name__}): give one value per point")
        if not np.all(np.isfinite(data)) or (self.loss == "var_log" and not np.all(data > 0)):
            raise ValueError("the data hold non-finite or non-positive values: mask them "
                             "(ds.tds.mask(invalid=True)) before making points")
        self._check_loss_data(data)
        if not np.all(np.isfinite(self.weight) & (self.weight > 0)):
            raise ValueError("weights must be positive and finite at every point")
        if self.noise_configurations is not None:
            if int(self.noise_configurations) < 1:
                raise ValueError(f"noise_configurations must be a positive count, got {self.noise_configurations}")
            if not self.observable.has_noise_model:
                raise ValueError(f"{type(self.observable).__name__} has no noise model for noise_configurations")
        if not (np.isfinite(self.temperature_stderr) and self.temperature_stderr >= 0):
            raise ValueError(f"temperature_stderr must be a non-negative number of K, got {self.temperature_stderr!r}")
        if self.temperature_stderr and self.observable.temperature is None:
            raise ValueError(f"{type(self.observable).__name__} has no temperature to take temperature_stderr")
        bg = as_background(self.background, self.loss)
        set_(self, "_bg", bg)
        obs = self.observable
        dt, dev = obs.dtype, obs.device
        set_(self, "_target", torch.as_tensor(data, dtype=dt, device=dev))
        set_(self, "_weight", torch.as_tensor(self.weight, dtype=dt, device=dev))
        set_(self, "_sigma", None if self.sigma is None else torch.as_tensor(self.sigma, dtype=dt, device=dev))
        set_(self, "_censored", self._check_censored(n, dt, dev))
        def points_q(what):
            q = obs.q
            if q is None or np.shape(q) != (n, 3):
                raise ValueError(f"{what} needs the points' q: {type(obs).__name__} has none")
            return q

        C, A = None, np.ones((n, 1)) if bg is not None and bg.constant else np.zeros((n, 0))
        if bg is not None and (bg.needs_q or bg.energy or bg.angle):
            energy = qnorm = None
            if bg.energy or bg.angle:
                energy = obs.point_energy
                if energy is None or np.shape(energy) != (n,):
                    raise ValueError(f"an energy or angle background needs the points' energy transfers: "
                                     f"{type(obs).__name__} has no point_energy")
            if bg.angle:
                qnorm = getattr(obs, "point_qnorm", None)
                if qnorm is None:
                    qnorm = np.linalg.norm(np.asarray(points_q("an angle background"), dtype=float), axis=1)
            C, A = bg.basis(obs.model, points_q(f"background {bg}") if bg.needs_q else None, energy, n, qnorm)
        corr = None
        if self.corrections is not None:
            corr = torch.as_tensor(self.corrections.factor(obs.model.crystal, points_q("corrections")), dtype=dt,
                                   device=dev)
            if C is not None:
                C = C * corr.cpu().numpy()
        set_(self, "_corr", corr)
        set_(self, "_C", None if C is None else torch.as_tensor(C, dtype=dt, device=dev))
        set_(self, "_A", torch.as_tensor(A, dtype=dt, device=dev))

    def _check_censored(self, n: int, dt, dev) -> torch.Tensor | None:
        """The ``censored`` flags as a tensor (None when no point is censored), checked."""
        if self.censored is None:
            return None
        c = np.asarray(self.censored).reshape(-1)
        if c.dtype == bool:
            raise ValueError("censored takes −1 (true value at or below the datum), 0 or +1 per point, not booleans: "
                             "pass -1 * mask for data clipped at a floor")
        if len(c) != n or not np.isin(c, (-1, 0, 1)).all():
            raise ValueError(f"censored must hold one of −1, 0, +1 for each of the {n} points")
        if not c.any():
            return None
        if self.loss != "chi2":
            raise ValueError(f"censored points need loss='chi2' (their Gaussian tail), not loss={self.loss!r}")
        object.__setattr__(self, "censored", c.astype(int))
        return torch.as_tensor(c, dtype=dt, device=dev)

    def _check_loss_data(self, data: np.ndarray) -> None:
        """What the loss needs of the data: counts for ``poisson``, σ for ``chi2``."""
        if self.loss == "poisson":
            if np.any(data < 0):
                raise ValueError("loss='poisson' takes raw counts: the data hold negative values (background-"
                                 "subtracted or normalized data need loss='chi2' with their sigma)")
            frac = np.abs(data - np.round(data))
            if np.any(frac > 1e-6 * np.maximum(1.0, data)):
                import warnings

                warnings.warn("loss='poisson' expects raw counts, and these data are not whole numbers: scaled counts "
                              "give wrong errors (use loss='chi2' with their sigma, or the raw counts)", stacklevel=4)
        if self.loss == "chi2":
            if self.sigma is None:
                raise ValueError("loss='chi2' needs per-point uncertainties: a 'sigma' variable in the data")
            if not np.all(np.isfinite(self.sigma) & (self.sigma > 0)):
                raise ValueError("sigma must be positive and finite at every point for loss='chi2'")

    @property
    def model(self) -> IFCModel:
        return self.observable.model

    @property
    def n_nuisance(self) -> int:
        """Nuisance parameters of this problem: log scale and the background's terms, or 0."""
        return 0 if self._bg is None else 1 + len(self._bg.names)

    @property
    def nuisance_names(self) -> list[str]:
        return [] if self._bg is None else ["log_scale", *self._bg.names]

    def __len__(self) -> int:
        return len(self.data)

    def _model(self, I: torch.Tensor, eta) -> torch.Tensor:
        """The observable's values with this problem's corrections, scale and background applied."""
        if self._corr is not None:
            I = I * self._corr
        return I if self._bg is None else self._bg.apply(I, eta, self._C, self._A)

    def initial_nuisance(self, phi0: torch.Tensor) -> list[float]:
        """Starting nuisance parameters: the linear least-squares scale and background terms for the
        starting model (relative errors for ``var_log``), the scale alone when those fail."""
        if self.n_nuisance == 0:
            return []
        with torch.no_grad():
            I0 = self.observable.mean(phi0)
            I0 = (I0 if self._corr is None else I0 * self._corr).cpu().numpy()
        t, w = self.data, self.weight
        cols = [I0] + ([self._C.cpu().numpy()] if self._C is not None else []) + list(self._A.cpu().numpy().T)
        X = np.stack(cols, 1)
        rw = np.sqrt(w) / (t if self.loss == "var_log" else
                           np.sqrt(np.maximum(t, 1.0)) if self.loss == "poisson" else self.sigma)
        try:
            coef = np.linalg.lstsq(X * rw[:, None], t * rw, rcond=None)[0]
        except np.linalg.LinAlgError:
            coef = np.full(X.shape[1], np.nan)
        model = X @ coef
        if not (np.all(np.isfinite(coef)) and coef[0] > 0 and (self.loss == "chi2" or np.all(model > 0))):
            if self.loss in ("chi2", "poisson"):
                s0 = float((t * I0).sum() / (I0 * I0).sum())
            else:
                s0 = float(np.exp((w * (np.log(t) - np.log(I0))).sum() / w.sum()))
            coef = np.zeros(X.shape[1])
            coef[0] = s0
        s0 = max(float(coef[0]), 1e-300)
        rest = list(coef[1:])
        if self._C is not None:  # X holds s·a_C; the parameter is a_C, after the constant
            a_c = rest.pop(0) / s0
            rest.insert(1 if self._bg.constant else 0, a_c)
        return [float(np.log(s0)), *map(float, rest)]

    def residuals(self, phi: torch.Tensor, eta, epoch: int | None = None) -> torch.Tensor:
        """ρ, shape (P,), whose squared norm is this problem's loss: of the deterministic mean model
        (``epoch`` None) or of one stochastic evaluation."""
        if epoch is None and not phi.requires_grad:
            # the Jacobian's nuisance columns move only the scale and background: the deterministic model
            # at an unchanged φ (no gradient asked) is kept from the previous call
            key = phi.detach().cpu().numpy().tobytes()
            memo = getattr(self, "_memo", None)
            if memo is not None and memo[0] == key:
                I = memo[1]
            else:
                I = self.observable.mean(phi)
                object.__setattr__(self, "_memo", (key, I))
        else:
            I = self.observable.mean(phi) if epoch is None else self.observable(phi, epoch)
        return self.residuals_of(I, eta)

    def residuals_of(self, I: torch.Tensor, eta) -> torch.Tensor:
        """ρ (P,) from the observable's values ``I`` (P,) and the nuisance parameters ``eta``."""
        return residuals(self._model(I, eta), self._target, self._weight, self.loss, self._bg is not None, self._sigma,
                         self._censored)

    def residual_jacobian(self, I: torch.Tensor, dI: torch.Tensor, eta) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(∂ρ/∂φ (P, n_free), ∂ρ/∂η (P, n_nuisance) or None) at the observable's values ``I`` (P,)
        with their Jacobian ``dI`` (P, n_free) and the nuisance parameters ``eta``: the chain rule
        through the scale and background in forward mode (the observable's Jacobian is given)."""
        with TRANSFORMS:
            J_phi = torch.func.vmap(lambda t: torch.func.jvp(lambda v: self.residuals_of(v, eta), (I,), (t,))[1],
                                    in_dims=1, out_dims=1)(dI)
            J_eta = torch.func.jacfwd(lambda v: self.residuals_of(I, v))(eta) if self.n_nuisance else None
        return J_phi, J_eta

    def temperature_derivative(self, phi: torch.Tensor, eta) -> np.ndarray:
        """∂ρ/∂T (P,) at fixed parameters: the observable's ∂I/∂T
        (:meth:`~xtds.observables.base.Observable.temperature_derivative`) through the residuals."""
        with torch.no_grad():
            I = self.observable.mean(phi)
            dI = self.observable.temperature_derivative(phi).to(I)
        with TRANSFORMS:
            return torch.func.jvp(lambda v: self.residuals_of(v, eta), (I,), (dI,))[1].detach().cpu().numpy()

    def noise_residuals(self, phi: torch.Tensor, eta, draws: int, seed: int) -> np.ndarray:
        """Residual vectors (draws, P) of data drawn from the observable's noise model of
        ``noise_configurations`` single configurations, against the model at ``phi``."""
        eps = self.observable.configuration_noise(phi, draws, seed, multiplicity=self.weight)
        with torch.no_grad():
            Ie = self.observable.mean(phi)
            model = self._model(Ie, eta).cpu()
            Ie = (Ie if self._bg is None else torch.exp(eta[0]) * Ie).cpu()  # the TDS part, scaled
        sig = None if self._sigma is None else self._sigma.cpu()
        w, scaled = self._weight.cpu(), self._bg is not None
        return np.stack([residuals(model, model + Ie * torch.as_tensor(row, dtype=Ie.dtype), w, self.loss, scaled,
                                   sig).numpy() for row in eps])

    def blocks(self, n_blocks: int) -> list[np.ndarray]:
        """The points in ``n_blocks`` contiguous groups for the robust covariance: shells of |q| with
        equal counts when the observable has q (residuals of a wrong model are smooth in q, hence
        correlated within a shell), else consecutive runs of points."""
        q = self.observable.q
        n = len(self)
        order = np.argsort(np.linalg.norm(np.asarray(q), axis=1), kind="stable") \
            if q is not None and np.shape(q) == (n, 3) else np.arange(n)
        return [b for b in np.array_split(order, max(1, min(int(n_blocks), n))) if len(b)]

    def dof_and_variance(self, rho: np.ndarray, n_shared: float, chi2_scale: str = "auto") -> tuple[int, float]:
        """(degrees of freedom, σ̂²) of this problem's residuals, in the units of ρ.

        ``n_shared``: this problem's share of the shared parameters (the force constants, split
        between problems in proportion to their points). ``var_log`` without nuisance parameters
        spends one more degree of freedom on the centring (the free log-scale); ``chi2`` residuals
        are in units of σ: σ̂² = 1 (``chi2_scale="never"``), the reduced χ² (``"always"``) or the
        larger of the two (``"auto"``, :class:`~xtds.fitting.settings.Errors`).
        """
        n = len(rho)
        if self.loss in ("chi2", "poisson"):
            dof = max(1, round(n - n_shared - self.n_nuisance))
            chi2_red = float(rho @ rho) / dof
            unit = {"never": 1.0, "always": chi2_red, "auto": max(1.0, chi2_red)}[chi2_scale]
            return dof, unit
        centring = 0 if self.n_nuisance else 1
        dof = max(1, round(n - n_shared - self.n_nuisance - centring))
        return dof, float(rho @ rho) / dof

    def model_values(self, phi: torch.Tensor, eta) -> torch.Tensor:
        """The mean model scaled as the loss scales it (for ``var_log`` without nuisance: by the
        weighted mean log ratio, the scale the loss leaves free)."""
        with torch.no_grad():
            I = self.observable.mean(phi)
            if self._bg is not None:
                return self._model(I, eta)
            I = self._model(I, eta)
            shift = (self._weight * (torch.log(self._target) - torch.log(I))).sum() / self._weight.sum()
            return I * torch.exp(shift)

    def result_variables(self, phi: torch.Tensor, eta) -> dict[str, xr.DataArray]:
        """The data, the scaled model and the log residual on this problem's points."""
        dim = f"{self.name}_point" if self.name else "point"
        coords = {}
        for k, v in self.coords.items():
            arr, attrs = v if isinstance(v, tuple) else (v, {})
            coords[k] = (dim, np.asarray(arr), attrs)
        model = self.model_values(phi, eta).cpu().numpy()
        out = {
            self.data_name: xr.DataArray(self.data, dims=(dim,), coords=coords, attrs=dict(self.data_attrs)),
            f"model_{self.data_name}": xr.DataArray(model, dims=(dim,),
                                                    attrs={"long_name": "model, scaled to the data"}),
            "multiplicity": xr.DataArray(self.weight, dims=(dim,), attrs={"units": "1"}),
        }
        with np.errstate(divide="ignore", invalid="ignore"):
            out["residual"] = xr.DataArray(np.log(self.data) - np.log(model), dims=(dim,),
                                           attrs={"long_name": "log data − log model", "units": "1"})
        if self._bg is not None:
            eta = eta.detach().cpu()
            out["scale"] = xr.DataArray(float(torch.exp(eta[0])), attrs={"units": "1"})
            attrs = {"background": {"long_name": "constant background", "units": "data units"},
                     "compton_amplitude": {"long_name": "amplitude of the Compton scattering (1: the tabulated one "
                                                        "on the model's scale)", "units": "1",
                                           "source": "xraylib SF_Compt (Hubbell et al. 1975)"}}
            attrs.update({f"background_E{k}": {"long_name": "Chebyshev coefficient of the background in the energy "
                                                            "transfer", "units": "data units"}
                          for k in range(1, int(self._bg.energy) + 1)})
            attrs.update({name: {"long_name": "Chebyshev coefficient of the background in the scattering angle"
                                              + (" times one in the energy transfer" if "E" in name[12:] else ""),
                                 "units": "data units"} for name in self._bg.names if name.startswith("background_A")})
            for name, value in zip(self._bg.names, eta[1:].tolist(), strict=True):
                out[name] = xr.DataArray(value, attrs=attrs.get(name, {"long_name": "Chebyshev coefficient of the "
                                                                                    "smooth background in |q|",
                                                                       "units": "data units"}))
            with torch.no_grad():
                zero = torch.zeros(len(self), dtype=self._A.dtype, device=self._A.device)
                bg_only = self._model(zero, eta.to(self._A)).cpu().numpy()
            out["model_background"] = xr.DataArray(bg_only, dims=(dim,), attrs={
                "long_name": "the fitted background (Compton and additive terms, scaled)", "units": "data units"})
        return {f"{self.name}_{k}" if self.name else k: v for k, v in out.items()}
