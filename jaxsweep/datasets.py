"""Small real datasets for demos and tests (scikit-learn's bundled files, no download)."""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits: ``x`` (n, 64) scaled to [0, 1], ``y`` labels.

    Requires the ``examples`` extra (``pip install jaxsweep[examples]``).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as error:
        raise ImportError(
            "the digits data needs scikit-learn: pip install 'jaxsweep[examples]'"
        ) from error
    bunch = _load()
    x = (bunch.data / 16.0).astype(np.float32)
    return x, bunch.target.astype(np.int32)
