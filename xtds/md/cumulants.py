"""Cumulants of displacements measured from MD frames, on an anharmonic model's parameters.

For each site s of the primitive cell, K_r(u_s) pooled over its atoms; for each pair vector d of
the model's cumulant shells, K_r(Δu) of Δu = u_{j+d} − u_j pooled over the atoms j of its source
site (r = 3, 4; K₄_abcd = ⟨abcd⟩ − ⟨ab⟩⟨cd⟩ − ⟨ac⟩⟨bd⟩ − ⟨ad⟩⟨bc⟩ of centred variables). The
model's parameters θ that give these tensors (site terms, and site plus pair terms for the pairs)
follow by linear least squares: an estimate of the anharmonic terms independent of any
intensity, against which a TDS fit's cumulants are checked.
"""

from __future__ import annotations

import itertools

import numpy as np

from xtds.lattice.cumulants import multisets
from xtds.lattice.supercell import supercell_sites
from xtds.md.effective import frame_covariance
from xtds.md.trajectory import Trajectory

__all__ = ["measured_cumulants", "cumulant_components", "measured_bond_constants"]


def cumulant_components(x: np.ndarray, rank: int) -> np.ndarray:
    """The distinct components of the rank-3 or rank-4 cumulant tensor of samples ``x`` (S, 3)."""
    x = x - x.mean(axis=0)
    ms = multisets(rank)
    if rank == 3:
        return np.array([np.mean(x[:, a] * x[:, b] * x[:, c]) for a, b, c in ms])
    C = x.T @ x / len(x)
    return np.array([np.mean(x[:, a] * x[:, b] * x[:, c] * x[:, d]) - C[a, b] * C[c, d] - C[a, c] * C[b, d]
                     - C[a, d] * C[b, c] for a, b, c, d in ms])


def measured_cumulants(traj: Trajectory, model) -> dict[str, float]:
    """The cumulant parameters of an :class:`~xtds.observables.tds.anharmonic.AnharmonicIFC`
    measured from the frames (Å³, Å⁴), by name. A pair's K₃ here is its whole K₃, also where the
    model has cubic bond constants (whose own values :func:`measured_bond_constants` gives)."""
    prim = model.primitive
    ideal = traj.ideal_positions
    sup = traj.supercell_lattice
    site = supercell_sites(prim, sup, ideal)
    inv = np.linalg.inv(sup)
    U = traj.displacements
    n_par = len(model.names) - model.n_harmonic
    rows, rhs = [], []
    for r in model.cumulant_ranks:
        sites, pairs = model._site_maps[r], model._pair_maps[r]
        for s, M in sites.items():
            x = U[:, site == s].reshape(-1, 3)
            rows.append(M)
            rhs.append(cumulant_components(x, r))
        for p, M in pairs.items():
            P = model.cumulant_pairs
            s, t = int(P.pair_src[p]), int(P.pair_dst[p])
            src = np.nonzero(site == s)[0]
            target = ideal[src] + P.pair_vector[p]
            f = (target[:, None, :] - ideal[None, :, :]) @ inv
            dist = np.linalg.norm((f - np.round(f)) @ sup, axis=-1)
            nb = dist.argmin(axis=1)
            if dist.min(axis=1).max() > 1e-6 or np.any(site[nb] != t):
                raise ValueError("the trajectory's supercell does not hold the model's pair; is it the same crystal?")
            x = (U[:, nb] - U[:, src]).reshape(-1, 3)
            full = M.copy()
            full += sites.get(t, 0.0) + (-1) ** r * sites.get(s, 0.0)
            rows.append(full)
            rhs.append(cumulant_components(x, r))
    if not rows:
        return {}
    A = np.concatenate(rows)
    b = np.concatenate(rhs)
    theta = np.linalg.lstsq(A, b, rcond=None)[0]
    if A.shape[1] != n_par:
        raise RuntimeError("cumulant design mismatch")
    out = dict(zip(model.names[model.n_harmonic :], map(float, theta), strict=True))
    # cubic bond constants are not cumulants: measured_bond_constants gives them
    return {k: v for k, v in out.items() if not k.startswith("p3")}


def measured_bond_constants(traj: Trajectory, model) -> dict[str, float]:
    """The cubic bond constants Ψ (eV/Å³, by name) of an anharmonic model with
    ``Anharmonic(cubic_shells=...)`` measured from the frames: the least-squares Ψ whose
    first-order K₃ (:func:`~xtds.observables.tds.cubic.bond_cumulants`, with the frames' own
    covariances) matches the K₃ of every pair of the supercell measured from the frames (third
    moments of Δu; their means vanish by symmetry). Also returns ``"relative_residual"``: the
    part of the measured K₃ (Frobenius norm) the bonds leave. A check of first-order perturbation
    theory independent of any intensity."""
    import torch

    from xtds.observables.tds.exact import Terms

    if not getattr(model, "_bond_maps", None):
        return {}
    if traj.crystal.n_atoms != model.crystal.n_atoms or not np.allclose(traj.crystal.lattice, model.crystal.lattice):
        raise ValueError("the trajectory's cell is not the model's crystal cell: build the model on traj.crystal")
    L, n = tuple(traj.repeats), traj.crystal.n_atoms
    Cr = torch.as_tensor(frame_covariance(traj))
    terms = Terms(model, Cr, traj.temperature)
    basis = terms.bond_k3().numpy()  # (M, 10, n_bond)
    U = traj.displacements.reshape(traj.n_frames, *L, n, 3)
    ms = multisets(3)
    cells = np.stack(np.meshgrid(*(np.arange(x) for x in L), indexing="ij"), -1).reshape(-1, 3)
    measured = np.zeros((len(terms.src), len(ms)))
    for e, (s, t) in enumerate(zip(terms.src, terms.dst, strict=True)):
        R = cells[e % len(cells)]
        x = (np.roll(U[..., t, :], tuple(-R), axis=(1, 2, 3)) - U[..., s, :]).reshape(-1, 3)
        measured[e] = [np.mean(x[:, a] * x[:, b] * x[:, c]) for a, b, c in ms]
    cols = list(terms.design.bonds["cols"])
    # the distinct components count with their multiplicity in the tensor norm
    w = np.sqrt(np.array([len(set(itertools.permutations(m))) for m in ms], dtype=float))
    Aw, bw = (basis * w[None, :, None]).reshape(-1, len(cols)), (measured * w).reshape(-1)
    psi = np.linalg.lstsq(Aw, bw, rcond=None)[0]
    out = {model.names[model.n_harmonic + i]: float(v) for i, v in zip(cols, psi, strict=True)}
    out["relative_residual"] = float(np.linalg.norm(Aw @ psi - bw) / np.linalg.norm(bw))
    return out
