"""Bad input fails early with a clear error naming the argument, before anything compiles."""

import flax.linen as nn
import numpy as np
import optax
import pytest
from conftest import TinyMLP, make_classification

import jaxsweep
from jaxsweep import _train

X, Y = make_classification(n=64)


@pytest.fixture(autouse=True)
def nothing_compiles(monkeypatch):
    """Every case below must fail before the training programs are even built."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the training program was built before the input was checked")

    monkeypatch.setattr(_train, "make_programs", forbidden)


def with_nan():
    x = X.copy()
    x[3, 2] = np.nan
    return x


def bad_loss(logits, labels):
    return logits  # not a scalar


def no_loss_entry(logits, labels):
    return {"cross_entropy": logits.mean()}


CASES = [
    # (kwargs overriding a valid call, exception, words the message must contain)
    (dict(data=(X, Y[:-1])), ValueError, "data: data x has 64 examples but y has 63"),
    (dict(data=(with_nan(), Y)), ValueError, "data x contains 1 NaN or infinite"),
    (dict(data=(X[:0], Y[:0])), ValueError, "data: data is empty"),
    (dict(data="xy"), TypeError, "data: expected (x, y)"),
    (dict(data={"train": (X, Y)}), ValueError, '"train" and "val"'),
    (dict(data=(X, np.array(["a"] * 64))), TypeError, "must be numeric"),
    (dict(lr_range=(1e-2, 1e-5)), ValueError, "lr_range: low must be below high"),
    (dict(lr_range=(0.0, 1e-2)), ValueError, "lr_range: both ends must be positive"),
    (dict(lr_range=(-1.0, 1e-2)), ValueError, "lr_range"),
    (dict(lr_range=1e-3), TypeError, "lr_range: expected a pair"),
    (dict(points_per_stage=1), ValueError, "points_per_stage: must be >= 2"),
    (dict(points_per_stage=2.5), TypeError, "points_per_stage: expected an integer"),
    (dict(top_k=0), ValueError, "top_k: must be >= 1"),
    (dict(stages=0), ValueError, "stages: must be >= 1"),
    (dict(epochs=0), ValueError, "epochs: must be >= 1"),
    (dict(batch_size=0), ValueError, "batch_size: must be >= 1"),
    (dict(batch_size=1000), ValueError, "batch_size: 1000 is larger than the 51"),
    (dict(seeds=0), ValueError, "seeds: must be >= 1"),
    (dict(seeds=True), TypeError, "seeds: expected an integer"),
    (dict(min_improvement=-0.1), ValueError, "min_improvement: must be >= 0"),
    (dict(validation_fraction=1.0), ValueError, "validation_fraction"),
    (dict(loss="hinge"), ValueError, "loss: unknown name 'hinge'"),
    (dict(loss=3), TypeError, "loss: expected a name or a callable"),
    (dict(loss=bad_loss), ValueError, "loss: must return a scalar"),
    (dict(loss=no_loss_entry), TypeError, "needs a 'loss' entry"),
    (
        dict(loss="cross_entropy", data=(X, Y.astype(np.float32) + 0.5)),
        ValueError,
        "cross_entropy needs integer labels (one output per class) or one-hot",
    ),
    (dict(model_fn="mlp"), TypeError, "model_fn: expected a callable"),
    (dict(model_fn=lambda: 42), TypeError, "model_fn: must return a flax.linen.Module"),
    (dict(model_fn=TinyMLP()), TypeError, "not a module instance"),
    (dict(optimizer=optax.adam(1e-3)), TypeError, "optimizer: pass the factory"),
    (dict(optimizer="adam"), TypeError, "optimizer: expected an optax factory"),
    (
        dict(optimizer=lambda momentum: optax.sgd(0.1, momentum)),
        TypeError,
        "does not accept 'learning_rate'",
    ),
    (dict(progress="yes"), TypeError, "progress: expected True or False"),
]


@pytest.mark.parametrize(("overrides", "error", "words"), CASES)
def test_bad_input_is_named(overrides, error, words):
    arguments = dict(model_fn=lambda: TinyMLP(), data=(X, Y), batch_size=16, progress=False)
    arguments.update(overrides)
    with pytest.raises(error) as caught:
        jaxsweep.run(arguments.pop("model_fn"), arguments.pop("data"), **arguments)
    assert words in str(caught.value)


def test_model_that_cannot_take_the_data_is_reported():
    class WantsImages(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(3, (3, 3))(x).reshape((x.shape[0], -1))  # needs (n, h, w, c)

    with pytest.raises(
        ValueError, match=r"model_fn: the module could not be applied to x of shape"
    ):
        jaxsweep.run(lambda: WantsImages(), (X, Y), batch_size=16, progress=False)


@pytest.mark.parametrize(
    "overrides, error",
    [
        (dict(epochs=0), ValueError),  # a setting: the first check
        (dict(data=(X, Y[:-1])), ValueError),  # the data
        (dict(loss=bad_loss), ValueError),  # the abstract trace of a step: the last check
    ],
)
def test_nothing_on_disk_is_touched_by_a_failed_call(tmp_path, overrides, error):
    arguments = dict(model_fn=lambda: TinyMLP(), data=(X, Y), batch_size=16, progress=False)
    arguments.update(overrides, checkpoint_dir=tmp_path / "checkpoints")
    with pytest.raises(error):
        jaxsweep.run(arguments.pop("model_fn"), arguments.pop("data"), **arguments)
    assert list(tmp_path.iterdir()) == []  # not even the checkpoint directory
