"""One lock for torch's function transforms (``torch.func.jvp``, ``jacfwd``, ``vmap``, and
``torch.autograd.functional.jacobian(vectorize=True)``).

Their interpreter stack is not thread-safe (torch 2.13: two threads each taking ``jacfwd`` of
their own function get each other's batch sizes, "The expanded size of the tensor (5) must match
the existing size (35)"; plain operations in other threads are unaffected). Fits run in threads
(``fit_series(client="threads")``) therefore take :data:`TRANSFORMS` around every transform: a
re-entrant lock, so that a model evaluated under a Jacobian may use transforms of its own.
"""

from __future__ import annotations

import threading

__all__ = ["TRANSFORMS"]

#: Held around every use of torch's function transforms in xtds (re-entrant).
TRANSFORMS = threading.RLock()
