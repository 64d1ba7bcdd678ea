"""Training in calls of a fixed number of steps, and the per-segment metrics built from them.

One compiled program trains ``chunk`` steps of a lane (a ``lax.scan``); a call that needs
fewer (the end of a validation segment) skips the rest with a ``lax.cond`` whose predicate is
the same for every lane, so skipped steps cost nothing and one program serves every call. The
program does not stack per-step values: it carries running sums (count, sum, the sum of
squared deviations, max), which the host merges over the calls of a segment in float64
(Chan's parallel formula). A segment's metrics are therefore the same whatever the chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ChunkStats(NamedTuple):
    """Running sums over the steps of one call of one lane (``(lanes,)`` when stacked)."""

    count: jax.Array  # int32 steps trained in this call
    loss_sum: jax.Array  # sum of the step losses
    loss_m2: jax.Array  # sum of squared deviations of the step losses from their mean
    first_loss: jax.Array  # loss of the call's first step, before its update
    grad_norm_sum: jax.Array  # sum of the global gradient norms
    grad_norm_max: jax.Array  # max of the global gradient norms
    finite: jax.Array  # bool: every step loss finite
    aux_sum: dict  # name -> sum of an auxiliary loss entry
    module_grad_norm_sum: dict  # module -> sum of its gradient norms


def _zeros(step_shapes) -> ChunkStats:
    zero = jnp.zeros((), jnp.float32)
    like = lambda tree: jax.tree.map(lambda _: zero, tree)
    return ChunkStats(
        count=jnp.zeros((), jnp.int32),
        loss_sum=zero,
        loss_m2=zero,
        first_loss=zero,
        grad_norm_sum=zero,
        grad_norm_max=jnp.full((), -jnp.inf, jnp.float32),
        finite=jnp.ones((), jnp.bool_),
        aux_sum=like(step_shapes["aux"]),
        module_grad_norm_sum=like(step_shapes["module_grad_norm"]),
    )


def _add_step(acc: ChunkStats, step: dict) -> ChunkStats:
    """``acc`` with one more step (Welford's update for the mean and squared deviations)."""
    loss = step["loss"].astype(jnp.float32)
    count = acc.count + 1
    mean = acc.loss_sum / jnp.maximum(acc.count, 1)
    delta = loss - mean
    new_mean = mean + delta / count
    add = lambda total, value: total + value.astype(jnp.float32)
    return ChunkStats(
        count=count,
        loss_sum=acc.loss_sum + loss,
        loss_m2=acc.loss_m2 + delta * (loss - new_mean),
        first_loss=jnp.where(acc.count == 0, loss, acc.first_loss),
        grad_norm_sum=acc.grad_norm_sum + step["grad_norm"],
        grad_norm_max=jnp.maximum(acc.grad_norm_max, step["grad_norm"]),
        finite=acc.finite & jnp.isfinite(loss),
        aux_sum=jax.tree.map(add, acc.aux_sum, step["aux"]),
        module_grad_norm_sum=jax.tree.map(add, acc.module_grad_norm_sum, step["module_grad_norm"]),
    )


def make_chunk(train_step: Callable, chunk: int, always_full: bool = False) -> Callable:
    """``run(state, n_active) -> (state, ChunkStats)`` for one lane.

    Args:
      train_step: ``(state, i) -> (state, step)`` trains the call's ``i``-th step (``i``
        traced); ``step`` holds ``loss``, ``aux``, ``grad_norm`` and ``module_grad_norm``.
      chunk: steps in the compiled scan; ``n_active`` (a traced int, the same for every lane)
        of them train, the rest are skipped.
      always_full: every call trains all ``chunk`` steps (the budget says so): no
        ``lax.cond`` around the step, the plain scan of a hand-written loop.

    """

    def run(state, n_active):
        step_shapes = jax.eval_shape(lambda s: train_step(s, jnp.int32(0))[1], state)

        def body(carry, i):
            def active(carry):
                state, acc = carry
                state, step = train_step(state, i)
                return state, _add_step(acc, step)

            if always_full:
                return active(carry), None
            return jax.lax.cond(i < n_active, active, lambda carry: carry, carry), None

        (state, acc), _ = jax.lax.scan(body, (state, _zeros(step_shapes)), jnp.arange(chunk))
        return state, acc

    return run


# ----------------------------------------------------------------------------- on the host


def as_float64(tree):
    """Every array of ``tree`` as a float64 numpy array (the host's sums and means)."""
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def merge(chunks: Sequence[ChunkStats]) -> dict[str, Any]:
    """A segment's training metrics from the stats of its calls, per lane (host, float64).

    Returns ``train_loss`` (mean step loss), ``first_step_loss``, ``grad_norm``,
    ``grad_norm_max``, ``stability`` (std / |mean| of the step losses), ``finite``,
    ``train_aux`` and ``module_grad_norm`` (means over the steps).
    """
    counts = [np.asarray(c.count, np.float64) for c in chunks]
    n = sum(counts)
    sums = [np.asarray(c.loss_sum, np.float64) for c in chunks]
    mean = sum(sums) / n
    # Chan et al.: squared deviations about each call's mean, moved to the segment's mean
    # (a lane whose loss overflowed to inf has inf - inf there: NaN, flagged by ``finite``)
    with np.errstate(invalid="ignore", over="ignore"):
        m2 = sum(
            np.asarray(c.loss_m2, np.float64) + k * (s / np.maximum(k, 1) - mean) ** 2
            for c, k, s in zip(chunks, counts, sums, strict=True)
        )
    total = lambda field: jax.tree.map(
        lambda *parts: sum(parts) / n, *[as_float64(getattr(c, field)) for c in chunks]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        stability = np.sqrt(np.maximum(m2, 0.0) / n) / (np.abs(mean) + 1e-12)
    return {
        "train_loss": mean,
        "first_step_loss": np.asarray(chunks[0].first_loss, np.float64),
        "grad_norm": total("grad_norm_sum"),
        "grad_norm_max": np.max([np.asarray(c.grad_norm_max, np.float64) for c in chunks], axis=0),
        "stability": stability,
        "finite": np.all([np.asarray(c.finite) for c in chunks], axis=0),
        "train_aux": total("aux_sum"),
        "module_grad_norm": total("module_grad_norm_sum"),
    }
