"""The ``ds.tds`` accessor, registered by ``import xtds``: stateless, every method returns a new object.

    ds = xtds.open_volume("sample_300K.nxs", crystal=ni)
    prepared = ds.tds.mask(bragg=0.1, crystal=ni).tds.wedge(normal=(0, 1, 0), half_angle=10, crystal=ni)
    result = prepared.tds.fit(ni, shells=5, initial=start)

Each method is the function of the same name with the Dataset as its first argument, with that
function's signature and docstring: :mod:`xtds.volume.prepare` (preparation), :func:`xtds.write_volume`,
:func:`xtds.fit`, :func:`xtds.simulate` and :func:`xtds.plot.plot_slices`.
"""

from __future__ import annotations

import functools
import inspect

import xarray as xr

from xtds import fitting, io, observables, plot
from xtds.volume import prepare as _vol

__all__ = ["TDSAccessor"]


def _on_dataset(func):
    """``func(ds, ...)`` as a method ``ds.tds.name(...)``, with its signature less ``ds``."""

    @functools.wraps(func)
    def method(self, *args, **kwargs):
        return func(self._ds, *args, **kwargs)

    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    method.__signature__ = sig.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
                                       + params[1:])
    return method


@xr.register_dataset_accessor("tds")
class TDSAccessor:
    """Volume preparation, fitting and plotting on a Dataset with ``intensity`` on (H, K, L)."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    add_q = _on_dataset(_vol.add_q)
    mask = _on_dataset(_vol.mask)
    wedge = _on_dataset(_vol.wedge)
    symmetrize = _on_dataset(_vol.symmetrize)
    masked_fraction = _on_dataset(_vol.masked_fraction)
    to_points = _on_dataset(_vol.to_points)
    rebin = _on_dataset(_vol.rebin)
    as_backend = _on_dataset(_vol.as_backend)
    to_file = _on_dataset(io.write_volume)
    fit = _on_dataset(fitting.fit)
    fit_series = _on_dataset(fitting.fit_series)
    simulate = _on_dataset(observables.simulate)
    plot_slice = _on_dataset(plot.plot_slices)
