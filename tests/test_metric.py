"""metric= and mode=: the value is chosen by any validation metric, in either direction."""

import math
import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import _history, _result, _train
from jaxsweep.report import markdown, methods_tex


def with_accuracy(outputs, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()
    return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(outputs, -1) == labels)}


def loss_alone(outputs, labels):
    """A user's own loss returning a bare scalar: it records no accuracy."""
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


@pytest.fixture(scope="module")
def by_accuracy(split_blobs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            loss=with_accuracy,
            metric="accuracy",
            mode="max",
            stages=2,
            points_per_stage=3,
            optimizer=optax.sgd,
            lr_range=(1e-2, 1e4),  # the top end diverges
            **{**SMALL, "seeds": 2},
        )


def test_the_score_is_the_final_validation_metric_and_the_best_is_its_maximum(by_accuracy):
    assert by_accuracy.config["metric"] == "val_accuracy" and by_accuracy.mode == "max"
    assert by_accuracy.config["eval_batch_size"] == 48  # the default: the whole small set
    for e in by_accuracy.evaluations:
        if not e.diverged:
            assert e.score == pytest.approx(e.val_aux["accuracy"][-1])
            assert 0.0 <= e.score <= 1.0
    finite = [e for e in by_accuracy.evaluations if not e.diverged]
    top = max(finite, key=lambda e: (e.score, -e.lr))
    assert by_accuracy.best_lr == top.lr and by_accuracy.best_score == top.score
    assert by_accuracy.best is top
    for stage in by_accuracy.stages:  # best after each stage: the highest so far
        so_far = [e.score for e in finite if e.stage <= stage.index]
        assert stage.best_score == max(so_far)


def test_diverged_values_score_worst_for_a_metric_to_maximise(by_accuracy):
    diverged = [e for e in by_accuracy.evaluations if e.diverged]
    assert diverged, "the range was chosen so that its top diverges"
    assert all(e.score == -math.inf for e in diverged)
    assert by_accuracy.best_lr not in [e.lr for e in diverged]


def test_the_next_stage_refines_around_the_highest_metric():
    """The selector sees the metric signed: the interval kept is the one by the maximum."""

    def evaluation(lr, score):
        return _result.Evaluation(
            value=lr,
            stage=0,
            score=score,
            diverged=False,
            seed_scores=(score,),
            train_loss=(),
            val_loss=(),
            seed_val_loss=(),
            grad_norm=(),
            grad_norm_max=(),
            loss_reduction_rate=(),
            stability=(),
        )

    accuracies = {1e-4: 0.5, 1e-3: 0.7, 1e-2: 0.9, 1e-1: 0.6, 1.0: 0.1}
    history = _history.History(tuple(evaluation(k, v) for k, v in accuracies.items()), sign=-1.0)
    assert history.best() == (1e-2, 0.9)
    assert history.best_objective() == -0.9
    # the noise-aware search reads per-seed scores signed the same way
    assert history.seed_scores == tuple((-v,) for v in accuracies.values())
    low, high = history.best()[0] / 10, history.best()[0] * 10
    from jaxsweep import _selector

    plan = _selector.next_stage(
        history.points, history.scores, count=4, top_k=2, initial_step=math.log(10)
    )
    assert all(low < p < high for p in plan.points)
    assert not _selector.should_stop(-0.9, -0.95, 0.01)  # 0.90 -> 0.95 is a 5.6% gain
    assert _selector.should_stop(-0.9, -0.901, 0.01)


def test_intervals_bracket_the_best_value_by_the_metric(by_accuracy):
    best = by_accuracy.confidence.best
    assert best.method in ("seed_curve", "not_worse")  # several seeds: over the seeds
    assert best.low <= best.lr <= best.high


def test_report_and_figures_show_the_metric_and_the_other_metrics(by_accuracy, tmp_path):
    text = markdown(by_accuracy, ())
    assert "validation accuracy" in text and "higher is better" in text
    assert "## Validation metrics" in text
    table = text.split("## Validation metrics")[1].split("##")[0]
    assert "| value | stage | validation loss | **validation accuracy** |" in table
    assert f"| {by_accuracy.best_lr:.4g} |" in table
    assert "validation accuracy" in methods_tex(by_accuracy)
    figure = jaxsweep.plots.lr_curve(by_accuracy)
    titles = [ax.get_title() for ax in figure.get_axes()]
    assert "validation loss after the last epoch" in titles  # beside the score
    paths = jaxsweep.plot(by_accuracy, tmp_path)
    assert all((tmp_path / "figures" / f"{name}.png").stat().st_size > 5_000 for name in paths)


def test_a_result_with_a_metric_survives_json(by_accuracy, tmp_path):
    by_accuracy.save(tmp_path / "r.json")
    loaded = jaxsweep.load(tmp_path / "r.json")
    assert loaded == by_accuracy and loaded.best_lr == by_accuracy.best_lr
    assert loaded.confidence.best.interval == by_accuracy.confidence.best.interval


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        # the built-in cross-entropy records accuracy; a user's bare loss does not
        (dict(loss=loss_alone, metric="accuracy", mode="max"), ValueError, "'val_loss'"),
        (dict(loss=with_accuracy, metric="val_f1"), ValueError, "['val_loss', 'val_accuracy']"),
        (dict(loss=with_accuracy, metric="train_accuracy"), ValueError, "training batches"),
        (dict(mode="maximum"), ValueError, "mode: expected 'min' or 'max'"),
        # mode left at "min" for accuracy would pick the least accurate value
        (dict(loss=with_accuracy, metric="accuracy"), ValueError, "pass mode='max'"),
        (dict(metric=3), TypeError, "metric: expected a name"),
    ],
)
def test_bad_metrics_fail_before_anything_compiles(kwargs, error, words, monkeypatch, blobs):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(error) as info:
        jaxsweep.run(lambda: TinyMLP(), blobs, **{**SMALL, **kwargs})
    assert words in str(info.value)


def test_series_by_name():
    e = _result.Evaluation(
        value=1.0,
        stage=0,
        score=0.0,
        diverged=False,
        seed_scores=(0.0,),
        train_loss=(1.0,),
        val_loss=(2.0,),
        seed_val_loss=((2.0,),),
        grad_norm=(1.0,),
        grad_norm_max=(1.0,),
        loss_reduction_rate=(0.0,),
        stability=(0.0,),
        train_aux={"acc": (0.5,)},
        val_aux={"acc": (0.6,)},
    )
    assert e.series("val_loss") == (2.0,) and e.series("val_acc") == (0.6,)
    assert e.series("train_acc") == (0.5,) and e.validation_metrics() == ("val_loss", "val_acc")
    with pytest.raises(KeyError, match="'val_f1' was not recorded"):
        e.series("val_f1")
    assert np.isfinite(e.series("train_loss")[0])
