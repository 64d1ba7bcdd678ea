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

from ._data import epoch_batches, take
from ._losses import float32, split_loss
from ._model import ModelFunctions, Start
from ._optim import set_hyperparam
from ._validation import make_validate

LossFn = Callable[[Any, Any], Any]


class LaneState(NamedTuple):
    """Everything one lane carries from epoch to epoch (leading axis ``(lanes,)`` when stacked)."""

    params: Any  # trainable parameters
    opt_state: Any  # optax state; ``hyperparams[name]`` holds the lane's swept value (float32)
    model_state: Any  # batch statistics, NNX RNG streams...: advance in training only
    rng_key: jax.Array  # (2,) uint32 raw key: step keys fold in (epoch, step); seed-only


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
    init_seeds: Callable  # (init_keys (S,), start: Start | None) -> (params, model_state) (S,)
    # (params (S,), model_state (S,), rng_keys (S,), seed_index (L,), values (L,)) -> LaneState
    start_lanes: Callable


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


def _keep_dtypes(new, old):
    """``new`` in the dtypes of ``old``: float32 hyperparameters promote a bf16 optimizer's
    moments, which are stored back in the dtype they started with."""
    return jax.tree.map(lambda n, o: n if n.dtype == o.dtype else n.astype(o.dtype), new, old)


def overlay(fresh, given):
    """``fresh`` with every entry that ``given`` holds replaced (broadcast over the seeds)."""
    if isinstance(given, dict):
        return {k: overlay(v, given[k]) if k in given else v for k, v in fresh.items()}
    return jnp.broadcast_to(jnp.asarray(given, fresh.dtype), fresh.shape)


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
      model: the model's pure functions (init, train-apply, eval-apply).
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

    def loss_terms(outputs, y):
        return jax.tree.map(float32, split_loss(loss_fn(outputs, y)))

    validate = make_validate(model.eval_apply, loss_terms, n_val, eval_batch_size)

    def init_seeds(init_keys, start: Start | None = None):
        params, state = jax.vmap(model.init)(init_keys)
        if start is None:
            return params, state
        return overlay(params, start.params), overlay(state, start.state)

    def start_lane(params, model_state, rng_key, value) -> LaneState:
        opt_state = set_hyperparam(optimizer.init(params), hyperparam, value)
        return LaneState(params, opt_state, model_state, rng_key)

    def start_lanes(seed_params, seed_state, seed_rng_keys, seed_index, values) -> LaneState:
        def of_lane(tree):
            return jax.tree_util.tree_map(lambda a: a[seed_index], tree)

        rng_keys = jax.random.key_data(seed_rng_keys)[seed_index]
        return jax.vmap(start_lane)(of_lane(seed_params), of_lane(seed_state), rng_keys, values)

    def train_step(carry: LaneState, batch):
        x, y, key = batch

        def loss_of(params):
            outputs, model_state = model.train_apply(params, carry.model_state, x, key)
            loss, aux = split_loss(loss_fn(outputs, y))
            return loss, (aux, model_state)

        (loss, (aux, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(carry.params)
        updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        opt_state = _keep_dtypes(opt_state, carry.opt_state)
        params = optax.apply_updates(carry.params, updates)
        step = {"loss": float32(loss), "aux": jax.tree.map(float32, aux), **_step_norms(grads)}
        return LaneState(params, opt_state, model_state, carry.rng_key), step

    def run_lane_epoch(state: LaneState, data_key, epoch, x_train, y_train, x_val, y_val):
        order = epoch_batches(data_key, epoch, n_train, batch_size)
        # a new key at every step, from (seed, epoch, step) alone: a resumed sweep draws the
        # same dropout masks, and every rate of a seed the same ones
        epoch_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng_key), epoch)
        step_keys = jax.vmap(lambda s: jax.random.fold_in(epoch_key, s))(jnp.arange(order.shape[0]))

        def step(carry, inputs):
            indices, key = inputs
            return train_step(carry, (take(x_train, indices), y_train[indices], key))

        before = state.params
        state, steps = jax.lax.scan(step, state, (order, step_keys))
        val_loss, val_aux = validate(state.params, state.model_state, x_val, y_val)
        return state, _epoch_metrics(steps, val_loss, val_aux, before, state.params)

    return Programs(
        init_seeds=init_seeds,
        start_lanes=start_lanes,
        # data and epoch are shared by all lanes: in_axes None keeps one copy on the device
        run_epoch=jax.vmap(run_lane_epoch, in_axes=(0, 0, None, None, None, None, None)),
        lane_epoch=run_lane_epoch,
    )
