"""The training programs: a run of steps of one lane, then (at a validation) its metrics.

A *lane* is one (hyperparameter value, seed) pair. ``make_programs`` closes over the static
configuration (model, loss, optimizer, batch size, steps per call) and returns pure functions
whose arguments are arrays only: the swept value lives in each lane's optax state
(``optax.inject_hyperparams``), so every stage of a sweep reuses one compiled program. A lane
strategy (:mod:`jaxsweep._lanes`) decides how the lanes of a stage run the one-lane call.

Training runs in calls of ``budget.chunk`` steps (:mod:`jaxsweep._segments`); step ``s`` of a
lane takes its batch from row ``s % steps_per_epoch`` of its seed's permutation of epoch
``s // steps_per_epoch`` (:func:`jaxsweep._data.epoch_batches`) and its random key from
(seed, epoch, step in the epoch), so any chunking trains the same batches with the same keys.
The call that ends a validation segment also validates (a ``lax.cond`` on a flag shared by
every lane): by default one call per epoch, one dispatch and one fetch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._budget import Budget
from ._data import epoch_batches, take
from ._losses import float32, split_loss
from ._model import ModelFunctions, Start
from ._optim import set_hyperparam
from ._segments import ChunkStats, as_float64, make_chunk, merge
from ._shuffle import batch_rows, uses_permutation
from ._validation import make_validate, make_validate_examples

LossFn = Callable[[Any, Any], Any]


class LaneState(NamedTuple):
    """Everything one lane carries from epoch to epoch (leading axis ``(lanes,)`` when stacked)."""

    params: Any  # trainable parameters
    opt_state: Any  # optax state; ``hyperparams[name]`` holds the lane's swept value (float32)
    model_state: Any  # batch statistics, NNX RNG streams...: advance in training only
    rng_key: jax.Array  # (2,) uint32 raw key: step keys fold in (epoch, step); seed-only


class SegmentMetrics(NamedTuple):
    """One validation segment of one lane (an epoch unless ``eval_every`` says otherwise);
    every field is a scalar (``(lanes,)`` when stacked)."""

    train_loss: jax.Array  # mean of the step losses
    val_loss: jax.Array  # loss on the whole validation set after the segment
    first_step_loss: jax.Array  # loss of the segment's first batch, before its update
    grad_norm: jax.Array  # global gradient norm, mean over steps
    grad_norm_max: jax.Array  # global gradient norm, max over steps
    stability: jax.Array  # std / |mean| of the step losses (0 = perfectly steady)
    diverged: jax.Array  # any NaN/inf loss in this segment or on validation
    train_aux: dict  # name -> mean of an auxiliary loss entry over the steps
    val_aux: dict  # name -> auxiliary entry on the validation set
    module_grad_norm: dict  # top-level module -> gradient norm, mean over steps
    update_ratio: dict  # top-level module -> |params after - before| / |before|, over the segment


class Evaluation(NamedTuple):
    """What a call that ends a segment measures (zeros from the other calls: never read)."""

    val_loss: jax.Array  # example-weighted mean over the whole validation set
    val_aux: dict  # name -> auxiliary loss entry on the validation set
    update_ratio: dict  # module -> |params after the segment - before| / |before|


class CallOutput(NamedTuple):
    stats: ChunkStats  # running sums over the call's steps
    evaluation: Evaluation


class Packing(NamedTuple):
    """A call's per-lane metrics packed into one float32 vector: one transfer per call,
    however many metrics and modules (on an accelerator each fetched array costs a round
    trip). Every metric is a per-lane scalar; counts and flags survive float32 exactly."""

    treedef: Any
    dtypes: tuple

    @staticmethod
    def of(output_shapes) -> Packing:
        leaves, treedef = jax.tree.flatten(output_shapes)
        if any(leaf.shape != () for leaf in leaves):
            raise ValueError("a lane's call must return scalar metrics")
        return Packing(treedef, tuple(leaf.dtype for leaf in leaves))

    def pack(self, output) -> jax.Array:
        return jnp.stack([jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(output)])

    def unpack(self, packed: np.ndarray):
        """``(lanes, metrics)`` on the host -> the call's output with ``(lanes,)`` leaves."""
        columns = [packed[:, k].astype(dtype) for k, dtype in enumerate(self.dtypes)]
        return jax.tree.unflatten(self.treedef, columns)


def packed_call(lane_call: Callable, lane_args: tuple, shared: tuple) -> tuple[Callable, Packing]:
    """``lane_call`` returning ``(state, packed metrics)``, and how to unpack them.

    ``lane_args`` and ``shared`` are shapes: the lane arguments with their lane axis.
    """
    one_lane = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), lane_args)
    plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), shared)
    packing = Packing.of(jax.eval_shape(lane_call, *one_lane, *plain)[1])

    def call(*args):
        state, output = lane_call(*args)
        return state, packing.pack(output)

    return call, packing


# The arguments of a one-lane call: the first three have a lane axis when stacked, the rest
# are shared by every lane of the stage (one copy on each device).
LANE_ARGUMENTS = 3  # state, the parameters at the segment's start, the lane's data input
SHARED_ARGUMENTS = 8  # epoch, offset, active steps, validate?, train a, train b, x_val, y_val


class Programs(NamedTuple):
    """The pure functions a sweep jit-compiles once and calls for every stage."""

    # One lane's call, unbatched: a lane strategy (``_lanes``) decides how lanes run it.
    # (state, params at the segment's start, data key, epoch, offset in the epoch, active
    # steps, validate?, x_train, y_train, x_val, y_val) -> (state, CallOutput)
    lane_call: Callable
    # The same for batches read from a source on the host: the data input is the lane's seed
    # index, and x_train, y_train are the call's batches, ``(seeds, chunk, batch, ...)``.
    lane_call_batches: Callable
    epoch_orders: Callable  # (seed data keys (S,), epoch) -> (S, steps_per_epoch, batch) int32
    # the same rows alone, for an epoch too large for one permutation (``_shuffle``):
    # (seed data keys (S,), epoch, rows (R,)) -> (S, R, batch) int32
    order_rows: Callable
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


# diagnostics=False: no norm is computed; NaN says "not measured", never a real value
_NOT_MEASURED = {"grad_norm": np.float32(np.nan), "module_grad_norm": {}}


def _update_ratios(before, after) -> dict:
    """Per module, |parameters after a segment - before| / |before|: one pass per segment."""
    change = _per_module(jax.tree_util.tree_map(jnp.subtract, after, before))
    start = _per_module(before)
    return {k: _norm(change[k]) / (_norm(start[k]) + 1e-12) for k in change}


def segment_metrics(calls: list[ChunkStats], evaluation: Evaluation) -> SegmentMetrics:
    """One segment's metrics (host arrays, ``(lanes,)``) from its calls' stats and the
    evaluation of its last call."""
    train = merge(calls)
    val_loss = np.asarray(evaluation.val_loss, np.float64)
    return SegmentMetrics(
        train_loss=train["train_loss"],
        val_loss=val_loss,
        first_step_loss=train["first_step_loss"],
        grad_norm=train["grad_norm"],
        grad_norm_max=train["grad_norm_max"],
        stability=train["stability"],
        diverged=~(train["finite"] & np.isfinite(val_loss)),
        train_aux=train["train_aux"],
        val_aux=as_float64(evaluation.val_aux),
        module_grad_norm=train["module_grad_norm"],
        update_ratio=as_float64(evaluation.update_ratio),
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


def _each_example(evaluate: Callable) -> Callable:
    """A Training's ``eval_step`` (means over a batch) on each example alone: the exact
    example-weighted mean over the validation set, a padded last batch included."""

    def example_terms(state, _constants, x, y):
        def one(xi, yi):
            single = jax.tree.map(lambda a: a[None], (xi, yi))
            return evaluate(state, *single)

        return jax.vmap(one)(x, y)

    return example_terms


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
    budget: Budget,
    diagnostics: bool = True,
) -> Programs:
    """Builds the pure programs of a sweep.

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
      budget: steps per call (``budget.chunk``), steps per epoch, whether calls cross epochs.
      diagnostics: compute gradient norms (every step) and update ratios (every segment);
        without them the norms are NaN and the per-module records empty.

    Returns:
      :class:`Programs`: ``init_seeds`` and ``start_lanes`` work on stacked seeds and lanes;
      the lane calls are one lane's (see :mod:`jaxsweep._lanes`).
    """

    own = model.own.steps if model.own is not None else None

    def loss_terms(outputs, y):
        return jax.tree.map(float32, split_loss(loss_fn(outputs, y)))

    if own is None:
        validate = make_validate(model.eval_apply, loss_terms, n_val, eval_batch_size)
    else:
        validate = make_validate_examples(_each_example(own.evaluate), n_val, eval_batch_size)

    def measured(params):
        """The parameters whose change the update ratios measure (a Training's lane carries
        its whole state in ``params``: its parameter leaves, by module)."""
        return params if own is None else own.params(params)

    def init_seeds(init_keys, start: Start | None = None):
        params, state = jax.vmap(model.init)(init_keys)
        if start is None:
            return params, state
        return overlay(params, start.params), overlay(state, start.state)

    def start_lane(params, model_state, rng_key, value) -> LaneState:
        if own is not None:  # the user's state holds its optimizer: the value goes in there
            return LaneState(own.set_value(params, value), (), model_state, rng_key)
        opt_state = set_hyperparam(optimizer.init(params), hyperparam, value)
        return LaneState(params, opt_state, model_state, rng_key)

    def start_lanes(seed_params, seed_state, seed_rng_keys, seed_index, values) -> LaneState:
        def of_lane(tree):
            return jax.tree_util.tree_map(lambda a: a[seed_index], tree)

        rng_keys = jax.random.key_data(seed_rng_keys)[seed_index]
        return jax.vmap(start_lane)(of_lane(seed_params), of_lane(seed_state), rng_keys, values)

    def own_step(carry: LaneState, batch):
        x, y, key = batch
        state, loss, aux = own.train(carry.params, x, y, key)
        step = {"loss": loss, "aux": aux, **_NOT_MEASURED}  # the user's step: no gradients seen
        return carry._replace(params=state), step

    def train_step(carry: LaneState, batch):
        if own is not None:
            return own_step(carry, batch)
        x, y, key = batch

        def loss_of(params):
            outputs, model_state = model.train_apply(params, carry.model_state, x, key)
            loss, aux = split_loss(loss_fn(outputs, y))
            return loss, (aux, model_state)

        (loss, (aux, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(carry.params)
        updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        opt_state = _keep_dtypes(opt_state, carry.opt_state)
        params = optax.apply_updates(carry.params, updates)
        norms = _step_norms(grads) if diagnostics else _NOT_MEASURED
        step = {"loss": float32(loss), "aux": jax.tree.map(float32, aux), **norms}
        return LaneState(params, opt_state, model_state, carry.rng_key), step

    steps_per_epoch, crosses = budget.steps_per_epoch, budget.crosses_epochs

    def train_call(state: LaneState, epoch, offset, n_active, batch_of):
        """``n_active`` steps of one lane from step ``offset`` of ``epoch`` (a call may run
        into the next epoch); ``batch_of(i, in_next_epoch, row)`` is the call's ``i``-th batch."""
        rng = jax.random.wrap_key_data(state.rng_key)

        def step(carry: LaneState, i):
            position = offset + i
            next_epoch = position >= steps_per_epoch
            row = jnp.where(next_epoch, position - steps_per_epoch, position)
            # a new key at every step, from (seed, epoch, step) alone: a resumed sweep draws
            # the same dropout masks, and every value of a seed the same ones
            key = jax.random.fold_in(jax.random.fold_in(rng, epoch + next_epoch), row)
            x, y = batch_of(i, next_epoch, row)
            return train_step(carry, (x, y, key))

        return make_chunk(step, budget.chunk, budget.full_calls)(state, n_active)

    def evaluate(state: LaneState, before, validate_now, x_val, y_val) -> Evaluation:
        def measure(_):
            val_loss, val_aux = validate(state.params, state.model_state, x_val, y_val)
            ratios = _update_ratios(measured(before), measured(state.params)) if diagnostics else {}
            return Evaluation(val_loss, val_aux, ratios)

        if budget.one_call_per_segment:  # every call validates: no branch
            return measure(None)
        shapes = jax.eval_shape(measure, None)
        skip = lambda _: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        # the flag is the same for every lane: a real branch under vmap, skipped for free
        return jax.lax.cond(validate_now, measure, skip, None)

    def lane_call(state, before, data_key, epoch, offset, n, validate_now, x_tr, y_tr, x_v, y_v):
        if uses_permutation(n_train):
            order = epoch_batches(data_key, epoch, n_train, batch_size)
            # the next epoch's permutation only where a call can reach it (the budget knows)
            after = epoch_batches(data_key, epoch + 1, n_train, batch_size) if crosses else order

            def rows_of(next_epoch, row):
                return jnp.where(next_epoch, after[row], order[row])
        else:  # a large epoch: each step's batch alone, never the whole order

            def rows_of(next_epoch, row):
                return batch_rows(data_key, epoch + next_epoch, row, n_train, batch_size)

        def batch_of(i, next_epoch, row):
            indices = rows_of(next_epoch, row)
            return take(x_tr, indices), y_tr[indices]

        state, stats = train_call(state, epoch, offset, n, batch_of)
        return state, CallOutput(stats, evaluate(state, before, validate_now, x_v, y_v))

    def lane_call_batches(state, before, seed, epoch, offset, n, validate_now, xb, yb, x_v, y_v):
        def batch_of(i, next_epoch, row):  # read on the host in the call's order
            return take(xb, (seed, i)), yb[seed, i]

        state, stats = train_call(state, epoch, offset, n, batch_of)
        return state, CallOutput(stats, evaluate(state, before, validate_now, x_v, y_v))

    def epoch_orders(seed_data_keys, epoch):
        return jax.vmap(lambda key: epoch_batches(key, epoch, n_train, batch_size))(seed_data_keys)

    def order_rows(seed_data_keys, epoch, rows):
        return jax.vmap(lambda key: batch_rows(key, epoch, rows, n_train, batch_size))(
            seed_data_keys
        )

    return Programs(
        init_seeds=init_seeds,
        start_lanes=start_lanes,
        lane_call=lane_call,
        lane_call_batches=lane_call_batches,
        epoch_orders=epoch_orders,
        order_rows=order_rows,
    )
