"""Robust errors under a deliberately wrong model: a 6-shell truth fitted with 5 shells."""

import numpy as np
import pytest

import xtds
from xtds.datasets import paper_ni_ifcs, six_shell_ni_volume


@pytest.mark.heavy
def test_robust_errors_cover_what_gauss_newton_misses():
    ds, truth = six_shell_ni_volume(16)  # g0 = −0.03, g1 = −0.015 eV/Å²: 3 % of b0, beyond a 5-shell fit
    res = ds.tds.fit("Ni", shells=5, initial=paper_ni_ifcs("starting"), optimizer=xtds.LM(progress=False))
    dominant = ["b0", "b1", "b2", "c0"]  # the four largest constants
    err = np.array([float(res["ifc"].sel(constant=k)) - truth[k] for k in dominant])
    gn = res["ifc_stderr"].sel(constant=dominant).values
    robust = res["ifc_stderr_robust"].sel(constant=dominant).values
    # measured: |error|/σ = 0.6, 4.4, 1.7, 0.2 (Gauss–Newton) and 0.6, 1.6, 2.0, 0.1 (robust)
    assert np.all(np.abs(err) < 2.2 * robust)
    assert np.any(np.abs(err) > 3 * gn)
    assert np.all(robust > 0.8 * gn)
    assert res["ifc_cov_robust"].dims == ("constant", "constant_")
