"""Where the intensity is computed: a finite periodic supercell, or an effectively infinite crystal.

Both geometries are frozen objects passed down whole: ``.shape`` (the supercell repeats, or the
k-mesh of an infinite crystal) and ``.k_grid(crystal)``, the one k-grid builder of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xtds.errors import triple
from xtds.lattice.crystal import Crystal
from xtds.lattice.laue import GRID_TOL

__all__ = ["PeriodicSupercell", "InfiniteCrystal", "supercell_q_grid", "auto_geometry", "triple", "shape_of",
           "k_grid", "GRID_TOL", "default_mesh", "MESH_SPACING"]


#: Default k-mesh spacing |b_i| / M_i (Å⁻¹) of :func:`default_mesh`.
MESH_SPACING = 0.1


def default_mesh(crystal, spacing: float = MESH_SPACING) -> tuple[int, int, int]:
    """The k-mesh of the primitive cell with steps |b_i|/M_i ≤ ``spacing`` (Å⁻¹), each M_i a multiple
    of 4 (the Richardson sub-meshes M/2 and M/4) and at least 8."""
    b = np.linalg.norm(np.asarray(crystal.primitive().reciprocal), axis=1)
    return tuple(int(max(8, 4 * np.ceil(x / spacing / 4))) for x in b)


def k_grid(crystal: Crystal, shape) -> np.ndarray:
    """The k-points k = Σ (m_i / L_i) b_i, m_i = 0 … L_i − 1, of an L1×L2×L3 supercell of
    ``crystal``: shape (L1, L2, L3, 3), Å⁻¹."""
    return crystal.k_grid(triple(shape, "k-grid sizes"))


@dataclass(frozen=True)
class PeriodicSupercell:
    """An L1×L2×L3 periodic supercell of the crystal's own cell (the paper's set-up: 5×5×5 cubic
    cells of Ni, 500 atoms). q must lie on its reciprocal grid q = Σ n_i b_i / L_i (integers n_i);
    Bragg peaks are included."""

    repeats: tuple[int, int, int]

    def __init__(self, repeats):
        object.__setattr__(self, "repeats", triple(repeats, "supercell repeats"))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The repeats (L1, L2, L3): the shape of the supercell's k-grid."""
        return self.repeats

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.repeats))

    def k_grid(self, crystal: Crystal) -> np.ndarray:
        """The supercell's k-points: shape (L1, L2, L3, 3), Å⁻¹."""
        return k_grid(crystal, self.repeats)

    def grid_indices(self, crystal: Crystal, q: np.ndarray) -> np.ndarray:
        """Integer n with q = Σ n_i b_i / L_i; a ``ValueError`` if q is off the grid."""
        n = crystal.cartesian_to_rlu(q) * np.asarray(self.repeats)
        rn = np.round(n)
        if len(n) and np.abs(n - rn).max() > GRID_TOL:
            bad = int(np.abs(n - rn).max(axis=1).argmax())
            raise ValueError(
                f"q = {np.asarray(q)[bad].round(5)} Å⁻¹ is not on the reciprocal grid of the {self.repeats} "
                "supercell (H, K, L must be multiples of 1/L); use InfiniteCrystal for arbitrary q"
            )
        return rn.astype(np.int64)


@dataclass(frozen=True)
class InfiniteCrystal:
    """An infinite crystal: the diffuse intensity at any q, Bragg peaks excluded
    (:mod:`xtds.observables.tds.infinite`).

    ``mesh``: the k-mesh (M1, M2, M3) of the **primitive** cell from which the Debye–Waller factor and
    the multi-phonon pair covariances are computed (multiples of 4, at least 8), a convergence
    parameter; None (default) takes :func:`default_mesh` of the crystal (steps of
    at most 0.1 Å⁻¹), resolved by :meth:`resolve`.
    """

    mesh: tuple[int, int, int] | None

    def __init__(self, mesh=None):
        object.__setattr__(self, "mesh", None if mesh is None else triple(mesh, "k-mesh sizes"))

    def resolve(self, crystal: Crystal) -> InfiniteCrystal:
        """This geometry with its mesh made concrete for ``crystal``."""
        if self.mesh is not None:
            return self
        return InfiniteCrystal(default_mesh(crystal))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The k-mesh (M1, M2, M3) of the primitive cell."""
        if self.mesh is None:
            raise ValueError("InfiniteCrystal() has no mesh until resolved for a crystal (geometry.resolve(crystal))")
        return self.mesh

    def k_grid(self, crystal: Crystal) -> np.ndarray:
        """The mesh's k-points in the primitive cell of ``crystal``: shape (M1, M2, M3, 3), Å⁻¹."""
        return k_grid(crystal.primitive(), self.resolve(crystal).mesh)


def shape_of(geometry, what: str = "supercell repeats") -> tuple[int, int, int]:
    """The k-grid shape of a geometry object, or of a shape given directly (one integer or three)."""
    if isinstance(geometry, (PeriodicSupercell, InfiniteCrystal)):
        return geometry.shape
    return triple(geometry, what)


def auto_geometry(hkl, attrs=None, max_repeats: int = 40,
                  method: str = "exact") -> tuple[PeriodicSupercell | InfiniteCrystal, str]:
    """The geometry ``geometry="auto"`` chooses for points at ``hkl`` (shape (N, 3), r.l.u.) of a
    volume with ``attrs``, and why (one sentence for the log and the result's attrs).

    A measured volume comes from an infinite crystal, whatever its step: :class:`InfiniteCrystal`.
    The exception is a volume that says it was simulated on a periodic supercell (``attrs['geometry']``
    written by :func:`xtds.simulate`, e.g. the paper's 5×5×5 benchmark), whose points lie on that
    supercell's grid: then that :class:`PeriodicSupercell` (the L ≤ ``max_repeats`` of the grid).
    ``method="sampled"`` (the paper's estimator, defined on a supercell) always takes the grid's
    supercell.
    """
    hkl = np.asarray(hkl, dtype=float)
    said = str((attrs or {}).get("geometry", ""))
    if method == "sampled":
        said = said if said.startswith("PeriodicSupercell") else "PeriodicSupercell (the sampled model needs one)"
    if said.startswith("PeriodicSupercell"):
        for L in range(1, max_repeats + 1):
            if np.abs(hkl * L - np.round(hkl * L)).max(initial=0.0) < GRID_TOL:
                return PeriodicSupercell(L), (f"the data say they were simulated on {said}, and the points lie on the "
                                              f"grid of PeriodicSupercell({L})")
    return InfiniteCrystal(), ("measured data come from an infinite crystal (no attrs['geometry'] naming a periodic "
                               "supercell whose grid the points lie on)")


def supercell_q_grid(crystal: Crystal, repeats, n_max) -> np.ndarray:
    """The centred grid n ∈ [−n_max, n_max]³ of a supercell: shape ((2n_max+1)³, 3), Å⁻¹.

    For the paper: ``supercell_q_grid(xtds.datasets.paper_ni_crystal(), 5, 40)`` is its 81³ grid.
    """
    L = np.asarray(triple(repeats, "supercell repeats"))
    nm = np.asarray(triple(np.asarray(n_max) + 1, "n_max + 1")) - 1
    axes = [np.arange(-m, m + 1) for m in nm]
    n = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return crystal.rlu_to_cartesian(n / L)

