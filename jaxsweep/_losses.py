"""The built-in losses, how a loss's return value splits into (loss, aux), and loss selection.

A loss is ``f(outputs, targets)`` returning a scalar, or a dict whose ``"loss"`` entry is
optimised and whose other scalar entries are recorded. ``"auto"`` judges the targets against
the model's outputs: cross-entropy for class labels and one-hot / probability targets, mean
squared error for other float targets. Built-in losses compute in float32. The built-in
cross-entropy on class labels also records the ``accuracy`` (rank by it with
``metric="accuracy", mode="max"``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def float32(value):
    """Losses are computed and recorded in float32 whatever the model's precision (bf16 too)."""
    return jnp.asarray(value).astype(jnp.float32)


def cross_entropy(outputs, targets):
    """Softmax cross-entropy against integer labels, mean over the batch.

    Labels of shape ``(n, 1)`` against outputs ``(n, classes)`` lose their trailing axis.

    >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([[1], [3]]))), 4)
    1.3863
    """
    if targets.ndim == outputs.ndim and targets.shape[-1] == 1:
        targets = targets[..., 0]
    return optax.softmax_cross_entropy_with_integer_labels(
        float32(outputs), targets.astype(jnp.int32)
    ).mean()


def cross_entropy_and_accuracy(outputs, targets):
    """:func:`cross_entropy` as the optimised ``"loss"``, with the ``"accuracy"`` recorded.

    The accuracy is the fraction of examples whose largest output is the label (it carries no
    gradient: the loss that is optimised is the cross-entropy alone).

    >>> terms = cross_entropy_and_accuracy(jnp.array([[2.0, 0.0], [2.0, 0.0]]), jnp.array([0, 1]))
    >>> round(float(terms["loss"]), 4), float(terms["accuracy"])
    (1.1269, 0.5)
    """
    labels = targets[..., 0] if targets.ndim == outputs.ndim and targets.shape[-1] == 1 else targets
    hits = jnp.argmax(outputs, axis=-1) == labels.astype(jnp.int32)
    return {"loss": cross_entropy(outputs, targets), "accuracy": jnp.mean(hits, dtype=jnp.float32)}


def soft_cross_entropy(outputs, targets):
    """Softmax cross-entropy against one-hot or probability targets, mean over the batch."""
    return optax.softmax_cross_entropy(float32(outputs), float32(targets)).mean()


def mean_squared_error(outputs, targets):
    """Mean squared error; a trailing axis of size 1 is matched to 1-D targets.

    >>> float(mean_squared_error(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])))
    2.5
    """
    outputs, targets = float32(outputs), float32(targets)
    if outputs.shape != targets.shape and outputs.size == targets.size:
        outputs = outputs.reshape(targets.shape)
    return jnp.mean((outputs - targets) ** 2)


BUILTIN_LOSSES: dict[str, Callable] = {"cross_entropy": cross_entropy, "mse": mean_squared_error}
LOSS_NAMES = ("auto", *BUILTIN_LOSSES)
# the built-in loss for each kind of target (see :func:`target_kind`)
LOSS_FOR_TARGETS: dict[tuple[str, str], Callable] = {
    # class labels: the accuracy is recorded alongside (``val_accuracy``)
    ("cross_entropy", "labels"): cross_entropy_and_accuracy,
    ("cross_entropy", "probabilities"): soft_cross_entropy,
    ("mse", "labels"): mean_squared_error,
    ("mse", "probabilities"): mean_squared_error,
    ("mse", "values"): mean_squared_error,
}
TARGET_NAMES = {
    "labels": "integer labels",
    "probabilities": "one-hot / probabilities",
    "values": "values",
    "custom": "custom",
}


def split_loss(value) -> tuple[jax.Array, dict]:
    """A loss function's return value as (optimised loss, auxiliary entries).

    >>> split_loss({"loss": 1.0, "penalty": 0.5})
    (1.0, {'penalty': 0.5})
    """
    if isinstance(value, dict):
        aux = {k: v for k, v in value.items() if k != "loss"}
        return value["loss"], aux
    return value, {}


def target_kind(y: np.ndarray, outputs: tuple[int, ...]) -> str:
    """What the targets are, judged against the model's output shape (batch axis first).

    Returns:
      ``"labels"``: integer-valued class indices, one per row of outputs (``outputs ==
      y.shape + (classes,)``, or ``y`` of shape ``(n, 1)`` against ``(n, classes)``);
      ``"probabilities"``: one-hot or soft targets as wide as the outputs, non-negative, rows
      summing to 1; ``"values"``: anything else (regression targets).

    >>> target_kind(np.array([0, 2, 1]), (3, 4)), target_kind(np.eye(4)[[0, 2, 1]], (3, 4))
    ('labels', 'probabilities')
    >>> target_kind(np.array([0.5, 1.5, 2.0]), (3, 1))
    'values'
    """
    y_example, o_example = tuple(y.shape[1:]), tuple(outputs[1:])
    integral = jnp.issubdtype(y.dtype, jnp.integer) or jnp.issubdtype(y.dtype, jnp.bool_)
    if not integral:
        integral = bool(np.all(np.mod(np.asarray(y, np.float64), 1.0) == 0))
    squeezed = y_example[:-1] if y_example[-1:] == (1,) else None
    classes = o_example[-1] if o_example else 0
    if (
        integral
        and classes > 1
        and y_example != o_example
        and o_example[:-1]
        in (
            y_example,
            squeezed,
        )
    ):
        return "labels"
    if y_example == o_example and classes > 1:
        rows = np.asarray(y, np.float64)
        if np.all(rows >= 0) and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-2):
            return "probabilities"
    return "values"


def resolve_loss(
    loss, y_train: np.ndarray, outputs: tuple[int, ...] | None
) -> tuple[Callable, str, str]:
    """The loss function to optimise, its name and the kind of targets, for the record.

    Built-in losses are chosen against the model's output shape ``outputs`` (batch axis
    first): cross-entropy for class labels and for one-hot / probability targets, MSE for
    other float targets; integer labels the outputs cannot score are an error, never a silent
    switch to MSE on logits.

    Args:
      loss: a name of :data:`LOSS_NAMES` or a callable.
      y_train: the training targets.
      outputs: the shape of the model's outputs for a batch (None: not one array).
    """
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__), "custom"
    if not isinstance(loss, str):
        raise TypeError(f"loss: expected a name or a callable, got {type(loss).__name__}")
    if loss not in LOSS_NAMES:
        raise ValueError(f"loss: unknown name {loss!r}; expected one of {LOSS_NAMES} or a callable")
    if outputs is None or len(outputs) < 1:
        raise TypeError(
            f"loss: the built-in {loss!r} needs the model to return one array with a batch "
            "axis; for other outputs pass your own loss function"
        )
    kind = target_kind(y_train, outputs)
    shapes = f"y has shape {y_train.shape} ({y_train.dtype}), the model outputs {outputs}"
    if kind == "labels":
        low, high, classes = int(np.min(y_train)), int(np.max(y_train)), outputs[-1]
        if low < 0 or high >= classes:
            raise ValueError(
                f"loss: y holds class labels from {low} to {high} but the model has {classes} "
                f"outputs per example (one per class: labels 0 to {classes - 1})"
            )
    if loss == "auto":
        integer = jnp.issubdtype(y_train.dtype, jnp.integer) or y_train.dtype == bool
        if kind == "values" and integer:
            raise ValueError(
                f"loss: {shapes}: integer targets read as class labels need one output per "
                "class (e.g. 2 for binary labels); for integer-valued regression targets pass "
                'loss="mse", for one logit per example a loss such as '
                "optax.sigmoid_binary_cross_entropy"
            )
        loss = "mse" if kind == "values" else "cross_entropy"
    if loss == "cross_entropy" and kind == "values":
        raise ValueError(
            "loss: cross_entropy needs integer labels (one output per class) or one-hot / "
            f"probability targets as wide as the outputs; {shapes}"
        )
    if loss == "mse" and np.prod(outputs[1:]) != np.prod(y_train.shape[1:]):
        raise ValueError(f"loss: mse needs outputs shaped like the targets; {shapes}")
    return LOSS_FOR_TARGETS[(loss, kind)], loss, kind


# validation metrics that are better when higher, by name: ranking them with mode "min"
# would pick the worst value
HIGHER_IS_BETTER = frozenset(
    {"accuracy", "acc", "top1", "top5", "f1", "auc", "precision", "recall", "iou", "miou"}
    | {"dice", "bleu", "r2", "map", "top_1_accuracy", "top_5_accuracy"}
)


def check_mode(metric: str, mode: str) -> None:
    """Refuses ranking a metric known to be better when higher with ``mode="min"``.

    >>> check_mode("val_loss", "min"), check_mode("val_accuracy", "max")
    (None, None)
    """
    name = metric.removeprefix("val_").lower()
    if mode == "min" and name in HIGHER_IS_BETTER:
        raise ValueError(
            f"mode: {metric!r} is better when higher, but mode is 'min', which would pick the "
            f"value with the lowest {name}; pass mode='max'"
        )


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
