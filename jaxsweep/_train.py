"""The vmapped training programs: a run of steps of every lane of a stage in one call.

A *lane* is one (hyperparameter value, seed) pair. ``make_programs`` closes over the static
configuration (model, loss, optimizer, batch size) and returns pure functions whose arguments
are arrays only: the swept value lives in each lane's optax state
(``optax.inject_hyperparams``), so every stage of a sweep reuses one compiled program.

Training runs in calls of ``chunk`` steps (:mod:`jaxsweep._segments`); step ``s`` of a lane
takes its batch from row ``s % steps_per_epoch`` of its seed's permutation of epoch
``s // steps_per_epoch`` (:func:`epoch_orders`), so any chunking trains the same batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._data import epoch_batches
from ._losses import split_loss
from ._model import ModelFunctions
from ._optim import set_hyperparam
from ._segments import make_chunk, merge
from ._validation import make_validate

LossFn = Callable[[Any, Any], Any]


class LaneState(NamedTuple):
    """Everything one lane carries from epoch to epoch (leading axis ``(lanes,)`` when stacked)."""

    params: Any  # trainable parameters
    opt_state: Any  # optax state; ``hyperparams[name]`` holds the lane's swept value
    constants: Any  # non-trainable model state, carried unchanged


class EpochMetrics(NamedTuple):
    """One validation segment of one lane (an epoch unless ``eval_every`` says otherwise);
    every field is a scalar (``(lanes,)`` when stacked)."""

    train_loss: jax.Array  # mean of the step losses
    val_loss: jax.Array  # loss on the whole validation set after the segment
    first_step_loss: jax.Array  # loss of the segment's first batch, before its update
    grad_norm_mean: jax.Array  # global gradient norm, mean over steps
    grad_norm_max: jax.Array  # global gradient norm, max over steps
    stability: jax.Array  # std / |mean| of the step losses (0 = perfectly steady)
    diverged: jax.Array  # any NaN/inf loss so far in this epoch or on validation
    train_aux: dict  # name -> mean of an auxiliary loss entry over the steps
    val_aux: dict  # name -> auxiliary entry on the validation set
    module_grad_norm: dict  # top-level module -> gradient norm, mean over steps
    update_ratio: dict  # top-level module -> |update| / |params|, mean over steps


class Programs(NamedTuple):
    """The pure functions a sweep jit-compiles once and calls for every stage."""

    # (state, seed_index (L,), orders (S, spe, B) of this epoch and the next, offset in the
    # epoch, active steps, x_train, y_train) -> (state, ChunkStats)
    train_chunk: Callable
    # the same for batches read from a source: (state, seed_index (L,), x (S, chunk, batch,
    # ...), y, active steps) -> (state, ChunkStats)
    train_batches: Callable
    validate: Callable  # (state, x_val, y_val) -> (val_loss (L,), val_aux {(L,)})
    epoch_orders: Callable  # (seed data keys (S,), epoch) -> (S, steps_per_epoch, batch) int32
    # Parameters depend on the seed alone: a sweep initialises each seed once, then every
    # stage gathers them into its lanes and starts fresh optimizers.
    init_seeds: Callable  # (init_keys (S,)) -> (params, constants), leading axis (S,)
    start_lanes: (
        Callable  # (params (S,), constants (S,), seed_index (L,), values (L,)) -> LaneState
    )


# ----------------------------------------------------------------------------- norms


def _squared_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return sum((jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves), jnp.zeros(()))


def _norm(tree) -> jax.Array:
    return jnp.sqrt(_squared_norm(tree))


def _per_module(tree) -> dict:
    if isinstance(tree, dict):
        return {str(k): v for k, v in tree.items()}
    return {"params": tree}


def _step_norms(grads, updates, params) -> dict:
    """A step's global and per-module gradient norms and per-module update ratios."""
    module_grads, module_updates = _per_module(grads), _per_module(updates)
    module_params = _per_module(params)
    # one pass over the gradients serves both the per-module and the global norm
    grad_squares = {k: _squared_norm(g) for k, g in module_grads.items()}
    return {
        "grad_norm": jnp.sqrt(sum(grad_squares.values(), jnp.zeros(()))),
        "module_grad_norm": {k: jnp.sqrt(v) for k, v in grad_squares.items()},
        "update_ratio": {
            k: _norm(module_updates[k]) / (_norm(module_params[k]) + 1e-12) for k in module_grads
        },
    }


def segment_metrics(chunks, val_loss, val_aux) -> EpochMetrics:
    """One segment's metrics (host arrays, ``(lanes,)``) from its calls' stats and validation."""
    train = merge(chunks)
    val_loss = np.asarray(val_loss, np.float64)
    return EpochMetrics(
        train_loss=train["train_loss"],
        val_loss=val_loss,
        first_step_loss=train["first_step_loss"],
        grad_norm_mean=train["grad_norm_mean"],
        grad_norm_max=train["grad_norm_max"],
        stability=train["stability"],
        diverged=~(train["finite"] & np.isfinite(val_loss)),
        train_aux=train["train_aux"],
        val_aux=jax.tree.map(lambda a: np.asarray(a, np.float64), val_aux),
        module_grad_norm=train["module_grad_norm"],
        update_ratio=train["update_ratio"],
    )


# ----------------------------------------------------------------------------- programs


def make_programs(
    model: ModelFunctions,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    hyperparam: str,
    batch_size: int,
    n_train: int,
    n_val: int,
    eval_batch_size: int,
    chunk: int,
) -> Programs:
    """Builds the pure, vmapped programs of a sweep.

    Args:
      model: the model's pure (init, apply) pair.
      loss_fn: ``(outputs, targets) -> scalar | {"loss": scalar, ...}``.
      optimizer: an optax transformation made by ``optax.inject_hyperparams``.
      hyperparam: the name of the swept entry of ``opt_state.hyperparams``.
      batch_size: examples per step; the last partial batch of an epoch is dropped.
      n_train: number of training examples.
      n_val: number of validation examples.
      eval_batch_size: validation examples per batch through the model; the validation
        loss is the exact example-weighted mean over all of them.
      chunk: training steps per call (at most the steps of an epoch).

    Returns:
      :class:`Programs` whose functions take a leading lane axis on their per-lane arguments;
      wrap them in ``jax.jit`` (the sweep compiles each once).
    """

    def loss_of(params, constants, x, y):
        return split_loss(loss_fn(model.apply(params, constants, x), y))

    validate = make_validate(
        model.apply, lambda outputs, y: split_loss(loss_fn(outputs, y)), n_val, eval_batch_size
    )

    def start_lane(params, constants, value) -> LaneState:
        opt_state = set_hyperparam(optimizer.init(params), hyperparam, value)
        return LaneState(params, opt_state, constants)

    def start_lanes(seed_params, seed_constants, seed_index, values) -> LaneState:
        def of_lane(tree):
            return jax.tree_util.tree_map(lambda a: a[seed_index], tree)

        return jax.vmap(start_lane)(of_lane(seed_params), of_lane(seed_constants), values)

    def train_step(carry: LaneState, batch):
        x, y = batch
        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(
            carry.params, carry.constants, x, y
        )
        updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        step = {"loss": loss, "aux": aux, **_step_norms(grads, updates, carry.params)}
        return LaneState(params, opt_state, carry.constants), step

    steps_per_epoch = n_train // batch_size
    run_chunk = make_chunk(train_step, chunk)

    def train_lane_chunk(state, seed, orders, next_orders, offset, n_active, x_train, y_train):
        def batch_at(i):
            # the call starts ``offset`` steps into an epoch and may run into the next one
            position = offset + i
            row = jnp.where(
                position < steps_per_epoch,
                orders[seed, jnp.minimum(position, steps_per_epoch - 1)],
                next_orders[seed, jnp.maximum(position - steps_per_epoch, 0)],
            )
            return x_train[row], y_train[row]

        return run_chunk(state, batch_at, n_active)

    def train_lane_batches(state, seed, x_batches, y_batches, n_active):
        # batches read on the host for this call: (seeds, chunk, batch, ...)
        return run_chunk(state, lambda i: (x_batches[seed, i], y_batches[seed, i]), n_active)

    def validate_lane(state: LaneState, x_val, y_val):
        return validate(state.params, state.constants, x_val, y_val)

    def epoch_orders(seed_data_keys, epoch):
        return jax.vmap(lambda key: epoch_batches(key, epoch, n_train, batch_size))(seed_data_keys)

    return Programs(
        init_seeds=jax.vmap(model.init),
        start_lanes=start_lanes,
        # data, orders and step counters are shared by all lanes: in_axes None keeps one copy
        train_chunk=jax.vmap(train_lane_chunk, in_axes=(0, 0) + (None,) * 6),
        train_batches=jax.vmap(train_lane_batches, in_axes=(0, 0, None, None, None)),
        validate=jax.vmap(validate_lane, in_axes=(0, None, None)),
        epoch_orders=epoch_orders,
    )
