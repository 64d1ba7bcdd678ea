"""Sweeping another optimizer hyperparameter than the learning rate, with the rate held fixed."""

import contextlib
import functools
import io
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, train_alone

import jaxsweep
from jaxsweep import cli
from jaxsweep._efficiency import efficiency
from jaxsweep._optim import resolve_optimizer
from jaxsweep._setup import DEFAULT_LR_RANGE, resolve_range
from jaxsweep.plots import FIGURES, figures_for
from jaxsweep.report import markdown, methods_tex

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
def momentum_run(split_blobs):
    """A small linear momentum sweep with its progress bar on, and what the bar printed."""
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):  # the bar writes to the current sys.stderr
        result = jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            optimizer=SGD,
            hyperparam="momentum",
            hyperparam_range=(0.0, 0.9),
            scale="linear",
            stages=2,
            points_per_stage=3,
            **{**SMALL, "progress": True},
        )
    return result, printed.getvalue()


@pytest.fixture(scope="module")
def momentum_sweep(momentum_run):
    return momentum_run[0]


def test_momentum_sweeps_on_a_linear_scale(momentum_sweep, split_blobs):
    assert momentum_sweep.config["scale"] == "linear"
    first, second = momentum_sweep.stages
    np.testing.assert_allclose(first.values, [0.0, 0.45, 0.9], atol=1e-12)  # evenly spaced
    assert len(second.values) == 3 and all(v >= 0 for v in second.values)
    assert not set(second.values) & set(first.values)
    middle = next(e for e in momentum_sweep.evaluations if e.value == pytest.approx(0.45))
    alone = train_alone(
        optax.sgd(learning_rate=0.05, momentum=0.45), split_blobs, epochs=2, batch_size=32
    )
    np.testing.assert_allclose(middle.val_loss, alone["val_loss"], rtol=1e-4)


def _never_a_learning_rate(text: str) -> None:
    lowered = text.lower()
    assert "learning rate" not in lowered and "learning-rate" not in lowered, text


def test_a_linear_momentum_sweep_reports_as_one(momentum_sweep, tmp_path):
    text, tex = markdown(momentum_sweep), methods_tex(momentum_sweep)
    best = momentum_sweep.best_value
    assert f"Best momentum **{best:.4g}**" in text and "## Best momentum" in text
    assert "searched on a linear scale" in text
    assert tex.startswith("\\subsection{Momentum selection}")
    assert "We selected the momentum of the" in tex
    assert "spaced uniformly" in tex
    assert not re.search(r"log-uniform|factor of|logarithm", tex)
    # the equivalent grid is spaced by differences, computed here from the evaluations
    values = sorted(e.value for e in momentum_sweep.evaluations)
    scores = {e.value: e.score for e in momentum_sweep.evaluations}
    i = min(range(len(values)), key=lambda k: (scores[values[k]], values[k]))
    neighbours = [values[k] for k in (i - 1, i + 1) if 0 <= k < len(values)]
    step = abs(min(neighbours, key=lambda v: (scores[v], v)) - values[i])
    # the grid resolves what the sweep resolved: its interval where wider than the neighbours
    low, high = momentum_sweep.confidence.best.interval
    if np.isfinite(low) and np.isfinite(high) and high - low > step:
        step = high - low
    eff = efficiency(momentum_sweep)
    assert eff.scale == "linear" and eff.spacing == pytest.approx(step)
    assert eff.grid_evaluations == int(np.ceil((values[-1] - values[0]) / step - 1e-9)) + 1
    assert f"a step of {step:.4g}" in text
    for document in (text, tex):
        _never_a_learning_rate(document)


def test_a_linear_momentum_sweep_draws_as_one(momentum_sweep):
    import matplotlib.text

    for name in figures_for(momentum_sweep):
        figure = FIGURES[name].draw(momentum_sweep)
        texts = [t.get_text() for t in figure.findobj(matplotlib.text.Text)]
        _never_a_learning_rate(" | ".join(texts))
        label = "momentum (linear scale)"
        value_axes = [ax.xaxis for ax in figure.axes if ax.get_xlabel() == label]
        value_axes += [ax.yaxis for ax in figure.axes if ax.get_ylabel() == label]
        assert value_axes or name == "efficiency", name
        assert all(axis.get_scale() == "linear" for axis in value_axes), name


def test_a_linear_momentum_sweep_shows_its_name_in_progress_and_cli(momentum_run, tmp_path, capsys):
    result, printed = momentum_run
    assert "stage 0/1: momentum (linear) = 0, 0.45, 0.9" in printed
    assert "stage 1/1: momentum (linear) = " in printed
    assert f"stage 1 done: best momentum {result.best_value:.4g}" in printed
    _never_a_learning_rate(printed)
    result.save(tmp_path / "result.json")
    assert cli.main(["show", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert f"best momentum: {result.best_value:.4g}" in shown
    _never_a_learning_rate(shown)


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
