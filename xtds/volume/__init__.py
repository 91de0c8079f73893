"""Volume preparation for fitting: Laue symmetrization, masks, wedges, reduction to points.

Kernels (array in, array out; numpy, cupy or dask): :mod:`xtds.volume.laue_grid`,
:mod:`xtds.volume.symmetrize`, :mod:`xtds.volume.masks`. The xarray layer:
:mod:`xtds.volume.prepare`, also reachable as the ``ds.tds`` accessor.
"""

from xtds.volume.prepare import (
    add_q,
    as_backend,
    mask,
    masked_fraction,
    rebin,
    symmetrize,
    to_points,
    wedge,
    weights_of,
)

__all__ = ["add_q", "as_backend", "mask", "masked_fraction", "rebin", "symmetrize", "to_points", "wedge", "weights_of"]
