"""Shared fixtures: the paper's tables and small models."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import xtds

ROOT = pathlib.Path(__file__).resolve().parents[1]


#: Reference numbers carried by the repository (see tests/data/README.md for their sources).
DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def paper_tables() -> dict:
    return json.loads((DATA / "paper_tables.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def ni_model() -> xtds.IFCModel:
    return xtds.IFCModel(xtds.Crystal.fcc("Ni", a=3.52), shells=5)


@pytest.fixture(scope="session")
def si_model() -> xtds.IFCModel:
    return xtds.IFCModel(xtds.Crystal.preset("Si"), shells=3)


@pytest.fixture(scope="session")
def si_phi(si_model) -> np.ndarray:
    """A stable Si set: central springs on shells 1–2 plus angular (non-central) terms."""
    phi = si_model.central_force({1: 6.0, 2: 1.0})
    rng = np.random.default_rng(7)
    return phi + 0.05 * rng.standard_normal(si_model.n_free)


@pytest.fixture(scope="session")
def al_powder_sqe():
    """A simulated Al powder S(|Q|, E): the 2-shell model, its central-force constants (1.6, 0.3
    eV/Å²), the observable (|Q| 2–6 Å⁻¹ × E 6–40 meV, 2 meV resolution, k-mesh 6, one phonon) and
    the noise-free spectrum. Shared by the spectrum tests; do not modify the objects."""
    import torch

    from xtds.observables.neutron.powder import PowderSpectrum

    model = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=2)
    true = dict(zip(model.names, model.central_force({1: 1.6, 2: 0.3}), strict=True))
    Q, E = np.arange(2.0, 6.01, 0.2), np.arange(6.0, 40.1, 1.0)
    obs = PowderSpectrum(model, Q, E, 300.0, resolution=2.0, mesh=6, kind="sqe", normalize=False, multiphonon=())
    with torch.no_grad():
        clean = obs(model.vector(true)).numpy()
    return model, true, obs, clean


@pytest.fixture(scope="session")
def tiny_al_powder():
    """A 15-point Al powder spectrum observable (2 shells), for checks of what a Problem accepts."""
    from xtds.observables.neutron.powder import PowderSpectrum

    model = xtds.IFCModel(xtds.Crystal.preset("Al"), shells=2)
    return PowderSpectrum(model, np.arange(2.0, 4.01, 0.5), np.arange(10.0, 20.1, 5.0), 300.0, resolution=3.0,
                          mesh=4, kind="sqe", normalize=False, multiphonon=())


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when asked for (``-m slow``, as ``make bench`` does)."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow (make bench)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
