"""``jaxsweep.Training(init, train_step, eval_step)``: the user's own step, swept lane by lane.

Each lane is checked against the same functions run by a plain Python loop with a plain
``optax.adam(value)`` (no injected hyperparameters, no vmap, no jaxsweep program), following
the documented recipe: seed ``s`` of root ``seed`` calls ``init(fold_in(per_seed, 0),
optimizer)``, orders epoch ``e``'s batches by ``permutation(fold_in(data_key, e), n)`` with
``data_key = fold_in(per_seed, 1)``, and step ``t`` of epoch ``e`` gets the key
``fold_in(fold_in(rng_key, e), t)``, ``rng_key = fold_in(per_seed, 2)``, ``per_seed =
fold_in(key(seed), s)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import comparable
from flax import nnx
from flax.training import train_state

import jaxsweep
from jaxsweep import Callback, _train

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")

OPTIONS = dict(epochs=2, batch_size=32, seeds=2, stages=2, progress=False)
L2 = 1e-3


class SowingMLP(nn.Module):
    """Dropout, and a sown activation penalty the official examples' steps would add."""

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.relu(nn.Dense(16)(x))
        self.sow("intermediates", "activation", jnp.mean(h**2))
        h = nn.Dropout(0.2, deterministic=not train)(h)
        return nn.Dense(3)(h)


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def linen_init(key, optimizer):
    params = SowingMLP().init(key, jnp.zeros((1, 6)), train=False)["params"]
    return train_state.TrainState.create(apply_fn=SowingMLP().apply, params=params, tx=optimizer)


def linen_train_step(state, batch, key):
    x, y = batch

    def loss_fn(params):
        logits, sown = state.apply_fn(
            {"params": params}, x, train=True, rngs={"dropout": key}, mutable=["intermediates"]
        )
        penalty = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))  # official-style L2
        activation = sown["intermediates"]["activation"][0]
        return _ce(logits, y) + L2 * penalty + 0.01 * activation, activation

    (loss, activation), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, "activation": activation}


def linen_eval_step(state, batch):
    x, y = batch
    logits = state.apply_fn({"params": state.params}, x, train=False)
    return {"loss": _ce(logits, y), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


LINEN = jaxsweep.Training(linen_init, linen_train_step, linen_eval_step, name="SowingMLP")


class NNXNet(nnx.Module):
    """Flax's MNIST style: dropout rngs given at call time."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 16, rngs=rngs)
        self.dropout = nnx.Dropout(0.2)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, rngs=None):
        return self.out(self.dropout(nnx.relu(self.hidden(x)), rngs=rngs))


def nnx_init(key, optimizer):
    model = NNXNet(nnx.Rngs(key))
    return model, nnx.Optimizer(model, optimizer, wrt=nnx.Param)


def nnx_train_step(state, batch, key):
    model, optimizer = state
    x, y = batch
    model.train()

    def loss_fn(model):
        return _ce(model(x, rngs=nnx.Rngs(dropout=key)), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return (model, optimizer), {"loss": loss}


def nnx_eval_step(state, batch):
    model, _ = state
    model.eval()
    x, y = batch
    return {"loss": _ce(model(x), y)}


NNX = jaxsweep.Training(nnx_init, nnx_train_step, nnx_eval_step, name="NNXNet")


def _keys(seed: int, seed_index: int):
    per_seed = jax.random.fold_in(jax.random.key(seed), seed_index)
    return tuple(jax.random.fold_in(per_seed, i) for i in range(3))


def _plain_loop(training, value, data, *, seed, seed_index, epochs, batch_size):
    """The user's functions, a plain optax.adam(value), the recipe's keys: the final state."""
    (x, y) = data["train"]
    init_key, data_key, rng_key = _keys(seed, seed_index)
    state = training.init(init_key, optax.adam(value))
    step = jax.jit(training.train_step) if not isinstance(state, tuple) else training.train_step
    for epoch in range(epochs):
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x))
        for t in range(len(x) // batch_size):
            idx = np.asarray(order[t * batch_size : (t + 1) * batch_size])
            key = jax.random.fold_in(jax.random.fold_in(rng_key, epoch), t)
            state, _ = step(state, (x[idx], y[idx]), key)
    return state


@pytest.fixture(scope="module")
def linen_swept(split_blobs):
    return jaxsweep.run(LINEN, split_blobs, metric="accuracy", mode="max", keep="best", **OPTIONS)


def test_a_train_state_lane_equals_the_same_step_in_a_plain_loop(linen_swept, split_blobs):
    xv, yv = split_blobs["val"]
    checked = 0
    for evaluation in linen_swept.evaluations[:3]:
        for s in range(OPTIONS["seeds"]):
            state = _plain_loop(
                LINEN, evaluation.lr, split_blobs, seed=0, seed_index=s, epochs=2, batch_size=32
            )
            expected = linen_eval_step(state, (xv, yv))
            assert evaluation.seed_val_loss[s][-1] == pytest.approx(
                float(expected["loss"]), rel=2e-5
            )
            checked += 1
        accuracy = evaluation.val_aux["accuracy"][-1]
        assert 0.0 <= accuracy <= 1.0
    assert checked == 6
    # the train step's own metrics are recorded beside its loss; ranking follows eval_step's
    assert "activation" in linen_swept.evaluations[0].train_aux
    assert linen_swept.metric == "val_accuracy"


def test_the_best_values_train_states_come_back(linen_swept, split_blobs):
    xv, yv = split_blobs["val"]
    kept = linen_swept.best_variables
    assert len(kept) == OPTIONS["seeds"]
    best = next(e for e in linen_swept.evaluations if e.lr == linen_swept.best_value)
    for s, state in enumerate(kept):
        assert isinstance(state, train_state.TrainState)
        loss = linen_eval_step(state.replace(apply_fn=SowingMLP().apply), (xv, yv))["loss"]
        assert float(loss) == pytest.approx(best.seed_val_loss[s][-1], rel=2e-5)


def test_kept_train_states_save_and_load_as_state_dicts(linen_swept, tmp_path):
    from flax import serialization

    path = jaxsweep.save_variables(linen_swept.best_variables, tmp_path / "best")
    loaded = jaxsweep.load_variables(path)
    for state, saved in zip(linen_swept.best_variables, loaded, strict=True):
        restored = serialization.from_state_dict(state, saved)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_record_names_the_training_and_its_modules(linen_swept):
    config = linen_swept.config
    assert config["model"] == "SowingMLP" and config["model_api"] == "training"
    assert config["modules"] == ["Dense_0", "Dense_1"]
    assert linen_swept.param_count == 6 * 16 + 16 + 16 * 3 + 3


def test_an_nnx_optimizer_lane_equals_the_same_step_in_a_plain_loop(split_blobs):
    result = jaxsweep.run(NNX, split_blobs, **{**OPTIONS, "stages": 1, "seeds": 1})
    xv, yv = split_blobs["val"]
    for evaluation in result.evaluations[:2]:
        state = _plain_loop(
            NNX, evaluation.lr, split_blobs, seed=0, seed_index=0, epochs=2, batch_size=32
        )
        expected = nnx_eval_step(state, (xv, yv))["loss"]
        assert evaluation.seed_val_loss[0][-1] == pytest.approx(float(expected), rel=2e-5)


class _StopInSecondStage(Callback):
    """Stands for a kill inside the second stage, once its first validation was saved."""

    def on_validation(self, event):
        if event.stage == 1 and event.segment == 0:
            raise KeyboardInterrupt


def test_an_interrupted_training_sweep_resumes_to_the_same_result(split_blobs, tmp_path):
    options = {**OPTIONS, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every_seconds": 0.0}
    with pytest.raises(KeyboardInterrupt):
        jaxsweep.run(LINEN, split_blobs, callbacks=[_StopInSecondStage()], **options)
    resumed = jaxsweep.run(LINEN, split_blobs, **options)
    fresh = jaxsweep.run(LINEN, split_blobs, **OPTIONS)
    assert resumed.environment["checkpoint"]["resumed_from"]["stage"] == 1
    assert comparable(resumed.to_dict()) == comparable(fresh.to_dict())


def _ignores_optimizer(key, optimizer):
    return linen_init(key, optax.adam(1e-3))  # the swept value would never reach a lane


def _changes_structure(state, batch, key):
    return {"params": state.params}, {"loss": jnp.zeros(())}


def _no_loss(state, batch, key):
    return state, {"objective": jnp.zeros(())}


@pytest.mark.parametrize(
    "training, kwargs, error, words",
    [
        (jaxsweep.Training(_ignores_optimizer, linen_train_step, linen_eval_step), {},
         ValueError, "holds no optimizer state with hyperparams['learning_rate']"),
        (jaxsweep.Training(linen_init, _changes_structure, linen_eval_step), {},
         ValueError, "Training.train_step: the state it returns differs"),
        (jaxsweep.Training(linen_init, _no_loss, linen_eval_step), {},
         TypeError, "with a 'loss' entry"),
        (LINEN, dict(loss="mse"), ValueError, "leave loss unset"),
        (LINEN, dict(metric="f1", mode="max"), ValueError, "val_accuracy"),
    ],
)  # fmt: skip
def test_a_training_that_cannot_work_fails_before_anything_compiles(
    training, kwargs, error, words, split_blobs, monkeypatch
):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(error) as info:
        jaxsweep.run(training, split_blobs, **{**OPTIONS, **kwargs})
    assert words in str(info.value)


def test_training_fields_are_checked():
    with pytest.raises(TypeError, match="Training.eval_step"):
        jaxsweep.Training(linen_init, linen_train_step, None)


def _regression_init(key, optimizer):
    params = {"w": jnp.zeros(96)}
    return train_state.TrainState.create(apply_fn=None, params=params, tx=optimizer)


def _regression_train_step(state, batch, key):
    x, y = batch
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((x @ p["w"] - y) ** 2))(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def _regression_eval_step(state, batch):
    x, y = batch
    return {"loss": jnp.mean((x @ state.params["w"] - y) ** 2)}


def test_a_horizon_stage_rebuilds_the_state_around_the_stretched_schedule():
    """The state holds its optimizer: a longer horizon's lanes must train with the schedule
    stretched to their own length (checked against optax itself), not the sweep's."""
    from test_horizon import STEPS, _early_stopping_problem

    problem = _early_stopping_problem(3)
    training = jaxsweep.Training(_regression_init, _regression_train_step, _regression_eval_step)
    result = jaxsweep.run(
        training,
        {"train": problem[:2], "val": problem[2:]},
        optimizer=optax.sgd,
        batch_size=len(problem[0]),
        steps=STEPS,
        lr_range=(1e-3, 1.0),
        target_steps=2 * STEPS,
        seeds=1,
        schedule="warmup_cosine",
        progress=False,
    )
    evaluation = result.horizon_evaluations[0]
    assert evaluation.steps[-1] == 2 * STEPS
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, evaluation.value, round(0.1 * 2 * STEPS), 2 * STEPS
    )
    x, y, x_val, y_val = (jnp.asarray(a) for a in problem)
    state = _regression_init(None, optax.sgd(schedule))
    for _ in range(2 * STEPS):
        state, _ = _regression_train_step(state, (x, y), None)
    expected = float(_regression_eval_step(state, (x_val, y_val))["loss"])
    assert evaluation.seed_val_loss[0][-1] == pytest.approx(expected, rel=1e-4)
    assert result.horizon is not None


@pytest.mark.parametrize("lanes", ["map", "separate"])
def test_every_lane_strategy_trains_a_training_alike(lanes, linen_swept, split_blobs):
    """Lanes run one by one (a scan, or a call each) give the vmapped lanes' numbers."""
    options = {**OPTIONS, "stages": 1}
    alone = jaxsweep.run(LINEN, split_blobs, metric="accuracy", mode="max", lanes=lanes, **options)
    for ours, vmapped in zip(alone.evaluations, linen_swept.evaluations[:5], strict=True):
        assert ours.lr == vmapped.lr
        np.testing.assert_allclose(ours.seed_val_loss, vmapped.seed_val_loss, rtol=2e-5)


def test_the_report_says_the_lanes_trained_by_the_users_own_step(linen_swept):
    import dataclasses

    from jaxsweep.report import markdown, methods_tex

    tex, text = methods_tex(linen_swept), markdown(linen_swept, ())
    assert "trained by its own training step with the optimizer adam" in tex
    assert "and the loss" not in tex
    assert "its own training step (`jaxsweep.Training`" in text
    # the same result recorded as a module's: the words follow the record, not the code path
    as_module = dataclasses.replace(
        linen_swept, config={**linen_swept.config, "model_api": "linen", "loss": "cross_entropy"}
    )
    assert "and the loss cross\\_entropy" in methods_tex(as_module)
    assert "own training step" not in methods_tex(as_module) + markdown(as_module, ())
