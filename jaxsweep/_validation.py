"""Validation in batches: the exact example-weighted mean over the whole validation set.

Putting the whole validation set through the model as one batch makes memory grow with its
size (times the lanes of a stage). Here the model sees ``eval_batch_size`` examples at a time
inside a ``lax.scan``; the last, ragged batch is padded with copies of real examples whose
weight is zero, so every example counts exactly once and nothing is dropped. The loss is
evaluated per example (the loss function applied to each example alone, vmapped), then averaged
with the weights: for a loss that is a mean over its batch, as the built-in ones and the usual
custom ones are, this equals the loss of the whole set in one batch up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Validation batches default to at least this many examples (or the training batch size when
# larger): big enough that few batches keep the scan short, small enough that memory stays
# bounded however large the validation set is.
DEFAULT_EVAL_BATCH = 512


class ValidationPlan(NamedTuple):
    """Which examples each validation batch holds, and how much each counts."""

    indices: np.ndarray  # (batches, eval_batch_size) int32 rows of the validation set
    weights: np.ndarray  # (batches, eval_batch_size) float32: 1 for real, 0 for padding


def default_eval_batch_size(n_val: int, batch_size: int) -> int:
    """The eval batch size used when none is given (bounded, never above ``n_val``)."""
    return min(n_val, max(batch_size, DEFAULT_EVAL_BATCH))


def plan(n_val: int, eval_batch_size: int) -> ValidationPlan:
    """Splits ``n_val`` examples into batches of ``eval_batch_size``, the last one padded.

    >>> p = plan(5, 2)
    >>> p.indices.tolist(), p.weights.tolist()
    ([[0, 1], [2, 3], [4, 0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    """
    if n_val < 1 or eval_batch_size < 1:
        raise ValueError(f"n_val and eval_batch_size must be >= 1, got {n_val}, {eval_batch_size}")
    batches = -(-n_val // eval_batch_size)
    flat = np.arange(batches * eval_batch_size)
    real = flat < n_val
    # padding repeats real examples, so the model only ever sees data it can handle
    indices = np.where(real, flat, flat % n_val).astype(np.int32)
    shape = (batches, eval_batch_size)
    return ValidationPlan(indices.reshape(shape), real.astype(np.float32).reshape(shape))


def per_example(loss_terms: Callable) -> Callable:
    """``loss_terms(outputs, targets) -> (loss, aux)`` applied to each example on its own.

    Returns a function of a batch giving ``(losses (B,), {name: (B,)})``.
    """

    def one(outputs, targets):
        single = jax.tree.map(lambda a: a[None], (outputs, targets))
        return loss_terms(*single)

    return jax.vmap(one)


def make_validate(
    predict: Callable, loss_terms: Callable, n_val: int, eval_batch_size: int
) -> Callable:
    """Builds ``validate(params, constants, x_val, y_val) -> (loss, aux)`` over every example.

    Args:
      predict: ``(params, constants, x) -> outputs`` of the model in evaluation mode.
      loss_terms: ``(outputs, targets) -> (scalar loss, {name: scalar})``, means over a batch.
      n_val: number of validation examples (static).
      eval_batch_size: examples per batch through the model (at most ``n_val``).

    Returns:
      A pure function; the loss and each auxiliary entry are example-weighted means.
    """
    losses_of = per_example(loss_terms)

    def example_terms(params, constants, x, y):
        return losses_of(predict(params, constants, x), y)

    return make_validate_examples(example_terms, n_val, eval_batch_size)


def make_validate_examples(example_terms: Callable, n_val: int, eval_batch_size: int) -> Callable:
    """:func:`make_validate` from ``example_terms(params, constants, x, y) -> (losses (B,),
    {name: (B,)})``: each example's loss and metrics in a batch of ``eval_batch_size``."""
    batches = plan(n_val, eval_batch_size)

    def validate(params, constants, x_val, y_val):
        def batch_sums(indices, weights):
            pick = lambda a: jnp.asarray(a)[indices]
            loss, aux = example_terms(
                params, constants, jax.tree.map(pick, x_val), jax.tree.map(pick, y_val)
            )
            terms = {"loss": loss, "aux": aux}
            # where, not a product: a padded copy of a non-finite example must not add NaN twice
            return jax.tree.map(lambda v: jnp.sum(jnp.where(weights > 0, v, 0.0)), terms)

        def step(total, batch):
            sums = batch_sums(*batch)
            return jax.tree.map(jnp.add, total, sums), None

        indices, weights = jnp.asarray(batches.indices), jnp.asarray(batches.weights)
        first = batch_sums(indices[0], weights[0])
        total, _ = jax.lax.scan(step, first, (indices[1:], weights[1:]))
        means = jax.tree.map(lambda s: s / n_val, total)
        return means["loss"], means["aux"]

    return validate
