"""The vmapped training program: one epoch of every lane of a stage in a single call.

A *lane* is one (hyperparameter value, seed) pair. ``make_programs`` closes over the static
configuration (model, loss, optimizer, batch size) and returns pure functions whose arguments
are arrays only: the swept value lives in each lane's optax state
(``optax.inject_hyperparams``), so every stage of a sweep reuses one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._data import epoch_batches
from ._losses import split_loss
from ._model import ModelFunctions
from ._optim import set_hyperparam
from ._validation import make_validate

LossFn = Callable[[Any, Any], Any]


class LaneState(NamedTuple):
    """Everything one lane carries from epoch to epoch (leading axis ``(lanes,)`` when stacked)."""

    params: Any  # trainable parameters
    opt_state: Any  # optax state; ``hyperparams[name]`` holds the lane's swept value
    constants: Any  # non-trainable model state, carried unchanged


class EpochMetrics(NamedTuple):
    """One epoch of one lane; every field is a scalar (``(lanes,)`` when stacked)."""

    train_loss: jax.Array  # mean of the step losses
    val_loss: jax.Array  # loss on the whole validation set after the epoch
    first_step_loss: jax.Array  # loss of the epoch's first batch, before its update
    grad_norm_mean: jax.Array  # global gradient norm, mean over steps
    grad_norm_max: jax.Array  # global gradient norm, max over steps
    stability: jax.Array  # std / |mean| of the step losses (0 = perfectly steady)
    diverged: jax.Array  # any NaN/inf loss so far in this epoch or on validation
    train_aux: dict  # name -> mean of an auxiliary loss entry over the steps
    val_aux: dict  # name -> auxiliary entry on the validation set
    module_grad_norm: dict  # top-level module -> gradient norm, mean over steps
    update_ratio: dict  # top-level module -> |params after - before| / |before|, over the epoch


class Programs(NamedTuple):
    """The pure functions a sweep jit-compiles once and calls for every stage."""

    run_epoch: Callable  # (state, data_keys (L,), epoch, x_tr, y_tr, x_val, y_val) -> ...
    # One lane's epoch, unbatched: a lane strategy (``_lanes``) decides how lanes run it.
    lane_epoch: Callable  # (state, data_key, epoch, x_tr, y_tr, x_val, y_val) -> ...
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


def _step_norms(grads) -> dict:
    """A step's global and per-module gradient norms, from one pass over the gradients.

    The gradients are in hand; update ratios come from the parameters' change over the epoch
    (:func:`_update_ratios`), so a step reads no extra copy of the updates or parameters.
    """
    grad_squares = {k: _squared_norm(g) for k, g in _per_module(grads).items()}
    return {
        "grad_norm": jnp.sqrt(sum(grad_squares.values(), jnp.zeros(()))),
        "module_grad_norm": {k: jnp.sqrt(v) for k, v in grad_squares.items()},
    }


def _update_ratios(before, after) -> dict:
    """Per module, |parameters after an epoch - before| / |before|: one pass per epoch."""
    change = _per_module(jax.tree_util.tree_map(jnp.subtract, after, before))
    start = _per_module(before)
    return {k: _norm(change[k]) / (_norm(start[k]) + 1e-12) for k in change}


def _epoch_metrics(steps: dict, val_loss, val_aux, before, after) -> EpochMetrics:
    """One lane's epoch from its stacked step records, its validation loss, and its
    parameters before and after the epoch."""
    losses = steps["loss"]
    mean_loss = jnp.mean(losses)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(val_loss)
    return EpochMetrics(
        train_loss=mean_loss,
        val_loss=val_loss,
        first_step_loss=losses[0],
        grad_norm_mean=jnp.mean(steps["grad_norm"]),
        grad_norm_max=jnp.max(steps["grad_norm"]),
        stability=jnp.std(losses) / (jnp.abs(mean_loss) + 1e-12),
        diverged=~finite,
        train_aux=jax.tree_util.tree_map(jnp.mean, steps["aux"]),
        val_aux=val_aux,
        module_grad_norm=jax.tree_util.tree_map(jnp.mean, steps["module_grad_norm"]),
        update_ratio=_update_ratios(before, after),
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
        step = {"loss": loss, "aux": aux, **_step_norms(grads)}
        return LaneState(params, opt_state, carry.constants), step

    def run_lane_epoch(state: LaneState, data_key, epoch, x_train, y_train, x_val, y_val):
        order = epoch_batches(data_key, epoch, n_train, batch_size)

        def step(carry, indices):
            return train_step(carry, (x_train[indices], y_train[indices]))

        before = state.params
        state, steps = jax.lax.scan(step, state, order)
        val_loss, val_aux = validate(state.params, state.constants, x_val, y_val)
        return state, _epoch_metrics(steps, val_loss, val_aux, before, state.params)

    return Programs(
        init_seeds=jax.vmap(model.init),
        start_lanes=start_lanes,
        # data and epoch are shared by all lanes: in_axes None keeps one copy on the device
        run_epoch=jax.vmap(run_lane_epoch, in_axes=(0, 0, None, None, None, None, None)),
        lane_epoch=run_lane_epoch,
    )
