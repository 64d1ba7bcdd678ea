"""Schedule shapes and the schedule chained after an injected optimizer."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, train_alone

import jaxsweep
from jaxsweep import _schedules, _train, schedules


def reference(step, total, warmup, decay, final):
    """The unit schedule written out by hand: linear warmup from 0, then the decay."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    if decay == "constant":
        return 1.0
    if decay == "linear":
        return 1.0 + (final - 1.0) * progress
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    "shape",
    [
        schedules.constant(),
        schedules.constant(warmup_fraction=0.25),
        schedules.cosine(),
        schedules.cosine(final_fraction=0.1),
        schedules.linear(),
        schedules.warmup_cosine(),
        schedules.warmup_linear(warmup_fraction=0.3, final_fraction=0.2),
    ],
)
def test_shapes_follow_their_formula_over_the_run(shape):
    total = 40
    warmup = round(shape.warmup_fraction * total)
    built = shape.build(total)
    got = np.array([float(built(t)) for t in range(total)])
    want = [reference(t, total, warmup, shape.decay, shape.final_fraction) for t in range(total)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.max() == pytest.approx(1.0)


def test_named_shapes_and_descriptions():
    assert schedules.NAMED["warmup_cosine"] == schedules.warmup_cosine(0.1)
    resolved = _schedules.resolve("warmup_cosine", 600)
    assert resolved.description.startswith("warmup_cosine (linear warmup over 10% of the steps")
    assert "(60 of 600)" in resolved.description
    assert "cosine decay to 0" in resolved.description
    assert _schedules.resolve(None, 10) is None


def test_a_callable_with_peak_one_is_accepted_and_described():
    fn = optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 50)
    resolved = _schedules.resolve(fn, 50)
    assert resolved.fn is fn
    assert "custom schedule" in resolved.description


@pytest.mark.parametrize(
    "schedule, error, words",
    [
        ("cosinus", ValueError, "unknown name 'cosinus'"),
        (optax.cosine_decay_schedule(0.5, 50), ValueError, "is 0.5, not 1"),
        (3.0, TypeError, "function of the step count"),
        (optax.adam(1e-3), TypeError, "function of the step count"),
        (lambda step: jnp.ones(2), TypeError, "a scalar per step"),
        (lambda step: -1.0 * step / step, ValueError, "finite and non-negative"),
    ],
)
def test_bad_schedules_are_refused_with_the_argument_named(schedule, error, words):
    with pytest.raises(error, match="schedule: ") as info:
        _schedules.resolve(schedule, 50)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(decay="exp"), "unknown decay"),
        (dict(decay="cosine", warmup_fraction=1.0), "warmup_fraction must be in [0, 1)"),
        (dict(decay="cosine", final_fraction=-0.1), "final_fraction must be in [0, 1]"),
        (dict(decay="cosine", warmup_fraction="0.1"), "warmup_fraction must be a number"),
    ],
)
def test_bad_shapes_are_refused(kwargs, words):
    with pytest.raises((ValueError, TypeError)) as info:
        _schedules.Shape(**kwargs)
    assert words in str(info.value)


def test_chained_schedule_equals_optax_with_the_scheduled_rate():
    """peak x unit schedule, injected, equals optax.adamw given the scheduled rate directly."""
    total, peak = 30, 0.05
    unit = schedules.warmup_cosine(0.2).build(total)
    factory = _schedules.with_schedule(optax.adamw, unit)
    injected = optax.inject_hyperparams(factory)(learning_rate=peak, weight_decay=0.1)
    plain = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, peak, 6, total), weight_decay=0.1)

    def loss(p):
        return jnp.sum((p["w"] - jnp.arange(3.0)) ** 2) + jnp.sum(p["w"] ** 4) * 0.1

    def train(tx):
        params = {"w": jnp.array([2.0, -1.0, 0.5])}
        state = tx.init(params)
        for _ in range(total):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
        return params["w"]

    np.testing.assert_allclose(train(injected), train(plain), rtol=1e-4, atol=1e-6)
    assert injected.init({"w": jnp.zeros(3)}).hyperparams["learning_rate"] == peak


# ----------------------------------------------------------------------------- in a sweep


@pytest.fixture(scope="module")
def scheduled(split_blobs):
    with warnings.catch_warnings():  # a 2-point range leaves the best on an edge
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return _sweep(split_blobs)


def _sweep(split_blobs):
    return jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        stages=1,
        points_per_stage=2,
        lr_range=(3e-3, 3e-2),
        schedule=schedules.warmup_cosine(warmup_fraction=0.25),
        **SMALL,
    )


def test_a_scheduled_lane_equals_optax_with_the_scheduled_rate_in_a_plain_loop(
    scheduled, split_blobs
):
    total = 2 * (192 // 32)  # 2 epochs of 6 steps
    for evaluation in scheduled.evaluations:
        rate = optax.warmup_cosine_decay_schedule(0.0, evaluation.lr, 3, total)
        alone = train_alone(optax.adam(rate), split_blobs, epochs=2, batch_size=32)
        np.testing.assert_allclose(evaluation.val_loss, alone["val_loss"], rtol=1e-4)
        np.testing.assert_allclose(evaluation.train_loss, alone["train_loss"], rtol=1e-4)
    # and not what a constant rate gives: the schedule changed the training
    constant = train_alone(
        optax.adam(scheduled.evaluations[0].lr), split_blobs, epochs=2, batch_size=32
    )
    assert abs(constant["val_loss"][-1] - scheduled.evaluations[0].val_loss[-1]) > 1e-3


def test_the_record_and_report_say_which_schedule_the_swept_value_is_the_peak_of(scheduled):
    from jaxsweep.report import markdown, methods_tex

    described = "warmup_cosine (linear warmup over 25% of the steps (3 of 12), cosine decay to 0)"
    assert scheduled.config["schedule"] == described
    assert f"followed a {described} schedule" in markdown(scheduled)
    assert "the swept learning rate is its peak" in markdown(scheduled)
    assert r"warmup\_cosine (linear warmup over 25\% of the steps" in methods_tex(scheduled)


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_a_schedule_built_in_the_factory_works_when_optax_allows_it(split_blobs):
    """cosine_decay_schedule(learning_rate, ...) takes the array; it equals schedule='cosine'."""
    total = 12
    inside = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        optimizer=lambda learning_rate: optax.adam(
            optax.cosine_decay_schedule(learning_rate, total)
        ),
        stages=1,
        points_per_stage=2,
        lr_range=(3e-3, 3e-2),
        **SMALL,
    )
    alone = train_alone(
        optax.adam(optax.cosine_decay_schedule(inside.evaluations[1].lr, total)),
        split_blobs,
        epochs=2,
        batch_size=32,
    )
    np.testing.assert_allclose(inside.evaluations[1].val_loss, alone["val_loss"], rtol=1e-4)


def test_a_schedule_that_compares_the_swept_value_points_to_schedule(split_blobs, monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("built"))
    factory = lambda learning_rate: optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, learning_rate, 10, 100)
    )
    with pytest.raises(TypeError, match="schedule=") as info:
        jaxsweep.run(lambda: TinyMLP(), split_blobs, optimizer=factory, **SMALL)
    assert "the swept value becomes its peak" in str(info.value)
    with pytest.raises(ValueError, match="schedule: unknown name"):
        jaxsweep.run(lambda: TinyMLP(), split_blobs, schedule="cosine_warmup", **SMALL)
