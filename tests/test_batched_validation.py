"""Batched validation: the exact example-weighted mean over every validation example."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, make_classification, train_alone

import jaxsweep
from jaxsweep import _train, _validation


def loss_terms(outputs, targets):
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()
    accuracy = jnp.mean(jnp.argmax(outputs, -1) == targets)
    return loss, {"accuracy": accuracy}


@pytest.fixture(scope="module")
def model_and_data():
    x, y = make_classification(n=53, seed=3)
    module = TinyMLP()
    params = module.init(jax.random.key(1), x[:1])["params"]
    predict = lambda p, c, xb: module.apply({"params": p}, xb)
    return predict, params, x, y


def test_plan_covers_every_example_once():
    for n, b in [(1, 1), (5, 2), (48, 16), (53, 10), (7, 7)]:
        p = _validation.plan(n, b)
        real = p.indices[p.weights > 0]
        assert sorted(real.tolist()) == list(range(n))
        assert p.indices.shape[1] == b and p.indices.max() < n


@pytest.mark.parametrize("eval_batch_size", [53, 10, 7, 1])
def test_batched_equals_one_batch(model_and_data, eval_batch_size):
    predict, params, x, y = model_and_data
    one_loss, one_aux = loss_terms(predict(params, {}, x), y)  # the whole set at once
    validate = jax.jit(_validation.make_validate(predict, loss_terms, len(x), eval_batch_size))
    loss, aux = validate(params, {}, x, y)
    np.testing.assert_allclose(loss, one_loss, rtol=1e-5)
    np.testing.assert_allclose(aux["accuracy"], one_aux["accuracy"], rtol=1e-6)


def test_ragged_last_batch_counts_each_example_once():
    """A mean over batch means would weight the 3 examples of the last batch 10/3 times more."""
    x = np.arange(23, dtype=np.float32)[:, None]
    y = np.zeros(23, np.float32)
    predict = lambda p, c, xb: xb[:, 0]
    mse = lambda o, t: (jnp.mean((o - t) ** 2), {})
    validate = _validation.make_validate(predict, mse, 23, 10)
    loss, _ = validate({}, {}, x, y)
    assert float(loss) == pytest.approx(np.mean(np.arange(23.0) ** 2), rel=1e-6)
    naive = np.mean([np.mean(np.arange(23.0)[i : i + 10] ** 2) for i in (0, 10, 20)])
    assert abs(float(loss) - naive) > 1.0


def test_non_finite_examples_make_the_mean_non_finite():
    x = np.ones((5, 1), np.float32)
    x[4] = np.nan
    predict = lambda p, c, xb: xb[:, 0]
    loss, _ = _validation.make_validate(predict, lambda o, t: (jnp.mean(o), {}), 5, 2)(
        {}, {}, x, np.zeros(5)
    )
    assert not np.isfinite(float(loss))


def test_validation_memory_does_not_grow_with_the_validation_set():
    """The compiled program's temporaries depend on the batch, not on the number of examples."""

    class Wide(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(512)(x)))

    module = Wide()
    params = module.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    predict = lambda p, c, xb: module.apply({"params": p}, xb)

    def temp_bytes(n, eval_batch_size):
        x = jax.ShapeDtypeStruct((n, 6), jnp.float32)
        y = jax.ShapeDtypeStruct((n,), jnp.int32)
        validate = _validation.make_validate(predict, loss_terms, n, eval_batch_size)
        compiled = jax.jit(validate).lower(params, {}, x, y).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(1000, 100), temp_bytes(16000, 100)
    assert large < 1.5 * small
    assert temp_bytes(16000, 16000) > 4 * large  # one batch: activations of every example


def test_default_eval_batch_is_bounded():
    assert _validation.default_eval_batch_size(48, 32) == 48
    assert _validation.default_eval_batch_size(100_000, 32) == _validation.DEFAULT_EVAL_BATCH
    assert _validation.default_eval_batch_size(100_000, 2048) == 2048


# ----------------------------------------------------------------------------- in a sweep


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_a_sweep_validating_in_ragged_batches_equals_one_batch_in_a_plain_loop(split_blobs):
    """48 validation examples in batches of 10: four full batches and a ragged one of 8."""
    result = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        stages=1,
        points_per_stage=2,
        lr_range=(1e-3, 1e-1),
        eval_batch_size=10,
        **SMALL,
    )
    assert result.config["eval_batch_size"] == 10
    for evaluation in result.evaluations:
        alone = train_alone(optax.adam(evaluation.lr), split_blobs, epochs=2, batch_size=32)
        np.testing.assert_allclose(evaluation.val_loss, alone["val_loss"], rtol=1e-4)


def test_eval_batch_size_is_checked_before_anything_compiles(split_blobs, monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="eval_batch_size: must be >= 1"):
        jaxsweep.run(lambda: TinyMLP(), split_blobs, eval_batch_size=0, **SMALL)
    with pytest.raises(TypeError, match="eval_batch_size: expected an integer"):
        jaxsweep.run(lambda: TinyMLP(), split_blobs, eval_batch_size=1.5, **SMALL)
