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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when asked for (``-m slow``, as ``make bench`` does)."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow (make bench)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
