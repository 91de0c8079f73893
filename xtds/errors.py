"""Errors and argument checks shared by every layer (the lowest module: it imports nothing of xtds)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["UnstableError", "UnstableResultWarning", "check_temperature", "triple"]


class UnstableError(ValueError):
    """Force constants with imaginary phonon frequencies (a Hessian that is not positive definite)."""


class UnstableResultWarning(UserWarning):
    """A fit ended at force constants with imaginary frequencies (away from the k-points the fit
    itself checks): the result is returned, flagged in ``attrs['stable']``, and should not be used."""


#: The temperatures (K) xtds accepts: from a dilution refrigerator's base to far above every melting
#: point. Outside lie unit mistakes (1e-300 K underflowed the displacements into constants of 1e-8).
T_MIN_K = 1e-3
T_MAX_K = 1e5


def check_temperature(temperature) -> float:
    """The temperature as a positive finite float in K; a ``ValueError`` that says why otherwise.

    The TDS scale rests on k_B T, so a temperature is never guessed.
    """
    if temperature is None:
        raise ValueError("temperature (K) is required: the TDS scale depends on k_B T")
    if isinstance(temperature, (bool, np.bool_)):
        raise ValueError(f"temperature must be a number in K, got {temperature!r}")
    try:
        T = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number in K, got {temperature!r}") from None
    if not (math.isfinite(T) and T > 0):
        raise ValueError(f"temperature must be positive and finite (K), got {temperature!r}")
    if not T_MIN_K <= T <= T_MAX_K:
        raise ValueError(
            f"temperature {T:g} K is outside {T_MIN_K:g}–{T_MAX_K:g} K, the temperatures of a solid xtds accepts: "
            "give the sample temperature in kelvin (not eV, °C or a scale factor)")
    return T


def triple(x, what: str = "sizes") -> tuple[int, int, int]:
    """Three positive integers from one (broadcast to three axes) or three; a ``ValueError``
    naming ``what`` otherwise. The one reading of supercell repeats and mesh sizes."""
    arr = np.asarray(x)
    if arr.ndim > 1 or arr.size not in (1, 3) or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be one positive integer or three, got {x!r}")
    f = np.broadcast_to(arr.astype(float), (3,))
    if not np.all(np.isfinite(f)) or np.any(f < 1) or not np.allclose(f, np.round(f)):
        raise ValueError(f"{what} must be positive integers, got {x!r}")
    return tuple(int(v) for v in np.round(f))
