"""End-to-end IFC fitting: from a volume (or its points) to force constants with uncertainties.

:func:`fit` prepares a volume (masks, wedge, Laue symmetrization, irreducible points) and calls
:func:`fit_points`, which minimizes the chosen loss over the symmetry-reduced force constants
with the chosen forward model and returns a labelled ``xr.Dataset``. ``ds.tds.fit(...)`` is
:func:`fit` on the Dataset.

Uncertainties: the Gauss–Newton (Fisher) covariance at the optimum,
cov = σ̂² (JᵀJ)⁻¹ with J the Jacobian of the residual vector and, for the ``var_log`` loss,
σ̂² = Σρ² / (n − p − 1) from the residuals (n irreducible points, p parameters, one degree of
freedom for the mean); for ``chi2`` the residuals are already in units of σ and σ̂² = 1.
The irreducible points (Laue orbits) count as the independent observations.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import torch
import xarray as xr

from xtds.fit.losses import LOSSES, eigen_penalty, min_eigenvalues, residuals
from xtds.fit.optimize import Checkpoint, adam, jacobian, levenberg_marquardt, whitening
from xtds.ifc import IFCModel
from xtds.model import METHODS, InfiniteCrystal, PeriodicSupercell, tds_intensity
from xtds.model.covariance import grid_k
from xtds.phonons import UnstableError

__all__ = ["fit", "fit_points", "simulate", "auto_geometry"]


def auto_geometry(hkl: np.ndarray, max_repeats: int = 40, mesh: int = 16):
    """:class:`PeriodicSupercell` (L) when every H, K, L is a multiple of 1/L for some L ≤
    ``max_repeats`` (the smallest such L), else :class:`InfiniteCrystal` (``mesh``)."""
    hkl = np.asarray(hkl, dtype=float)
    for L in range(1, max_repeats + 1):
        if np.abs(hkl * L - np.round(hkl * L)).max(initial=0.0) < 1e-6:
            return PeriodicSupercell(L)
    return InfiniteCrystal(mesh)


def _initial(model: IFCModel, initial) -> torch.Tensor:
    if initial is None:
        raise ValueError(
            "give starting force constants: initial={name: value} (eV/Å²), an IFC DataArray, or phonopy force "
            "constants (a Phonopy object); e.g. xtds.datasets.paper_ni_ifcs('starting') for the paper's Ni"
        )
    if hasattr(initial, "force_constants") and hasattr(initial, "supercell"):
        from xtds.phonopy_io import from_phonopy

        return model.vector(from_phonopy(model, initial).phi)
    return model.vector(initial)


def _k_grid(model, geometry) -> np.ndarray:
    L = geometry.repeats if isinstance(geometry, PeriodicSupercell) else geometry.mesh
    return grid_k(model.crystal, L).reshape(-1, 3)


def _check_stable(model, phi, k):
    lam = min_eigenvalues(model, phi, k)
    bad = lam[torch.isfinite(lam)] < -1e-10
    if torch.any(bad):
        raise UnstableError(f"{int(bad.sum())} negative Hessian eigenvalues (min {float(lam.min()):.3g} eV/Å²)")


def fit_points(
    points: xr.Dataset,
    crystal,
    temperature: float,
    shells: int | None = None,
    cutoff: float | None = None,
    initial=None,
    model: str = "exact",
    geometry="auto",
    loss: str = "var_log",
    background: bool = False,
    quantum: bool = False,
    form_factor: str | None = "cromer-mann",
    optimizer: str | None = None,
    max_iter: int = 50,
    epochs: int = 1000,
    lr: float | None = None,
    precondition: bool = True,
    n_samples: int = 15,
    solver: str = "kspace",
    orbit_average: bool = True,
    penalty: float = 1.0,
    seed: int = 0,
    noise_configurations: int | None = None,
    noise_draws: int = 200,
    checkpoint=None,
    checkpoint_every: int = 10,
    callback=None,
    progress: bool = True,
    dtype=torch.float64,
    device=None,
    source: str | None = None,
) -> xr.Dataset:
    """Fit force constants to fitting points (from :func:`xtds.volume.to_points`).

    Parameters
    ----------
    points
        Dataset on dim ``point`` with ``intensity``, ``multiplicity`` (or ``weight``), ``q``
        (Å⁻¹) and H, K, L (r.l.u.); optional ``sigma`` for ``loss="chi2"``.
    crystal, temperature
        The :class:`~xtds.Crystal` and the temperature (K, required).
    shells, cutoff
        The IFC model's range (neighbour shells or a radius in Å).
    initial
        Starting IFCs: mapping, DataArray, or a Phonopy object (projected on the basis).
    model
        ``"exact"``, ``"one_phonon"`` or ``"sampled"``.
    geometry
        ``"auto"`` (a periodic supercell when the points lie on its grid, else an infinite
        crystal), a :class:`PeriodicSupercell` or an :class:`InfiniteCrystal`.
    loss, background
        ``"var_log"`` (the paper's) or ``"chi2"``; ``background=True`` fits a scale and a constant
        background jointly (always for ``chi2``).
    optimizer
        ``"lm"`` (Levenberg–Marquardt; default for ``exact``/``one_phonon``) or ``"adam"``
        (default for ``sampled``).
    epochs, lr, precondition
        Adam only. ``precondition`` (default): Adam runs in coordinates z with x = x0 + P z,
        P = (JᵀJ)^(−1/2) from the Jacobian J of the deterministic model at the start (for
        ``sampled``, its exact mean; 2p evaluations), so that the loss's narrow valleys become
        round; ``lr`` (default 0.003) is then a step in units of the residual norm. Without it,
        ``lr`` (default 0.01) is in eV/Å². The rate halves at 40% and 80% of ``epochs``.
    n_samples, solver, orbit_average
        ``sampled`` only: configurations per epoch, the Cholesky solver, and whether the model at
        each point averages every configuration over the point's Laue orbit (default; the
        same mean with less noise, from all the modes the paper's full-grid loss uses; see
        :func:`xtds.model.sampled.sampled_intensity`).
    noise_configurations
        When the data are a mean over N sampled configurations (the paper's synthetic target),
        the noise is correlated across q (every Brillouin zone sees the same phonon amplitudes)
        and the residual-based covariance would be far too small. Given N, the covariance is
        computed from the noise model instead: ``noise_draws`` single configurations at the
        fitted IFCs, each mapped to a parameter shift by the linearized (Gauss–Newton) fit, and
        their covariance divided by N.
    checkpoint
        A file path: progress is saved there and a restarted fit resumes from it (the settings
        and data must be the same; ``max_iter``/``epochs`` may grow).
    callback
        Called as ``callback(iteration, x, loss)`` after every accepted iteration.

    Returns
    -------
    ``xr.Dataset``: ``ifc``, ``ifc_stderr`` (dim ``constant`` with the names; xarray forbids a
    variable named like its dimension), eV/Å², a0 included, ``ifc_cov``,
    ``dispersion``, ``dos``, ``elastic_constants``, ``loss`` (dim ``iteration``), and on dim
    ``point``: ``intensity`` (data), ``model_intensity`` (scaled as the loss scales it),
    ``residual`` (log data − log model); attrs with provenance and timings, and for preconditioned
    Adam ``start_condition``, the condition number of the Gauss–Newton metric JᵀJ at the start.
    """

    t_start = time.perf_counter()
    if temperature is None or not float(temperature) > 0:
        raise ValueError("temperature (K) is required and must be positive: the TDS scale depends on k_B T")
    if model not in METHODS:
        raise ValueError(f"model must be one of {METHODS}, got {model!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if "point" not in points.dims or "q" not in points:
        raise ValueError("points must be a Dataset on dim 'point' with 'q' (from ds.tds.to_points())")
    if str(points["q"].attrs.get("units", "")) != "1/angstrom":
        raise ValueError("points['q'] must carry units '1/angstrom' (Cartesian, 2π included)")
    ifcm = IFCModel(crystal, shells=shells, cutoff=cutoff)
    phi0 = _initial(ifcm, initial).to(dtype=dtype, device=device)
    hkl = np.stack([points[d].values for d in "HKL"], 1)
    if geometry == "auto":
        geometry = auto_geometry(hkl)
    optimizer = optimizer or ("adam" if model == "sampled" else "lm")
    if model == "sampled" and optimizer != "adam":
        raise ValueError("the sampled model is stochastic: use optimizer='adam'")
    q = torch.as_tensor(points["q"].values, dtype=dtype, device=device)
    target = torch.as_tensor(points["intensity"].values, dtype=dtype, device=device)
    if not torch.all(torch.isfinite(target)) or (loss == "var_log" and not torch.all(target > 0)):
        raise ValueError("the points hold non-finite or non-positive intensities: "
                         "mask them (ds.tds.mask(invalid=True))")
    mult = points["multiplicity"].values if "multiplicity" in points else np.ones(points.sizes["point"])
    weight = torch.as_tensor(mult, dtype=dtype, device=device)
    sigma = torch.as_tensor(points["sigma"].values, dtype=dtype, device=device) if "sigma" in points else None
    use_nuisance = background or loss == "chi2"
    k = _k_grid(ifcm, geometry)
    n_free = ifcm.n_free

    def predict(phi, epoch=0):
        kw = dict(method=model, geometry=geometry, quantum=quantum, form_factor=form_factor, symmetrize=False,
                  dtype=dtype, device=device)
        if model == "sampled":
            kw.update(n_samples=n_samples, solver=solver, seed=seed + epoch, symmetrize=bool(orbit_average))
        return tds_intensity(ifcm, phi, q, temperature, **kw)

    def split(x):
        return x[:n_free], (x[n_free:] if use_nuisance else None)

    _check_stable_or_explain(ifcm, phi0, k)
    with torch.no_grad():
        I0 = predict(phi0)
    nuis0 = []
    if use_nuisance:
        if loss == "chi2":  # least-squares scale
            s0 = float((target * I0).sum() / (I0 * I0).sum())
        else:  # the weighted mean log ratio
            s0 = float(torch.exp((weight * (torch.log(target) - torch.log(I0))).sum() / weight.sum()))
        nuis0 = [np.log(max(s0, 1e-300)), 0.0]
    x0 = np.concatenate([phi0.cpu().numpy(), nuis0])
    settings = {
        "crystal": repr(crystal), "temperature_K": float(temperature), "shells": shells, "cutoff_A": cutoff,
        "model": model, "geometry": repr(geometry), "loss": loss, "background": background, "quantum": quantum,
        "form_factor": form_factor, "optimizer": optimizer, "lr": lr, "precondition": precondition,
        "n_samples": n_samples, "solver": solver, "orbit_average": orbit_average, "penalty": penalty, "seed": seed,
        "initial": x0.tolist(),
        "n_points": int(points.sizes["point"]), "source": source,
        "data_digest": hashlib.sha256(target.cpu().numpy().tobytes() + q.cpu().numpy().tobytes()).hexdigest()[:16],
    }
    ckpt = Checkpoint(checkpoint, Checkpoint.fingerprint_of(settings)) if checkpoint else None

    def mean_residuals(x, check_stable=False):
        """Residuals (numpy) of the deterministic model (for ``sampled``: its exact classical mean)."""
        phi, nu = split(torch.as_tensor(x, dtype=dtype, device=device))
        if check_stable:
            _check_stable(ifcm, phi, k)
        with torch.no_grad():
            if model == "sampled":
                I = tds_intensity(ifcm, phi, q, temperature, method="exact", geometry=geometry, quantum=False,
                                  form_factor=form_factor, symmetrize=False, dtype=dtype, device=device)
            else:
                I = predict(phi)
            return residuals(I, target, weight, loss, nu, sigma).cpu().numpy()

    start_condition = None  # of the Gauss–Newton metric at the start, for preconditioned Adam
    cov_optimizer = None  # Adam: the scatter of the averaged iterates
    if optimizer == "lm":  # (never the sampled model: refused above)

        def fun(x):
            return mean_residuals(x, check_stable=True)

        res, J = levenberg_marquardt(fun, x0, max_iter=max_iter, checkpoint=ckpt, progress=progress, callback=callback)
        rho = fun(res.x)
    elif optimizer == "adam":

        def loss_fn(x, epoch):
            phi, nu = split(x.to(dtype=dtype, device=device))
            pen = eigen_penalty(ifcm, phi, k, alpha=penalty)
            if pen > 0:  # Eq. 12–13: the variance term is off while the penalty acts
                return pen
            r = residuals(predict(phi, epoch), target, weight, loss, nu, sigma)
            return (r * r).sum()

        if precondition:  # Adam on z, x = x0 + P z, in which the Gauss–Newton metric is the identity
            J0 = jacobian(mean_residuals, x0, 1e-5)
            start_condition = float(np.linalg.cond(J0) ** 2)  # of the Gauss–Newton metric J0ᵀJ0
            P = torch.as_tensor(whitening(J0), dtype=torch.float64)
            X0 = torch.as_tensor(x0, dtype=torch.float64)

            def to_x(z):
                return X0 + P @ torch.as_tensor(z, dtype=torch.float64)

            cb = None if callback is None else (lambda i, z, f: callback(i, to_x(z).numpy(), f))
            res = adam(lambda z, epoch: loss_fn(to_x(z), epoch), np.zeros_like(x0), epochs=epochs,
                       lr=0.003 if lr is None else lr, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                       progress=progress, callback=cb)
            res.x = to_x(res.x).numpy()
            cov_optimizer = P.numpy() @ res.x_cov @ P.numpy().T
        else:
            res = adam(loss_fn, x0, epochs=epochs, lr=0.01 if lr is None else lr, checkpoint=ckpt,
                       checkpoint_every=checkpoint_every, progress=progress, callback=callback)
            cov_optimizer = res.x_cov
        J = jacobian(mean_residuals, res.x, 1e-5)  # the covariance: the mean model's Jacobian
        rho = mean_residuals(res.x)
    else:
        raise ValueError(f"optimizer must be 'lm' or 'adam', got {optimizer!r}")

    # Gauss–Newton covariance
    n, p = len(rho), J.shape[1]
    if loss == "var_log":
        dof = max(1, n - p - (0 if use_nuisance else 1))  # the centring (free log-scale) takes one
        unit = float(rho @ rho) / dof  # σ̂² in the units of ρ (which carries √(m/M))
        s2 = unit * float(weight.sum())  # the same per voxel: the variance of one voxel's log intensity
    else:  # chi2: residuals in units of σ
        dof, unit, s2 = max(1, n - p), 1.0, 1.0
    cov = unit * np.linalg.pinv(J.T @ J)
    if noise_configurations:
        cov = _sampled_noise_cov(ifcm, res.x, split, J, q, temperature, geometry, weight, loss, sigma, form_factor,
                                 noise_configurations, noise_draws, seed, dtype, device, mult)
        s2, dof = float("nan"), n
    phi_hat = res.x[:n_free]
    out = _result(ifcm, phi_hat, cov, res, points, predict, split, target, weight, loss, sigma, use_nuisance,
                  settings, t_start, s2, dof, device, dtype, cov_optimizer)
    if start_condition is not None:
        out.attrs["start_condition"] = start_condition
    return out


def _sampled_noise_cov(ifcm, x, split, J, q, temperature, geometry, weight, loss, sigma, form_factor, N, draws,
                       seed, dtype, device, mult):
    """Covariance of the fitted parameters under the Monte-Carlo noise of an N-configuration mean."""
    from xtds.laue import laue_rotations
    from xtds.model.sampled import configuration_intensities

    if not isinstance(geometry, PeriodicSupercell):
        raise ValueError("noise_configurations models the sampled target of a periodic supercell")
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    phi, nu = split(xt)
    with torch.no_grad():
        Ie = tds_intensity(ifcm, phi, q, temperature, geometry=geometry, form_factor=form_factor, symmetrize=False,
                           dtype=dtype, device=device)
    # the target of a point is the mean over its orbit's voxels: draw at every member
    R = laue_rotations(ifcm.crystal)
    qn = q.cpu().numpy()
    members, owner, size = [], [], []
    for i, qi in enumerate(qn):
        m = np.unique(np.round(R @ qi, 9), axis=0)
        members.append(m)
        owner.append(np.full(len(m), i))
        size.append(len(m))
    members, owner, size = np.concatenate(members), np.concatenate(owner), np.asarray(size, dtype=float)
    # fewer valid voxels than members (a wedge): the orbit mean averages fewer independent values
    inflate = torch.as_tensor(np.sqrt(size / np.minimum(np.asarray(mult, dtype=float), size)), dtype=dtype)
    own = torch.as_tensor(owner)
    Jp = np.linalg.pinv(J)
    shifts = []
    for start in range(0, draws, 25):
        b = min(25, draws - start)
        Ic = configuration_intensities(ifcm, phi, members, temperature, geometry.repeats, b, seed=seed + 7919 + start,
                                       form_factor=form_factor)
        orb = torch.zeros(b, len(qn), dtype=dtype).index_add_(1, own, Ic.to(dtype)) / torch.as_tensor(size, dtype=dtype)
        eps = (orb / Ie.cpu() - 1.0) * inflate
        for row in eps:
            rho = residuals(Ie.cpu(), Ie.cpu() * (1.0 + row), weight.cpu(), loss, None if nu is None else nu.cpu(),
                            None if sigma is None else sigma.cpu()).numpy()
            shifts.append(-Jp @ rho)
    shifts = np.array(shifts)
    return np.cov(shifts, rowvar=False) / float(N)


def _check_stable_or_explain(ifcm, phi0, k):
    try:
        _check_stable(ifcm, phi0, k)
    except UnstableError as err:
        raise UnstableError(
            f"the starting force constants are dynamically unstable ({err}); start from stable IFCs (check with "
            "xtds.stability(model, ifc)), e.g. a nearest-neighbour model or projected phonopy force constants"
        ) from err


def _result(ifcm, phi_hat, cov, res, points, predict, split, target, weight, loss, sigma, use_nuisance,
            settings, t_start, s2, dof, device, dtype, cov_optimizer=None):
    import xtds

    n_free = ifcm.n_free
    T = np.vstack([ifcm.derived_matrix, np.eye(n_free)])  # derived constants first, as to_dataarray

    def on_constants(c):  # (n_x, n_x) → (n_constants, n_constants), a0 and the free constants
        return T @ c[:n_free, :n_free] @ T.T

    kind = "Gauss–Newton" if cov_optimizer is None else "Gauss–Newton plus the Adam iterates' scatter"
    cov_all = on_constants(cov if cov_optimizer is None else cov + cov_optimizer)
    # xarray cannot hold a data variable named like its dimension: the constants run along "constant"
    ifc = ifcm.to_dataarray(phi_hat).rename({"ifc": "constant", "distance": "pair_distance"}).rename("ifc")
    names = list(ifc["constant"].values)
    stderr = xr.DataArray(np.sqrt(np.clip(np.diag(cov_all), 0, None)), dims=("constant",),
                          attrs={"units": "eV/Å^2", "long_name": f"standard error ({kind})"})
    ds = xr.Dataset({"ifc": ifc, "ifc_stderr": stderr})
    ds["ifc_cov"] = xr.DataArray(cov_all, dims=("constant", "constant_"), coords={"constant_": names},
                                 attrs={"units": "(eV/Å^2)^2", "long_name": f"covariance ({kind})"})
    if cov_optimizer is not None:
        ds["ifc_optimizer_stderr"] = xr.DataArray(
            np.sqrt(np.clip(np.diag(on_constants(cov_optimizer)), 0, None)), dims=("constant",),
            attrs={"units": "eV/Å^2", "long_name": "scatter of the Adam iterates over the last 10% of epochs"})
    phi_t = torch.as_tensor(phi_hat, dtype=dtype)
    disp = xtds.dispersion(ifcm, phi_t)
    disp = disp.rename({c: f"k_{c}" for c in ("H", "K", "L", "qx", "qy", "qz") if c in disp.coords})
    ds["dispersion"] = disp
    ds["dos"] = xtds.dos(ifcm, phi_t, mesh=16, sigma=0.1)
    ds["elastic_constants"] = xtds.elastic_constants(ifcm, phi_t)
    hist = np.array(res.history, dtype=float).reshape(-1, 3)
    ds["loss"] = xr.DataArray(hist[:, 1], dims=("iteration",), coords={"iteration": hist[:, 0].astype(int)},
                              attrs={"long_name": f"loss ({loss})", "units": "1"})
    ds["wall_time"] = xr.DataArray(hist[:, 2], dims=("iteration",), attrs={"units": "s"})
    xt = torch.as_tensor(res.x, dtype=dtype, device=device)
    phi, nu = split(xt)
    with torch.no_grad():
        I_fit = predict(phi)
        if nu is not None:
            I_model = torch.exp(nu[0]) * I_fit + nu[1]
        else:  # var_log: the scale the loss leaves free is the weighted mean log ratio
            shift = (weight * (torch.log(target) - torch.log(I_fit))).sum() / weight.sum()
            I_model = I_fit * torch.exp(shift)
    pt = {"point": points["point"]} if "point" in points.coords else {}
    for c in ("H", "K", "L"):
        pt[c] = points[c]
    ds["intensity"] = xr.DataArray(target.cpu().numpy(), dims=("point",), coords=pt,
                                   attrs=dict(points["intensity"].attrs))
    ds["model_intensity"] = xr.DataArray(I_model.cpu().numpy(), dims=("point",),
                                         attrs={"long_name": "model intensity, scaled to the data"})
    ds["residual"] = xr.DataArray(np.log(target.cpu().numpy()) - np.log(I_model.cpu().numpy()), dims=("point",),
                                  attrs={"long_name": "log I_data − log I_model", "units": "1"})
    if "multiplicity" in points:
        ds["multiplicity"] = points["multiplicity"]
    if nu is not None:
        ds["scale"] = float(torch.exp(nu[0]))
        ds["background"] = float(nu[1])
    ds.attrs.update(
        xtds_version=xtds.__version__,
        settings=json.dumps({k: v for k, v in settings.items() if k != "initial"}, default=str),
        initial_ifc=json.dumps(dict(zip(ifcm.names, settings["initial"][:n_free], strict=True))),
        source=str(settings.get("source")),
        converged=int(res.converged),
        message=res.message,
        iterations=int(res.iterations),
        resumed_from=-1 if res.resumed_from is None else int(res.resumed_from),
        wall_time_s=float(time.perf_counter() - t_start),
        sigma2_hat=float(s2),
        dof=int(dof),
        final_loss=float(res.loss),
    )
    return ds


def fit(
    ds: xr.Dataset,
    crystal,
    temperature: float | None = None,
    shells: int | None = None,
    cutoff: float | None = None,
    mask: dict | None = None,
    wedge: dict | None = None,
    symmetrize: bool | str = True,
    q_min: float | None = None,
    q_max: float | None = None,
    bragg: float | None = None,
    **kwargs,
) -> xr.Dataset:
    """Fit a volume: prepare it, reduce it to irreducible points, and call :func:`fit_points`.

    ``temperature`` defaults to ``ds.attrs['temperature']`` (the file's) and is required one way
    or the other. ``bragg`` (r.l.u.), ``q_min``/``q_max`` (Å⁻¹) and ``mask`` (more keywords of
    :func:`xtds.volume.mask`) are masks; ``wedge`` (e.g. ``{"normal": (0, 1, 0), "half_angle":
    10}``) keeps a wedge; ``symmetrize`` (True, or a Laue class) averages over the Laue group
    first. Other keywords go to :func:`fit_points`.
    """
    from xtds.volume import dataset as vol

    if temperature is None:
        temperature = ds.attrs.get("temperature")
        if temperature is None:
            raise ValueError("temperature (K) is required: pass temperature=..., or set ds.attrs['temperature']")
    opts = dict(mask or {})
    prepared = vol.mask(ds, bragg=bragg, q_min=q_min, q_max=q_max, crystal=crystal, **opts)
    if wedge:
        prepared = vol.wedge(prepared, crystal=crystal, **wedge)
    laue = None
    if symmetrize:
        laue = symmetrize if isinstance(symmetrize, str) else None
        prepared = vol.symmetrize(prepared, laue=laue, crystal=None if laue else crystal)
    points = vol.to_points(prepared, crystal=None if laue else crystal, laue=laue, irreducible=bool(symmetrize))
    out = fit_points(points, crystal, temperature, shells=shells, cutoff=cutoff, source=ds.attrs.get("source"),
                     **kwargs)
    out.attrs["preparation"] = json.dumps(
        {"masks": prepared.attrs.get("masks"), "symmetrized": prepared.attrs.get("symmetrized"),
         "n_valid_voxels": points.attrs.get("n_valid_voxels")}, default=str)
    return out


def simulate(
    ds: xr.Dataset,
    crystal,
    ifc,
    temperature: float | None = None,
    shells: int | None = None,
    cutoff: float | None = None,
    model: str = "exact",
    geometry="auto",
    **kwargs,
) -> xr.Dataset:
    """The model intensity on the dataset's (H, K, L) grid: a Dataset like ``ds`` with
    ``intensity`` replaced (electrons² per primitive cell). Uses the Laue reduction when the grid
    is closed under the group."""
    if temperature is None:
        temperature = ds.attrs.get("temperature")
        if temperature is None:
            raise ValueError("temperature (K) is required: pass temperature=..., or set ds.attrs['temperature']")
    ifcm = IFCModel(crystal, shells=shells, cutoff=cutoff)
    hh = np.stack(np.meshgrid(*(ds[d].values for d in "HKL"), indexing="ij"), -1).reshape(-1, 3)
    if geometry == "auto":
        geometry = auto_geometry(hh)
    q = crystal.rlu_to_cartesian(hh)
    with torch.no_grad():
        I = tds_intensity(ifcm, ifcm.vector(ifc), q, temperature, method=model, geometry=geometry, **kwargs)
    shape = tuple(ds.sizes[d] for d in "HKL")
    out = xr.Dataset(
        {"intensity": (("H", "K", "L"), I.cpu().numpy().reshape(shape),
                       {"units": "electrons^2 per primitive cell", "long_name": f"TDS intensity ({model})"})},
        coords={d: ds[d] for d in "HKL"},
        attrs={"unit_cell": [float(x) for x in crystal.parameters], "space_group": crystal.space_group,
               "temperature": float(temperature), "model": model, "geometry": repr(geometry)},
    )
    return out
