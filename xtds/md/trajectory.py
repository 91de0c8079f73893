"""Classical MD trajectories of a crystal: :class:`Trajectory` and :func:`run_md`.

The frames are stored as displacements u (Å) from the ideal sites of an L1×L2×L3 supercell of
the crystal's cell, atoms ordered cell by cell (L1 slowest) with the cell's atoms fastest, the
order of :meth:`xtds.lattice.supercell.Supercell.from_crystal`. The centre of mass of each frame
is removed (a rigid translation changes neither the intensity nor C(k ≠ 0)).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from xtds.errors import check_temperature, triple
from xtds.lattice.crystal import Crystal

__all__ = ["Trajectory", "run_md", "equilibrium_lattice_constant"]

log = logging.getLogger("xtds.md")

#: The elements asap3's EMT potential (Jacobsen, Stoltze, Nørskov 1996) describes.
EMT_ELEMENTS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")


def _asap_emt():
    try:
        from asap3 import EMT
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("xtds.md needs asap3 and ASE for its MD runs: pip install 'xtds[md]' "
                          "(or pip install asap3)") from exc
    return EMT


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Frames of a classical MD run of a periodic supercell.

    Attributes
    ----------
    crystal
        The crystal whose cell is repeated (e.g. the conventional cubic cell of FCC Ni).
    repeats
        (L1, L2, L3): the supercell.
    displacements
        Shape (F, N, 3), Å: u of every atom in every frame, centre of mass removed.
    temperature
        The thermostat's temperature, K.
    meta
        How the run was made (potential, time step, stride, friction, seed, steps).
    """

    crystal: Crystal
    repeats: tuple[int, int, int]
    displacements: np.ndarray
    temperature: float
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "repeats", triple(self.repeats, "supercell repeats"))
        u = np.asarray(self.displacements, dtype=float)
        n = self.crystal.n_atoms * int(np.prod(self.repeats))
        if u.ndim != 3 or u.shape[1:] != (n, 3):
            raise ValueError(f"displacements must have shape (frames, {n}, 3) for a {self.repeats} supercell of "
                             f"{self.crystal.n_atoms} atoms per cell, got {u.shape}")
        object.__setattr__(self, "displacements", u)

    @property
    def n_frames(self) -> int:
        return len(self.displacements)

    @property
    def supercell_lattice(self) -> np.ndarray:
        """Shape (3, 3), Å: rows are the supercell vectors."""
        return np.asarray(self.crystal.lattice) * np.asarray(self.repeats)[:, None]

    @property
    def ideal_positions(self) -> np.ndarray:
        """Shape (N, 3), Å: the ideal sites, in the order of the frames."""
        cells = np.stack(np.meshgrid(*(np.arange(r) for r in self.repeats), indexing="ij"), -1).reshape(-1, 3)
        frac = (cells[:, None, :] + np.asarray(self.crystal.positions)[None, :, :]).reshape(-1, 3)
        return frac @ np.asarray(self.crystal.lattice)

    @property
    def species(self) -> list[str]:
        return list(self.crystal.species) * int(np.prod(self.repeats))

    def halves(self) -> tuple[Trajectory, Trajectory]:
        """The first and the second half of the frames (for split-half uncertainties)."""
        h = self.n_frames // 2
        return (Trajectory(self.crystal, self.repeats, self.displacements[:h], self.temperature, dict(self.meta)),
                Trajectory(self.crystal, self.repeats, self.displacements[h : 2 * h], self.temperature,
                           dict(self.meta)))

    def save(self, path) -> None:
        """Write an ``.npz`` (displacements as float32: 1e-7 relative, far below their spread)."""
        np.savez_compressed(path, displacements=self.displacements.astype(np.float32),
                            lattice=np.asarray(self.crystal.lattice), positions=np.asarray(self.crystal.positions),
                            species=np.array(self.crystal.species), repeats=np.array(self.repeats),
                            temperature=self.temperature, meta=np.array(repr(self.meta)))

    @classmethod
    def load(cls, path) -> Trajectory:
        import ast

        with np.load(path, allow_pickle=False) as z:
            crystal = Crystal(z["lattice"], z["positions"], [str(s) for s in z["species"]])
            return cls(crystal, tuple(int(x) for x in z["repeats"]), z["displacements"].astype(float),
                       float(z["temperature"]), ast.literal_eval(str(z["meta"])))


def _atoms(crystal: Crystal, repeats, lattice_scale: float = 1.0):
    from ase import Atoms

    reps = np.asarray(triple(repeats, "supercell repeats"))
    cells = np.stack(np.meshgrid(*(np.arange(r) for r in reps), indexing="ij"), -1).reshape(-1, 3)
    frac = (cells[:, None, :] + np.asarray(crystal.positions)[None, :, :]).reshape(-1, 3)
    lat = np.asarray(crystal.lattice) * lattice_scale
    return Atoms(symbols=list(crystal.species) * len(cells), positions=frac @ lat, cell=lat * reps[:, None],
                 pbc=True)


def equilibrium_lattice_constant(element: str, structure: str = "fcc") -> float:
    """The 0 K lattice constant (Å) of asap3's EMT for ``element`` in its cubic ``structure``: the
    minimum of the energy per atom over a (its zero-pressure cell)."""
    from scipy.optimize import minimize_scalar

    EMT = _asap_emt()
    if element not in EMT_ELEMENTS:
        raise ValueError(f"asap3's EMT describes {EMT_ELEMENTS}, not {element!r}")
    from ase.build import bulk

    def energy(a):
        at = bulk(element, structure, a=float(a), cubic=True)
        at.calc = EMT()
        return at.get_potential_energy() / len(at)

    guess = bulk(element, structure, cubic=True).cell[0, 0]
    res = minimize_scalar(energy, bracket=(0.97 * guess, guess, 1.03 * guess), tol=1e-10)
    return float(res.x)


def run_md(crystal: Crystal, repeats, temperature: float, n_frames: int, stride: int = 20,
           timestep_fs: float = 4.0, friction_per_fs: float = 0.005, equilibrate_steps: int = 2000,
           seed: int = 0, progress: bool = False) -> Trajectory:
    """A Langevin (NVT) run with asap3's EMT of an L1×L2×L3 supercell of ``crystal``.

    Parameters
    ----------
    crystal
        The cell to repeat, e.g. ``Crystal.fcc("Ni", a=equilibrium_lattice_constant("Ni"))``; its
        elements must be EMT's (:data:`EMT_ELEMENTS`).
    repeats
        The supercell (L1, L2, L3).
    temperature
        K. The run is classical: compare with TDS models of ``quantum=False``.
    n_frames
        Frames kept, one every ``stride`` steps of ``timestep_fs`` after ``equilibrate_steps``.
    friction_per_fs
        The Langevin friction (1/fs): small, so that the dynamics stay close to Newton's while the
        ensemble is canonical.
    seed
        Of the initial velocities and the thermostat's noise.

    Returns
    -------
    A :class:`Trajectory` of the displacements (centre of mass removed).
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    EMT = _asap_emt()
    T = check_temperature(temperature)
    bad = sorted(set(crystal.species) - set(EMT_ELEMENTS))
    if bad:
        raise ValueError(f"asap3's EMT describes {EMT_ELEMENTS}; the crystal holds {bad}")
    if n_frames < 2 or stride < 1:
        raise ValueError(f"need n_frames ≥ 2 and stride ≥ 1, got {n_frames}, {stride}")
    atoms = _atoms(crystal, repeats)
    ideal = atoms.get_positions().copy()
    inv_cell = np.linalg.inv(np.asarray(atoms.cell))
    cell = np.asarray(atoms.cell)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=T, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=T, friction=friction_per_fs / units.fs, fixcm=False,
                   rng=np.random.RandomState(seed))
    dyn.run(equilibrate_steps)
    frames = np.empty((n_frames, len(atoms), 3))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_frames, desc=f"MD {''.join(sorted(set(crystal.species)))} {T:g} K", unit="frame")
    for i in range(n_frames):
        dyn.run(stride)
        d = atoms.get_positions() - ideal
        f = d @ inv_cell
        d = (f - np.round(f)) @ cell  # nearest image of each site
        frames[i] = d - d.mean(axis=0)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    umax = float(np.abs(frames).max())
    nn = float(np.min(np.linalg.norm(ideal[1:] - ideal[0], axis=1)))
    if umax > 0.5 * nn:
        raise RuntimeError(f"an atom moved {umax:.3f} Å from its site (nearest-neighbour distance {nn:.3f} Å): the "
                           f"crystal is melting or diffusing at {T:g} K; lower the temperature")
    meta = {"potential": "asap3 EMT", "integrator": "ASE Langevin", "timestep_fs": timestep_fs, "stride": stride,
            "friction_per_fs": friction_per_fs, "equilibrate_steps": equilibrate_steps, "seed": seed,
            "n_atoms": len(atoms)}
    return Trajectory(crystal, tuple(int(x) for x in triple(repeats, "supercell repeats")), frames, T, meta)
