"""The package's one JSON codec: plain, standard JSON for results and checkpoints alike.

Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (standard
JSON has no such numbers), numpy arrays as ``{"dtype", "shape", "values"}`` records, tuples as
lists, numpy scalars as Python numbers and mapping keys as strings.
"""

from __future__ import annotations

import json
import math

import numpy as np

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ARRAY_KEYS = {"dtype", "shape", "values"}


def read_dict(path: str) -> dict | None:
    """The JSON object in the file at ``path``, or None where there is none to read (missing,
    unreadable, not JSON, not an object): for telling whose a file is, not for loading it."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def encode_float(value: float) -> float | str:
    """A float as JSON allows it: non-finite values become "nan", "inf" or "-inf".

    >>> encode_float(0.5), encode_float(float("-inf"))
    (0.5, '-inf')
    """
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value) -> float:
    """A float written by :func:`encode_float` (a number or one of its three markers)."""
    return float(_NON_FINITE[value] if isinstance(value, str) else value)


def decode_floats(values) -> tuple[float, ...]:
    return tuple(decode_float(v) for v in values)


def encode(value):
    """Plain JSON values: floats through :func:`encode_float`, arrays as typed records.

    >>> encode({"a": (1.0, float("nan")), "b": np.arange(2, dtype=np.int32)})
    {'a': [1.0, 'nan'], 'b': {'dtype': 'int32', 'shape': [2], 'values': [0, 1]}}
    """
    if isinstance(value, (float, np.floating)):
        return encode_float(value)
    if isinstance(value, np.ndarray):
        return {
            "dtype": str(value.dtype),
            "shape": list(value.shape),
            "values": encode(value.reshape(-1).tolist()),
        }
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_array(encoded) -> bool:
    """Whether ``encoded`` is an array record written by :func:`encode`."""
    return isinstance(encoded, dict) and set(encoded) == _ARRAY_KEYS


def decode_array(encoded: dict) -> np.ndarray:
    """The numpy array of an array record written by :func:`encode`."""
    values = [_NON_FINITE[v] if isinstance(v, str) else v for v in encoded["values"]]
    return np.asarray(values, dtype=encoded["dtype"]).reshape(encoded["shape"])
