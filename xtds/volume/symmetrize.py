"""Mask-aware Laue symmetrization of a volume on an (H, K, L) grid (numpy, cupy or dask arrays).

    I_sym(h) = Σ_g I(g h) w(g h) / Σ_g w(g h),   w_sym(h) = Σ_g w(g h)

over the exact group, each operation once. w is a weight (NXrefine's ``weights``, or 1 for a valid
voxel and 0 for a masked one): masked voxels are filled from their valid partners, and voxels with
no valid partner stay NaN with weight 0. Because w_sym is invariant, symmetrizing the result again
changes nothing (idempotent).

Dask arrays are symmetrized block by block: the volume is rechunked so that every axis has the same
chunks, symmetric about the centre, and then each output block reads exactly one input block per
operation (a flip and a transpose of it): one task per block, no interpolation, nothing computed
until asked.
"""

from __future__ import annotations

import numpy as np

from xtds.volume.laue_grid import GridOp

__all__ = ["symmetrize_array", "symmetric_chunks"]


def _xp(x):
    try:
        import cupy

        return cupy.get_array_module(x)
    except ImportError:
        return np


def _apply(op: GridOp, block, xp):
    if op.flip_axes:
        block = xp.flip(block, axis=op.flip_axes)
    return xp.transpose(block, op.axes)


def _sym_block(intensity_blocks, weight_blocks, ops):
    """Σ_g over already-gathered blocks; returns a (2, ...) array: symmetrized I and Σw."""
    xp = _xp(intensity_blocks[0])
    num = den = None
    for op, ib, wb in zip(ops, intensity_blocks, weight_blocks):
        w = _apply(op, wb, xp).astype(np.float64)
        iw = xp.where(w > 0, _apply(op, ib, xp).astype(np.float64) * w, 0.0)
        num = iw if num is None else num + iw
        den = w if den is None else den + w
    with np.errstate(invalid="ignore", divide="ignore"):
        out = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), np.nan)
    return xp.stack([out, den])


def symmetric_chunks(n: int, target: int) -> tuple[int, ...]:
    """Chunks of an axis of length ``n``: ``target``-sized blocks mirrored about the centre.

    The centre block takes the remainder (between ``target`` and 3·``target``), so that a flip of
    the axis maps every block onto a block of the same size.
    """
    target = max(1, int(target))
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
    (intensity, weight): float64 arrays of the input's kind, shape (nH, nK, nL).
    """
    if intensity.shape != weight.shape or len(intensity.shape) != 3:
        raise ValueError(f"intensity and weight must be 3-D of the same shape, got {intensity.shape} and {weight.shape}")
    import dask.array as da

    if not isinstance(intensity, da.Array) and not isinstance(weight, da.Array):
        out = _sym_block([intensity] * len(ops), [weight] * len(ops), ops)
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
    name = "xtds-symmetrize-" + tokenize(intensity, weight, ops)
    dsk = {}
    for idx in np.ndindex(*nb):
        src = [op.source_block(idx, nb) for op in ops]
        dsk[(name, 0, *idx)] = (
            _sym_block,
            [(intensity.name, *s) for s in src],
            [(weight.name, *s) for s in src],
            ops,
        )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[intensity, weight])
    meta = np.empty((0, 0, 0, 0), dtype=np.float64)
    if type(intensity._meta).__module__.startswith("cupy"):
        meta = intensity._meta.astype(np.float64).reshape((0, 0, 0, 0))
    out = da.Array(graph, name, ((2,), *chunks), meta=meta)
    return out[0], out[1]
