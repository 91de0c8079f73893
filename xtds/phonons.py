"""Labelled phonon outputs: dispersion, density of states, elastic constants, stability.

The xarray layer over :mod:`xtds.dynamics` and :mod:`xtds.elastic`. Every function takes the
IFCs as an ``xr.DataArray`` on dim ``constant``, a name → value mapping, or a tensor of the free
constants (see :meth:`xtds.IFCModel.vector`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from xtds import dynamics
from xtds.elastic import VOIGT, elastic_tensor
from xtds.errors import UnstableError, triple
from xtds.ifc import IFCModel
from xtds.kpath import KPath, standard_path
from xtds.units import GPA_PER_EV_A3, THZ_PER_SQRT_EV_A2_AMU

__all__ = [
    "dispersion",
    "dos",
    "elastic_constants",
    "sound_speeds",
    "stability",
    "StabilityReport",
]

_VOIGT_NAMES = ["xx", "yy", "zz", "yz", "xz", "xy"]


def _phi(model: IFCModel, ifc) -> torch.Tensor:
    return model.vector(ifc).detach() if isinstance(ifc, torch.Tensor) else model.vector(ifc)


def dispersion(model: IFCModel, ifc, path: KPath | None = None, density: float = 40.0, unit: str = "THz"):
    """Phonon dispersion along a path.

    Parameters
    ----------
    path
        A :class:`~xtds.kpath.KPath`; default the standard path of the model's crystal
        (:func:`~xtds.kpath.standard_path` with ``density`` points per Å⁻¹).
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
        nu = dynamics.frequencies(model, _phi(model, ifc), path.k, unit=unit).cpu().numpy()
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
        n or (n1, n2, n3): k-points along each primitive reciprocal vector.
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
    k = dynamics.mesh(model, mesh)
    with torch.no_grad():
        nu = dynamics.frequencies(model, _phi(model, ifc), k, unit=unit).cpu().numpy().reshape(-1)
    lo = min(0.0, float(nu.min())) - 4 * sigma
    hi = float(nu.max()) + 4 * sigma if fmax is None else float(fmax)
    f = np.linspace(lo, hi, n_points)
    g = np.zeros_like(f)
    norm = 1.0 / (np.sqrt(2 * np.pi) * sigma * len(k))
    for chunk in np.array_split(nu, max(1, len(nu) // 20000)):
        g += np.exp(-0.5 * ((f[:, None] - chunk[None, :]) / sigma) ** 2).sum(axis=1) * norm
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
        C, resid = elastic_tensor(model, _phi(model, ifc))
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


@dataclass(frozen=True)
class StabilityReport:
    """Result of :func:`stability`.

    Attributes
    ----------
    stable
        True when no mode has ω² below −tolerance.
    k, hkl
        Shape (m, 3): the unstable wave vectors (Å⁻¹, and r.l.u. of the crystal's cell).
    min_frequency
        Shape (m,), THz: the lowest (negative, i.e. imaginary) frequency at each.
    labels
        m strings: the special-point label where the k-point is one, else ''. A negative
        long-wavelength stiffness (elastic tensor not positive definite) is reported at Γ with
        frequency NaN.
    """

    stable: bool
    k: np.ndarray
    hkl: np.ndarray
    min_frequency: np.ndarray
    labels: tuple[str, ...]

    def __str__(self) -> str:
        if self.stable:
            return "stable: no imaginary frequencies on the mesh and path"
        lines = [f"unstable at {len(self.k)} k-points (lowest frequencies, imaginary shown negative):"]
        order = np.argsort(np.nan_to_num(self.min_frequency, nan=-np.inf))
        for i in order[:10]:
            lab = f" {self.labels[i]}" if self.labels[i] else ""
            lines.append(f"  H K L = {np.round(self.hkl[i], 4)}{lab}: {self.min_frequency[i]:.4g} THz")
        if len(order) > 10:
            lines.append(f"  ... and {len(order) - 10} more")
        return "\n".join(lines)

    def raise_if_unstable(self) -> None:
        """Raise :class:`UnstableError` naming the unstable k-points."""
        if not self.stable:
            raise UnstableError(
                f"the force constants are dynamically unstable: {self}\nStart from stable IFCs "
                "(e.g. the published or a DFT set) or reduce the offending constants."
            )


def stability(model: IFCModel, ifc, mesh=8, tolerance: float = 1e-6) -> StabilityReport:
    """Check for imaginary frequencies on a Γ-centred mesh and along the standard path.

    ``tolerance`` (THz): frequencies above −tolerance count as stable (the acoustic zeros at Γ).
    Also the long-wavelength limit: the elastic tensor must be positive definite, else the report
    names Γ.
    """
    phi = _phi(model, ifc)
    path = standard_path(model.crystal, density=20.0)
    k = np.concatenate([dynamics.mesh(model, mesh), path.k])
    labels = ("",) * (len(k) - len(path.k)) + path.labels
    with torch.no_grad():
        nu = dynamics.frequencies(model, phi, k).cpu().numpy()
        C, _ = elastic_tensor(model, phi)
    low = nu.min(axis=1)
    bad = low < -tolerance
    ks, lows, labs = list(k[bad]), list(low[bad]), [labels[i] for i in np.nonzero(bad)[0]]
    cmin = float(np.linalg.eigvalsh(C.cpu().numpy()).min())
    if cmin < 0:
        # soft acoustic branch near Γ: report the direction with the negative long-wave stiffness
        ks.append(np.zeros(3))
        lows.append(np.nan)  # no single frequency: the long-wave stiffness is negative
        labs.append("Γ (elastic tensor not positive definite)")
    ks_arr = np.array(ks).reshape(-1, 3)
    return StabilityReport(
        stable=len(ks) == 0,
        k=ks_arr,
        hkl=model.crystal.cartesian_to_rlu(ks_arr),
        min_frequency=np.array(lows),
        labels=tuple(labs),
    )
