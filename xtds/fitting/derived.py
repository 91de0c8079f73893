"""Quantities derived from the fitted constants, with their errors: the dispersion along the
standard path, the DOS and the elastic constants, each with standard errors by the delta method
(√diag(J Σ Jᵀ), J the derivative of the quantity by the free constants, Σ their covariance)."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xtds.lattice.dynamics import dynamical_matrix, eigenvalues_to_thz, frequencies
from xtds.lattice.dynamics import mesh as k_mesh
from xtds.lattice.elastic import elastic_tensor
from xtds.lattice.ifc import IFCModel
from xtds.lattice.kmesh import irreducible_mesh
from xtds.lattice.phonons import dispersion, dos, elastic_constants
from xtds.transforms import TRANSFORMS

__all__ = ["derived_quantities", "delta_method", "frequency_jacobian", "dos_values", "dos_stderr", "derived_stderr",
           "DOS_MESH", "DOS_SIGMA"]

#: The Γ-centred k-mesh and the Gaussian width (THz) of the result's DOS.
DOS_MESH = 16
DOS_SIGMA = 0.1


def derived_quantities(model: IFCModel, phi: torch.Tensor, cov: np.ndarray) -> dict[str, xr.DataArray]:
    """``dispersion``, ``dos``, ``elastic_constants`` of ``phi`` and their standard errors from
    ``cov`` (the free constants' covariance, (n_free, n_free))."""
    disp = dispersion(model, phi)
    out = {"dispersion": disp.rename({c: f"k_{c}" for c in ("H", "K", "L", "qx", "qy", "qz") if c in disp.coords}),
           "dos": dos(model, phi, mesh=DOS_MESH, sigma=DOS_SIGMA),
           "elastic_constants": elastic_constants(model, phi)}
    out.update(derived_stderr(model, phi, cov, out["dispersion"], out["elastic_constants"], out["dos"]))
    return out


def delta_method(f, phi: torch.Tensor, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f(φ), its standard error √diag(J Σ Jᵀ)) with J = ∂f/∂φ by autograd: the delta method.

    ``f`` maps φ (shape (p,)) to a tensor of any shape; ``cov`` is Σ, shape (p, p)."""
    phi = phi.detach().to(torch.float64)
    with torch.no_grad():
        value = f(phi)
    with TRANSFORMS:  # vectorize: torch's vmap, not thread-safe (xtds.transforms)
        J = torch.autograd.functional.jacobian(f, phi, vectorize=True).reshape(-1, len(phi)).cpu().numpy()
    var = np.einsum("ip,pq,iq->i", J, cov, J)
    return value.cpu().numpy(), np.sqrt(np.clip(var, 0, None)).reshape(value.shape)


def dos_values(model: IFCModel, phi: torch.Tensor, mesh, frequency: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian-broadened DOS of :func:`xtds.dos` (THz⁻¹ per primitive cell) at the given
    frequencies (THz), as a function of φ (numpy out), summed over the whole mesh (not its
    irreducible points, as :func:`xtds.dos` does: an independent check of it)."""
    k = k_mesh(model, mesh)
    with torch.no_grad():
        nu = frequencies(model, phi, k).cpu().numpy().reshape(-1)
    norm = 1.0 / (np.sqrt(2 * np.pi) * sigma * len(k))
    return np.exp(-0.5 * ((frequency[:, None] - nu[None, :]) / sigma) ** 2).sum(axis=1) * norm


def frequency_jacobian(model: IFCModel, phi: torch.Tensor, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ν (K, 3n) THz, ∂ν/∂φ (K, 3n, p) THz per eV/Å²) at wave vectors k (Cartesian Å⁻¹).

    D(k) is affine in φ, so ∂λ_n/∂φ_j = e_nᴴ (∂D/∂φ_j) e_n (Hellmann–Feynman; within a degenerate
    set that symmetry keeps degenerate, the projected ∂D/∂φ_j is a multiple of the identity and any
    basis gives the same values) and ∂ν/∂λ = ν/2λ; the acoustic modes at Γ (λ = 0 for every φ)
    get 0. One diagonalization, p + 1 cheap evaluations of D."""
    phi = phi.detach().to(torch.float64)
    with torch.no_grad():
        lam, vec = torch.linalg.eigh(dynamical_matrix(model, phi, k))
        D0 = dynamical_matrix(model, torch.zeros_like(phi), k)
        cols = []
        for j in range(len(phi)):
            e = torch.zeros_like(phi)
            e[j] = 1.0
            Dj = dynamical_matrix(model, e, k) - D0
            cols.append(torch.einsum("kan,kab,kbn->kn", vec.conj(), Dj, vec).real)
        dlam = torch.stack(cols, -1).cpu().numpy()  # (K, 3n, p)
        nu = eigenvalues_to_thz(lam).cpu().numpy()
    lam = lam.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        dnu_dlam = np.where(np.abs(lam) > 1e-12 * max(np.abs(lam).max(), 1e-300), nu / (2 * lam), 0.0)
    return nu, dlam * dnu_dlam[..., None]


def dos_stderr(model: IFCModel, phi: torch.Tensor, cov: np.ndarray, dos: xr.DataArray) -> np.ndarray:
    """Standard error of a DOS (from :func:`xtds.dos`, THz) by the delta method, with the analytic
    Jacobian of :func:`frequency_jacobian` and the derivative of the Gaussian broadening (summed
    over degenerate branches, which the broadened DOS does). The delta method is linear: near the
    tops of peaks and in their far tails the DOS is not, and the error there is only indicative."""
    mesh = tuple(int(x) for x in str(dos.attrs["mesh"]).strip("()").split(","))
    sigma = float(dos.attrs["sigma"])
    f = np.asarray(dos["frequency"].values, dtype=float)
    irr = irreducible_mesh(model.primitive, mesh)  # ν(Rk) = ν(k) for every φ: derivatives too
    nu, dnu = frequency_jacobian(model, phi, irr.k)
    w = np.repeat(irr.weight, nu.shape[1]) / (np.sqrt(2 * np.pi) * sigma * irr.n_total)
    nu, dnu = nu.reshape(-1), dnu.reshape(-1, dnu.shape[-1])
    x = (f[:, None] - nu[None, :]) / sigma
    J = (np.exp(-0.5 * x * x) * x / sigma * w) @ dnu
    return np.sqrt(np.clip(np.einsum("ip,pq,iq->i", J, cov, J), 0, None))


def derived_stderr(model: IFCModel, phi: torch.Tensor, cov: np.ndarray, disp: xr.DataArray,
                   cij: xr.DataArray, dos: xr.DataArray | None = None) -> dict[str, xr.DataArray]:
    """Standard errors of the dispersion (on ``disp``'s path), of the elastic constants and of the
    DOS by the delta method. The acoustic frequencies at Γ are zero for every φ (the sum rule):
    their error is zero (√λ has no derivative there)."""
    k = np.stack([disp[f"k_{c}"].values for c in ("qx", "qy", "qz")], 1)
    nu, J = frequency_jacobian(model, phi, k)
    se = np.sqrt(np.clip(np.einsum("knp,pq,knq->kn", J, cov, J), 0, None))
    se = np.where(np.abs(nu) > 1e-6 * np.abs(nu).max(), se, 0.0)
    _, se_c = delta_method(lambda p: elastic_tensor(model, p)[0], phi, cov)
    kind = "delta method, from ifc_cov"
    return {
        "dispersion_stderr": disp.copy(data=se).assign_attrs(units=disp.attrs.get("units", "THz"),
                                                             long_name=f"standard error ({kind})"),
        "elastic_constants_stderr": cij.copy(data=se_c).assign_attrs(units="GPa", long_name=f"standard error ({kind})"),
        **({} if dos is None else {"dos_stderr": dos.copy(data=dos_stderr(model, phi, cov, dos)).assign_attrs(
            long_name=f"standard error ({kind})")}),
    }
