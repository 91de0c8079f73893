"""Data shipped with xtds.

``paper_ni_ifcs`` gives the force constants of the synthetic Ni benchmark of Suchan et al. 2026
(arXiv:2603.28683), Tables 1–2. Their Target column is the Foiles "u3" EAM Hessian divided by
1.505 and the Starting column the Baskes MEAM Hessian divided by the same factor: numbers for the
synthetic benchmark, not physical nickel (see ``docs/conventions.md``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

__all__ = ["paper_ni_ifcs", "paper_ni_tables"]


@lru_cache(maxsize=1)
def paper_ni_tables() -> dict:
    """The paper's Ni tables and set-up, as stored in ``xtds/data/paper_ni.json``."""
    return json.loads(resources.files("xtds").joinpath("data/paper_ni.json").read_text(encoding="utf-8"))


def paper_ni_ifcs(which: str = "target") -> dict[str, float]:
    """The paper's Ni force constants, name → eV/Å² (a0 included).

    ``which``: ``"target"`` (EAM u3 / 1.505), ``"starting"`` (MEAM / 1.505), ``"table1"`` (the
    paper's converged full-3-D fit) or ``"table2"`` (the paper's ±10° wedge fit).
    """
    t = paper_ni_tables()
    keys = {
        "target": t["target_EAM_U3"],
        "starting": t["starting_MEAM"],
        "table1": t["table1_full_3d"]["converged"],
        "table2": t["table2_wedge_10deg"]["converged"],
    }
    if which not in keys:
        raise ValueError(f"which must be one of {sorted(keys)}, got {which!r}")
    return dict(keys[which])
