"""The ``ds.tds`` accessor, registered by ``import xtds``: stateless, every method returns a new object.

    ds = xtds.open_volume("sample_300K.nxs", crystal=ni)
    prepared = ds.tds.mask(bragg=0.1, crystal=ni).tds.symmetrize()
    points = prepared.tds.to_points()
"""

from __future__ import annotations

import xarray as xr

from xtds.volume import dataset as _vol

__all__ = ["TDSAccessor"]


@xr.register_dataset_accessor("tds")
class TDSAccessor:
    """Volume preparation on a Dataset with ``intensity`` on (H, K, L); see :mod:`xtds.volume.dataset`."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    def add_q(self, crystal=None) -> xr.Dataset:
        """Cartesian ``qx``, ``qy``, ``qz`` and ``q`` = |q| coordinates (Å⁻¹), lazily."""
        return _vol.add_q(self._ds, crystal)

    def mask(self, **kwargs) -> xr.Dataset:
        """Add masks (True = excluded): invalid voxels, Bragg spheres, a |q| range, a user mask."""
        return _vol.mask(self._ds, **kwargs)

    def wedge(self, normal=(0, 1, 0), half_angle: float = 10.0, crystal=None) -> xr.Dataset:
        """Keep ±half_angle degrees about the plane ⊥ normal (r.l.u.); mask the rest."""
        return _vol.wedge(self._ds, normal, half_angle, crystal)

    def symmetrize(self, laue: str | None = None, crystal=None, chunk: int | None = None) -> xr.Dataset:
        """Mask-aware average over the exact Laue group."""
        return _vol.symmetrize(self._ds, laue, crystal, chunk)

    def masked_fraction(self) -> float:
        """Fraction of excluded voxels (computes)."""
        return _vol.masked_fraction(self._ds)

    def to_points(self, crystal=None, laue: str | None = None, irreducible: bool = True) -> xr.Dataset:
        """The valid voxels as fitting points, one per Laue orbit with its multiplicity (computes)."""
        return _vol.to_points(self._ds, crystal, laue, irreducible)

    def rebin(self, factor) -> xr.Dataset:
        """Weighted block average onto a coarser grid."""
        return _vol.rebin(self._ds, factor)

    def as_backend(self, backend: str | None = None) -> xr.Dataset:
        """Data on numpy or cupy (dask stays lazy)."""
        return _vol.as_backend(self._ds, backend)

    def to_file(self, path, format: str | None = None, overwrite: bool = False) -> str:
        """Write to zarr, NeXus or netCDF (:func:`xtds.write_volume`)."""
        from xtds.io import write_volume

        return write_volume(self._ds, path, format=format, overwrite=overwrite)

    # ------------------------------------------------------------------ fitting
    def fit(self, crystal, temperature: float | None = None, shells: int | None = None, **kwargs) -> xr.Dataset:
        """Fit force constants to this volume (:func:`xtds.fit.fit`): returns a new Dataset with
        ``ifc``, ``ifc_stderr``, ``ifc_cov``, ``dispersion``, ``dos``, ``elastic_constants``,
        ``loss`` and the model and residuals on the fitted points."""
        from xtds.fit import fit

        return fit(self._ds, crystal, temperature=temperature, shells=shells, **kwargs)

    def simulate(self, crystal, ifc, temperature: float | None = None, shells: int | None = None,
                 **kwargs) -> xr.Dataset:
        """The model intensity on this volume's (H, K, L) grid (:func:`xtds.fit.simulate`)."""
        from xtds.fit import simulate

        return simulate(self._ds, crystal, ifc, temperature=temperature, shells=shells, **kwargs)

    def plot_slice(self, plane: str = "HK0", model=None, **kwargs):
        """Slices of data (and of ``model`` with the log residual, when given): :func:`xtds.plot.plot_slices`."""
        from xtds.plot import plot_slices

        return plot_slices(self._ds, model=model, plane=plane, **kwargs)
