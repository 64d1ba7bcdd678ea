"""Data checks, the train/validation split, and batch order.

Checks run on the host with numpy before anything is traced, so bad input fails in
milliseconds with a message that names the argument. Batch order is derived from
(seed, epoch) alone: every learning rate of a seed sees the same batches in the same order,
in every stage, however often the sweep was interrupted and resumed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _sources


class Split(NamedTuple):
    """Training and validation arrays (numpy on the host, or jax arrays on a device)."""

    x_train: np.ndarray  # (n_train, ...) inputs
    y_train: np.ndarray  # (n_train, ...) targets
    x_val: np.ndarray  # (n_val, ...) inputs
    y_val: np.ndarray  # (n_val, ...) targets


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"data: {name} must be an array, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"data: {name} could not be read as an array ({error})") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise TypeError(f"data: {name} must be numeric, got dtype {array.dtype}")
    return array


def _check_pair(pair, part: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"data: {part} must be a pair (x, y), got {type(pair).__name__}")
    x, y = _as_array(pair[0], f"{part} x"), _as_array(pair[1], f"{part} y")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"data: {part} x and y need a leading example axis")
    if len(x) == 0:
        raise ValueError(f"data: {part} is empty (0 examples)")
    if len(x) != len(y):
        raise ValueError(f"data: {part} x has {len(x)} examples but y has {len(y)}")
    for name, array in ((f"{part} x", x), (f"{part} y", y)):
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise ValueError(f"data: {name} contains {bad} NaN or infinite values")
    return x, y


def prepare(data, validation_fraction: float, seed: int) -> Split:
    """Checks ``data`` and returns a train/validation split.

    Args:
      data: ``(x, y)``, from which a validation part is split off, or
        ``{"train": (x, y), "val": (x, y)}``.
      validation_fraction: share of ``(x, y)`` held out when no ``"val"`` is given.
      seed: the split is a permutation drawn from this seed, so it is reproducible.
    """
    if _sources.is_source(data):
        return _split_source(data, validation_fraction, seed)
    if isinstance(data, dict):
        unknown = set(data) - {"train", "val"}
        if unknown or "train" not in data or "val" not in data:
            raise ValueError(
                f'data: a dict needs exactly the keys "train" and "val", got {sorted(data)}'
            )
        if _sources.is_source(data["train"]):
            x_train, y_train = _sources.training_columns(data["train"])
        else:
            x_train, y_train = _check_pair(data["train"], "train")
        val = data["val"]
        if _sources.is_source(val):  # validated many times: read once, kept as arrays
            val = _sources.read_all(val, "val")
        x_val, y_val = _check_pair(val, "val")
        if x_train.shape[1:] != x_val.shape[1:] or y_train.shape[1:] != y_val.shape[1:]:
            raise ValueError(
                f"data: train and val shapes differ: x {x_train.shape[1:]} vs "
                f"{x_val.shape[1:]}, y {y_train.shape[1:]} vs {y_val.shape[1:]}"
            )
        return Split(x_train, y_train, x_val, y_val)
    if not isinstance(data, (tuple, list)):
        raise TypeError(
            'data: expected (x, y) or {"train": (x, y), "val": (x, y)}, '
            f"got {type(data).__name__}"
        )
    x, y = _check_pair(data, "data")
    n_val = int(round(len(x) * validation_fraction))
    if n_val < 1 or n_val >= len(x):
        raise ValueError(
            f"validation_fraction: {validation_fraction} of {len(x)} examples leaves "
            f"{n_val} for validation and {len(x) - n_val} for training; both need at least 1"
        )
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return Split(x[train], y[train], x[val], y[val])


def _split_source(source, validation_fraction: float, seed: int) -> Split:
    """A source split like arrays: the same permutation of indices; the validation part read."""
    n = len(source)
    n_val = int(round(n * validation_fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"validation_fraction: {validation_fraction} of {n} examples leaves "
            f"{n_val} for validation and {n - n_val} for training; both need at least 1"
        )
    order = np.random.default_rng(seed).permutation(n)
    x_val, y_val = _check_pair(
        _sources.read_all(_sources.Subset(source, order[:n_val]), "val"), "val"
    )
    x_train, y_train = _sources.training_columns(_sources.Subset(source, order[n_val:]))
    return Split(x_train, y_train, x_val, y_val)


def to_device(split: Split) -> Split:
    """Places the arrays on the default device once (float64 narrowed to JAX's default)."""
    return Split(*(jnp.asarray(a) for a in split))


def epoch_batches(data_key: jax.Array, epoch, n_train: int, batch_size: int) -> jax.Array:
    """Index matrix ``(steps, batch_size)`` of one epoch: a permutation, remainder dropped.

    The order depends on (data key, epoch) alone: the data key is the seed's, so every value
    of a seed sees the same batches, in every stage and after any resume.

    >>> epoch_batches(jax.random.key(0), 0, n_train=10, batch_size=4).shape
    (2, 4)
    """
    steps = n_train // batch_size
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch), n_train)
    return order[: steps * batch_size].reshape(steps, batch_size)
