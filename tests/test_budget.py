"""Step budgets: ``steps=`` and ``eval_every=`` train the batches an epoch budget would."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import TinyMLP, _tiny_val_loss, _tiny_value_and_grad, two_rate_sweep

import jaxsweep
from jaxsweep import _driver, _train
from jaxsweep._progress import SilentProgress

QUIET = dict(progress=False, min_improvement=0.0, seeds=1)


def sweep(data, **kwargs):
    return two_rate_sweep(data, **kwargs)


def train_steps_alone(tx, data, *, steps, eval_at, batch_size, seed=0):
    """TinyMLP trained ``steps`` steps by a plain loop; validation loss after each of
    ``eval_at``. Step ``s`` takes row ``s % per_epoch`` of epoch ``s // per_epoch``'s
    permutation (the documented contract), whatever the chunking of the sweep."""
    (x, y), (xv, yv) = data["train"], data["val"]
    per_seed = jax.random.fold_in(jax.random.key(seed), 0)
    init_key, data_key = jax.random.fold_in(per_seed, 0), jax.random.fold_in(per_seed, 1)
    params = TinyMLP().init(init_key, x[:1])["params"]
    opt_state = tx.init(params)
    per_epoch, val = len(x) // batch_size, []
    for step in range(steps):
        epoch, row = divmod(step, per_epoch)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x)))
        idx = order[row * batch_size : (row + 1) * batch_size]
        _, grads = _tiny_value_and_grad(params, x[idx], y[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if step + 1 in eval_at:
            val.append(float(_tiny_val_loss(params, xv, yv)))
    return val


def test_a_step_budget_equals_the_same_epochs(split_blobs):
    by_epochs = sweep(split_blobs, epochs=2, batch_size=32, **QUIET)
    by_steps = sweep(split_blobs, steps=12, eval_every=6, batch_size=32, **QUIET)
    for a, b in zip(by_epochs.evaluations, by_steps.evaluations, strict=True):
        assert a.val_loss == b.val_loss and a.train_loss == b.train_loss
        assert a.steps == b.steps == (6, 12)
    assert by_steps.config["steps"] == 12 and by_steps.config["eval_every"] == 6
    assert by_epochs.config["steps"] == 12 and by_epochs.config["epochs"] == 2


def test_validations_mid_epoch_and_calls_across_epochs_equal_a_plain_loop(split_blobs, monkeypatch):
    """96 steps per epoch (batch 2), calls of 50 steps: the second call crosses into epoch 1;
    validations after 100 steps (mid-epoch) and after the last, 150."""
    calls = []

    class Recording(SilentProgress):
        def __init__(self, stages, steps, *rest):
            calls.append(("total", stages * steps))

        def steps_done(self, steps):
            calls.append(steps)

    monkeypatch.setattr(_driver, "BarProgress", Recording)
    result = sweep(
        split_blobs,
        steps=150,
        eval_every=100,
        batch_size=2,
        progress=True,
        min_improvement=0.0,
        seeds=1,
    )
    assert calls == [("total", 150), 50, 50, 50]  # the bar advances within the epoch
    for evaluation in result.evaluations:
        assert evaluation.steps == (100, 150)
        alone = train_steps_alone(
            optax.adam(evaluation.lr), split_blobs, steps=150, eval_at=(100, 150), batch_size=2
        )
        np.testing.assert_allclose(evaluation.val_loss, alone, rtol=2e-4)


class NormDrop(nn.Module):
    """Batch statistics and dropout: both advance per step with the step's own key."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(nn.Dense(8)(x))
        return nn.Dense(3)(nn.Dropout(0.3, deterministic=not train)(nn.relu(x)))


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_dropout_and_batch_statistics_follow_the_steps_across_calls(split_blobs):
    """96 steps per epoch (batch 2): validating every 64 steps trains in calls of 64 that
    cross the epoch boundary, yet after step 192 the lanes equal two epochs' calls of 48."""
    kwargs = dict(QUIET, stages=1, points_per_stage=2, lr_range=(1e-3, 3e-2), batch_size=2)
    by_epochs = jaxsweep.run(lambda: NormDrop(), split_blobs, epochs=2, **kwargs)
    by_steps = jaxsweep.run(lambda: NormDrop(), split_blobs, steps=192, eval_every=64, **kwargs)
    for a, b in zip(by_epochs.evaluations, by_steps.evaluations, strict=True):
        assert (a.steps, b.steps) == ((96, 192), (64, 128, 192))
        np.testing.assert_allclose(a.val_loss[-1], b.val_loss[-1], rtol=1e-5)
    assert by_epochs.evaluations[0].val_loss[-1] != by_epochs.evaluations[1].val_loss[-1]


def test_a_schedule_stretches_over_a_step_budget(split_blobs):
    result = sweep(split_blobs, steps=20, batch_size=32, schedule="warmup_cosine", **QUIET)
    assert "(2 of 20)" in result.config["schedule"]
    assert result.evaluations[0].steps == (6, 12, 18, 20)  # once per epoch, then the end


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(epochs=2, steps=10), ValueError, "once, as epochs or as steps"),
        (dict(steps=10, eval_every=11), ValueError, "eval_every: 11 is more than the 10"),
        (dict(steps=0), ValueError, "steps: must be >= 1"),
        (dict(steps=5.0), TypeError, "steps: expected an integer"),
        (dict(eval_every=0), ValueError, "eval_every: must be >= 1"),
    ],
)
def test_bad_budgets_fail_before_anything_compiles(kwargs, error, words, blobs, monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(error) as info:
        jaxsweep.run(lambda: TinyMLP(), blobs, **{**QUIET, "batch_size": 32, **kwargs})
    assert words in str(info.value)
