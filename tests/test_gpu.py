"""The GPU paths against the CPU: every model, its gradient, a fit, and the volume kernels.

Each test needs a CUDA device (and cupy or cufinufft where it uses them): it is skipped without
one, and fails instead when ``XTDS_REQUIRE_GPU=1`` (the device machine's run). The first test runs
everywhere: the device branch of the NUFFT pair sums, driven on the CPU through a stand-in for
cufinufft built on finufft, against the CPU branch (so what the GPU adds is cufinufft alone).
``benchmarks/gpu_check.py`` runs the same comparisons with timings.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

import xtds
from xtds.datasets import paper_ni_ifcs

NI = xtds.Crystal.fcc("Ni", a=3.52)


def require(what: str):
    """Skip (or, with XTDS_REQUIRE_GPU=1, fail) unless ``what`` ("cuda", "cupy", "cufinufft") works."""
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        if what == "cupy":
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        elif what == "cufinufft":
            import cufinufft  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure means: not available here
        if os.environ.get("XTDS_REQUIRE_GPU"):
            raise AssertionError(f"XTDS_REQUIRE_GPU is set but {what} is unusable: {err}") from err
        pytest.skip(f"{what} with a GPU is not available (set XTDS_REQUIRE_GPU=1 to fail instead)")


class _FinufftStandIn:
    """cufinufft's Plan on CPU torch tensors, through finufft: the device branch's contract."""

    class Plan:
        def __init__(self, nufft_type, n_modes, n_trans=1, eps=1e-6, isign=None, dtype="complex128"):
            import finufft

            self._plan = finufft.Plan(nufft_type, tuple(n_modes), n_trans, eps=eps, isign=isign)

        def setpts(self, x, y, z):
            self._plan.setpts(*(np.ascontiguousarray(v.numpy()) for v in (x, y, z)))

        def execute(self, data):
            return torch.from_numpy(np.ascontiguousarray(self._plan.execute(data.numpy())))


def test_device_branch_of_the_pair_sums_equals_the_cpu_branch(monkeypatch):
    pytest.importorskip("finufft")
    from xtds.observables.tds import nufft

    g = torch.Generator().manual_seed(3)
    frac = torch.rand(2, 20, 3, generator=g, dtype=torch.float64) * 3 - 1
    group = np.arange(20) % 3 // 2
    box = nufft.ModeBox((-3, -4, -2), (7, 8, 5))
    w = torch.rand(3, *box.shape, generator=g, dtype=torch.float64)

    def run():
        x = frac.clone().requires_grad_(True)
        S1, P = nufft.pair_sums(x, group, box, eps=1e-12, each=True)
        (S1 * w).sum().backward()
        return S1.detach(), P, x.grad

    ref = run()
    monkeypatch.setitem(sys.modules, "cufinufft", types.SimpleNamespace(Plan=_FinufftStandIn.Plan))
    monkeypatch.setattr(nufft, "_device_path", lambda theta: True)
    got = run()
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


# --- on a CUDA device -------------------------------------------------------------------------


def _ni_model():
    m = xtds.IFCModel(NI, shells=3)
    return m, {k: v for k, v in paper_ni_ifcs("target").items() if k in m.names}


def _q(m, n=2):
    from xtds.thermal.geometry import supercell_q_grid

    return supercell_q_grid(m.crystal, 5, n)


@pytest.mark.parametrize("method", ["exact", "one_phonon", "infinite"])
def test_tds_models_on_cuda_equal_the_cpu(method):
    require("cuda")
    from xtds.observables import TDSIntensity
    from xtds.thermal.geometry import InfiniteCrystal

    m, ifc = _ni_model()
    q = _q(m)[1:40] + 0.013  # off the supercell grid: the infinite crystal
    kw = {"geometry": InfiniteCrystal()} if method in ("one_phonon", "infinite") else {}
    qq = _q(m)[1:40] if method == "exact" else q
    name = "exact" if method == "infinite" else method
    out = {}
    for dev in ("cpu", "cuda"):
        obs = TDSIntensity(m, qq, 300.0, method=name, device=dev, **kw)
        phi = m.vector(ifc, device=dev).clone().requires_grad_(True)
        val = obs.mean(phi)
        val.log().sum().backward()
        assert val.device.type == dev
        out[dev] = (val.detach().cpu(), phi.grad.cpu())
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-9, atol=0)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-7, atol=1e-9 * float(out["cpu"][1].abs().max()))


def test_sampled_model_on_cuda_draws_what_the_cpu_draws():
    require("cufinufft")
    from xtds.observables import TDSIntensity

    m, ifc = _ni_model()
    q = _q(m, 4)[1:]
    vals = {}
    for dev in ("cpu", "cuda"):
        obs = TDSIntensity(m, q, 300.0, method="sampled", quantum=False, n_samples=4, seed=2, device=dev)
        vals[dev] = obs(m.vector(ifc, device=dev)).detach().cpu()
    # the same noise (drawn on the CPU, then moved); NUFFT tolerance 1e-6 on both sides
    torch.testing.assert_close(vals["cuda"], vals["cpu"], rtol=1e-5, atol=0)


def test_powder_and_points_on_cuda_equal_the_cpu():
    require("cuda")
    from xtds.observables import DispersionPoints, PowderSpectrum, SQEPoints

    al = xtds.Crystal.preset("Al")
    m = xtds.IFCModel(al, shells=2)
    phi = {"b0": -0.61, "b1": 0.10, "b2": -0.71, "c0": -0.155, "c1": 0.032}
    Q, E = np.linspace(1.5, 5.0, 12), np.linspace(6.0, 36.0, 10)
    q = al.rlu_to_cartesian(np.array([[0.3, 0.1, 0.0], [0.5, 0.5, 0.5], [1.1, 0.2, 0.3]]))
    res = {}
    for dev in ("cpu", "cuda"):
        p = m.vector(phi, device=dev)
        spec = PowderSpectrum(m, Q, E, 150.0, mesh=6, multiphonon_mesh=8, dw_mesh=8, device=dev)
        sqe = SQEPoints(m, np.repeat(q, 2, axis=0), np.tile([10.0, 20.0], 3), 150.0, device=dev)
        disp = DispersionPoints(m, np.repeat(q, 3, axis=0), np.tile([0, 1, 2], 3), device=dev)
        value = spec.mean(p)  # (the first plain evaluation fixes the adaptive widths)
        J = torch.func.jacfwd(spec.mean)(p)
        res[dev] = [t.detach().cpu() for t in (value, J, sqe.mean(p), disp.mean(p))]
    for a, b in zip(res["cuda"], res["cpu"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * float(b.abs().max()))


def test_a_fit_on_cuda_ends_where_the_cpu_fit_ends():
    require("cuda")
    vol = xtds.datasets.paper_ni_volume(n_max=8)
    start = paper_ni_ifcs("starting")
    fits = {dev: vol.tds.fit(NI, shells=5, initial=start, model=xtds.TDSModel(device=dev),
                             optimizer=xtds.LM(max_iter=15, progress=False))
            for dev in ("cpu", "cuda")}
    a, b = fits["cuda"]["ifc"].values, fits["cpu"]["ifc"].values
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("lazy", [False, True])
def test_volume_kernels_with_cupy_equal_numpy(lazy):
    require("cupy")

    rng = np.random.default_rng(5)
    c = np.round(np.linspace(-2, 2, 21), 9)
    I = rng.random((21,) * 3) + 0.5
    I[rng.random(I.shape) < 0.05] = np.nan
    import xarray as xr

    ds = xr.Dataset({"intensity": (("H", "K", "L"), I)}, coords={d: (d, c, {"units": "rlu"}) for d in "HKL"},
                    attrs={"unit_cell": [3.52, 3.52, 3.52, 90.0, 90.0, 90.0]})
    src = ds.chunk({"H": 5, "K": 7, "L": 7}) if lazy else ds
    gpu = src.tds.as_backend("cupy").tds.mask(bragg=0.15, crystal=NI, q_max=6.0)
    cpu = ds.tds.mask(bragg=0.15, crystal=NI, q_max=6.0)
    # (mask + symmetrize with cupy: tests/test_volume.py::test_cupy_matches_numpy)
    p_g, p_c = gpu.tds.to_points(crystal=NI), cpu.tds.to_points(crystal=NI)  # lazy: folded on the device
    assert p_g.sizes["point"] == p_c.sizes["point"]
    np.testing.assert_allclose(p_g["intensity"].values, p_c["intensity"].values, rtol=1e-12)
    np.testing.assert_array_equal(p_g["multiplicity"].values, p_c["multiplicity"].values)
