"""Schedule shapes and the schedule chained after an injected optimizer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsweep import _schedules, schedules


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
