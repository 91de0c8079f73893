"""The array module of a block: numpy, or cupy for cupy arrays (cupy imported only if installed)."""

from __future__ import annotations

import numpy as np

__all__ = ["array_module"]


def array_module(x):
    """``cupy`` when ``x`` is a cupy array, else ``numpy``."""
    try:
        import cupy
    except ImportError:
        return np
    return cupy.get_array_module(x)
