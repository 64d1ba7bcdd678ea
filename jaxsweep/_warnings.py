"""Warnings that point at the user's call, however deep inside the package they are raised.

Under ``jax.distributed`` every process runs the same sweep and would say the same thing:
only the writer (process 0) warns.
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class SearchRangeWarning(UserWarning):
    """The best value sits on the edge of the searched range; the optimum may lie beyond."""


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside the package (the user's call)."""
    # JAX is imported only here: reading a saved result (which can warn) must not load it
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_index() != 0:
        return
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
