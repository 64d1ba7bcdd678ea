"""The built-in losses, how a loss's return value splits into (loss, aux), and loss selection.

A loss is ``f(outputs, targets)`` returning a scalar, or a dict whose ``"loss"`` entry is
optimised and whose other scalar entries are recorded. ``"auto"`` picks cross-entropy for
integer (or boolean) labels and mean squared error for float targets.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(outputs, targets):
    """Softmax cross-entropy against integer labels, mean over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(
        outputs, targets.astype(jnp.int32)
    ).mean()


def mean_squared_error(outputs, targets):
    """Mean squared error; a trailing axis of size 1 is matched to 1-D targets.

    >>> float(mean_squared_error(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])))
    2.5
    """
    if outputs.shape != targets.shape and outputs.size == targets.size:
        outputs = outputs.reshape(targets.shape)
    return jnp.mean((outputs - targets) ** 2)


BUILTIN_LOSSES: dict[str, Callable] = {"cross_entropy": cross_entropy, "mse": mean_squared_error}
LOSS_NAMES = ("auto", *BUILTIN_LOSSES)


def split_loss(value) -> tuple[jax.Array, dict]:
    """A loss function's return value as (optimised loss, auxiliary entries).

    >>> split_loss({"loss": 1.0, "penalty": 0.5})
    (1.0, {'penalty': 0.5})
    """
    if isinstance(value, dict):
        aux = {k: v for k, v in value.items() if k != "loss"}
        return value["loss"], aux
    return value, {}


def target_kind(y: np.ndarray) -> str:
    """``"classes"`` for integer labels, ``"values"`` for float targets.

    >>> target_kind(np.array([0, 2, 1])), target_kind(np.array([0.5, 1.5]))
    ('classes', 'values')
    """
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        return "classes"
    return "values"


def resolve_loss(loss, y_train: np.ndarray) -> tuple[Callable, str]:
    """The loss function to optimise and its name for the record.

    Args:
      loss: a name of :data:`LOSS_NAMES` or a callable.
      y_train: the training targets (``"auto"`` and ``"cross_entropy"`` look at their dtype).
    """
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__)
    if not isinstance(loss, str):
        raise TypeError(f"loss: expected a name or a callable, got {type(loss).__name__}")
    if loss not in LOSS_NAMES:
        raise ValueError(f"loss: unknown name {loss!r}; expected one of {LOSS_NAMES} or a callable")
    kind = target_kind(y_train)
    if loss == "auto":
        loss = "cross_entropy" if kind == "classes" else "mse"
    if loss == "cross_entropy" and kind != "classes":
        raise ValueError(f"loss: cross_entropy needs integer labels, y has dtype {y_train.dtype}")
    return BUILTIN_LOSSES[loss], loss


def resolve_metric(metric: str, aux_names) -> str:
    """The validation metric that ranks the values, by its recorded name.

    ``"val_loss"`` (or ``"loss"``) is the optimised loss on the validation set; an auxiliary
    entry ``name`` of the loss's dict is ``"val_name"`` (or ``"name"``).

    >>> resolve_metric("accuracy", ("accuracy",)), resolve_metric("val_loss", ())
    ('val_accuracy', 'val_loss')
    """
    known = ("val_loss", *(f"val_{name}" for name in aux_names))
    canonical = metric if metric.startswith("val_") else f"val_{metric}"
    if canonical not in known:
        if metric.startswith("train_"):
            raise ValueError(
                f"metric: {metric!r} is measured on the training batches; the score is "
                f"measured on the validation set: one of {list(known)}"
            )
        raise ValueError(
            f"metric: {metric!r} is not measured; the validation metrics of this loss are "
            f"{list(known)} (auxiliary entries come from a loss returning a dict, e.g. "
            '{"loss": ..., "accuracy": ...})'
        )
    return canonical
