"""Progress display at the edge: a rich progress bar, or nothing when ``progress=False``.

Stages count from 0, as in the result and the report; the bar names the swept
hyperparameter and its scale (``momentum (linear)``), never assuming a learning rate.
"""

from __future__ import annotations

import math


class SilentProgress:
    """Reports nothing; the same methods as :class:`BarProgress`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def start_stage(self, stage: int, stages: int, values, steps: int) -> None:
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
    steps done, steps per second, time elapsed and left, the stage and the best score so far."""

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
        self._task = self._bar.add_task("sweep", total=total_stages * steps, best="best: -")

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

    def epoch_done(self, best_score: float) -> None:
        best = "best: -" if math.isinf(best_score) else f"best: {best_score:.4g}"
        self._bar.update(self._task, best=best)

    def stage_done(self, stage: int, best_value: float, best_score: float) -> None:
        self._bar.console.print(
            f"stage {stage} done: best {self._name} {best_value:.4g} (score {best_score:.4g})"
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
