"""The two scales a sweep spaces its values on, in one place.

A sweep works on an *axis*: the logarithm of the value on a ``"log"`` scale (spacing by
ratios, the usual choice for learning rates and decays), the value itself on a ``"linear"``
one (spacing by differences, e.g. for momentum). Selector, confidence, configuration,
efficiency and figures all place and measure values through these functions.

Python numbers stay Python floats (computed with :mod:`math`, as the selector needs); numpy
values and sequences become float64 numpy values (computed with numpy, as the statistics need).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Scale = Literal["log", "linear"]
SCALES: tuple[Scale, ...] = ("log", "linear")


def check(scale: str, name: str = "scale") -> Scale:
    """``scale`` itself when it is ``"log"`` or ``"linear"``; else a ValueError naming ``name``."""
    if scale not in SCALES:
        raise ValueError(f"{name}: expected one of {SCALES}, got {scale!r}")
    return scale


def to_axis(values, scale: Scale):
    """Values on the sweep's axis: their logarithm on a log scale, themselves on a linear one."""
    if _is_python_number(values):
        return math.log(values) if scale == "log" else float(values)
    array = np.asarray(values, np.float64)
    return np.log(array) if scale == "log" else array


def from_axis(coordinates, scale: Scale):
    """The inverse of :func:`to_axis`."""
    if _is_python_number(coordinates):
        return math.exp(coordinates) if scale == "log" else float(coordinates)
    array = np.asarray(coordinates, np.float64)
    return np.exp(array) if scale == "log" else array


def _is_python_number(value) -> bool:
    # numpy scalars subclass float: they take the numpy path, like arrays
    return isinstance(value, (int, float)) and not isinstance(value, np.generic)


def distance(low: float, high: float, scale: Scale) -> float:
    """How far apart two values are on the axis: a log-ratio, or a difference."""
    return math.log(high / low) if scale == "log" else float(high - low)


def spacing(low: float, high: float, scale: Scale) -> float:
    """The step between two neighbours as a reader gives it: a ratio (log) or a difference.

    >>> spacing(0.01, 0.02, "log"), spacing(0.25, 0.5, "linear")
    (2.0, 0.25)
    """
    return high / low if scale == "log" else high - low


def spaced(low: float, high: float, count: int, scale: Scale) -> tuple[float, ...]:
    """``count`` values evenly spaced on ``scale`` from ``low`` to ``high``, both ends exact.

    >>> [f"{v:.1e}" for v in spaced(1e-5, 1e-2, 5, "log")]
    ['1.0e-05', '5.6e-05', '3.2e-04', '1.8e-03', '1.0e-02']
    """
    if count == 1:
        return (float(low),)
    a, b = to_axis(low, scale), to_axis(high, scale)
    step = (b - a) / (count - 1)
    values = [from_axis(a + i * step, scale) for i in range(count)]
    values[0], values[-1] = float(low), float(high)  # no rounding at the ends
    return tuple(values)


def fill(low: float, high: float, count: int, scale: Scale) -> list[float]:
    """``count`` values evenly spaced on ``scale`` strictly inside ``(low, high)``.

    >>> fill(0.0, 0.9, 2, "linear")
    [0.3, 0.6]
    """
    a, b = to_axis(low, scale), to_axis(high, scale)
    return [from_axis(a + (b - a) * (i + 1) / (count + 1), scale) for i in range(count)]


def grid_size(low: float, high: float, step: float, scale: Scale) -> int:
    """How many values a grid from ``low`` to ``high`` holds, neighbours ``step`` apart
    (a ratio on a log scale, a difference on a linear one), both ends included.

    >>> grid_size(1e-4, 1e-1, 10.0, "log"), grid_size(0.0, 0.9, 0.3, "linear")
    (4, 4)
    """
    width = distance(low, high, scale)
    unit = math.log(step) if scale == "log" else step
    return math.ceil(width / unit - 1e-9) + 1


def midpoints(values, scale: Scale) -> np.ndarray:
    """Halfway between neighbours of sorted ``values``, on the axis (geometric mean on log)."""
    axis = to_axis(np.asarray(values, np.float64), scale)
    return from_axis((axis[:-1] + axis[1:]) / 2, scale)


def padded(low: float, high: float, fraction: float, scale: Scale) -> tuple[float, float]:
    """``[low, high]`` widened by ``fraction`` of its width on the axis at both ends.

    A single value (``low == high``) gets a margin of its own: half of it on either side on a
    linear scale (at least 0.5), a factor of 1.5 on a log one.
    """
    if scale == "log":
        ratio = (high / low) ** fraction if high > low * 1.001 else 1.5
        return low / ratio, high * ratio
    width = (high - low) * fraction if high > low else max(abs(high), 1.0) * 0.5
    return low - width, high + width


def describe_spacing(step: float, scale: Scale) -> str:
    """The spacing of neighbouring values in words.

    >>> describe_spacing(1.25, "log"), describe_spacing(0.05, "linear")
    ('a ratio of 1.25 between neighbours', 'a step of 0.05')
    """
    return (
        f"a ratio of {step:.4g} between neighbours" if scale == "log" else f"a step of {step:.4g}"
    )
