"""A measured powder spectrum as a fitting problem, with the choices its file implies.

:func:`powder_problem` takes what :func:`xtds.io.spectra.load_powder_spectrum` reads (or any (E, Q)
dataset of that layout) and makes the :class:`~xtds.fitting.problem.Problem` a user would set up by
hand, each choice from what the file holds and each one recorded:

- the model's scale is S(Q, E) in mbarn/meV (``kind="sqe"``, not normalized), with a free scale
  and constant background: measured intensities are in arbitrary units;
- k_f/kᵢ where the data are not kᵢ/k_f-corrected (``ki_over_kf_scaling`` False) and Eᵢ is known;
- the energy resolution: given, or resins' model of the recorded instrument at the recorded Eᵢ
  with the chopper ``settings`` given (files seldom record them);
- the pixels: the valid ones, above the elastic line's cut (``e_min``, default 2.5 × the
  resolution's FWHM at zero energy transfer), within the kinematic coverage where Eᵢ is known
  (:func:`~xtds.observables.neutron.sqe.direct_geometry_coverage`), less what the screen names
  (:func:`~xtds.observables.neutron.screen.screen_spectrum`; ``screen="drop"`` by default, with a
  warning that names them; ``"keep"`` warns only; False skips it);
- the loss: ``"poisson"`` for raw counts, ``"chi2"`` with the file's errors otherwise; a file
  without errors and not counts is refused with what to do.

The Problem's ``data_attrs["choices"]`` lists them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import xarray as xr

from xtds.fitting.problem import Problem

__all__ = ["powder_problem"]


def _resolution(resolution, settings, attrs, choices):
    """The resolution given, or resins' model of the instrument and Ei the file records."""
    if resolution is None:
        from xtds.observables.neutron.resolution import resolution_from_attrs

        if not settings:
            raise ValueError("give resolution= (FWHM in meV, or instrument_resolution(...)), or settings= with the "
                             "chopper set-up of the instrument the file records "
                             f"({attrs.get('instrument', 'none recorded')}, "
                             f"Ei {attrs.get('incident_energy_meV', 'not recorded')})")
        resolution = resolution_from_attrs(attrs, **settings)
    choices.append(f"resolution: {resolution}")
    return resolution


def _pixels(data, attrs, resolution, e_min, q_range, loss, choices) -> np.ndarray:
    """The valid pixels above the elastic cut, within |Q| and the kinematic coverage."""
    from xtds.observables.neutron.sqe import as_resolution, direct_geometry_coverage

    E, Q = data["E"].values, data["Q"].values
    I = data["intensity"].transpose("E", "Q").values
    mask = data["valid"].transpose("E", "Q").values.copy() if "valid" in data else np.ones(I.shape, bool)
    mask &= np.isfinite(I)
    if "sigma" in data and loss != "poisson":
        sg = data["sigma"].transpose("E", "Q").values
        mask &= np.isfinite(sg) & (sg > 0)
    fwhm0 = float(as_resolution(resolution)(torch.zeros(1, dtype=torch.float64))[0])  # at the elastic line
    cut = 2.5 * fwhm0 if e_min is None else float(e_min)
    mask &= (E >= cut)[:, None]
    choices.append(f"energy transfers from {cut:.3g} meV ("
                   + ("2.5 × the elastic FWHM" if e_min is None else "given") + ")")
    if q_range is not None:
        mask &= ((Q >= q_range[0]) & (Q <= q_range[1]))[None, :]
        choices.append(f"|Q| within {tuple(q_range)} Å⁻¹")
    Ei = attrs.get("incident_energy_meV")
    if Ei is not None:
        mask &= direct_geometry_coverage(float(Ei), E, Q) & (E < float(Ei))[:, None]
        choices.append(f"the kinematic coverage of Ei = {float(Ei):g} meV")
    return mask


def _loss(loss, attrs, has_sigma, choices) -> str:
    """The file's loss: Poisson for raw counts, χ² with its errors; refused with neither."""
    if loss is not None:
        return loss
    counts = bool(attrs.get("counts", False))
    if counts:
        loss = "poisson"
    elif has_sigma:
        loss = "chi2"
    else:
        raise ValueError("the data hold neither errors nor raw counts: give sigma (a 'sigma' variable) or, for "
                         "raw counts, attrs['counts'] = True (loss='poisson')")
    choices.append(f"loss {loss} ({'raw counts' if counts else 'the file’s errors'})")
    return loss


def powder_problem(data: xr.Dataset, model, temperature: float, resolution=None, settings: dict | None = None,
                   e_min: float | None = None, q_range=None, mesh: int = 12, multiphonon=(2, 3, 4, 5, 6),
                   loss: str | None = None, screen="drop", name: str = "", **observable) -> Problem:
    """The Problem of a measured powder spectrum ``data`` (E, Q) for ``model`` at ``temperature`` (K).

    ``resolution``: FWHM (meV) as for every neutron model, or None for resins' model of the
    instrument the file records (``settings``: its chopper settings, e.g.
    ``dict(chopper_package="ARCS-100-1.5-AST", chopper_frequency=600)``). ``e_min`` (meV): the
    lowest energy transfer used; ``q_range`` (Å⁻¹): (min, max); ``mesh``, ``multiphonon`` and
    ``observable`` go to :class:`~xtds.observables.neutron.powder.PowderSpectrum`; ``loss``: None
    for the file's choice (module docstring); ``screen``: ``"drop"``, ``"keep"`` or False."""
    from xtds.observables.neutron.powder import PowderSpectrum
    from xtds.observables.neutron.screen import screen_spectrum

    for need in ("intensity", "E", "Q"):
        if need not in data.variables:
            raise ValueError(f"the data have no {need!r}: read the file with xtds.io.spectra.load_powder_spectrum")
    if screen not in ("drop", "keep", False, None):
        raise ValueError(f"screen must be 'drop', 'keep' or False, got {screen!r}")
    attrs, choices = dict(data.attrs), []
    E, Q = data["E"].values, data["Q"].values
    I = data["intensity"].transpose("E", "Q").values
    sigma = data["sigma"].transpose("E", "Q").values if "sigma" in data else None
    resolution = _resolution(resolution, settings, attrs, choices)
    loss = _loss(loss, attrs, sigma is not None, choices)
    mask = _pixels(data, attrs, resolution, e_min, q_range, loss, choices)
    incident = None
    if attrs.get("ki_over_kf_scaling") in (False, 0):
        if attrs.get("incident_energy_meV") is None:
            raise ValueError("the data are not kᵢ/k_f-corrected and record no Ei: give incident_energy_meV in attrs")
        incident = float(attrs["incident_energy_meV"])
        choices.append("the model carries k_f/kᵢ (the data are not kᵢ/k_f-corrected)")
    if screen:
        found = screen_spectrum(I, E, Q, mask=mask, sigma=sigma)
        if not found.clean:
            warnings.warn(f"{attrs.get('source', 'the data')}: " + found.report()
                          + ("\n(dropped: screen='keep' keeps them)" if screen == "drop" else ""), stacklevel=2)
        if screen == "drop":
            mask = found.mask
        choices.append(f"screen ({screen}): {len(found.pixels)} pixels, {len(found.rows)} rows named")
    if not mask.any():
        raise ValueError("no pixel is left after the energy cut, the coverage and the screen")
    obs = PowderSpectrum(model, Q, E, temperature, mask=mask, resolution=resolution, mesh=mesh, kind="sqe",
                         normalize=False, multiphonon=multiphonon, incident_energy=incident, **observable)
    return Problem(obs, I[mask], sigma=None if loss == "poisson" else sigma[mask], loss=loss, background="constant",
                   name=name, data_name="intensity",
                   data_attrs={"choices": "; ".join(choices), "source": str(attrs.get("source", ""))})
