"""What the hierarchy saved: this sweep against the grid that reaches the same resolution.

Computed from a :class:`~jaxsweep.SweepResult` alone; the report, the methods paragraph and
the efficiency figure all read these numbers from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import _scale, _selector
from ._result import SweepResult


@dataclass(frozen=True)
class Efficiency:
    """This sweep against the grid that would reach the same resolution over the same span.

    The equivalent grid spans the lowest to the highest evaluated value, evenly spaced on the
    sweep's scale, with the resolution the sweep actually resolved: the width of its interval
    for the optimum, or of the final best interval (the best value and its better evaluated
    neighbour) where that is wider. Values closer together than the interval could not be told
    apart with the sweep's seeds, so a grid gains nothing from them. Its time is
    the sweep's one-time cost (set-up and compilation) plus its size times the measured seconds
    per evaluation: the wall time of the stages after the first (which reuse the compiled
    program) divided by the values they evaluated. Each value trains all seeds, in lanes of the
    same size as the sweep's, so the unit cost carries over. A single-stage sweep falls back to
    its per-epoch times.
    """

    name: str  # the swept hyperparameter in words ("learning rate", "momentum")
    evaluations: int  # values this sweep evaluated
    span: tuple[float, float]  # lowest and highest evaluated value
    scale: str  # "log" or "linear"
    spacing: float  # grid step: a ratio (log scale) or a difference (linear scale)
    spacing_source: str  # "interval" (the reported interval) or "best interval" (neighbours)
    grid_evaluations: int  # values the equivalent grid evaluates
    seconds_per_evaluation: float  # measured, see per_evaluation_source
    per_evaluation_source: str  # how seconds_per_evaluation was measured, in words
    one_time_seconds: float  # sweep_seconds - evaluations * seconds_per_evaluation
    sweep_seconds: float  # measured: ``result.search_seconds`` (set-up, compilation, training)
    grid_seconds: float  # estimated: one_time_seconds + grid_evaluations * seconds_per_evaluation
    # False when no evaluation trained without diverging: the sweep resolved nothing, so no
    # grid "at the resolution it reached" exists and nothing can be said to be saved
    comparable: bool = True

    @property
    def evaluations_saved(self) -> float:
        """Fraction of the grid's evaluations this sweep did not need."""
        return 1.0 - self.evaluations / self.grid_evaluations

    @property
    def seconds_saved(self) -> float:
        """Fraction of the grid's estimated wall time this sweep did not need."""
        if self.grid_seconds <= 0:
            return 0.0
        return 1.0 - self.sweep_seconds / self.grid_seconds

    @property
    def ahead(self) -> bool:
        """Whether the sweep needed fewer evaluations than the grid."""
        return self.comparable and self.evaluations < self.grid_evaluations

    @property
    def faster(self) -> bool:
        """Whether the sweep's measured time is below the grid's estimated one."""
        return self.comparable and self.sweep_seconds < self.grid_seconds

    def evaluations_words(self) -> str:
        """The evaluations against the grid's, said the way they compare (never a negative
        saving): ``15 evaluations, 46.7% fewer than the 28 of a grid at the resolution it
        reached``; ``15 evaluations, more than the 8 of ...``; ``as many as``."""
        used = f"{self.evaluations} evaluation{'s' if self.evaluations != 1 else ''}"
        if not self.comparable:
            return f"{used}, none of which trained without diverging, so no grid compares"
        grid = f"the {self.grid_evaluations} of a grid at the resolution it reached"
        if self.evaluations < self.grid_evaluations:
            return f"{used}, {100 * self.evaluations_saved:.1f}% fewer than {grid}"
        if self.evaluations > self.grid_evaluations:
            return f"{used}, more than {grid}"
        return f"{used}, as many as {grid}"

    def seconds_words(self) -> str:
        """The measured wall time against the grid's estimate, said the way they compare:
        ``10.1 s measured, 17.9% less than the estimated 12.3 s of the grid``, or ``more
        than``."""
        measured = f"{self.sweep_seconds:.1f} s measured"
        if not self.comparable:
            return f"{measured}; no grid compares (every evaluation diverged)"
        grid = f"the estimated {self.grid_seconds:.1f} s of the grid"
        if self.sweep_seconds < self.grid_seconds:
            return f"{measured}, {100 * self.seconds_saved:.1f}% less than {grid}"
        if self.sweep_seconds > self.grid_seconds:
            return f"{measured}, more than {grid}"
        return f"{measured}, the same as {grid}"

    def method(self) -> str:
        """One paragraph saying how the grid was sized and timed, with this run's numbers."""
        if not self.comparable:
            return (
                f"Every one of the {self.evaluations} evaluations diverged, so the sweep resolved "
                f"no {self.name} and there is no grid of the same resolution to compare with."
            )
        spacing = _scale.describe_spacing(self.spacing, self.scale)
        resolved = (
            "the width of the interval it reports for the optimum"
            if self.spacing_source == "interval"
            else "the width of the final best interval, wider than its reported interval"
        )
        size = (
            f"The equivalent grid is evenly spaced on a {self.scale} scale from the lowest to the "
            f"highest evaluated {self.name} ({self.span[0]:.4g} to {self.span[1]:.4g}), with the "
            f"resolution the search resolved around its optimum ({resolved}: {spacing}), so "
            f"{self.grid_evaluations} values."
        )
        cost = (
            f"Its time is the sweep's one-time cost ({self.one_time_seconds:.2f} s of set-up and "
            f"compilation) plus {self.grid_evaluations} times the measured "
            f"{self.seconds_per_evaluation:.4f} s per evaluation ({self.per_evaluation_source})."
        )
        return f"{size} {cost}"


def efficiency(result: SweepResult) -> Efficiency:
    """Sizes and times the grid equivalent to ``result`` (see :class:`Efficiency`)."""
    scale = result.scale
    values = [e.value for e in result.evaluations]
    span = (min(values), max(values))
    spacing, spacing_source = _resolved_spacing(result)
    if spacing is not None:
        count = _scale.grid_size(*span, spacing, scale)
    else:
        spacing, count = (1.0 if scale == "log" else 0.0), 1
    per_evaluation, source = _seconds_per_evaluation(result)
    one_time = max(result.search_seconds - per_evaluation * len(values), 0.0)
    return Efficiency(
        name=result.value_name,
        evaluations=len(values),
        span=span,
        scale=scale,
        spacing=spacing,
        spacing_source=spacing_source,
        grid_evaluations=count,
        grid_seconds=one_time + count * per_evaluation,
        seconds_per_evaluation=per_evaluation,
        per_evaluation_source=source,
        one_time_seconds=one_time,
        sweep_seconds=result.search_seconds,
        comparable=any(not e.diverged for e in result.evaluations),
    )


def _resolved_spacing(result: SweepResult) -> tuple[float | None, str]:
    """The grid step the sweep resolved: its interval, or the final best interval if wider."""
    values = [e.value for e in result.evaluations]
    scores = [result.objective(e.score) for e in result.evaluations]  # lower is better
    ranked = _selector.rank_intervals(values, scores) if len(values) > 1 else []
    if not ranked:
        return None, "none"
    neighbours = _scale.spacing(ranked[0].low, ranked[0].high, result.scale)
    low, high = result.confidence.best.interval
    valid = math.isfinite(low) and math.isfinite(high) and high > low
    if valid and (result.scale != "log" or low > 0):
        interval = _scale.spacing(low, high, result.scale)
        if interval > neighbours:
            return interval, "interval"
    return neighbours, "best interval"


def _seconds_per_evaluation(result: SweepResult) -> tuple[float, str]:
    """The measured cost of one more evaluation, and how it was measured, in words."""
    warm = [s for s in result.stages[1:] if s.compile_seconds == 0 and s.values]
    if warm:
        count = sum(len(s.values) for s in warm)
        return sum(s.seconds for s in warm) / count, (
            f"wall time of stages {warm[0].index} to {warm[-1].index}, which reuse the compiled "
            f"program, divided by the {count} values they evaluated"
        )
    count = len(result.evaluations)
    epochs = sum(sum(s.seconds_per_epoch) for s in result.stages)
    return epochs / max(count, 1), (
        f"per-epoch wall time summed over the sweep, divided by the {count} values"
    )
