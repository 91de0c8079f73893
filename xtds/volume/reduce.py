"""A volume larger than memory reduced to its irreducible points in one read: fold, then permute.

For a Laue group that holds every sign change of the axes (the mirrors of mmm: m-3m, m-3, 4/mmm,
mmm in their standard settings), G = S ⋊ P with S the 8 sign changes and P a group of axis
permutations, and the orbit of a voxel h is the P-orbit of |h| with every sign. So the reduction
of :func:`xtds.volume.prepare.to_points` (weighted orbit means) splits in two stages:

1. **Fold** (the one read of the file): block by block, in the order of the array's first axis
   (best the file's slowest: ``to_points`` puts it first), each block is read and masked by dask,
   and its summands (I·w, the count of valid voxels, w unless the weights are 1, …) are added
   onto the octant accumulators ``F(|h|) = Σ_{s ∈ S} (…)(s h)``: the pieces of a block on either
   side of 0 go, reversed where negative, onto their places in the octant. Each block, so each
   chunk of the file, is read once; a few blocks are in flight at a time.
2. **Permute** (in memory, over the octant): for every canonical point x (the lexicographic
   maximum of its P-images) the sums over the distinct images, ``Σ_{p ∈ P} F(p x) / |P_x|``
   (|P_x| the images equal to x).

Memory: the octant accumulators, 1/8 of the volume per summed quantity (float32 sums of at most 8
values for float32 input, float64 otherwise; the count of valid voxels in uint8), plus the
blocks in flight; never the whole volume. The blocks run as tasks of the current dask scheduler
(threads, or a ``distributed.Client``: then the workers read and mask, and the client folds).
On cupy blocks the octant stays on the device until the permutation stage.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np

__all__ = ["sign_folding_group", "fold_points"]

#: Memory for the blocks in flight (bytes): the default ``in_flight`` is the scheduler's workers,
#: but no more blocks than this budget holds at about 8 arrays of a block's size each (the block,
#: its weight and mask, its summands), so the peak stays bounded on a machine with many cores.
IN_FLIGHT_BYTES = 512 * 2**20

def sign_folding_group(matrices) -> list[tuple[int, int, int]] | None:
    """The axis permutations P of a Laue group with G = {all sign changes} ⋊ P, or None when the
    group lacks a sign change of the axes or mixes axes (then the volume cannot be folded).
    Each permutation p maps point x to (x[p[0]], x[p[1]], x[p[2]])."""
    mats = {tuple(map(tuple, np.asarray(R, dtype=int).tolist())) for R in np.asarray(matrices)}
    for s in itertools.product((1, -1), repeat=3):
        if tuple(tuple(int(s[a]) if b == a else 0 for b in range(3)) for a in range(3)) not in mats:
            return None
    perms = set()
    for R in mats:
        nz = [[b for b in range(3) if R[a][b]] for a in range(3)]
        if any(len(z) != 1 for z in nz):
            return None
        perms.add(tuple(z[0] for z in nz))
    if len(perms) * 8 != len(mats):
        return None
    return sorted(perms)


def _fold_length(n: int) -> int:
    """The folded length of an axis of ``n`` points symmetric about 0: (n + 1)/2 for odd n (a
    point at 0), n/2 for even n."""
    return (n + 1) // 2


def _weighted_parts(intensity, weight, *extra, acc_dtype=np.float64, binary=False):
    """One block → its summands, stacked (n_parts, ...): I·w, the count of valid voxels, then w
    (unless ``binary``: the weights are 1 where valid) and ``extra`` (summed like the weight)."""
    valid = weight > 0
    if binary:
        parts = [np.where(valid, intensity, 0), valid]
    else:
        w = np.where(valid, weight, 0)
        parts = [np.where(valid, intensity * w, 0), valid, w]
    parts += [np.where(valid, x, 0) for x in extra]
    return np.stack([p.astype(acc_dtype, copy=False) for p in parts])


def _segments(lo: int, hi: int, n: int):
    """Block [lo, hi) of an axis of ``n`` points symmetric about 0, cut at 0: (source slice in the
    block, destination slice on the folded axis) pairs, the side below 0 reversed."""
    c = n // 2
    off = c if n % 2 else c - 1  # folded index of point i < c: off − i
    out = []
    if lo < c:  # below 0
        m = min(hi, c)
        out.append((slice(m - 1 - lo, None, -1), slice(off - (m - 1), off - lo + 1)))
    if hi > c:  # 0 and above
        s0 = max(lo, c)
        out.append((slice(s0 - lo, hi - lo), slice(s0 - c, hi - c)))
    return out


def _fold_into(F, part, bounds, shape, n_parts):
    """Add one block's summands ``part`` (n_parts, b0, b1, b2), at ``bounds`` ((lo, hi) per axis)
    of the volume of ``shape``, onto the octant accumulators F = (I·w, count, w or None, extra or
    None) over the signs of all three axes. Pieces of the block on either side of 0 go one after
    the other (they may land on the same octant points)."""
    F_iw, F_n, F_w, F_x = F
    targets = [(F_iw, 0), (F_n, 1)] + ([(F_w, 2)] if F_w is not None else []) + (
        [(F_x, n_parts - 1)] if F_x is not None else [])
    for s0, d0 in _segments(*bounds[0], shape[0]):
        for s1, d1 in _segments(*bounds[1], shape[1]):
            for s2, d2 in _segments(*bounds[2], shape[2]):
                for arr, k in targets:
                    arr[d0, d1, d2] += part[k, s0, s1, s2].astype(arr.dtype, copy=False)


def fold_points(intensity, weight, perms, extra=None, binary_weight: bool = False, in_flight: int | None = None,
                progress: bool = False, dims=("H", "K", "L")):
    """The two-stage reduction of the module docstring.

    Parameters
    ----------
    intensity, weight
        dask (or numpy) arrays on ``dims`` (an order of H, K, L), every axis symmetric about 0;
        ``weight`` 0 where masked. Blocks are taken in the order of the first axis (best the
        file's slowest: the blocks of one slab are then one contiguous stretch of the file).
    perms
        The axis permutations P (:func:`sign_folding_group`).
    extra
        An array of the same shape summed like the weight (for σ), or None.
    binary_weight
        The weights are 1 where valid: their sums are the counts (one accumulator less).
    in_flight
        Blocks computed at a time (default: the scheduler's workers, at least 2, at most what
        :data:`IN_FLIGHT_BYTES` holds).

    Returns
    -------
    dict: ``index`` (P, 3) grid indices of each orbit's representative (the member with every
    coordinate ≤ 0; uint16, or int32 on axes over 65,535 points: cast before arithmetic),
    ``I_w``, ``w`` (None for binary weights: it is the count), ``count`` (int32; sums over the
    orbit's valid voxels), ``extra`` (or None); orbits without a valid voxel are
    left out; ordered by canonical point. Indices and permutations refer to H, K, L whatever
    ``dims``.
    """
    import dask.array as da

    shape = intensity.shape
    intensity, weight = da.asarray(intensity), da.asarray(weight)
    if extra is not None:
        extra = da.asarray(extra)
    acc_dtype = np.float32 if np.result_type(intensity.dtype, np.float32) == np.float32 else np.float64
    weight = weight.astype(acc_dtype)
    A = tuple(_fold_length(n) for n in shape)
    # cupy blocks are folded on the device; the octant then comes to the host once
    xp = np
    if type(getattr(intensity, "_meta", None)).__module__.startswith("cupy"):
        import cupy as xp
    F_iw = xp.zeros(A, dtype=acc_dtype)
    F_w = None if binary_weight else xp.zeros(A, dtype=acc_dtype)
    F_n = xp.zeros(A, dtype=np.uint8)
    F_x = None if extra is None else xp.zeros(A, dtype=acc_dtype)
    # per block, its summands, computed a few blocks at a time (by the current scheduler: threads,
    # or the workers of a distributed Client) and folded into the octant here as they come: the
    # memory is that of the blocks in flight, and each block (so each chunk of the file) is read once
    args = [intensity, weight] + ([] if extra is None else [extra])
    n_parts = 2 + (not binary_weight) + (extra is not None)
    parts = da.map_blocks(_weighted_parts, *args, acc_dtype=acc_dtype, binary=binary_weight, dtype=acc_dtype,
                          new_axis=0, chunks=((n_parts,), *intensity.chunks))
    blocks = parts.to_delayed()[0]  # (nb0, nb1, nb2) of Delayed, one graph
    edges = [np.cumsum((0,) + c) for c in intensity.chunks]
    order = list(np.ndindex(*blocks.shape))  # slab by slab along the first (the file's slowest) axis
    if in_flight is None:
        in_flight = default_in_flight(intensity.chunks, acc_dtype)

    def task(index):
        return index, dask.compute(blocks[index])[0]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(order), desc="folding the volume (blocks)", disable=not progress, leave=False)
    with _shared_process_pool(in_flight), ThreadPoolExecutor(max_workers=in_flight) as pool:
        pending, it = set(), iter(order)
        for _ in range(in_flight):
            j = next(it, None)
            if j is not None:
                pending.add(pool.submit(task, j))
        while pending:
            done = next(iter(_as_completed(pending)))
            pending.discard(done)
            index, part = done.result()
            _fold_into((F_iw, F_n, F_w, F_x), part, [(int(e[i]), int(e[i + 1])) for e, i in zip(edges, index,
                                                                                             strict=True)],
                       shape, n_parts)
            del part
            bar.update(1)
            j = next(it, None)
            if j is not None:
                pending.add(pool.submit(task, j))
    bar.close()
    _release_freed_memory()  # the blocks' memory, kept by the allocator, goes back before the next stage
    to_hkl = [list(dims).index(d) for d in "HKL"]
    F_iw, F_w, F_n, F_x = (None if F is None else (F if xp is np else F.get()).transpose(to_hkl)
                           for F in (F_iw, F_w, F_n, F_x))
    return _permute(F_iw, F_w, F_n, F_x, perms, tuple(shape[i] for i in to_hkl))


def default_in_flight(chunks, dtype) -> int:
    """Blocks of ``chunks`` (dask's chunks) to compute at a time: the scheduler's workers (at least
    2), but no more than :data:`IN_FLIGHT_BYTES` holds at 8 arrays of ``dtype`` per block; at least 1."""
    block_bytes = 8 * np.dtype(dtype).itemsize * max(int(np.prod([max(c) for c in chunks])), 1)
    return max(1, min(max(2, _scheduler_workers()), IN_FLIGHT_BYTES // block_bytes))


@contextlib.contextmanager
def _shared_process_pool(n: int):
    """Under dask's ``processes`` scheduler, one pool of ``n`` processes for every block: without a
    configured pool, each ``dask.compute`` starts (spawns) its own, seconds per block."""
    import dask.multiprocessing
    from dask.base import get_scheduler

    if get_scheduler() is not dask.multiprocessing.get or dask.config.get("pool", None) is not None:
        yield
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=n, mp_context=dask.multiprocessing.get_context()) as pool, \
            dask.config.set(pool=pool):
        yield


def _release_freed_memory() -> None:
    """Return the allocator's free memory to the system (glibc's ``malloc_trim``; nothing elsewhere).
    glibc raises its mmap threshold after large frees, so blocks of a few MB come from its heaps,
    whose freed pages it keeps: the resident memory of a finished stage stays counted otherwise."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl)
            pass


def _as_completed(futures):
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(futures, return_when=FIRST_COMPLETED)
    return done


def _scheduler_workers() -> int:
    """Blocks to keep in flight: the threads of the current distributed client, if there is one
    (never made here: ``get_client`` inside a task would make one, and a task that submits to its
    own single-threaded worker waits forever), 2 inside a worker's task, else the CPU count."""
    import os

    try:
        from distributed import default_client, get_worker
    except ImportError:
        return os.cpu_count() or 2
    try:
        get_worker()
        return 2  # a task on a worker: its blocks are computed here, by dask's threads
    except ValueError:
        pass
    try:
        return max(1, sum(default_client().nthreads().values()))
    except ValueError:  # no client: dask's threads
        return os.cpu_count() or 2


def _permute(F_iw, F_w, F_n, F_x, perms, shape):
    """Stage 2: the sums over each canonical point's distinct P-images, plane by plane of x0 (on
    a few threads): first each plane's canonical points with a valid voxel (int16), then the
    outputs filled in place: index uint16 (int32 on axes over 65,535 points), sums float64,
    count int32; ``w`` None where the weights are binary (it equals the count)."""
    A = F_iw.shape
    # a canonical x is the lexicographic maximum of its images: x0 ≥ x_j for every axis j that
    # some permutation brings to the front, so plane x0 only holds candidates with those x_j ≤ x0
    front = sorted({p[0] for p in perms} - {0})

    def candidates(a0):
        lim = [A[1], A[2]]
        for j in front:
            lim[j - 1] = min(lim[j - 1], a0 + 1)
        x1, x2 = np.meshgrid(np.arange(lim[0]), np.arange(lim[1]), indexing="ij")
        pts = np.stack([np.full(x1.size, a0), x1.ravel(), x2.ravel()])
        canonical = np.ones(pts.shape[1], dtype=bool)
        stab = np.zeros(pts.shape[1], dtype=np.int64)
        for p in perms:
            img = pts[list(p)]
            greater = (img[0] > pts[0]) | ((img[0] == pts[0]) & ((img[1] > pts[1]) | ((img[1] == pts[1])
                                                                                     & (img[2] > pts[2]))))
            canonical &= ~greater
            stab += np.all(img == pts, axis=0)
        pts, stab = pts[:, canonical], stab[canonical]
        return pts, stab

    def F_n_orbit(pts):
        return sum(F_n[tuple(pts[list(p)])].astype(np.int64) for p in perms)

    small = np.int16 if max(A) <= np.iinfo(np.int16).max else np.int32

    def plane(a0):  # the canonical points of plane a0 with a valid voxel in their orbit
        pts, _ = candidates(a0)
        return pts[:, F_n_orbit(pts) > 0].astype(small)

    # the planes are independent (numpy releases the GIL in their gathers and comparisons): threads
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(plane, range(A[0])))
    sizes = [c.shape[1] for c in found]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(starts[-1])
    index = np.empty((total, 3), dtype=np.uint16 if max(shape) <= np.iinfo(np.uint16).max else np.int32)
    sums = {"I_w": np.empty(total), "w": None if F_w is None else np.empty(total)}
    count = np.empty(total, dtype=np.int32)  # ≤ |G| valid voxels per orbit
    extra = None if F_x is None else np.empty(total)

    def fill(a0):
        pts = found[a0].astype(np.intp)
        found[a0] = None  # each plane's points are freed as they are used
        sl = slice(int(starts[a0]), int(starts[a0 + 1]))
        stab = sum(np.all(pts[list(p)] == pts, axis=0).astype(np.int64) for p in perms)  # images equal to x
        imgs = [tuple(pts[list(p)]) for p in perms]
        sums["I_w"][sl] = sum(F_iw[i].astype(np.float64) for i in imgs) / stab
        count[sl] = sum(F_n[i].astype(np.int64) for i in imgs) // stab
        if F_w is not None:
            sums["w"][sl] = sum(F_w[i].astype(np.float64) for i in imgs) / stab
        if F_x is not None:
            extra[sl] = sum(F_x[i].astype(np.float64) for i in imgs) / stab
        for a in range(3):
            index[sl, a] = _negative_index(pts[a], shape[a])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fill, range(A[0])))
    found.clear()
    _release_freed_memory()
    return {"index": index, "I_w": sums["I_w"], "w": sums["w"], "count": count, "extra": extra}


def _negative_index(a, n):
    """Grid index of the point at folded index ``a`` on the side ≤ 0 of an axis of ``n`` points."""
    c = n // 2
    return c - a if n % 2 else c - 1 - a
