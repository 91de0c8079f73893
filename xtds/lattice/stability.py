"""Dynamical stability, the one check: imaginary frequencies anywhere the force constants are used.

- :func:`min_eigenvalues` / :func:`check_stable`: the eigenvalues of H(k) (eV/Å²) at given k, the
  rigid translations at Γ left out; what a fit requires of every iterate at its observables' k;
- :func:`stability`: the report on a Γ-centred mesh, the standard path and the long-wavelength
  limit (the elastic tensor), what a fit result is flagged with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.errors import UnstableError, triple
from xtds.lattice import dynamics
from xtds.lattice.crystal import Crystal
from xtds.lattice.elastic import elastic_tensor
from xtds.lattice.ifc import IFCModel
from xtds.lattice.kmesh import irreducible_mesh
from xtds.lattice.kpath import standard_path
from xtds.lattice.phonons import phi_of

__all__ = ["is_gamma", "min_eigenvalues", "check_stable", "stability", "StabilityReport", "TOLERANCE"]

#: Eigenvalues of H(k) above −TOLERANCE (eV/Å²) count as stable (round-off of the acoustic zeros).
TOLERANCE = 1e-10


def is_gamma(cell: Crystal, k: np.ndarray) -> np.ndarray:
    """True where k is a reciprocal lattice vector of ``cell`` (shape (..., 3) → (...))."""
    f = np.asarray(k) @ cell.lattice.T / (2 * np.pi)
    return np.all(np.abs(f - np.round(f)) < 1e-8, axis=-1)


def min_eigenvalues(model, phi: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    """Eigenvalues of H(k) (eV/Å²) at the k-points, the three rigid translations at Γ dropped.

    Shape (n_k, 3n) with the Γ translations replaced by +inf.
    """
    H = dynamics.force_constant_matrix(model, phi, k, cell=model.crystal)
    lam = torch.linalg.eigvalsh(H)
    g = torch.as_tensor(is_gamma(model.crystal, k), device=lam.device)
    if torch.any(g):
        lam = lam.clone()
        lam[g, :3] = float("inf")  # the three smallest at Γ are the translations (≈ 0)
    return lam


def check_stable(model: IFCModel, phi: torch.Tensor, k: np.ndarray) -> None:
    """Raise :class:`~xtds.errors.UnstableError` when H(k) has an eigenvalue below −:data:`TOLERANCE`
    at any of the k-points (K, 3) Å⁻¹ (the rigid translations at Γ left out)."""
    lam = min_eigenvalues(model, phi, k)
    bad = lam[torch.isfinite(lam)] < -TOLERANCE
    if torch.any(bad):
        raise UnstableError(f"{int(bad.sum())} negative Hessian eigenvalues (min {float(lam.min()):.3g} eV/Å²)")


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
    """Check for imaginary frequencies on a Γ-centred mesh (one k of each orbit of the crystal's
    symmetry: the frequencies are the same on an orbit) and along the standard path.

    ``tolerance`` (THz): frequencies above −tolerance count as stable (the acoustic zeros at Γ).
    Also the long-wavelength limit: the elastic tensor must be positive definite, else the report
    names Γ.
    """
    phi = phi_of(model, ifc)
    path = standard_path(model.crystal, density=20.0)
    k = np.concatenate([irreducible_mesh(model.primitive, triple(mesh, 'stability mesh')).k, path.k])
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
