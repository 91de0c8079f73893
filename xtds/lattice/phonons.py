"""Labelled phonon outputs: dispersion, density of states, elastic constants.

The xarray layer over :mod:`xtds.lattice.dynamics` and :mod:`xtds.lattice.elastic`. Every function takes the
IFCs as an ``xr.DataArray`` on dim ``constant``, a name → value mapping, or a tensor of the free
constants (see :meth:`xtds.IFCModel.vector`).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xtds.errors import triple
from xtds.lattice import dynamics
from xtds.lattice.elastic import VOIGT, elastic_tensor
from xtds.lattice.ifc import IFCModel
from xtds.lattice.kmesh import irreducible_mesh
from xtds.lattice.kpath import KPath, standard_path
from xtds.units import GPA_PER_EV_A3, THZ_PER_SQRT_EV_A2_AMU

__all__ = [
    "dispersion",
    "dos",
    "elastic_constants",
    "sound_speeds",
]

_VOIGT_NAMES = ["xx", "yy", "zz", "yz", "xz", "xy"]


def phi_of(model: IFCModel, ifc) -> torch.Tensor:
    """The free constants (n_free,) of ``ifc`` (a mapping, DataArray or tensor), without gradient history."""
    return model.vector(ifc).detach() if isinstance(ifc, torch.Tensor) else model.vector(ifc)


def dispersion(model: IFCModel, ifc, path: KPath | None = None, density: float = 40.0, unit: str = "THz"):
    """Phonon dispersion along a path.

    Parameters
    ----------
    path
        A :class:`~xtds.lattice.kpath.KPath`; default the standard path of the model's crystal
        (:func:`~xtds.lattice.kpath.standard_path` with ``density`` points per Å⁻¹).
    unit
        ``"THz"`` or ``"meV"``.

    Returns
    -------
    xr.DataArray of dims (``k``, ``branch``) with coordinates ``distance`` (Å⁻¹), ``label``,
    ``H, K, L`` (r.l.u. of the crystal's cell) and ``qx, qy, qz`` (Å⁻¹).
    """
    if path is None:
        path = standard_path(model.crystal, density=density)
    with torch.no_grad():
        nu = dynamics.frequencies(model, phi_of(model, ifc), path.k, unit=unit).cpu().numpy()
    coords = {
        "k": np.arange(len(path.k)),
        "branch": np.arange(nu.shape[1]),
        "distance": ("k", path.distance, {"units": "Å^-1", "long_name": "distance along the path"}),
        "label": ("k", list(path.labels)),
    }
    for i, c in enumerate("HKL"):
        coords[c] = ("k", path.hkl[:, i], {"units": "r.l.u."})
    for i, c in enumerate(("qx", "qy", "qz")):
        coords[c] = ("k", path.k[:, i], {"units": "Å^-1"})
    return xr.DataArray(
        nu,
        dims=("k", "branch"),
        coords=coords,
        name="frequency",
        attrs={"units": unit, "long_name": "phonon frequency" if unit == "THz" else "phonon energy"},
    )


def dos(
    model: IFCModel,
    ifc,
    mesh=24,
    sigma: float = 0.1,
    n_points: int = 401,
    fmax: float | None = None,
    unit: str = "THz",
):
    """Phonon density of states on a Γ-centred mesh with Gaussian broadening.

    Parameters
    ----------
    mesh
        n or (n1, n2, n3): k-points along each primitive reciprocal vector (Γ-centred; the
        frequencies are computed at one k of each orbit of the crystal's symmetry, weighted by its
        size: :mod:`xtds.lattice.kmesh`).
    sigma
        Gaussian standard deviation, in ``unit``.
    n_points, fmax
        Frequency grid from min(0, lowest) − 4σ to ``fmax`` (default highest + 4σ).

    Returns
    -------
    xr.DataArray on dim ``frequency`` (``unit``), states per ``unit`` per primitive cell,
    normalized to 3n (n atoms in the primitive cell).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive ({unit}), got {sigma}")
    irr = irreducible_mesh(model.primitive, triple(mesh, "DOS mesh"))  # frequencies are the same on a k-orbit
    with torch.no_grad():
        nu = dynamics.frequencies(model, phi_of(model, ifc), irr.k, unit=unit).cpu().numpy()  # (I, 3n)
    lo = min(0.0, float(nu.min())) - 4 * sigma
    hi = float(nu.max()) + 4 * sigma if fmax is None else float(fmax)
    f = np.linspace(lo, hi, n_points)
    w = np.repeat(irr.weight, nu.shape[1]) / (np.sqrt(2 * np.pi) * sigma * irr.n_total)
    nu = nu.reshape(-1)
    g = np.zeros_like(f)
    for chunk in np.array_split(np.arange(len(nu)), max(1, len(nu) // 20000)):
        g += np.exp(-0.5 * ((f[:, None] - nu[None, chunk]) / sigma) ** 2) @ w[chunk]
    return xr.DataArray(
        g,
        dims=("frequency",),
        coords={"frequency": ("frequency", f, {"units": unit})},
        name="dos",
        attrs={
            "units": f"states/{unit}/primitive cell",
            "long_name": "phonon density of states",
            "mesh": str(triple(mesh, "DOS mesh")),
            "sigma": sigma,
            "normalization": f"integral = 3n = {3 * model.n_sites}",
        },
    )


def elastic_constants(model: IFCModel, ifc):
    """Voigt elastic constants C_ab (GPa) from the long-wavelength limit, as an ``xr.DataArray``.

    Dims (``voigt_i``, ``voigt_j``) with labels xx, yy, zz, yz, xz, xy. ``attrs["huang_residual"]``
    is zero when the force constants describe a crystal in equilibrium.
    """
    with torch.no_grad():
        C, resid = elastic_tensor(model, phi_of(model, ifc))
    return xr.DataArray(
        C.cpu().numpy(),
        dims=("voigt_i", "voigt_j"),
        coords={"voigt_i": _VOIGT_NAMES, "voigt_j": _VOIGT_NAMES},
        name="elastic_constants",
        attrs={"units": "GPa", "long_name": "elastic constants", "huang_residual": resid},
    )


def sound_speeds(C, density: float, direction) -> np.ndarray:
    """Sound speeds along ``direction`` from Voigt C (GPa) and density (amu/Å³).

    Returns shape (3,), ascending, in THz·Å (= 100 m/s): ν = v |k| / 2π for k in Å⁻¹ is then
    ``v * |k| / (2π)`` THz.
    """
    C = np.asarray(C, dtype=float) / GPA_PER_EV_A3  # eV/Å³
    n = np.asarray(direction, dtype=float)
    n = n / np.linalg.norm(n)
    full = np.zeros((3, 3, 3, 3))
    vi = {}
    for a, (i, j) in enumerate(VOIGT):
        vi[(i, j)] = vi[(j, i)] = a
    for i in range(3):
        for j in range(3):
            for k in range(3):
                for m in range(3):
                    full[i, j, k, m] = C[vi[(i, j)], vi[(k, m)]]
    gamma = np.einsum("ijlm,j,m->il", full, n, n)  # eV/Å³
    # ρ v² = λ  →  v² in eV/amu = (Å/s)²·(1/(Å² amu/eV)); ω = v k, so v in Å·rad/s = sqrt(λ/ρ)·conv
    lam = np.linalg.eigvalsh(gamma / density)
    return np.sqrt(np.clip(lam, 0, None)) * THZ_PER_SQRT_EV_A2_AMU * 2 * np.pi
