"""Progress display at the edge: a rich progress bar, or nothing when ``progress=False``.

Stages count from 0, as in the result and the report; the bar names the swept
hyperparameter and its scale (``momentum (linear)``), never assuming a learning rate. The
driver reaches the bar through :class:`ProgressBar`, one of the sweep's callbacks.
"""

from __future__ import annotations

import math

import numpy as np

from .callbacks import Callback, StageEnd, SweepInfo, Validation


class SilentProgress:
    """Reports nothing; the same methods as :class:`BarProgress`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def start_stage(self, stage: int, stages: int, values, steps: int) -> None:
        pass

    def stage_steps(self, steps: int) -> None:
        pass

    def steps_done(self, steps: int) -> None:
        pass

    def epoch_done(self, best_score: float) -> None:
        pass

    def stage_done(self, stage: int, best_value: float, best_score: float) -> None:
        pass

    def finish_early(self) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class BarProgress(SilentProgress):
    """One bar over every training step of the sweep (all stages), advancing within an epoch:
    steps done, steps per second, time elapsed and left, the stage and the best score so far
    (a value's mean over its seeds, as ``result.best_score``)."""

    def __init__(
        self, total_stages: int, steps: int, hyperparam: str = "learning_rate", scale: str = "log"
    ):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True)
        self._steps = steps  # one search stage's steps
        self._name = hyperparam.replace("_", " ")
        self._label = f"{self._name} ({scale})"
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            _rate_column(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self._console,
        )
        # every lane of a stage trains the same steps at once: a stage's steps are one lane's
        self._task = self._bar.add_task(
            "sweep", total=total_stages * steps, best=best_label(math.inf)
        )

    def __enter__(self):
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def start_stage(self, stage: int, stages: int, values, steps: int) -> None:
        # stages count from 0, as in the result and the report: the last is ``stages - 1``
        shown = ", ".join(f"{v:.3g}" for v in values)
        self._bar.update(self._task, description=f"stage {stage}/{stages - 1}")
        self._bar.console.print(f"stage {stage}/{stages - 1}: {self._label} = {shown}")

    def steps_done(self, steps: int) -> None:
        self._bar.update(self._task, advance=steps)

    def stage_steps(self, steps: int) -> None:
        # a stage that trains longer than the search's (the horizon check) comes after the
        # search stopped: the bar's total becomes what is done plus that stage, so the time
        # left is the stage's own, never a count past the end
        if steps != self._steps:
            self._bar.update(self._task, total=self._bar.tasks[self._task].completed + steps)

    def epoch_done(self, best_score: float) -> None:
        # the score of result.best_score: a value's mean over its seeds, never one lane's
        self._bar.update(self._task, best=best_label(best_score))

    def stage_done(self, stage: int, best_value: float, best_score: float) -> None:
        self._bar.console.print(
            f"stage {stage} done: best {self._name} {best_value:.4g} "
            f"(score {best_score:.4g}, mean over seeds)"
        )

    def finish_early(self) -> None:
        task = self._bar.tasks[self._task]
        self._bar.update(self._task, total=task.completed)

    def message(self, text: str) -> None:
        self._bar.console.print(text)


def _rate_column():
    """Training steps per second of every lane together (``-`` until measured)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("- steps/s" if speed is None else f"{speed:.3g} steps/s")

    return RateColumn()


class ProgressBar(Callback):
    """The sweep's callback that drives a bar (:class:`BarProgress`, or any object with its
    methods): stage lines, steps within a segment, the best score so far."""

    def __init__(self, reporter):
        self.reporter = reporter
        self._entered = False
        self._info: SweepInfo | None = None
        self._best = math.inf  # the best score of the finished stages (the metric itself)

    def on_sweep_start(self, info: SweepInfo) -> None:
        self._info, self._best = info, _worst(info.mode)
        self.reporter.__enter__()
        self._entered = True
        resumed = info.resumed
        if resumed is not None:
            self.reporter.message(
                f"resumed from {resumed.directory}: stage {resumed.stage}, "
                f"{resumed.segment} of {len(info.validation_steps)} validations done"
            )
            self.reporter.steps_done(resumed.stage * info.steps + resumed.steps)
            self._best = resumed.best_score
            self.reporter.epoch_done(resumed.best_score)

    def _on_stage_steps(self, steps: int) -> None:  # the engine's own: a stage's budget
        self.reporter.stage_steps(steps)

    def on_stage_start(self, stage: int, values) -> None:
        self.reporter.start_stage(stage, self._info.stages, values, self._info.steps)

    def _on_steps(self, steps: int) -> None:  # the engine's own: after every training call
        self.reporter.steps_done(steps)

    def on_validation(self, event: Validation) -> None:
        self.reporter.epoch_done(running_best(event, self._best, self._info))

    def on_stage_end(self, stage: int, end: StageEnd) -> None:
        self._best = end.best_score
        self.reporter.epoch_done(end.best_score)  # the best score itself (mean over seeds)
        self.reporter.stage_done(stage, end.best_value, end.best_score)

    def on_sweep_end(self, result) -> None:
        if result.stop_reason != "completed":
            self.reporter.finish_early()

    def close(self) -> None:
        if self._entered:
            self._entered = False
            self.reporter.__exit__(None, None, None)


def best_label(best_score: float) -> str:
    """The bar's best score, named as what it is: the best value's mean over its seeds."""
    shown = "-" if not math.isfinite(best_score) else f"{best_score:.4g}"
    return f"best (seed mean): {shown}"


def running_best(event: Validation, best_score: float, info: SweepInfo) -> float:
    """The best score known after a validation: the quantity of ``result.best_score``.

    Each value's score is its metric at this validation, mean over its seeds (a value with a
    diverged seed scores worst, as in the history); the best of these, or ``best_score`` (the
    finished stages' best) when that is better. One lucky seed never shows as the best.
    """
    sign = 1.0 if info.mode == "min" else -1.0
    signed = sign * np.asarray(event.metric(info.metric), np.float64)
    diverged = np.asarray(event.diverged, bool) | ~np.isfinite(signed)
    values = event.values
    best = sign * best_score if not math.isnan(best_score) else math.inf
    for value in np.unique(values):
        lanes = values == value
        if not diverged[lanes].any():
            best = min(best, float(np.mean(signed[lanes])))
    return sign * best


def _worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf
