"""Sweeping another optimizer hyperparameter than the learning rate, with the rate held fixed."""

import functools

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, train_alone

import jaxsweep
from jaxsweep._optim import resolve_optimizer
from jaxsweep._setup import DEFAULT_LR_RANGE, resolve_range

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")

ADAMW = functools.partial(optax.adamw, learning_rate=1e-2)
SGD = functools.partial(optax.sgd, learning_rate=0.05)


# ----------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def decay_sweep(split_blobs):
    return jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        optimizer=ADAMW,
        hyperparam="weight_decay",
        hyperparam_range=(1e-2, 10.0),
        stages=1,
        points_per_stage=3,
        **SMALL,
    )


def test_weight_decay_lanes_equal_adamw_trained_alone_at_the_fixed_rate(decay_sweep, split_blobs):
    assert decay_sweep.config["hyperparam"] == "weight_decay"
    assert decay_sweep.config["hyperparam_range"] == [1e-2, 10.0]
    assert "lr_range" not in decay_sweep.config
    values = [e.value for e in decay_sweep.evaluations]
    np.testing.assert_allclose(values, [1e-2, 10**-0.5, 10.0], rtol=1e-9)  # log-spaced
    for evaluation in decay_sweep.evaluations:
        alone = train_alone(
            optax.adamw(learning_rate=1e-2, weight_decay=evaluation.value),
            split_blobs,
            epochs=2,
            batch_size=32,
        )
        np.testing.assert_allclose(evaluation.val_loss, alone["val_loss"], rtol=1e-4)
    # the decay reached the optimizer: the lanes differ well beyond float noise
    finals = [e.val_loss[-1] for e in decay_sweep.evaluations]
    assert max(finals) - min(finals) > 1e-2


@pytest.fixture(scope="module")
def momentum_sweep(split_blobs):
    return jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        optimizer=SGD,
        hyperparam="momentum",
        hyperparam_range=(0.0, 0.9),
        scale="linear",
        stages=2,
        points_per_stage=3,
        **SMALL,
    )


def test_momentum_sweeps_on_a_linear_scale(momentum_sweep, split_blobs):
    assert momentum_sweep.config["scale"] == "linear"
    first, second = momentum_sweep.stages
    np.testing.assert_allclose(first.lrs, [0.0, 0.45, 0.9], atol=1e-12)  # evenly spaced
    assert len(second.lrs) == 3 and all(v >= 0 for v in second.lrs)
    assert not set(second.lrs) & set(first.lrs)
    middle = next(e for e in momentum_sweep.evaluations if e.value == pytest.approx(0.45))
    alone = train_alone(
        optax.sgd(learning_rate=0.05, momentum=0.45), split_blobs, epochs=2, batch_size=32
    )
    np.testing.assert_allclose(middle.val_loss, alone["val_loss"], rtol=1e-4)


def test_the_learning_rate_stays_what_the_factory_says():
    tx = resolve_optimizer(ADAMW, "weight_decay")
    state = tx.init({"w": jnp.ones(3)})
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    assert state.hyperparams["weight_decay"].shape == ()


# ----------------------------------------------------------------------------- bad input


def test_learning_rate_range_given_once():
    assert resolve_range("learning_rate", None, (1e-4, 1e-1)) == ((1e-4, 1e-1), "lr_range")
    assert resolve_range("learning_rate", None, None) == (DEFAULT_LR_RANGE, "lr_range")
    assert resolve_range("learning_rate", (1e-4, 1e-1), None) == ((1e-4, 1e-1), "hyperparam_range")
    # given twice is refused whatever the value, the default's value included
    for lr_range in ((1e-3, 1e-2), DEFAULT_LR_RANGE):
        with pytest.raises(ValueError, match="hyperparam_range: give the learning-rate range once"):
            resolve_range("learning_rate", (1e-4, 1e-1), lr_range)


def _run(blobs, **kwargs):
    return jaxsweep.run(lambda: TinyMLP(), blobs, **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(optimizer=ADAMW, hyperparam="weight_decay"),
            ValueError,
            "hyperparam_range: required",
        ),
        (
            dict(
                optimizer=ADAMW,
                hyperparam="weight_decay",
                hyperparam_range=(1e-4, 1e-1),
                lr_range=(1e-4, 1e-1),
            ),
            ValueError,
            "lr_range: the sweep is over 'weight_decay'",
        ),
        (
            # the default's value, given explicitly, is still given twice
            dict(lr_range=(1e-5, 1e-2), hyperparam_range=(1e-4, 1e-1)),
            ValueError,
            "hyperparam_range: give the learning-rate range once",
        ),
        (dict(hyperparam=""), TypeError, "hyperparam"),
        (dict(hyperparam=3), TypeError, "hyperparam"),
        (dict(scale="cubic"), ValueError, "scale"),
        (
            dict(optimizer=ADAMW, hyperparam="weight_decay", hyperparam_range=(0.0, 0.1)),
            ValueError,
            "hyperparam_range: both ends must be positive on a log scale",
        ),
        (
            dict(optimizer=optax.adamw, hyperparam="weight_decay", hyperparam_range=(1e-4, 1e-1)),
            TypeError,
            r"adamw needs learning_rate .* functools.partial\(adamw, learning_rate=1e-3\)",
        ),
        (
            dict(optimizer=ADAMW, hyperparam="beta", hyperparam_range=(0.1, 0.9)),
            TypeError,
            "does not accept 'beta'",
        ),
        (
            dict(optimizer=SGD, hyperparam="nesterov", hyperparam_range=(0.1, 0.9)),
            TypeError,
            "'nesterov' .* is not a numeric hyperparameter",
        ),
        (
            dict(optimizer=ADAMW, hyperparam="mask", hyperparam_range=(0.1, 0.9)),
            TypeError,
            "could not be initialised with 'mask' held as an array",
        ),
    ],
)
def test_bad_hyperparameters_fail_before_anything_compiles(blobs, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(blobs, **kwargs)
