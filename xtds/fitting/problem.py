"""A fitting problem: an observable, its data and how they are compared.

A :class:`Problem` is one observable (:mod:`xtds.model.observable`) with the data it predicts,
their weights or uncertainties, the loss, and the nuisance parameters of that comparison (an
overall scale and a background). A fit is a sum of problems sharing one vector of force
constants: several volumes, temperatures or kinds of data are a list of problems
(:func:`xtds.fitting.fit_problems`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from xtds.fitting.losses import LOSSES, residuals
from xtds.ifc import IFCModel

__all__ = ["Problem", "describe"]


@dataclass(frozen=True, eq=False)
class Problem:
    """One observable compared with its data.

    Parameters
    ----------
    observable
        An :class:`~xtds.model.observable.Observable` (e.g. :class:`~xtds.model.TDSIntensity`).
    data
        Shape (P,): the measured values at the observable's points.
    weight
        Shape (P,): the weight of each point in the ``var_log`` loss (the number of voxels it
        stands for); default 1.
    sigma
        Shape (P,): standard uncertainties of the data, required by ``loss="chi2"``.
    loss
        ``"var_log"`` (the paper's Eq. 11, scale-free) or ``"chi2"``.
    background
        Fit an overall scale and a constant background: two nuisance parameters of this problem,
        (log s, b). None (default): the loss's own choice, no for ``var_log`` (which is
        scale-free) and yes for ``chi2``; False with ``chi2`` compares the model unscaled.
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
    """

    observable: object
    data: np.ndarray
    weight: np.ndarray | None = None
    sigma: np.ndarray | None = None
    loss: str = "var_log"
    background: bool | None = None
    noise_configurations: int | None = None
    name: str = ""
    coords: dict = field(default_factory=dict)
    data_name: str = "intensity"
    data_attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__
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
        if not np.all(np.isfinite(data)) or (self.loss == "var_log" and not np.all(data > 0)):
            raise ValueError("the data hold non-finite or non-positive values: mask them "
                             "(ds.tds.mask(invalid=True)) before making points")
        if self.loss == "chi2":
            if self.sigma is None:
                raise ValueError("loss='chi2' needs per-point uncertainties: a 'sigma' variable in the data")
            if not np.all(np.isfinite(self.sigma) & (self.sigma > 0)):
                raise ValueError("sigma must be positive and finite at every point for loss='chi2'")
        if not np.all(np.isfinite(self.weight) & (self.weight > 0)):
            raise ValueError("weights must be positive and finite at every point")
        if self.noise_configurations is not None:
            if int(self.noise_configurations) < 1:
                raise ValueError(f"noise_configurations must be a positive count, got {self.noise_configurations}")
            if not hasattr(self.observable, "configuration_noise"):
                raise ValueError(f"{type(self.observable).__name__} has no noise model for noise_configurations")
        obs = self.observable
        dt, dev = getattr(obs, "dtype", torch.float64), getattr(obs, "device", None)
        set_(self, "_target", torch.as_tensor(data, dtype=dt, device=dev))
        set_(self, "_weight", torch.as_tensor(self.weight, dtype=dt, device=dev))
        set_(self, "_sigma", None if self.sigma is None else torch.as_tensor(self.sigma, dtype=dt, device=dev))

    @property
    def model(self) -> IFCModel:
        return self.observable.model

    @property
    def n_nuisance(self) -> int:
        """Nuisance parameters of this problem: 2 (log scale, background) or 0."""
        on = self.background if self.background is not None else self.loss == "chi2"
        return 2 if on else 0

    def __len__(self) -> int:
        return len(self.data)

    def _nuisance(self, nu):
        return None if self.n_nuisance == 0 else nu

    def initial_nuisance(self, phi0: torch.Tensor) -> list[float]:
        """Starting (log s, b): the least-squares scale (chi2) or the weighted mean log ratio."""
        if self.n_nuisance == 0:
            return []
        with torch.no_grad():
            I0 = self.observable.mean(phi0)
        t, w = self._target, self._weight
        if self.loss == "chi2":
            s0 = float((t * I0).sum() / (I0 * I0).sum())
        else:
            s0 = float(torch.exp((w * (torch.log(t) - torch.log(I0))).sum() / w.sum()))
        return [float(np.log(max(s0, 1e-300))), 0.0]

    def residuals(self, phi: torch.Tensor, nu, epoch: int | None = None) -> torch.Tensor:
        """ρ, shape (P,), whose squared norm is this problem's loss: of the deterministic mean model
        (``epoch`` None) or of one stochastic evaluation."""
        I = self.observable.mean(phi) if epoch is None else self.observable(phi, epoch)
        return residuals(I, self._target, self._weight, self.loss, self._nuisance(nu), self._sigma)

    def noise_residuals(self, phi: torch.Tensor, nu, draws: int, seed: int) -> np.ndarray:
        """Residual vectors (draws, P) of data drawn from the observable's noise model of
        ``noise_configurations`` single configurations, against the model at ``phi``."""
        eps = self.observable.configuration_noise(phi, draws, seed, multiplicity=self.weight)
        with torch.no_grad():
            Ie = self.observable.mean(phi).cpu()
        nu_c = None if self._nuisance(nu) is None else nu.cpu()
        sig = None if self._sigma is None else self._sigma.cpu()
        w = self._weight.cpu()
        return np.stack([residuals(Ie, Ie * (1.0 + torch.as_tensor(row, dtype=Ie.dtype)), w, self.loss, nu_c,
                                   sig).numpy() for row in eps])

    def dof_and_variance(self, rho: np.ndarray, n_shared: float) -> tuple[int, float]:
        """(degrees of freedom, σ̂²) of this problem's residuals, in the units of ρ.

        ``n_shared``: this problem's share of the shared parameters (the force constants, split
        between problems in proportion to their points). ``var_log`` without nuisance parameters
        spends one more degree of freedom on the centring (the free log-scale); ``chi2`` residuals
        are in units of σ, so σ̂² = 1.
        """
        n = len(rho)
        if self.loss == "chi2":
            return max(1, round(n - n_shared - self.n_nuisance)), 1.0
        centring = 0 if self.n_nuisance else 1
        dof = max(1, round(n - n_shared - self.n_nuisance - centring))
        return dof, float(rho @ rho) / dof

    def model_values(self, phi: torch.Tensor, nu) -> torch.Tensor:
        """The mean model scaled as the loss scales it (for ``var_log`` without nuisance: by the
        weighted mean log ratio, the scale the loss leaves free)."""
        with torch.no_grad():
            I = self.observable.mean(phi)
            if self.n_nuisance:
                return torch.exp(nu[0]) * I + nu[1]
            shift = (self._weight * (torch.log(self._target) - torch.log(I))).sum() / self._weight.sum()
            return I * torch.exp(shift)

    def result_variables(self, phi: torch.Tensor, nu) -> dict[str, xr.DataArray]:
        """The data, the scaled model and the log residual on this problem's points."""
        dim = f"{self.name}_point" if self.name else "point"
        coords = {}
        for k, v in self.coords.items():
            arr, attrs = v if isinstance(v, tuple) else (v, {})
            coords[k] = (dim, np.asarray(arr), attrs)
        model = self.model_values(phi, nu).cpu().numpy()
        out = {
            self.data_name: xr.DataArray(self.data, dims=(dim,), coords=coords, attrs=dict(self.data_attrs)),
            f"model_{self.data_name}": xr.DataArray(model, dims=(dim,),
                                                    attrs={"long_name": "model, scaled to the data"}),
            "multiplicity": xr.DataArray(self.weight, dims=(dim,), attrs={"units": "1"}),
        }
        with np.errstate(divide="ignore", invalid="ignore"):
            out["residual"] = xr.DataArray(np.log(self.data) - np.log(model), dims=(dim,),
                                           attrs={"long_name": "log data − log model", "units": "1"})
        if self.n_nuisance:
            out["scale"] = xr.DataArray(float(torch.exp(nu[0])), attrs={"units": "1"})
            out["background"] = xr.DataArray(float(nu[1]), attrs={"long_name": "background, data units"})
        return {f"{self.name}_{k}" if self.name else k: v for k, v in out.items()}


def describe(obj):
    """A JSON-able description of a settings object: dataclass fields by name (private ones left
    out), arrays and tensors by shape and digest. The checkpoint fingerprint and the result's
    ``settings`` attribute are derived from it, so that no setting is listed by hand."""
    if isinstance(obj, IFCModel):
        return {"type": "IFCModel", "crystal": repr(obj.crystal), "cutoff_A": obj.cutoff, "constants": list(obj.names)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        public = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")]
        return {"type": type(obj).__name__, **{name: describe(getattr(obj, name)) for name in public}}
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        arr = np.ascontiguousarray(obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj)
        return {"shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()[:16]}
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return repr(obj)
