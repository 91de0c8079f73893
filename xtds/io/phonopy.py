"""Interoperability with phonopy: import force constants onto the reduced basis, export them.

phonopy is an optional dependency (``pip install xtds[phonopy]``), imported where used.
Its force constants are the supercell Hessian fc[i, j] (eV/Å²), shape (N, N, 3, 3) ("full") or
(n_prim, N, 3, 3) ("compact"). xtds compares them with the supercell Hessian of the reduced
model, in which periodic images of a pair add up, and fits φ by least squares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xtds.lattice.crystal import Crystal
from xtds.lattice.ifc import IFCModel
from xtds.lattice.supercell import Supercell, supercell_hessian

__all__ = [
    "ProjectedIFC",
    "from_phonopy",
    "from_force_constants",
    "read_force_constants",
    "to_phonopy",
    "phonopy_atoms",
    "polar_crystal",
]


def _require_phonopy():
    try:
        import phonopy  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("this needs phonopy: pip install 'xtds[phonopy]'") from exc


def phonopy_atoms(crystal: Crystal):
    """The crystal as a ``PhonopyAtoms`` (same cell, positions and masses)."""
    _require_phonopy()
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=list(crystal.species),
        cell=np.array(crystal.lattice),
        scaled_positions=np.array(crystal.positions),
        masses=np.array(crystal.masses),
    )


@dataclass(frozen=True)
class ProjectedIFC:
    """Force constants projected onto an IFC model.

    Attributes
    ----------
    phi
        Shape (n_free,), eV/Å²: least-squares free constants.
    residual
        ‖fc − fc(φ)‖ / ‖fc‖ over the whole supercell: the part the basis cannot hold (pairs beyond
        the cutoff, symmetry breaking, noise).
    beyond_cutoff
        The share of ‖fc‖² in blocks the model does not reach at all (pairs beyond the cutoff).
    """

    phi: np.ndarray
    residual: float
    beyond_cutoff: float

    def ifc(self, model: IFCModel):
        """φ as the labelled DataArray of :meth:`IFCModel.to_dataarray`."""
        da = model.to_dataarray(self.phi)
        da.attrs["projection_residual"] = self.residual
        return da


def from_force_constants(model: IFCModel, force_constants, supercell: Supercell, p2s_map=None) -> ProjectedIFC:
    """Project supercell force constants onto the model's free constants by least squares.

    Parameters
    ----------
    force_constants
        Shape (N, N, 3, 3) full, or (n_prim, N, 3, 3) compact with ``p2s_map`` (the supercell
        indices of the compact rows), eV/Å².
    supercell
        The supercell the force constants belong to (atom order as theirs).
    """
    fc = np.asarray(force_constants, dtype=float)
    N = supercell.n_atoms
    if fc.ndim != 4 or fc.shape[1:] != (N, 3, 3):
        raise ValueError(f"force constants must have shape (N, {N}, 3, 3) for this supercell, got {fc.shape}")
    rows = np.arange(N) if fc.shape[0] == N else None
    if rows is None:
        if p2s_map is None or len(p2s_map) != fc.shape[0]:
            raise ValueError("compact force constants need p2s_map: the supercell index of each row")
        rows = np.asarray(p2s_map, dtype=int)
    j, p, t = supercell.pair_targets(model)
    keep = np.isin(j, rows)
    j, p, t = j[keep], p[keep], t[keep]
    row_of = -np.ones(N, dtype=int)
    row_of[rows] = np.arange(len(rows))
    # the model's block for (row, target) is the sum over the pairs that land there
    key = row_of[j] * N + t
    uniq, inv = np.unique(key, return_inverse=True)
    n_free = model.n_free
    M = np.zeros((len(uniq), 9, n_free))
    np.add.at(M, inv, model.basis[p].reshape(-1, 9, n_free))
    target = fc.reshape(len(rows) * N, 9)[uniq]
    A = M.reshape(-1, n_free)
    y = target.reshape(-1)
    phi = np.linalg.lstsq(A, y, rcond=None)[0]
    total = float(np.sum(fc**2))
    unreached = np.ones(len(rows) * N, dtype=bool)
    unreached[uniq] = False
    beyond = float(np.sum(fc.reshape(len(rows) * N, 9)[unreached] ** 2))
    fit = float(np.sum((A @ phi - y) ** 2))
    residual = np.sqrt((fit + beyond) / total) if total > 0 else 0.0
    return ProjectedIFC(phi=phi, residual=float(residual), beyond_cutoff=beyond / total if total else 0.0)


def from_phonopy(model: IFCModel, phonon) -> ProjectedIFC:
    """Project the force constants of a ``phonopy.Phonopy`` object onto ``model``.

    The Phonopy unit cell must be the model's crystal structure in the same orientation.
    """
    _require_phonopy()
    fc = phonon.force_constants
    if fc is None:
        raise ValueError("the Phonopy object has no force constants; produce or set them first")
    sc = phonon.supercell
    supercell = Supercell.from_positions(model, sc.cell, sc.scaled_positions @ sc.cell)
    p2s = phonon.primitive.p2s_map if fc.shape[0] != fc.shape[1] else None
    if phonon.nac_params is not None and not model.crystal.polar:
        raise ValueError("the phonopy force constants come with Born charges (nac_params): build the model on the "
                         "polar crystal, IFCModel(xtds.io.phonopy.polar_crystal(crystal, phonon), ...), so that the "
                         "dipole–dipole part is treated as phonopy treats it")
    if model.crystal.polar:  # leave the short-range part: subtract the damped dipole sum (as phonopy's Gonze NAC)
        from xtds.lattice.nac import supercell_force_constants

        lat = np.asarray(sc.cell)
        dd = supercell_force_constants(model.primitive, (lat, sc.scaled_positions @ lat), supercell.site)
        fc = np.asarray(fc) - (dd if p2s is None else dd[np.asarray(p2s)])
    return from_force_constants(model, fc, supercell, p2s_map=p2s)


def polar_crystal(crystal: Crystal, phonon) -> Crystal:
    """``crystal`` with the Born charges and ε∞ of a Phonopy object's ``nac_params`` (each atom
    takes the charge tensor of the phonopy primitive-cell atom at its position)."""
    nac = phonon.nac_params
    if nac is None:
        raise ValueError("the Phonopy object has no nac_params (Born charges and dielectric tensor)")
    prim = phonon.primitive
    plat = np.asarray(prim.cell)
    pcart = np.asarray(prim.scaled_positions) @ plat
    born = []
    for x in crystal.cartesian_positions:
        d = (x[None, :] - pcart) @ np.linalg.inv(plat)
        d -= np.round(d)
        born.append(np.asarray(nac["born"])[int(np.argmin(np.linalg.norm(d @ plat, axis=1)))])
    return crystal.with_born(np.array(born), np.asarray(nac["dielectric"]))


def read_force_constants(model: IFCModel, filename, supercell_matrix, crystal: Crystal | None = None) -> ProjectedIFC:
    """Read a phonopy FORCE_CONSTANTS file and project it onto ``model``.

    ``supercell_matrix`` (3×3 or 3 ints) builds the supercell from ``crystal`` (default the model's)
    exactly as phonopy does; pass the same unit cell phonopy used.
    """
    _require_phonopy()
    from phonopy.file_IO import parse_FORCE_CONSTANTS
    from phonopy.structure.cells import get_supercell

    crystal = model.crystal if crystal is None else crystal
    sc = get_supercell(phonopy_atoms(crystal), _matrix(supercell_matrix))
    supercell = Supercell.from_positions(model, sc.cell, sc.scaled_positions @ sc.cell)
    fc = parse_FORCE_CONSTANTS(str(filename))
    p2s = None
    if fc.shape[0] != fc.shape[1]:
        from phonopy.structure.cells import get_primitive

        prim = get_primitive(sc, np.linalg.inv(_matrix(supercell_matrix)))
        p2s = prim.p2s_map
    return from_force_constants(model, fc, supercell, p2s_map=p2s)


def _matrix(m) -> np.ndarray:
    m = np.asarray(m, dtype=int)
    if m.ndim == 0:
        return np.eye(3, dtype=int) * int(m)
    if m.shape == (3,):
        return np.diag(m)
    if m.shape != (3, 3):
        raise ValueError(f"supercell_matrix must be an int, 3 ints or a 3×3 matrix, got shape {m.shape}")
    return m


def to_phonopy(model: IFCModel, ifc, supercell_matrix, crystal: Crystal | None = None):
    """A ``phonopy.Phonopy`` object with the model's force constants on the given supercell.

    ``supercell_matrix`` (an int, 3 ints or 3×3) multiplies ``crystal``'s cell (default the model's);
    phonopy's primitive cell is set to the model's.

    The supercell should hold every shell once: if twice the cutoff exceeds the supercell's
    shortest width, images overlap and phonopy's minimum-image convention differs from the
    periodic sum, so a ``ValueError`` asks for a larger supercell.
    Write files with ``phonopy.file_IO.write_FORCE_CONSTANTS(ph.force_constants)``.
    """
    _require_phonopy()
    from phonopy import Phonopy

    crystal = model.crystal if crystal is None else crystal
    # phonopy's primitive cell = the model's: primitive lattice (rows) = Pᵀ @ unit-cell lattice
    P = (model.primitive.lattice @ np.linalg.inv(crystal.lattice)).T
    ph = Phonopy(phonopy_atoms(crystal), supercell_matrix=_matrix(supercell_matrix), primitive_matrix=P)
    sc = ph.supercell
    lat = np.asarray(sc.cell)
    vol = abs(np.linalg.det(lat))
    widths = [vol / np.linalg.norm(np.cross(lat[(i + 1) % 3], lat[(i + 2) % 3])) for i in range(3)]
    if 2 * model.cutoff >= min(widths) - 1e-6:
        raise ValueError(
            f"the supercell (shortest width {min(widths):.3f} Å) does not hold every shell within "
            f"the cutoff {model.cutoff:.3f} Å once; use a supercell wider than {2 * model.cutoff:.3f} Å"
        )
    supercell = Supercell.from_positions(model, lat, sc.scaled_positions @ lat)
    phi = model.vector(ifc)
    with torch.no_grad():
        H = supercell_hessian(model, phi, supercell).cpu().numpy()
    N = supercell.n_atoms
    ph.force_constants = H.reshape(N, 3, N, 3).transpose(0, 2, 1, 3).copy()
    if model.crystal.polar:  # full force constants (short range + dipole part) and phonopy's NAC
        from xtds.lattice.nac import COULOMB_EV_A, supercell_force_constants

        dd = supercell_force_constants(model.primitive, (lat, sc.scaled_positions @ lat), supercell.site)
        ph.force_constants = ph.force_constants + dd
        ph.nac_params = {"born": np.asarray(polar_born(model.primitive, ph.primitive)),
                         "dielectric": np.asarray(model.crystal.epsilon), "factor": COULOMB_EV_A}
    return ph


def polar_born(cell: Crystal, prim) -> np.ndarray:
    """The Born charges of ``cell``'s atoms in the order of a phonopy primitive cell ``prim``."""
    plat = np.asarray(prim.cell)
    out = []
    for x in np.asarray(prim.scaled_positions) @ plat:
        d = (x[None, :] - cell.cartesian_positions) @ np.linalg.inv(cell.lattice)
        d -= np.round(d)
        out.append(cell.born[int(np.argmin(np.linalg.norm(d @ cell.lattice, axis=1)))])
    return np.array(out)
