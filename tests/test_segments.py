"""Budgets and chunked training: the same segment metrics whatever the calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsweep import _budget, _segments


def toy_step(state, batch):
    """A step whose loss follows a known sequence: the metrics can be checked by hand."""
    x = batch
    loss = (state - x) ** 2 + 0.1 * x
    step = {
        "loss": loss,
        "aux": {"half": loss / 2},
        "grad_norm": jnp.abs(state - x) + x,
        "module_grad_norm": {"dense": x},
    }
    return state * 0.9 + 0.1 * x, step


def reference(xs, state=1.0):
    losses, grads = [], []
    for x in xs:
        losses.append((state - x) ** 2 + 0.1 * x)
        grads.append(abs(state - x) + x)
        state = state * 0.9 + 0.1 * x
    return np.array(losses), np.array(grads)


@pytest.mark.parametrize("chunk", [1, 3, 4, 10])
def test_merged_chunks_equal_the_statistics_of_every_step(chunk):
    xs = np.linspace(0.0, 3.0, 10).astype(np.float32)
    chunk_of = _segments.make_chunk
    run = jax.jit(lambda state, b, n: chunk_of(lambda s, i: toy_step(s, b[i]), chunk)(state, n))
    state, stats = jnp.float32(1.0), []
    for start in range(0, len(xs), chunk):
        active = min(chunk, len(xs) - start)
        batches = jnp.asarray(np.pad(xs[start : start + active], (0, chunk - active)))
        state, s = run(state, batches, active)
        stats.append(s)
        assert int(s.count) == active
    merged = _segments.merge(stats)
    losses, grads = reference(xs)
    np.testing.assert_allclose(merged["train_loss"], losses.mean(), rtol=1e-6)
    np.testing.assert_allclose(merged["first_step_loss"], losses[0], rtol=1e-6)
    np.testing.assert_allclose(merged["stability"], losses.std() / losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(merged["grad_norm"], grads.mean(), rtol=1e-6)
    np.testing.assert_allclose(merged["grad_norm_max"], grads.max(), rtol=1e-6)
    np.testing.assert_allclose(merged["train_aux"]["half"], losses.mean() / 2, rtol=1e-6)
    np.testing.assert_allclose(merged["module_grad_norm"]["dense"], xs.mean(), rtol=1e-6)
    assert merged["finite"]
    np.testing.assert_allclose(
        state, 0.9**10 + sum(0.1 * x * 0.9 ** (9 - i) for i, x in enumerate(xs)), rtol=1e-5
    )


def test_skipped_steps_leave_state_and_sums_alone_and_a_nan_is_seen():
    chunk_of = _segments.make_chunk
    run = jax.jit(lambda state, b, n: chunk_of(lambda s, i: toy_step(s, b[i]), 4)(state, n))
    batches = jnp.asarray([1.0, jnp.nan, 5.0, 5.0])
    state, stats = run(jnp.float32(1.0), batches, 1)
    assert float(state) == pytest.approx(1.0) and bool(stats.finite)
    state, stats = run(jnp.float32(1.0), batches, 2)
    assert not bool(stats.finite)


def test_budget_in_epochs_and_in_steps():
    epochs = _budget.make_budget(3, None, None, n_train=200, batch_size=32)
    assert epochs == _budget.Budget(
        total=18, eval_every=6, steps_per_epoch=6, chunk=6, batch_size=32
    )
    assert epochs.validation_steps() == (6, 12, 18)
    assert epochs.calls(1) == ((6, 6),)
    steps = _budget.make_budget(None, 500, 130, n_train=100_000, batch_size=32)
    assert steps.validation_steps() == (130, 260, 390, 500)
    assert steps.chunk == 44 and steps.calls(3) == ((390, 44), (434, 44), (478, 22))
    big = _budget.make_budget(2, None, None, n_train=100_000, batch_size=32)
    assert big.eval_every == 3125 and big.chunk <= _budget.MAX_CHUNK
    assert sum(n for _, n in big.calls(0)) == 3125
    assert _budget.make_budget(None, None, None, 64, 32).total == 6  # 3 epochs by default
    short = _budget.make_budget(None, 4, None, n_train=100, batch_size=10)
    assert short.validation_steps() == (4,)


@pytest.mark.parametrize(
    "epochs, steps, eval_every, error, words",
    [
        (2, 100, None, ValueError, "once, as epochs or as steps"),
        (None, 0, None, ValueError, "steps: must be >= 1"),
        (None, 10, 11, ValueError, "eval_every: 11 is more than the 10"),
        (None, 10.0, None, TypeError, "steps: expected an integer"),
        (0, None, None, ValueError, "epochs: must be >= 1"),
    ],
)
def test_bad_budgets(epochs, steps, eval_every, error, words):
    with pytest.raises(error) as info:
        _budget.make_budget(epochs, steps, eval_every, n_train=100, batch_size=10)
    assert words in str(info.value)
