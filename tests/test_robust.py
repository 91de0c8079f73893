"""Robust errors under a deliberately wrong model: a 6-shell truth fitted with 5 shells."""

import numpy as np
import torch
import xarray as xr

import xtds
from xtds.datasets import paper_ni_ifcs
from xtds.io import crystal_attrs
from xtds.model import PeriodicSupercell, supercell_q_grid, tds_intensity

NI = xtds.Crystal.preset("Ni")


def test_robust_errors_cover_what_gauss_newton_misses():
    truth = {k: v for k, v in paper_ni_ifcs("target").items() if k != "a0"}
    truth.update(g0=-0.03, g1=-0.015)  # a sixth shell, (2,2,2)a/2, 3% of b0: the fit cannot hold it
    six = xtds.IFCModel(NI, shells=6)
    n = 16
    with torch.no_grad():
        I = tds_intensity(six, six.vector(truth), supercell_q_grid(NI, 6, n), 300.0, geometry=PeriodicSupercell(6),
                          quantum=False)
    c = np.arange(-n, n + 1) / 6
    ds = xr.Dataset({"intensity": (("H", "K", "L"), I.numpy().reshape(2 * n + 1, 2 * n + 1, 2 * n + 1))},
                    coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={**crystal_attrs(NI), "temperature": 300.0, "quantum": 0})
    res = ds.tds.fit(NI, shells=5, initial=paper_ni_ifcs("starting"), progress=False)
    dominant = ["b0", "b1", "b2", "c0"]  # the four largest constants
    err = np.array([float(res["ifc"].sel(constant=k)) - truth[k] for k in dominant])
    gn = res["ifc_stderr"].sel(constant=dominant).values
    robust = res["ifc_stderr_robust"].sel(constant=dominant).values
    # measured: |error|/σ = 0.6, 4.4, 1.7, 0.2 (Gauss–Newton) and 0.6, 1.6, 2.0, 0.1 (robust)
    assert np.all(np.abs(err) < 2.2 * robust)
    assert np.any(np.abs(err) > 3 * gn)
    assert np.all(robust > 0.8 * gn)
    assert res["ifc_cov_robust"].dims == ("constant", "constant_")
