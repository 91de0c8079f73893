"""Training sets for amortized inference: one forward model over thousands of force-constant draws.

:func:`draw_constants` draws force constants (each φ_i = reference_i × u, u uniform in a box,
0.5–1.5 as Su & Li) and keeps the dynamically stable ones (every eigenvalue of the force-constant
matrix ≥ 0 on the observable's stability k-points). :func:`make_training_set` evaluates an observable
(e.g. :class:`~xtds.observables.neutron.powder.PowderSpectrum` with the instrument's mask and the source's
normalization) at each draw, in worker processes of one thread each (several small spectra per
core run faster than one spectrum on every core), and appends them to a zarr store as they come:
a rerun with the same settings skips the finished batches.

The store holds ``values`` (draw, pixel) float32, ``constants`` (draw, constant) float64 in eV/Å²,
``temperature`` (draw,) K when drawn, ``done`` (batch,) bool, and attrs with the provenance: the
observable's description, the reference constants, the box, the seed, the package versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch
import xarray as xr

__all__ = ["draw_constants", "make_training_set", "package_versions"]

#: Batches of draws per task and per zarr chunk.
BATCH = 128


def draw_constants(model, reference, n: int, box=(0.5, 1.5), seed: int = 0, k=None,
                   max_tries: int = 100) -> np.ndarray:
    """``n`` stable force-constant vectors (n, n_free) eV/Å²: φ = reference × u, u uniform in
    ``box`` (a (low, high) pair for every constant, or one per constant), drawn with ``seed``;
    a draw with a negative eigenvalue of the force-constant matrix at the k-points ``k`` (none:
    no check) is discarded and another drawn. Raises when fewer than 1 in ``max_tries`` is stable."""
    ref = np.asarray(model.vector(reference).numpy() if isinstance(reference, dict) else reference, dtype=float)
    lo, hi = (np.broadcast_to(np.asarray(b, dtype=float), ref.shape) for b in np.asarray(box, dtype=object))
    if np.any(hi < lo):
        raise ValueError(f"the box must be (low, high) with low ≤ high, got {box}")
    rng = np.random.default_rng(seed)
    out, tried = [], 0
    while sum(len(o) for o in out) < n:
        cand = ref * rng.uniform(lo, hi, size=(max(64, n), len(ref)))
        tried += len(cand)
        if k is not None:
            cand = cand[_stable(model, cand, k)]
        out.append(cand)
        if tried >= 64 and sum(len(o) for o in out) * max_tries < tried:
            raise ValueError(f"fewer than 1 in {max_tries} draws of the box {box} about the reference is stable: "
                             "narrow the box or check the reference constants")
    return np.concatenate(out)[:n]


def _stable(model, phis: np.ndarray, k: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Whether each draw (n, n_free) is stable at ``k``: every eigenvalue of H(k) ≥ 0 (the Γ
    translations left out). H is affine in the constants, H(φ) = H(0) + Σ φ_i (H(e_i) − H(0)), so
    the basis is built once and the draws are diagonalized ``chunk`` at a time; a model for which
    the affine form does not reproduce H at the first draw is checked draw by draw instead."""
    from xtds.lattice.dynamics import force_constant_matrix
    from xtds.lattice.stability import is_gamma, min_eigenvalues

    phis = np.atleast_2d(np.asarray(phis, dtype=float))
    with torch.no_grad():
        def H(p):
            return force_constant_matrix(model, torch.as_tensor(p, dtype=torch.float64), k, cell=model.crystal)

        H0 = H(np.zeros(phis.shape[1]))
        basis = torch.stack([H(e) - H0 for e in np.eye(phis.shape[1])])  # (n_free, n_k, 3n, 3n)
        affine = len(phis) == 0 or torch.allclose(H0 + torch.einsum("i,i...->...", torch.as_tensor(phis[0]).to(
            basis.dtype), basis), H(phis[0]), rtol=1e-10, atol=1e-12)
        if not affine:
            ok = np.empty(len(phis), dtype=bool)
            for i, p in enumerate(phis):
                lam = min_eigenvalues(model, torch.as_tensor(p), k)
                ok[i] = bool((lam[torch.isfinite(lam)] >= -1e-10).all())
            return ok
        if H0.is_complex():
            size = max(float(H0.abs().max()), float(basis.abs().max()), 1e-300)
            if max(float(H0.imag.abs().max()), float(basis.imag.abs().max())) <= 1e-12 * size:
                H0, basis = H0.real, basis.real  # e.g. a centrosymmetric Bravais lattice: H(k) real symmetric
        gamma = torch.as_tensor(is_gamma(model.crystal, k))
        ok = np.empty(len(phis), dtype=bool)
        for s in range(0, len(phis), chunk):
            p = torch.as_tensor(phis[s : s + chunk]).to(basis.dtype)
            lam = torch.linalg.eigvalsh(H0 + torch.einsum("di,i...->d...", p, basis))  # (d, n_k, 3n)
            lam[:, gamma, :3] = float("inf")
            ok[s : s + chunk] = (lam >= -1e-10).flatten(1).all(1).numpy()
    return ok


_WORKER = {}


def _init_worker(blob: bytes, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["observable"] = pickle.loads(blob)


def _evaluate(phis: np.ndarray, observable=None, temperatures=None) -> np.ndarray:
    obs = observable if observable is not None else _WORKER["observable"]
    out = []
    with torch.no_grad():
        for i, p in enumerate(phis):
            obs.reset()  # state fixed at a first evaluation (adaptive widths) is made for this draw
            if temperatures is not None:
                obs = obs.at_temperature(float(temperatures[i]))
            out.append(obs.mean(torch.as_tensor(p)).cpu().numpy().astype(np.float32))
    return np.stack(out)


def make_training_set(observable, reference, n: int, box=(0.5, 1.5), seed: int = 0, store=None,
                      workers: int | None = None, batch: int = BATCH, temperatures=None,
                      progress: bool = True) -> xr.Dataset:
    """Evaluate ``observable`` at ``n`` stable draws about ``reference`` (:func:`draw_constants`).

    Parameters
    ----------
    observable
        An :class:`~xtds.observables.base.Observable` (its pixels: ``len(observable)``).
    reference
        Constants (dict name → eV/Å², or a vector of the model's free constants).
    store
        A zarr path: batches are appended as they finish; a rerun with the same settings keeps the
        finished ones (other settings: a ``ValueError`` naming the store).
    workers
        Processes of one thread each (default: the CPU count); 0: in this process.
    temperatures
        (low, high) K: each draw also gets a temperature, uniform in the range (the observable is
        evaluated at it, :meth:`~xtds.observables.base.Observable.at_temperature`), so that one
        network serves a temperature series.

    Returns
    -------
    ``xr.Dataset`` with ``values`` (draw, pixel) float32 and ``constants`` (draw, constant) eV/Å²,
    attrs ``provenance`` (JSON) and ``seconds`` (the wall time of this call's evaluations).
    """
    model = observable.model
    temps = None
    if temperatures is not None:
        lo_t, hi_t = (float(t) for t in temperatures)
        if not 0 < lo_t <= hi_t:
            raise ValueError(f"temperatures must be (low, high) K with 0 < low ≤ high, got {temperatures}")
        if observable.temperature is None:
            raise TypeError(f"{type(observable).__name__} has no temperature: draw temperatures (temperatures=...) "
                            "only for observables with one")
    phis = draw_constants(model, reference, n, box=box, seed=seed, k=observable.stability_k())
    if temperatures is not None:
        temps = np.random.default_rng([seed, 1]).uniform(lo_t, hi_t, n)
    ref = np.asarray(model.vector(reference).numpy() if isinstance(reference, dict) else reference, dtype=float)
    prov = {"observable": {**observable.describe(), "constants": list(model.names)}, "reference": ref.tolist(),
            "box": np.asarray(box, dtype=float).tolist(),
            "seed": int(seed), "n": int(n), "batch": int(batch), "versions": package_versions(),
            "temperatures": None if temps is None else [lo_t, hi_t]}
    key = hashlib.sha256(json.dumps(prov, sort_keys=True, default=str).encode()).hexdigest()[:16]
    n_batches = -(-n // batch)
    P = len(observable)
    values = np.zeros((n, P), dtype=np.float32)
    done = np.zeros(n_batches, dtype=bool)
    root = None
    if store is not None:
        root = _open_store(store, key, prov, n, P, len(ref), batch, phis, temps)
        done = np.asarray(root["done"][:], dtype=bool)
        for b in np.flatnonzero(done):
            values[b * batch : (b + 1) * batch] = root["values"][b * batch : (b + 1) * batch]
    from tqdm.auto import tqdm

    todo = [b for b in range(n_batches) if not done[b]]
    bar = tqdm(total=n, initial=n - sum(min(batch, n - b * batch) for b in todo), desc="simulating", unit="draw",
               disable=not progress)
    t0 = time.perf_counter()

    def finish(b, v):
        values[b * batch : b * batch + len(v)] = v
        if root is not None:
            root["values"][b * batch : b * batch + len(v)] = v
            root["done"][b] = True
        bar.update(len(v))

    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                 initargs=(pickle.dumps(observable), 1)) as pool:
            futures = {pool.submit(_evaluate, phis[b * batch : (b + 1) * batch], None, _part(temps, b, batch)): b
                       for b in todo}
            for f in as_completed(futures):
                finish(futures[f], f.result())
    else:
        for b in todo:
            finish(b, _evaluate(phis[b * batch : (b + 1) * batch], observable, _part(temps, b, batch)))
    bar.close()
    seconds = time.perf_counter() - t0
    data = {"values": (("draw", "pixel"), values, {"long_name": "simulated observable", "units": "1"}),
            "constants": (("draw", "constant"), phis, {"units": "eV/Å^2"})}
    if temps is not None:
        data["temperature"] = ("draw", temps, {"units": "K"})
    return xr.Dataset(
        data,
        coords={"constant": list(model.names)},
        attrs={"provenance": json.dumps(prov), "seconds": seconds, "store": os.fspath(store) if store else ""},
    )


def _part(a, b, batch):
    return None if a is None else a[b * batch : (b + 1) * batch]


def package_versions() -> dict:
    """The versions of xtds, torch and numpy (the provenance of stores and networks)."""
    from xtds._version import __version__

    return {"xtds": __version__, "torch": torch.__version__, "numpy": np.__version__}


def _open_store(store, key, prov, n, P, n_free, batch, phis, temps):
    import zarr

    path = os.fspath(store)
    if os.path.exists(path):
        root = zarr.open_group(path, mode="r+")
        if root.attrs.get("key") != key:
            raise ValueError(f"the store {path} holds a training set of other settings (observable, reference, box, "
                             "seed, n or versions): delete it or pass another path")
        return root
    root = zarr.open_group(path, mode="w")
    root.create_array("values", shape=(n, P), chunks=(batch, P), dtype="float32", fill_value=0.0,
                      dimension_names=("draw", "pixel"))  # dimension names: xr.open_zarr reads the store
    root.create_array("constants", shape=phis.shape, chunks=(batch, n_free), dtype="float64",
                      dimension_names=("draw", "constant"))
    root["constants"][:] = phis
    if temps is not None:
        root.create_array("temperature", shape=(n,), chunks=(max(1, n),), dtype="float64", dimension_names=("draw",))
        root["temperature"][:] = temps
    root.create_array("done", shape=(-(-n // batch),), chunks=(max(1, -(-n // batch)),), dtype="bool",
                      fill_value=False, dimension_names=("batch",))
    root.attrs.update(key=key, provenance=json.dumps(prov))
    return root
