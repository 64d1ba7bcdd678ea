"""Models with state and randomness, mixed precision, structured inputs, targets, pretrained starts.

Every lane is checked against the training loop a Flax user writes by hand: Linen
``apply(..., train=True, mutable=["batch_stats"], rngs={"dropout": ...})`` with plain optax, and
NNX ``nnx.Optimizer`` with ``model.train()`` / ``model.eval()``. The Linen loop follows the
documented key contract: parameters from ``fold_in(per_seed, 0)``, batch order from
``fold_in(fold_in(per_seed, 1), epoch)``, and the random stream ``s`` of step ``t`` of epoch
``e`` from ``fold_in(fold_in(fold_in(fold_in(per_seed, 2), e), t), crc32(s))``, where
``per_seed = fold_in(key(seed), seed_index)``.
"""

import math
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, make_classification
from flax import nnx

import jaxsweep
from jaxsweep import _budget, _checkpoint, _data, _losses, _model, _optim, _stage, _train
from jaxsweep.report import markdown

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")

FULL_BATCH = 192  # the whole training part of split_blobs: one step per epoch
RATES = (3e-3, 3e-2)


def ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def contract_keys(seed: int = 0, seed_index: int = 0):
    per_seed = jax.random.fold_in(jax.random.key(seed), seed_index)
    return tuple(jax.random.fold_in(per_seed, i) for i in range(3))  # init, data, rng


def stream_key(rng_key, epoch: int, step: int, stream: str = "dropout"):
    step_key = jax.random.fold_in(jax.random.fold_in(rng_key, epoch), step)
    return jax.random.fold_in(step_key, zlib.crc32(stream.encode()) & 0x7FFFFFFF)


# ----------------------------------------------------------------------------- models


class BatchNormNet(nn.Module):
    """Dense, BatchNorm, ReLU, Dropout, Dense: the Flax-examples convention of ``train``."""

    dropout: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool = False):
        # no bias before a normalisation: its gradient would be zero up to rounding, which
        # Adam scales up to full-size steps in both loops alike
        x = nn.Dense(16, use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
        return nn.Dense(3)(x)


class NNXBatchNormNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 16, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.8, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x)))))


# ----------------------------------------------------------------------------- canonical loops


def linen_loop(module, lr, data, *, epochs, batch_size, seed=0, variables=None):
    """The hand-written Linen loop: mutable batch_stats, a dropout key per step, plain optax."""
    (x, y), (xv, yv) = data["train"], data["val"]
    init_key, data_key, rng_key = contract_keys(seed)
    if variables is None:
        variables = module.init(init_key, x[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    def loss_fn(params, stats, xb, yb, key):
        logits, updated = module.apply(
            {"params": params, "batch_stats": stats},
            xb,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        return ce(logits, yb), updated["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, xb, yb, key):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    @jax.jit
    def validate(params, stats):
        return ce(module.apply({"params": params, "batch_stats": stats}, xv, train=False), yv)

    train_losses, val_losses = [], []
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x)))
        losses = []
        for t in range(len(x) // batch_size):
            idx = order[t * batch_size : (t + 1) * batch_size]
            key = stream_key(rng_key, epoch, t)
            params, stats, opt_state, loss = step(params, stats, opt_state, x[idx], y[idx], key)
            losses.append(float(loss))
        train_losses.append(float(np.mean(losses)))
        val_losses.append(float(validate(params, stats)))
    return train_losses, val_losses


def nnx_loop(model, lr, data, *, epochs, batch_size, seed=0):
    """The hand-written NNX loop: nnx.Optimizer, model.train() to train, model.eval() to score."""
    (x, y), (xv, yv) = data["train"], data["val"]
    _, data_key, _ = contract_keys(seed)
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        loss, grads = nnx.value_and_grad(lambda m: ce(m(xb), yb))(model)
        optimizer.update(model, grads)
        return loss

    train_losses, val_losses = [], []
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x)))
        model.train()
        losses = []
        for t in range(len(x) // batch_size):
            idx = order[t * batch_size : (t + 1) * batch_size]
            losses.append(float(step(model, optimizer, x[idx], y[idx])))
        model.eval()
        train_losses.append(float(np.mean(losses)))
        val_losses.append(float(ce(model(xv), yv)))
    return train_losses, val_losses


def sweep(model_fn, data, **overrides):
    settings = dict(SMALL, stages=1, points_per_stage=2, lr_range=RATES, batch_size=FULL_BATCH)
    settings.update({"epochs": 3, **overrides})
    return jaxsweep.run(model_fn, data, **settings)


def assert_lanes_match(result, loop, rtol=2e-5):
    for evaluation in result.evaluations:
        train_losses, val_losses = loop(evaluation.lr)
        np.testing.assert_allclose(evaluation.train_loss, train_losses, rtol=rtol)
        np.testing.assert_allclose(evaluation.val_loss, val_losses, rtol=rtol)


# ----------------------------------------------------------------------------- equal to the loop


# every lane strategy carries the batch statistics and draws the masks as vmap does
@pytest.mark.parametrize("lanes", ["vmap", "map", "chunks:1", "separate"])
def test_linen_batchnorm_and_dropout_lanes_equal_the_canonical_loop(split_blobs, lanes):
    result = sweep(lambda: BatchNormNet(), split_blobs, lanes=lanes)
    assert result.environment["lanes"]["strategy"] == lanes
    assert result.config["model_state"] == ["batch_stats"]
    assert result.config["rng_streams"] == ["dropout"]
    assert result.config["model_mode_flag"] == "train"
    assert_lanes_match(
        result,
        lambda lr: linen_loop(BatchNormNet(), lr, split_blobs, epochs=3, batch_size=FULL_BATCH),
    )


@pytest.mark.parametrize("lanes", ["vmap", "separate"])
def test_nnx_batchnorm_and_dropout_lanes_equal_the_canonical_loop(split_blobs, lanes):
    result = sweep(NNXBatchNormNet, split_blobs, lanes=lanes)
    assert "BatchStat" in result.config["model_state"]
    init_key = contract_keys()[0]
    assert_lanes_match(
        result,
        lambda lr: nnx_loop(
            NNXBatchNormNet(nnx.Rngs(init_key)), lr, split_blobs, epochs=3, batch_size=FULL_BATCH
        ),
    )


def test_the_engine_is_not_the_frozen_model(split_blobs):
    """Frozen statistics (train=False throughout) give other losses: the loop test can fail."""
    result = sweep(lambda: BatchNormNet(dropout=0.0), split_blobs, points_per_stage=2)
    frozen = linen_loop(BatchNormNet(dropout=0.0), RATES[0], split_blobs, epochs=3, batch_size=96)
    assert not np.allclose(result.evaluations[0].val_loss, frozen[1], rtol=1e-3)


# ----------------------------------------------------------------------------- masks and modes


class MaskRecorder(nn.Module):
    """Writes its dropout mask of every training step into a collection of its own."""

    steps: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        keep = nn.Dropout(0.5, deterministic=not train)(jnp.ones(32))
        count = self.variable("record", "count", jnp.zeros, (), jnp.int32)
        masks = self.variable("record", "masks", jnp.zeros, (self.steps, 32))
        if train:
            masks.value = masks.value.at[count.value].set(keep)
            count.value = count.value + 1
        return nn.Dense(3)(x * keep[: x.shape[-1]])


def run_lanes(model_fn, data, *, epochs, batch_size, values, seeds):
    """The sweep's own programs on (value x seed) lanes; returns the final lanes and what each
    epoch's validation measured."""
    (x, y), (xv, yv) = data["train"], data["val"]
    model = _model.adapt(model_fn, x[:2])
    tx = _optim.resolve_optimizer(optax.sgd, "learning_rate")
    budget = _budget.make_budget(epochs, None, None, len(x), batch_size)
    programs = _train.make_programs(
        model,
        _losses.cross_entropy,
        tx,
        "learning_rate",
        batch_size,
        len(x),
        len(yv),
        len(yv),
        budget,
    )
    init_keys, _ = _stage.seed_keys(0, seeds)
    rng_keys = _stage.derive_rng_keys(_stage.seed_argument(0), seeds)
    lanes = _stage.lane_inputs(values, 0, seeds)
    params, state = jax.jit(programs.init_seeds)(init_keys)
    lane_state = jax.jit(programs.start_lanes)(
        params, state, rng_keys, lanes.seed_index, lanes.values
    )
    shared = (None,) * _train.SHARED_ARGUMENTS
    call = jax.jit(jax.vmap(programs.lane_call, in_axes=(0,) * _train.LANE_ARGUMENTS + shared))
    metrics = []
    for epoch in range(epochs):  # one call per epoch: it trains the epoch and validates
        steps = np.int32(budget.steps_per_epoch)
        lane_state, output = call(
            lane_state,
            lane_state.params,
            lanes.data_keys,
            np.int32(epoch),
            np.int32(0),
            steps,
            True,
            x,
            y,
            xv,
            yv,
        )
        metrics.append(output.evaluation)
    return model, lane_state, metrics


def test_dropout_masks_change_every_step_differ_between_seeds_and_skip_validation(split_blobs):
    steps = 2 * (192 // 64)  # two epochs of three steps
    module = MaskRecorder(steps)
    model, lanes, metrics = run_lanes(
        lambda: module, split_blobs, epochs=2, batch_size=64, values=[0.1, 0.3], seeds=2
    )
    record = jax.device_get(lanes.model_state["record"])
    # validation ran twice per lane and recorded nothing: the count is the training steps
    assert record["count"].tolist() == [steps] * 4
    masks = record["masks"]  # (lanes, steps, features), lanes value-major: (v0 s0, v0 s1, ...)
    for lane in masks:
        assert len({m.tobytes() for m in lane}) == steps  # a new mask at every step
        assert set(np.unique(lane)) <= {0.0, 2.0}
    assert not np.array_equal(masks[0], masks[1])  # seeds draw different masks
    np.testing.assert_array_equal(masks[0], masks[2])  # every rate of a seed the same ones
    # validation is the deterministic model: no mask, the final statistics read, not changed
    xv, yv = split_blobs["val"]
    for lane in range(4):
        variables = jax.tree.map(
            lambda a, i=lane: a[i], {"params": lanes.params, **lanes.model_state}
        )
        expected = ce(module.apply(variables, xv, train=False), yv)
        assert float(metrics[-1].val_loss[lane]) == pytest.approx(float(expected), rel=1e-5)


def test_nnx_rng_state_advances_per_lane_in_training_only(split_blobs):
    model, lanes, _ = run_lanes(
        NNXBatchNormNet, split_blobs, epochs=2, batch_size=64, values=[0.1], seeds=2
    )
    counts = jax.device_get(lanes.model_state["dropout"]["rngs"]["count"])
    fresh = jax.device_get(model.init(contract_keys()[0])[1]["dropout"]["rngs"]["count"])
    assert (counts - fresh).tolist() == [6, 6]  # one draw per training step, none at validation
    means = jax.device_get(lanes.model_state["norm"]["mean"])
    assert np.abs(means).max() > 0 and not np.array_equal(means[0], means[1])


class DeterministicFlag(nn.Module):
    """Flax attention's convention: ``deterministic``, the opposite of ``train``."""

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(x))


class CallTimeRngs(nnx.Module):
    """An NNX model that takes its dropout stream at call time."""

    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(6, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        return self.dense(self.dropout(x, rngs=rngs))


@pytest.mark.parametrize("model_fn", [lambda: DeterministicFlag(), CallTimeRngs])
def test_other_conventions_train_with_fresh_keys_and_validate_deterministically(model_fn):
    x = make_classification(n=8)[0]
    model = _model.adapt(model_fn, x[:2])
    params, state = model.init(jax.random.key(0))
    first, _ = model.train_apply(params, state, x, jax.random.key(1))
    again, _ = model.train_apply(params, state, x, jax.random.key(1))
    other, _ = model.train_apply(params, state, x, jax.random.key(2))
    np.testing.assert_array_equal(first, again)  # the key decides the mask
    assert not np.allclose(first, other)
    evaluated = model.eval_apply(params, state, x)
    dense = params["Dense_0"] if model.kind == "linen" else params["dense"]
    np.testing.assert_allclose(evaluated, x @ dense["kernel"] + dense["bias"], rtol=1e-6)


# ----------------------------------------------------------------------------- resume


# "separate" holds the lanes apart between calls: a save stacks them, a resume splits them
@pytest.mark.parametrize("lanes", ["vmap", "separate"])
def test_interrupted_sweep_with_dropout_and_batch_statistics_resumes_bitwise(
    tmp_path, split_blobs, monkeypatch, lanes
):
    """Killed after its first epoch, the rerun restores the NNX RNG streams and statistics."""
    settings = dict(epochs=2, batch_size=64, seeds=2, checkpoint_every_seconds=0.0, lanes=lanes)
    whole = sweep(NNXBatchNormNet, split_blobs, **settings)

    original = _checkpoint.SweepCheckpoints.epoch_done

    def interrupted(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt  # right after the first epoch's checkpoint

    monkeypatch.setattr(_checkpoint.SweepCheckpoints, "epoch_done", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(NNXBatchNormNet, split_blobs, checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(_checkpoint.SweepCheckpoints, "epoch_done", original)
    resumed = sweep(NNXBatchNormNet, split_blobs, checkpoint_dir=tmp_path, **settings)
    assert resumed.environment["checkpoint"]["epochs_trained"] == 1
    assert resumed.evaluations == whole.evaluations


# ----------------------------------------------------------------------------- mixed precision


class LowPrecisionMLP(nn.Module):
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, x):
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        return nn.Dense(3, **dense)(nn.relu(nn.Dense(16, **dense)(x)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
def test_low_precision_optimizer_state_keeps_dtypes_and_float32_hyperparameters(split_blobs, dtype):
    model, lanes, metrics = run_lanes(
        lambda: LowPrecisionMLP(dtype),
        split_blobs,
        epochs=1,
        batch_size=64,
        values=[0.674],
        seeds=1,
    )
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(lanes.params))
    hyperparams = lanes.opt_state.hyperparams
    assert hyperparams["learning_rate"].dtype == jnp.float32
    # the rate trained is the recorded one, in float32: not rounded to 0.676 by bfloat16
    assert float(hyperparams["learning_rate"][0]) == float(np.float32(0.674))
    params, state = model.init(jax.random.key(0))
    fresh = jax.eval_shape(
        lambda p: _optim.resolve_optimizer(optax.sgd, "learning_rate").init(p), params
    )
    assert jax.tree.map(lambda a: a.dtype, lanes.opt_state) == jax.tree.map(
        lambda a: a.dtype, fresh
    )
    assert np.isfinite(float(metrics[0].val_loss[0]))


def test_bfloat16_adam_keeps_b2_and_finds_its_float32_twins_rate(split_blobs):
    (x, y), (xv, yv) = split_blobs["train"], split_blobs["val"]
    low = {"train": (jnp.asarray(x, jnp.bfloat16), y), "val": (jnp.asarray(xv, jnp.bfloat16), yv)}
    settings = dict(stages=2, points_per_stage=4, lr_range=(1e-3, 1.0), batch_size=32, epochs=2)
    bf16 = sweep(lambda: LowPrecisionMLP(jnp.bfloat16), low, **settings)
    f32 = sweep(lambda: LowPrecisionMLP(jnp.float32), split_blobs, **settings)
    assert not any(e.diverged for e in bf16.evaluations if e.lr < 0.1)
    assert abs(math.log10(bf16.best_lr / f32.best_lr)) < 0.5
    tx = _optim.resolve_optimizer(optax.adam, "learning_rate")
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    assert float(tx.init(params).hyperparams["b2"]) == float(np.float32(0.999))


# ----------------------------------------------------------------------------- inputs and targets


class TwoInputs(nn.Module):
    """TinyMLP on the concatenation of two inputs: same parameters, so the same sweep."""

    @nn.compact
    def __call__(self, inputs):
        a, b = (inputs["a"], inputs["b"]) if isinstance(inputs, dict) else inputs
        x = jnp.concatenate([a, b], axis=-1)
        # TinyMLP's names: its output layer is built first
        return nn.Dense(3, name="Dense_0")(nn.relu(nn.Dense(16, name="Dense_1")(x)))


@pytest.fixture(scope="module")
def plain_small(split_blobs):
    return sweep(lambda: TinyMLP(), split_blobs, batch_size=32, epochs=2)


@pytest.mark.parametrize("structure", ["tuple", "dict"])
def test_tuple_and_dict_inputs_reach_the_model_whole(split_blobs, plain_small, structure):
    def parts(x):
        return (x[:, :2], x[:, 2:]) if structure == "tuple" else {"a": x[:, :2], "b": x[:, 2:]}

    data = {part: (parts(x), y) for part, (x, y) in split_blobs.items()}
    result = sweep(lambda: TwoInputs(), data, batch_size=32, epochs=2)
    for a, b in zip(result.evaluations, plain_small.evaluations, strict=True):
        np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-6)
    expected = [[2], [4]] if structure == "tuple" else {"a": [2], "b": [4]}
    assert result.config["x_shape"] == expected
    x, y = make_classification(n=100)
    split = _data.prepare((parts(x), y), 0.2, seed=1)  # a split keeps the structure
    assert jax.tree.map(np.shape, split.x_val) == jax.tree.map(lambda a: (20, a.shape[1]), parts(x))


def test_labels_as_a_column_and_one_hot_targets_use_cross_entropy(split_blobs, plain_small):
    column = {part: (x, y[:, None]) for part, (x, y) in split_blobs.items()}
    one_hot = {part: (x, np.eye(3, dtype=np.float32)[y]) for part, (x, y) in split_blobs.items()}
    for data, targets in ((column, "integer labels"), (one_hot, "one-hot / probabilities")):
        result = sweep(lambda: TinyMLP(), data, batch_size=32, epochs=2)
        assert result.config["loss"] == "cross_entropy" and result.config["targets"] == targets
        for a, b in zip(result.evaluations, plain_small.evaluations, strict=True):
            np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-5)
        assert f"loss `cross_entropy` on {targets} targets" in markdown(result)


def test_target_kinds_are_judged_against_the_outputs():
    labels = np.array([0, 2, 1, 2])
    assert _losses.target_kind(labels, (4, 3)) == "labels"
    assert _losses.target_kind(labels[:, None], (4, 3)) == "labels"
    assert _losses.target_kind(labels.astype(np.float32), (4, 3)) == "labels"
    assert _losses.target_kind(np.eye(3)[labels], (4, 3)) == "probabilities"
    soft = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0], [0.1, 0.9]])
    assert _losses.target_kind(soft, (4, 2)) == "probabilities"
    assert _losses.target_kind(soft - 0.3, (4, 2)) == "values"  # negative: regression
    assert _losses.target_kind(np.ones((4, 7), np.int32), (4, 7, 30)) == "labels"
    assert _losses.target_kind(np.ones(4, np.float32) * 0.5, (4, 1)) == "values"


# ----------------------------------------------------------------------------- pretrained starts


def test_linen_lanes_start_from_given_variables(split_blobs):
    module = BatchNormNet()
    x = split_blobs["train"][0]
    variables = module.init(jax.random.key(123), x[:1], train=False)
    # a pretrained model's statistics are not the fresh mean 0 / variance 1
    variables = {
        **variables,
        "batch_stats": jax.tree.map(lambda a: a + 0.5, variables["batch_stats"]),
    }
    result = sweep(lambda: module, split_blobs, init=variables, epochs=2)
    assert result.config["init"].startswith("given (")
    assert_lanes_match(
        result,
        lambda lr: linen_loop(
            module, lr, split_blobs, epochs=2, batch_size=FULL_BATCH, variables=variables
        ),
    )


def test_nnx_lanes_start_from_a_given_module_with_their_own_rng_streams(split_blobs):
    pretrained = NNXBatchNormNet(nnx.Rngs(123))
    pretrained.norm.mean[...] = pretrained.norm.mean[...] + 0.5

    def loop(lr):
        model = NNXBatchNormNet(nnx.Rngs(contract_keys()[0]))  # the seed's own RNG streams
        nnx.update(model, *nnx.state(pretrained, nnx.Param, nnx.BatchStat))
        return nnx_loop(model, lr, split_blobs, epochs=2, batch_size=FULL_BATCH)

    result = sweep(NNXBatchNormNet, split_blobs, init=pretrained, epochs=2)
    assert_lanes_match(result, loop)
    # the module, its state and its pure dict are read alike
    model = _model.adapt(NNXBatchNormNet, split_blobs["train"][0][:2])
    forms = (pretrained, nnx.state(pretrained), nnx.to_pure_dict(nnx.state(pretrained)))
    starts = [model.start(given) for given in forms]
    for start in starts[1:]:
        assert jax.tree.all(jax.tree.map(np.array_equal, start, starts[0]))
    assert "dropout" not in starts[0].state  # RNG streams stay the seeds' own


# ----------------------------------------------------------------------------- clear errors

X, Y = make_classification(n=64)


class DropoutWithoutFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=False)(x))


class BatchNormWithoutFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.BatchNorm(use_running_average=False)(x))


class NeedsMask(nn.Module):
    @nn.compact
    def __call__(self, x, mask):
        return nn.Dense(3)(x * mask)


class TwoFlags(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, deterministic: bool = True):
        return nn.Dense(3)(x)


class GrowingCollection(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(3)(x)
        self.sow("history", "h", h)  # appends at every call: cannot be carried
        return h


class OneLogit(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)


def variables_of(module):
    return module.init(jax.random.key(0), X[:1])


ERRORS = [
    (dict(model_fn=DropoutWithoutFlag), ValueError, "draws random numbers at validation"),
    (dict(model_fn=BatchNormWithoutFlag), ValueError, "updates its state at validation"),
    (dict(model_fn=NeedsMask), TypeError, "needs mask, which the sweep cannot provide"),
    (dict(model_fn=TwoFlags), TypeError, "takes train and deterministic"),
    (dict(model_fn=GrowingCollection), ValueError, "changes the collection"),
    (dict(model_fn=OneLogit), ValueError, "need one output per class"),
    (dict(data=(X, Y + 3)), ValueError, "labels from 3 to 5 but the model has 3 outputs"),
    (dict(data=([X[:, :3], X[:, 3:]], Y)), ValueError, "several inputs go in a tuple"),
    (dict(init={"Dense_0": {}}), ValueError, "init: expected the variables dict"),
    (dict(init=TinyMLP()), TypeError, "init: a Linen model starts from its variables dict"),
    (
        dict(init=variables_of(TinyMLP(hidden=8))),
        ValueError,
        "init: params['Dense_0']['kernel'] has shape (8, 3), the model's has (16, 3)",
    ),
    (
        dict(model_fn=BatchNormNet, init={"params": variables_of(BatchNormNet())["params"]}),
        ValueError,
        "lack ['batch_stats']",
    ),
]


@pytest.mark.parametrize(("overrides", "error", "words"), ERRORS)
def test_what_the_engine_cannot_provide_is_named_before_compiling(
    monkeypatch, overrides, error, words
):
    def forbidden(*args, **kwargs):
        raise AssertionError("the training program was built before the input was checked")

    monkeypatch.setattr(_train, "make_programs", forbidden)
    arguments = dict(model_fn=TinyMLP, data=(X, Y), batch_size=16, progress=False)
    arguments.update(overrides)
    model_class = arguments.pop("model_fn")
    with pytest.raises(error) as caught:
        jaxsweep.run(lambda: model_class(), arguments.pop("data"), **arguments)
    assert words in str(caught.value)
