"""The progress bar's best is ``result.best_score``'s quantity: a value's mean over its seeds."""

import math
import warnings

import numpy as np
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import _driver
from jaxsweep._progress import BarProgress, ProgressBar, SilentProgress, running_best
from jaxsweep.callbacks import Lane, StageEnd, SweepInfo, Validation


def info(mode="min", metric="val_loss", seeds=2) -> SweepInfo:
    return SweepInfo(
        hyperparam="learning_rate",
        scale="log",
        value_range=(1e-3, 1e-1),
        metric=metric,
        mode=mode,
        stages=2,
        seeds=seeds,
        steps=4,
        validation_steps=(2, 4),
        config={},
        checkpoint_dir=None,
    )


def validation(values, per_lane, seeds=2, diverged=None, aux=None) -> Validation:
    """One validation of ``values`` x ``seeds`` lanes (value-major) with these losses."""
    lanes = tuple(Lane(v, s) for v in values for s in range(seeds))
    losses = np.asarray(per_lane, np.float64)
    return Validation(
        stage=0,
        segment=0,
        step=2,
        lanes=lanes,
        train_loss=losses,
        val_loss=losses,
        val_aux={} if aux is None else {k: np.asarray(v) for k, v in aux.items()},
        diverged=np.zeros(len(lanes), bool) if diverged is None else np.asarray(diverged),
    )


# value 0.01 has the best single lane (0.1) but the worse mean (0.5); 0.02's mean is 0.325
LUCKY = validation([0.01, 0.02], [0.1, 0.9, 0.3, 0.35])


def test_the_best_is_the_best_seed_mean_not_the_best_lane():
    assert running_best(LUCKY, math.inf, info()) == pytest.approx(0.325)


def test_a_metric_to_maximise_takes_the_highest_seed_mean():
    event = validation([0.01, 0.02], [0, 0, 0, 0], aux={"accuracy": [1.0, 0.5, 0.8, 0.8]})
    best = running_best(event, -math.inf, info("max", "val_accuracy"))
    assert best == pytest.approx(0.8)


def test_a_value_with_a_diverged_seed_is_not_the_best():
    event = validation([0.01, 0.02], [0.2, 0.2, 0.3, 0.4], diverged=[False, True, False, False])
    assert running_best(event, math.inf, info()) == pytest.approx(0.35)
    nan = validation([0.01, 0.02], [0.2, np.nan, 0.3, 0.4])
    assert running_best(nan, math.inf, info()) == pytest.approx(0.35)


def test_the_finished_stages_best_stays_when_a_validation_is_worse():
    assert running_best(LUCKY, 0.3, info()) == pytest.approx(0.3)
    assert running_best(LUCKY, 0.4, info()) == pytest.approx(0.325)


class Recording(SilentProgress):
    def __init__(self):
        self.best = []

    def epoch_done(self, best_score):
        self.best.append(best_score)


def test_the_callback_shows_the_seed_mean_then_the_historys_best():
    reporter = Recording()
    bar = ProgressBar(reporter)
    bar.on_sweep_start(info())
    bar.on_validation(LUCKY)
    assert reporter.best == [pytest.approx(0.325)]
    end = StageEnd(0, (0.01, 0.02), (), best_value=0.02, best_score=0.31, seconds=1.0)
    bar.on_stage_end(0, end)
    assert reporter.best[-1] == 0.31
    bar.on_validation(LUCKY)  # a later stage's validation, worse than the history's best
    assert reporter.best[-1] == 0.31
    bar.close()


def test_the_rendered_bar_names_the_seed_mean(capsys):
    shown = BarProgress(total_stages=2, steps=4)
    bar = ProgressBar(shown)
    bar.on_sweep_start(info())
    task = shown._bar.tasks[0]
    assert task.fields["best"] == "best (seed mean): -"
    bar.on_validation(LUCKY)
    assert task.fields["best"] == "best (seed mean): 0.325"
    rendered = " ".join(str(column.render(task)) for column in shown._bar.columns[5:6])
    assert rendered == "best (seed mean): 0.325" and "0.1" not in rendered
    bar.close()


def test_a_sweeps_last_shown_best_is_its_best_score(split_blobs, monkeypatch):
    shown = []

    class Watching(SilentProgress):
        def __init__(self, *args, **kwargs):
            pass

        def epoch_done(self, best_score):
            shown.append(best_score)

    monkeypatch.setattr(_driver, "BarProgress", Watching)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        result = jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            stages=2,
            points_per_stage=3,
            lr_range=(1e-3, 1e-1),
            **{**SMALL, "seeds": 3, "progress": True},
        )
    assert shown[-1] == result.best_score
