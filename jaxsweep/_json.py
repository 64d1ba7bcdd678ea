"""The package's one JSON codec: plain, standard JSON for results and checkpoints alike.

Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (standard
JSON has no such numbers), numpy arrays as ``{"dtype", "shape", "values"}`` records, tuples as
lists, numpy scalars as Python numbers and mapping keys as strings.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ARRAY_KEYS = {"dtype", "shape", "values"}
# lists and objects inside one another: the package's own files nest a few levels (a result's
# x_shape of nested inputs the deepest); far more is no file of ours, and Python's parser and
# every recursive reader after it would fail with a RecursionError
MAX_DEPTH = 64
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')  # strings and structure, for depth


def read_file(path: str | os.PathLike):
    """The JSON value in the file at ``path``.

    Raises:
      OSError: the file cannot be opened or read (FileNotFoundError where there is none).
      ValueError: the file is not JSON (the message names it), or its lists and objects are
        nested more than :data:`MAX_DEPTH` deep (the message names where).
    """
    path = os.fspath(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
        value = json.loads(text)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text: {error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:  # the parser's own limit, near 1000 levels: find where from the text
        raise ValueError(f"{path}: {_too_deep(_deep_field_in_text(text))}") from None
    field = deep_field(value)
    if field is not None:
        raise ValueError(f"{path}: {_too_deep(field)}")
    return value


def read_dict(path: str) -> dict | None:
    """The JSON object in the file at ``path``, or None where there is none to read (missing,
    unreadable, not JSON, nested too deep, not an object): for telling whose a file is, not
    for loading it."""
    try:
        record = read_file(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def deep_field(value, limit: int = MAX_DEPTH) -> str | None:
    """Where ``value`` (parsed JSON) first nests more than ``limit`` lists and objects deep, as
    a short dotted path (``config.x_shape[0][0]...``), or None where it does not.

    Walks without recursion, so any depth is safe to look at.

    >>> deep_field({"a": [[1]]}, limit=2), deep_field({"a": [1]}, limit=2)
    ('a[0]', None)
    """
    stack = [(value, (), 0)]
    while stack:
        node, where, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth >= limit:
            return _dotted(where)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((child, (*where, key), depth + 1) for key, child in items)
    return None


def _deep_field_in_text(text: str, limit: int = MAX_DEPTH) -> str:
    """:func:`deep_field` read from JSON text that is too deep to parse: its keys and list
    positions tracked through the brackets, strings and commas alone."""
    where: list = []  # per open container: the key (None before it) or the list position
    opened: list[str] = []
    key_next = False  # in an object, after "{" or ",": the next string is a key
    for token in _TOKENS.finditer(text):
        symbol = token.group()
        if symbol in ("[", "{"):
            if len(opened) >= limit:
                return _dotted(where)
            opened.append(symbol)
            where.append(0 if symbol == "[" else None)
            key_next = symbol == "{"
        elif symbol in ("]", "}"):
            if opened:
                opened.pop(), where.pop()
            key_next = False
        elif symbol == ",":
            if opened and opened[-1] == "[":
                where[-1] += 1
            key_next = bool(opened) and opened[-1] == "{"
        elif symbol.startswith('"') and key_next:
            where[-1] = json.loads(symbol)
            key_next = False
    return _dotted(where) or "the top level"


def _dotted(where) -> str:
    """A path of keys and positions as ``a.b[0][1]``, cut after a few levels."""
    where = [k for k in where if k is not None]
    shown = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where[:4]).lstrip(".")
    return shown + ("..." if len(where) > 4 else "")


def _too_deep(field: str) -> str:
    return (
        f"{field}: lists and objects nested more than {MAX_DEPTH} levels deep; not a file "
        "jaxsweep wrote"
    )


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
