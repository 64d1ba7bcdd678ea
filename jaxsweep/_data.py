"""Data checks, the train/validation split, and batch order.

Checks run on the host with numpy before anything is traced, so bad input fails in
milliseconds with a message that names the argument. Batch order is derived from
(seed, epoch) alone: every learning rate of a seed sees the same batches in the same order,
in every stage, however often the sweep was interrupted and resumed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _shuffle, _sources


class Split(NamedTuple):
    """Training and validation data (numpy on the host, or jax arrays on a device).

    Inputs are an array or a tuple / dict of arrays (the model receives the same structure);
    every array has the examples on its leading axis.
    """

    x_train: Any  # (n_train, ...) inputs, or a tuple / dict of them
    y_train: np.ndarray  # (n_train, ...) targets
    x_val: Any  # (n_val, ...) inputs, or a tuple / dict of them
    y_val: np.ndarray  # (n_val, ...) targets


def _is_structure(value) -> bool:
    """Tuples and dicts hold several inputs; a list is read as one array, as numpy does."""
    return isinstance(value, (tuple, dict))


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"data: {name} must be an array, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"data: {name} could not be read as an array ({error})") from None
    # jnp.issubdtype knows bfloat16 and the other low-precision floats numpy does not
    if array.dtype == object or not (
        jnp.issubdtype(array.dtype, jnp.number) or jnp.issubdtype(array.dtype, jnp.bool_)
    ):
        raise TypeError(f"data: {name} must be numeric, got dtype {array.dtype}")
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        # the loss, its gradients and the validation metric are real: a complex array would
        # be cast (or fail deep inside a traced program) with its imaginary part dropped
        raise ValueError(
            f"data: {name} is complex (dtype {array.dtype}); training takes real arrays, so "
            "its imaginary part would be lost. Pass the real and imaginary parts as real "
            "features instead (e.g. np.stack([a.real, a.imag], axis=-1))"
        )
    return array


def _as_inputs(value, name: str):
    """x as an array or a (nested) tuple / dict of arrays."""
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"data: {name} is an empty dict")
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"data: the keys of {name} must be strings, got {key!r}")
        return {k: _as_inputs(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        if not value:
            raise ValueError(f"data: {name} is an empty tuple")
        return tuple(_as_inputs(v, f"{name}[{i}]") for i, v in enumerate(value))
    return _as_array(value, name)


def leaves_with_names(tree, name: str) -> list[tuple[str, np.ndarray]]:
    """Every array of an input structure with a readable name (``x['image']``, ``x[0]``)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(name + jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def examples(tree) -> int:
    """The number of examples of an input structure (its arrays agree, as checked)."""
    return len(jax.tree_util.tree_leaves(tree)[0])


def take(tree, index):
    """The same examples (an index array or a slice) of every array of a structure."""
    return jax.tree.map(lambda a: a[index], tree)


def shapes(tree) -> Any:
    """Per-example shapes of an input structure, JSON-ready: lists, and dicts for dicts."""
    if isinstance(tree, dict):
        return {k: shapes(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return [shapes(v) for v in tree]
    return list(np.shape(tree)[1:])


def _check_pair(pair, part: str) -> tuple[Any, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"data: {part} must be a pair (x, y), got {type(pair).__name__}")
    x, y = _as_inputs(pair[0], f"{part} x"), _as_array(pair[1], f"{part} y")
    arrays = [*leaves_with_names(x, f"{part} x"), (f"{part} y", y)]
    for name, array in arrays:
        if array.ndim == 0:
            raise ValueError(f"data: {name} needs a leading example axis")
    if len(y) == 0:
        raise ValueError(f"data: {part} is empty (0 examples)")
    for name, array in arrays[:-1]:
        if len(array) != len(y):
            several = (
                " (several inputs go in a tuple, not a list)" if isinstance(pair[0], list) else ""
            )
            raise ValueError(f"data: {name} has {len(array)} examples but y has {len(y)}{several}")
    for name, array in arrays:
        if jnp.issubdtype(array.dtype, jnp.inexact) and not np.all(np.isfinite(array)):
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
        if shapes(x_train) != shapes(x_val) or y_train.shape[1:] != y_val.shape[1:]:
            raise ValueError(
                f"data: train and val shapes differ: x {shapes(x_train)} vs "
                f"{shapes(x_val)}, y {y_train.shape[1:]} vs {y_val.shape[1:]}"
            )
        return Split(x_train, y_train, x_val, y_val)
    if not isinstance(data, (tuple, list)):
        raise TypeError(
            'data: expected (x, y) or {"train": (x, y), "val": (x, y)}, '
            f"got {type(data).__name__}"
        )
    x, y = _check_pair(data, "data")
    val, train = _split_indices(len(y), validation_fraction, seed)
    return Split(take(x, train), y[train], take(x, val), y[val])


def _split_indices(n: int, validation_fraction: float, seed: int):
    """``(validation, training)`` indices of ``n`` examples: a permutation drawn from ``seed``."""
    n_val = int(round(n * validation_fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"validation_fraction: {validation_fraction} of {n} examples leaves "
            f"{n_val} for validation and {n - n_val} for training; both need at least 1"
        )
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_val], order[n_val:]


def _split_source(source, validation_fraction: float, seed: int) -> Split:
    """A source split like arrays: the same permutation of indices; the validation part read."""
    val, train = _split_indices(len(source), validation_fraction, seed)
    x_val, y_val = _check_pair(_sources.read_all(_sources.Subset(source, val), "val"), "val")
    x_train, y_train = _sources.training_columns(_sources.Subset(source, train))
    return Split(x_train, y_train, x_val, y_val)


def to_device(split: Split) -> Split:
    """Places the arrays on the default device once (float64 narrowed to JAX's default)."""
    return Split(*jax.tree.map(jnp.asarray, tuple(split)))


def epoch_batches(data_key: jax.Array, epoch, n_train: int, batch_size: int) -> jax.Array:
    """Index matrix ``(steps, batch_size)`` of one epoch: a permutation, remainder dropped
    (beyond ``_shuffle.PERMUTATION_MAX`` examples, the keyed order of :mod:`jaxsweep._shuffle`).

    The order depends on (data key, epoch) alone: the data key is the seed's, so every value
    of a seed sees the same batches, in every stage and after any resume.

    >>> epoch_batches(jax.random.key(0), 0, n_train=10, batch_size=4).shape
    (2, 4)
    """
    steps = n_train // batch_size
    if not _shuffle.uses_permutation(n_train):  # a large epoch: the keyed order's rows
        return _shuffle.batch_rows(data_key, epoch, jnp.arange(steps), n_train, batch_size)
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch), n_train)
    return order[: steps * batch_size].reshape(steps, batch_size)
