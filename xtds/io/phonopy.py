"""Interoperability with phonopy and euphonic: import supercell force constants, export a model's.

phonopy is an optional dependency (``pip install xtds[phonopy]``), euphonic too; both are imported
where used. Their force constants are the supercell Hessian fc[i, j] (eV/Å²): phonopy's of shape
(N, N, 3, 3) ("full") or (n_prim, N, 3, 3) ("compact"), euphonic's per cell of the supercell.

Two imports, for two purposes:

- :func:`from_phonopy` / :func:`from_euphonic` without a model give a
  :class:`~xtds.lattice.minimum_image.MinimumImageIFC`: the constants as they are, interpolated
  with the minimum-image convention, so that frequencies, S(Q, E), the Debye–Waller factor and TDS
  equal phonopy's and euphonic's at every wave vector (the default for DFT constants);
- with a model (an :class:`~xtds.IFCModel`), the least-squares projection onto its
  symmetry-reduced constants (:class:`ProjectedIFC`), e.g. to start or to judge a fit. Its rank is
  checked: a cutoff the supercell cannot determine is refused with the combinations left free.

Only one row of force constants per primitive site is ever held (n_prim × N × 9 numbers).
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
    "crystal_of",
    "from_phonopy",
    "from_euphonic",
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
    frequency_error
        THz: the largest |ν_model − ν_imported| over random wave vectors, the imported constants
        interpolated with the minimum-image convention (None where not computed). The residual
        measures the supercell's points only; this measures the crystal between them.
    """

    phi: np.ndarray
    residual: float
    beyond_cutoff: float
    frequency_error: float | None = None

    def ifc(self, model: IFCModel):
        """φ as the labelled DataArray of :meth:`IFCModel.to_dataarray`."""
        da = model.to_dataarray(self.phi)
        da.attrs["projection_residual"] = self.residual
        if self.frequency_error is not None:
            da.attrs["projection_frequency_error_THz"] = self.frequency_error
        return da


def _widths(lattice) -> np.ndarray:
    """The three distances between opposite faces of a cell (rows, Å)."""
    lat = np.asarray(lattice, dtype=float)
    vol = abs(np.linalg.det(lat))
    return np.array([vol / np.linalg.norm(np.cross(lat[(i + 1) % 3], lat[(i + 2) % 3])) for i in range(3)])


def _free_combinations(model: IFCModel, Vt_null: np.ndarray, limit: int = 3, terms: int = 5) -> list[str]:
    """The undetermined directions of φ as readable combinations of the constants' names (their
    largest ``terms`` coefficients, the largest scaled to 1)."""
    out = []
    for v in Vt_null[:limit]:
        v = v / v[np.argmax(np.abs(v))]
        top = np.argsort(-np.abs(v))[:terms]
        text = " + ".join(f"{v[i]:.3g}·{model.names[i]}" for i in top if abs(v[i]) > 1e-3).replace("+ -", "− ")
        out.append(text + (" + …" if np.sum(np.abs(v) > 1e-3) > terms else ""))
    return out


def from_force_constants(model: IFCModel, force_constants, supercell: Supercell, p2s_map=None) -> ProjectedIFC:
    """Project supercell force constants onto the model's free constants by least squares.

    Parameters
    ----------
    force_constants
        Shape (N, N, 3, 3) full, or (n_rows, N, 3, 3) compact with ``p2s_map`` (the supercell
        indices of the rows), eV/Å². Of full constants one row per primitive site is used (the
        others follow by translation).
    supercell
        The supercell the force constants belong to (atom order as theirs).

    Raises
    ------
    ValueError
        If the supercell cannot determine the model's constants (the projection's rank is below
        ``model.n_free``): the message names the free combinations and the largest cutoff the
        supercell holds once (half its shortest width).
    """
    fc = force_constants
    N = supercell.n_atoms
    if getattr(fc, "ndim", None) != 4 or fc.shape[1:] != (N, 3, 3):
        raise ValueError(f"force constants must have shape (N, {N}, 3, 3) for this supercell, got "
                         f"{getattr(fc, 'shape', None)}")
    if fc.shape[0] == N and p2s_map is None:
        rows = np.array([int(np.nonzero(supercell.site == s)[0][0]) for s in range(model.n_sites)])
        fc = np.asarray(fc[rows], dtype=float)  # one row per site: the others are translations of it
    else:
        if p2s_map is None or len(p2s_map) != fc.shape[0]:
            raise ValueError("compact force constants need p2s_map: the supercell index of each row")
        rows = np.asarray(p2s_map, dtype=int)
        fc = np.asarray(fc, dtype=float)
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
    _check_rank(model, A, supercell)
    phi = np.linalg.lstsq(A, y, rcond=None)[0]
    total = float(np.sum(fc**2))
    unreached = np.ones(len(rows) * N, dtype=bool)
    unreached[uniq] = False
    beyond = float(np.sum(fc.reshape(len(rows) * N, 9)[unreached] ** 2))
    fit = float(np.sum((A @ phi - y) ** 2))
    residual = np.sqrt((fit + beyond) / total) if total > 0 else 0.0
    return ProjectedIFC(phi=phi, residual=float(residual), beyond_cutoff=beyond / total if total else 0.0)


def _check_rank(model: IFCModel, A: np.ndarray, supercell: Supercell) -> None:
    if model.n_free == 0:
        return
    _, sv, Vt = np.linalg.svd(A, full_matrices=True)
    rank = int(np.sum(sv > 1e-9 * sv.max())) if sv.size and sv.max() > 0 else 0
    if rank < model.n_free:
        half = _widths(supercell.lattice).min() / 2
        combos = "; ".join(f"[{c}]" for c in _free_combinations(model, Vt[rank:]))
        raise ValueError(
            f"this supercell cannot determine the model's constants: the projection has rank {rank} of "
            f"{model.n_free} ({model.n_free - rank} combination(s) free, e.g. {combos}). Pairs and their periodic "
            f"images within the cutoff {model.cutoff:.3f} Å land on the same supercell block. Use a model with a "
            f"cutoff below {half:.3f} Å (half the supercell's shortest width), or a larger supercell; the "
            "minimum-image import (from_phonopy(phonon) without a model) needs no cutoff")


def _compact(phonon):
    """(force constants (n_rows, N, 3, 3), supercell indices of the rows) of a Phonopy object, one
    row per phonopy primitive atom, without copying the full matrix."""
    fc = phonon.force_constants
    if fc is None:
        raise ValueError("the Phonopy object has no force constants; produce them first "
                         "(phonon.produce_force_constants() after loading FORCE_SETS, or load FORCE_CONSTANTS)")
    p2s = np.asarray(phonon.primitive.p2s_map, dtype=int)
    if fc.shape[0] == fc.shape[1]:
        return np.asarray(fc[p2s], dtype=float), p2s
    return np.asarray(fc, dtype=float), p2s


def crystal_of(phonon) -> Crystal:
    """The xtds :class:`~xtds.Crystal` of a Phonopy object's unit cell, with phonopy's masses and, when
    it has ``nac_params``, its Born charges and ε∞ (symmetrized and neutral, as phonopy uses them)."""
    uc = phonon.unitcell
    crystal = Crystal(np.asarray(uc.cell), np.asarray(uc.scaled_positions), list(uc.symbols),
                      masses=np.asarray(uc.masses))
    return polar_crystal(crystal, phonon) if phonon.nac_params is not None else crystal


def from_phonopy(phonon, model: IFCModel | None = None, *, check_points: int = 64, asr: bool = False):
    """Import the force constants of a ``phonopy.Phonopy`` object.

    Parameters
    ----------
    phonon
        With force constants (full or compact) and, for a polar crystal, ``nac_params``.
    model
        None (default): a :class:`~xtds.lattice.minimum_image.MinimumImageIFC` on :func:`crystal_of`
        the phonon, equal to phonopy at every wave vector (NAC included, as phonopy's Gonze–Lee
        method). An :class:`~xtds.IFCModel` (same structure and orientation): the least-squares
        projection onto its constants (:class:`ProjectedIFC`), whose ``frequency_error`` compares
        the two at ``check_points`` random wave vectors.
    asr
        Restore the acoustic sum rule on the self terms before anything else (see
        :class:`~xtds.lattice.minimum_image.MinimumImageIFC`); without it, constants that break the
        rule are imported as they are, with a warning.

    Returns
    -------
    MinimumImageIFC or ProjectedIFC
    """
    _require_phonopy()
    if isinstance(phonon, IFCModel):
        raise TypeError("from_phonopy takes the Phonopy object first: from_phonopy(phonon) for the constants as they "
                        "are, from_phonopy(phonon, model) for their projection onto a model")
    fc, rows = _compact(phonon)
    sc = phonon.supercell
    lat = np.asarray(sc.cell)
    pos = np.asarray(sc.scaled_positions) @ lat
    crystal = crystal_of(phonon)
    return _imported(crystal, lat, pos, fc, rows, model, phonopy_nac(phonon) if crystal.polar else None,
                     check_points, "phonopy", asr)


def _imported(crystal, lat, pos, fc, rows, model, nac, check_points, code, asr=False):
    """The minimum-image model of total force constants (model None), or their projection onto
    ``model`` with its frequency error against that model."""
    if asr:  # the sum rule on the self blocks of the rows (total constants: the dipole part keeps it too)
        fc = np.array(fc, dtype=float)
        fc[np.arange(len(rows)), rows] -= fc.sum(axis=1)
    if model is None:
        return _minimum_image(crystal, lat, pos, fc, rows, nac=nac)
    if crystal.polar and not model.crystal.polar:
        raise ValueError(f"the {code} force constants come with Born charges: build the model on the polar crystal, "
                         f"IFCModel(xtds.io.phonopy.crystal_of(...), ...) or IFCModel(crystal.with_born(...), ...), so "
                         f"that the dipole–dipole part is treated as {code} treats it")
    supercell = Supercell.from_positions(model, lat, pos)
    if model.crystal.polar:  # leave the short-range part: subtract the damped dipole sum (as phonopy's Gonze NAC)
        from xtds.lattice.nac import supercell_force_constants

        fc = fc - supercell_force_constants(model.primitive, (lat, pos), supercell.site, lam=model.nac_lambda,
                                            rows=rows, factor=model.nac_factor)
    proj = from_force_constants(model, fc, supercell, p2s_map=rows)
    if check_points:
        reference = _minimum_image(model.crystal, lat, pos, fc, rows, nac=(model.nac_lambda, model.nac_factor),
                                   subtract_dipole=False, warn=False)
        proj = _with_frequency_error(proj, model, reference, check_points)
    return proj


#: Row sums Σ_j Φ(i, j) above this fraction of the largest constant break the acoustic sum rule
#: visibly (phonopy's symmetrized constants keep it to rounding, 1e-15).
ASR_RTOL = 1e-9


def _minimum_image(crystal, lat, pos, fc, rows, nac=None, subtract_dipole=True, warn=True):
    """A MinimumImageIFC of total force constants (the dipole part subtracted for a polar crystal,
    with ``nac`` = (Λ, factor), to be added back at each k); with ``warn``, a warning when they break
    the acoustic sum rule."""
    import warnings

    from xtds.lattice.minimum_image import MinimumImageIFC
    from xtds.lattice.nac import COULOMB_EV_A, NAC_LAMBDA, supercell_force_constants
    from xtds.lattice.supercell import supercell_sites

    lam, factor = (NAC_LAMBDA, COULOMB_EV_A) if nac is None else nac
    if crystal.polar and subtract_dipole:
        prim = crystal.primitive()
        fc = fc - supercell_force_constants(prim, (lat, pos), supercell_sites(prim, lat, pos), lam=lam, rows=rows,
                                            factor=factor)
    model = MinimumImageIFC(crystal, lat, pos, fc, rows, nac_lambda=lam, nac_factor=factor)
    scale = float(np.abs(model.blocks(torch.zeros(0, dtype=torch.float64))).max())
    if warn and model.asr_violation > ASR_RTOL * scale:
        warnings.warn(f"the imported force constants break the acoustic sum rule (row sums up to "
                      f"{model.asr_violation:.3g} eV/Å², {model.asr_violation / scale:.2g} of the largest): acoustic "
                      "modes near Γ may be imaginary and the Debye–Waller factor and TDS undefined. Import with "
                      "asr=True to restore it on the self terms", UserWarning, stacklevel=3)
    return model


def phonopy_nac(phonon) -> tuple[float, float]:
    """(Λ in Å⁻¹, e²/(4πε₀) in eV·Å) of phonopy's Gonze–Lee dipole–dipole term for this Phonopy
    object: its ``nac_params`` "Lambda" and "factor" where given, else phonopy's defaults (a G-sphere
    of 300 points, a Gaussian of 1e-10 at its edge; phonopy's reciprocal vectors lack the 2π)."""
    nac = phonon.nac_params
    factor = float(nac.get("factor") or 14.399652)
    if nac.get("Lambda") is not None:
        return 2 * np.pi * float(nac["Lambda"]), factor
    volume = abs(np.linalg.det(np.asarray(phonon.primitive.cell)))
    g_cut = nac.get("G_cutoff") or (3 * 300 / (4 * np.pi) / volume) ** (1 / 3)
    lam = np.sqrt(g_cut**2 * np.trace(np.asarray(nac["dielectric"])) / 3 / 4 / -np.log(1e-10))
    return 2 * np.pi * float(lam), factor


def _with_frequency_error(proj: ProjectedIFC, model: IFCModel, reference, n: int) -> ProjectedIFC:
    """``proj`` with the largest frequency difference (THz) to ``reference`` at n random wave vectors."""
    from dataclasses import replace

    from xtds.lattice.dynamics import frequencies

    rng = np.random.default_rng(0)
    k = rng.uniform(-0.5, 0.5, size=(n, 3)) @ model.primitive.reciprocal
    with torch.no_grad():
        a = frequencies(model, torch.as_tensor(proj.phi), k)
        b = frequencies(reference, reference.vector(None), k)
    return replace(proj, frequency_error=float((a - b).abs().max()))


def from_euphonic(force_constants, model: IFCModel | None = None, *, check_points: int = 64, asr: bool = False):
    """Import a ``euphonic.ForceConstants`` (e.g. ``ForceConstants.from_castep(...)`` or
    ``from_json_file``): the same two forms as :func:`from_phonopy`.

    euphonic holds Φ(atom s of cell 0, atom t of cell c) for the cells c of its supercell; for a
    polar crystal they are its short-range part, to which euphonic adds its Ewald dipole sum. xtds
    rebuilds the total constants from euphonic's dynamical matrices at the supercell's commensurate
    wave vectors and treats them as phonopy's.
    """
    fcobj = force_constants
    cr = fcobj.crystal
    cell = np.asarray(cr.cell_vectors.to("angstrom").magnitude)
    masses = np.asarray(cr.atom_mass.to("amu").magnitude)
    origins = np.asarray(fcobj.cell_origins)
    frac = np.asarray(cr.atom_r)
    lat = np.asarray(fcobj.sc_matrix) @ cell
    pos = ((origins[:, None, :] + frac[None]).reshape(-1, 3)) @ cell  # atom t of cell c at index c·n + t
    if np.linalg.det(cell) < 0:  # a left-handed cell (xtds takes right-handed ones): −A, −f, the same atoms
        cell, frac, lat = -cell, np.mod(-frac, 1.0), -lat
    crystal = Crystal(cell, frac, [str(x) for x in cr.atom_type], masses=masses)
    n = crystal.n_atoms
    raw = np.asarray(fcobj.force_constants.to("eV/angstrom**2").magnitude)  # (n_cells, 3n, 3n)
    fc = raw.reshape(len(origins), n, 3, n, 3).transpose(1, 0, 3, 2, 4).reshape(n, len(origins) * n, 3, 3)
    zero = np.nonzero(np.all(origins == 0, axis=1))[0]
    if not len(zero):
        raise ValueError("the euphonic force constants have no cell at the origin (cell_origins holds no [0, 0, 0])")
    rows = int(zero[0]) * n + np.arange(n)  # the atoms of cell 0
    if fcobj.born is not None:
        # euphonic's Z[s, i, j] is phonopy's (and xtds's) Z[s, j, i]: ∂F_{s,i}/∂E_j against ∂P_i/∂u_{s,j};
        # its ε∞ is a relative permittivity (in units of 4πε₀ = e²/(bohr·hartree))
        born = np.asarray(fcobj.born.to("e").magnitude).transpose(0, 2, 1)
        crystal = crystal.with_born(born, np.asarray(fcobj.dielectric.magnitude))
        fc = _euphonic_total(fcobj, crystal, lat, pos, rows)
    return _imported(crystal, lat, pos, fc, rows, model, None, check_points, "euphonic", asr)


def _euphonic_total(fcobj, crystal, lat, pos, rows):
    """Total force constants (n_rows, N, 3, 3) of a polar euphonic.ForceConstants: its dynamical
    matrices (short-range part + its Ewald dipole sum) at the supercell's commensurate wave vectors,
    transformed back to the supercell. They differ from any real-space dipole sum by a short-ranged
    remainder only, which the minimum-image interpolation holds."""
    from xtds.lattice.kmesh import commensurate_k
    from xtds.units import MEV_PER_THZ, THZ_PER_SQRT_EV_A2_AMU

    cell = crystal.lattice
    k = commensurate_k(cell, lat)  # (K, 3) Cartesian
    modes = fcobj.calculate_qpoint_phonon_modes(k @ cell.T / (2 * np.pi), asr=None, dipole=True, splitting=False)
    E = modes.frequencies.to("meV").magnitude
    lam = np.sign(E) * (E / MEV_PER_THZ / THZ_PER_SQRT_EV_A2_AMU) ** 2  # eigenvalues of D, eV/(Å² amu)
    n = crystal.n_atoms
    vec = modes.eigenvectors.reshape(len(k), 3 * n, 3 * n)  # (K, mode, 3n)
    D = np.einsum("kma,km,kmb->kab", vec, lam, vec.conj())  # D v = λ v: D = Σ λ v v†
    sqrt_m = np.sqrt(np.repeat(crystal.masses, 3))
    H = D * sqrt_m[None, :, None] * sqrt_m[None, None, :]  # (K, 3n, 3n), eV/Å²
    site = np.arange(len(pos)) % n  # euphonic's supercell order: atom (c, t) at c·n + t
    # euphonic's phases are those of the cell origins: H(k)_{st} = Σ_c Φ(s0, tc) e^{ik·R_c}
    R = pos - crystal.cartesian_positions[site]
    blocks = H.reshape(len(k), n, 3, n, 3)[:, :, :, site, :]  # (K, n, 3, N, 3)
    phase = np.exp(-1j * (k @ (R - R[rows[0]]).T))  # (K, N)
    fc = np.einsum("kj,ksajb->sjab", phase, blocks) / len(k)
    if np.abs(fc.imag).max() > 1e-8 * max(1.0, np.abs(fc.real).max()):
        raise RuntimeError("euphonic's dynamical matrices did not transform back to real force constants; "
                           "please report this file")
    return fc.real


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
