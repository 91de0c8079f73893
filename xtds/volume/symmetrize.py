"""Mask-aware Laue symmetrization of a volume on an (H, K, L) grid (numpy, cupy or dask arrays).

    I_sym(h) = Σ_g I(g h) w(g h) / Σ_g w(g h),   w_sym(h) = Σ_g w(g h)

over the exact group, each operation once. w is a weight (NXrefine's ``weights``, or 1 for a valid
voxel and 0 for a masked one): masked voxels are filled from their valid partners, and voxels with
no valid partner stay NaN with weight 0. Because w_sym is invariant, symmetrizing the result again
changes nothing (idempotent).

Dask arrays are symmetrized block by block: the volume is rechunked so that every axis has the same
chunks, symmetric about the centre, and then each output block reads exactly one input block per
operation (a flip and a transpose of it). Blocks that read the same inputs (an orbit of blocks) are
made by one task, so each input block is read once and memory stays bounded by one orbit: no
interpolation, nothing computed until asked. Results are float32 for float32 input (the sums are
accumulated in float64), float64 otherwise.
"""

from __future__ import annotations

import operator

import numpy as np

from xtds.volume.arrays import array_module as _xp
from xtds.volume.laue_grid import GatherOp, GridOp

__all__ = ["symmetrize_array", "symmetric_chunks"]


def _apply(op: GridOp | GatherOp, block, xp):
    if isinstance(op, GatherOp):
        return op.apply(block, xp)
    if op.flip_axes:
        block = xp.flip(block, axis=op.flip_axes)
    return xp.transpose(block, op.axes)


def _weighted(intensity, weight):
    """(I·w, w), 0 where w ≤ 0 (so NaN intensities of masked voxels drop out); float32 for
    float32 data (half the memory of an orbit), float64 otherwise. Sums are taken in float64."""
    xp = _xp(intensity)
    dtype = _out_dtype(intensity, weight)
    w = xp.where(weight > 0, weight, 0).astype(dtype)
    return xp.where(w > 0, intensity.astype(dtype) * w, 0).astype(dtype), w


def _sym_block(iw_blocks, w_blocks, ops, dtype):
    """Σ_g over gathered (I·w, w) blocks; returns a (2, ...) array: symmetrized I and Σw."""
    xp = _xp(iw_blocks[0])
    num = xp.zeros(_apply(ops[0], iw_blocks[0], xp).shape, dtype=np.float64)
    den = xp.zeros_like(num)
    for op, ib, wb in zip(ops, iw_blocks, w_blocks, strict=True):
        num += _apply(op, ib, xp)
        den += _apply(op, wb, xp)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), np.nan)
    return xp.stack([out, den]).astype(dtype, copy=False)


def _out_dtype(intensity, weight):
    return np.result_type(intensity.dtype, weight.dtype, np.float32)


def _sym_orbit(intensity_blocks, weight_blocks, srcs, members, ops, nblocks):
    """All output blocks of one orbit of blocks, from the orbit's input blocks (each read once)."""
    where = {s: i for i, s in enumerate(srcs)}
    dtype = _out_dtype(intensity_blocks[0], weight_blocks[0])
    pairs = [_weighted(i, w) for i, w in zip(intensity_blocks, weight_blocks, strict=True)]
    out = []
    for idx in members:
        pos = [where[op.source_block(idx, nblocks)] for op in ops]
        out.append(_sym_block([pairs[p][0] for p in pos], [pairs[p][1] for p in pos], ops, dtype))
    return out


def symmetric_chunks(n: int, target: int) -> tuple[int, ...]:
    """Chunks of an axis of length ``n``: ``target``-sized blocks mirrored about the centre.

    Equal blocks when a divisor of ``n`` lies within 0.6–1.6 × ``target`` (1001 → 13 × 77);
    otherwise the centre block takes the remainder (between ``target`` and 3·``target``). Either
    way a flip of the axis maps every block onto a block of the same size.
    """
    target = max(1, int(target))
    # equal chunks (regular, as zarr wants them) when a divisor of n lies near the target
    for d in sorted(range(max(2, int(0.6 * target)), min(n, int(1.6 * target)) + 1), key=lambda d: abs(d - target)):
        if n % d == 0:
            return (d,) * (n // d)
    if n <= 3 * target:
        return (n,)
    m = (n - target) // (2 * target)
    mid = n - 2 * m * target
    return (target,) * m + (mid,) + (target,) * m


def symmetrize_array(intensity, weight, ops: list[GridOp], chunk: int | None = None):
    """Symmetrize ``intensity`` with weights ``weight`` (same shape (nH, nK, nL)) under ``ops``.

    Parameters
    ----------
    intensity, weight
        numpy, cupy or dask arrays; ``weight`` ≥ 0 (0 = masked). NaN intensities must have weight 0.
    ops
        From :func:`~xtds.volume.laue_grid.grid_operations` (which checks the grid).
    chunk
        Dask only: block edge for the symmetric chunks (default: the input's largest chunk).

    Returns
    -------
    (intensity, weight): arrays of the input's kind, shape (nH, nK, nL), float32 or float64.
    """
    if intensity.shape != weight.shape or len(intensity.shape) != 3:
        raise ValueError("intensity and weight must be 3-D of the same shape, "
                         f"got {intensity.shape} and {weight.shape}")
    import dask.array as da

    lazy = isinstance(intensity, da.Array) or isinstance(weight, da.Array)
    if lazy and any(isinstance(op, GatherOp) for op in ops):
        # operations that mix axes gather from anywhere in the volume: no block-local scheme, so
        # the volume is computed in memory (a hexagonal volume of 10⁸ voxels needs ~2 GB)
        import logging

        logging.getLogger("xtds.volume").info("symmetrizing in memory: the Laue group mixes axes (hexagonal/trigonal)")
        chunks = da.asarray(intensity).chunks
        I_np, w_np = da.compute(da.asarray(intensity), da.asarray(weight))
        I_s, w_s = symmetrize_array(I_np, w_np, ops)
        return da.from_array(I_s, chunks=chunks), da.from_array(w_s, chunks=chunks)
    if not lazy:
        iw, w = _weighted(intensity, weight)
        out = _sym_block([iw] * len(ops), [w] * len(ops), ops, _out_dtype(intensity, weight))
        return out[0], out[1]
    return _symmetrize_dask(da.asarray(intensity), da.asarray(weight), ops, chunk)


def _symmetrize_dask(intensity, weight, ops, chunk):
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if chunk is None:
        chunk = max(max(c) for c in intensity.chunks)
    permutes = any(op.perm != (0, 1, 2) for op in ops)
    if permutes and len(set(intensity.shape)) != 1:
        raise ValueError(f"axes that the group permutes must have equal lengths, got shape {intensity.shape}")
    chunks = tuple(symmetric_chunks(n, chunk) for n in intensity.shape)
    intensity = intensity.rechunk(chunks)
    weight = weight.rechunk(chunks)
    nb = intensity.numblocks
    token = tokenize(intensity, weight, ops)
    name, oname = "xtds-symmetrize-" + token, "xtds-symmetrize-orbit-" + token
    # Output blocks whose sources are the same set of input blocks form an orbit of blocks: one
    # task reads those inputs once and writes all its outputs, so every input block is read by
    # exactly one task and memory stays bounded by one orbit (≤ |G| blocks).
    orbits: dict = {}
    for idx in np.ndindex(*nb):
        srcs = tuple(sorted({op.source_block(idx, nb) for op in ops}))
        orbits.setdefault(srcs, []).append(idx)
    dsk = {}
    for o, (srcs, members) in enumerate(orbits.items()):
        dsk[(oname, o)] = (
            _sym_orbit,
            [(intensity.name, *s) for s in srcs],
            [(weight.name, *s) for s in srcs],
            srcs,
            members,
            ops,
            nb,
        )
        for j, idx in enumerate(members):
            dsk[(name, 0, *idx)] = (operator.getitem, (oname, o), j)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[intensity, weight])
    dtype = _out_dtype(intensity, weight)
    meta = np.empty((0, 0, 0, 0), dtype=dtype)
    if type(intensity._meta).__module__.startswith("cupy"):
        meta = intensity._meta.astype(dtype).reshape((0, 0, 0, 0))
    out = da.Array(graph, name, ((2,), *chunks), meta=meta)
    return out[0], out[1]
