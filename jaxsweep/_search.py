"""The search seam: what the driver asks of a search, as a record of pure functions.

The driver knows nothing about where to look or when to stop: it hands the search an
:class:`Evaluated` (the history as plain numbers) and asks three things, in optax's style of a
NamedTuple of functions:

* ``plan(evaluated, config) -> StagePlan``: the next stage's values (a plan may carry its own
  training budget, for stages that train longer than the sweep's);
* ``stop(evaluated, config) -> str | None``: after a stage, a stop reason, or None to go on;
* ``summary(evaluated, config) -> SearchSummary``: what the finished search says of itself
  (the precision reached, flat ends, warnings for the user).

Each is pure (no I/O, no globals, no randomness), so the same history always plans the same
stage and a resumed sweep equals an uninterrupted one. :func:`hierarchical` is the
coarse-to-fine search (5 log-spaced values, then 5 inside the 2 best intervals, ...); other
searches plug in without touching the driver.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import _confidence, _scale, _selector

if TYPE_CHECKING:
    from ._config import SweepConfig


class Evaluated(NamedTuple):
    """A sweep's history as a search reads it: lower scores are better, diverged is +inf."""

    points: tuple[float, ...]  # every value evaluated, in the order evaluated
    scores: tuple[float, ...]  # their mean scores, signed so that lower is better
    seed_scores: tuple[tuple[float, ...], ...]  # per value, per seed (+inf where it diverged)
    stage_bests: tuple[float, ...]  # the best score after each finished stage
    lanes: int  # lanes (values x seeds) trained so far
    steps: int = 0  # training steps of each of these lanes (0: not said)
    # the same, for each longer training horizon trained after the search, shortest first
    longer: tuple[Evaluated, ...] = ()

    @property
    def stages(self) -> int:
        """Stages finished."""
        return len(self.stage_bests)

    def at(self, steps: int) -> Evaluated:
        """What was trained at ``steps`` steps per lane: this, a longer horizon, or nothing."""
        if steps == self.steps:
            return self
        for horizon in self.longer:
            if horizon.steps == steps:
                return horizon
        return Evaluated((), (), (), (), 0, steps)


class SearchSummary(NamedTuple):
    """What a finished search says of its answer."""

    precision: float  # the interval's relative half-width (inf: open or no interval)
    plateaus: tuple[_selector.Plateau, ...]  # flat ends, nearest the low end first
    notes: tuple[str, ...]  # warnings for the user, in words


class Search(NamedTuple):
    """A search, as the driver calls it (every function pure)."""

    plan: Callable[[Evaluated, SweepConfig], _selector.StagePlan]
    stop: Callable[[Evaluated, SweepConfig], str | None]
    summary: Callable[[Evaluated, SweepConfig], SearchSummary]


# ----------------------------------------------------------------------------- hierarchical


def plateaus(evaluated: Evaluated, config: SweepConfig) -> tuple[_selector.Plateau, ...]:
    """The flat ends the hierarchical search stopped following (several seeds only)."""
    if not config.expand:
        return ()
    width = _selector.expansion_width(
        config.value_range, config.points_per_stage, config.top_k, config.scale
    )
    return _selector.plateaus(
        evaluated.points,
        evaluated.seed_scores,
        value_range=config.value_range,
        width=width,
        scale=config.scale,
        stages=_selector.stage_indices(len(evaluated.points), config.points_per_stage),
    )


def confidence(evaluated: Evaluated, config: SweepConfig) -> _confidence.Confidence:
    """The interval the result will report for this history (the same computation: see
    ``SweepResult.confidence``)."""
    return _confidence.sweep_confidence(
        evaluated.points,
        evaluated.scores,
        evaluated.seed_scores,
        _selector.stage_indices(len(evaluated.points), config.points_per_stage),
        config.scale,
        plateaus(evaluated, config),
        stable=config.precision is not None,
    )


def precision(evaluated: Evaluated, config: SweepConfig) -> float:
    """The relative half-width of the interval the result will report."""
    return _confidence.relative_half_width(confidence(evaluated, config).best, config.scale)


def _plan(evaluated: Evaluated, config: SweepConfig) -> _selector.StagePlan:
    """The coarse-to-fine plan; once a requested precision only needs a better fit, values
    spread over the interval instead (:func:`precision_plan`)."""
    plan = _selector.plan_stage(
        evaluated.stages, evaluated.points, evaluated.scores, config, evaluated.seed_scores
    )
    if config.precision is None or plan.expansion is not None or evaluated.stages == 0:
        return plan
    best = confidence(evaluated, config).best  # an open interval is still a finite span
    if not (math.isfinite(best.low) and math.isfinite(best.high) and best.low < best.high):
        return plan
    return precision_plan(evaluated.points, (best.low, best.high), config)


# how far beyond the interval, on each side and as a share of its width on the axis, a
# precision stage places values: the fit needs the curve rising on both sides
PRECISION_MARGIN = 0.5


def precision_plan(points, interval: tuple[float, float], config: SweepConfig):
    """``points_per_stage`` new values spread over the interval and a margin around it, each
    in the widest gap left between the values evaluated there.

    Refining the best-ranked intervals packs values around the noisiest lucky score (a real
    sweep put 20 values within 1% of one rate, where each seed's score jumps by 0.01 from one
    value to the next); a cubic over the interval needs them spread, so every stage fills the
    largest gaps, evenly on the sweep's axis.
    """
    scale = config.scale
    low, high = (_scale.to_axis(v, scale) for v in interval)
    margin = PRECISION_MARGIN * (high - low)
    low, high = low - margin, high + margin
    if scale == "linear" and min(points) >= 0:
        low = max(low, 0.0)  # a linear sweep that starts at zero never goes below it
    inside = sorted(
        {float(_scale.to_axis(p, scale)) for p in points if low < _scale.to_axis(p, scale) < high}
    )
    anchors = [low, *inside, high]
    new = []
    for _ in range(config.points_per_stage):
        gaps = np.diff(anchors)
        widest = int(np.argmax(gaps))
        middle = anchors[widest] + gaps[widest] / 2
        anchors.insert(widest + 1, middle)
        new.append(float(_scale.from_axis(middle, scale)))
    span = (float(_scale.from_axis(low, scale)), float(_scale.from_axis(high, scale)))
    return _selector.StagePlan(tuple(sorted(new)), (span,), None)


def _stop(evaluated: Evaluated, config: SweepConfig) -> str | None:
    """After a stage: the first rule that ends the sweep, in order of what was asked for.

    A requested precision, once reached, ends it (``"precision"``). Without one, a stage that
    improved the best score too little (``"min_improvement"``, one seed by default), the
    stage bound (``"completed"``) and nothing left to resolve (``"resolution"``) do. With one,
    the search goes on refining until the stage bound or ``max_lanes`` (``"budget"``).
    """
    wanted = config.precision
    if wanted is not None and precision(evaluated, config) <= wanted:
        return "precision"
    bests = evaluated.stage_bests
    if (
        wanted is None
        and len(bests) >= 2
        and _selector.should_stop(bests[-2], bests[-1], config.min_improvement)
    ):
        return "min_improvement"
    out_of_lanes = (
        config.max_lanes is not None and evaluated.lanes + config.lanes_per_stage > config.max_lanes
    )
    if evaluated.stages >= config.stages or out_of_lanes:
        return "completed" if wanted is None and not out_of_lanes else "budget"
    if wanted is None and _resolved(evaluated, config):
        return "resolution"
    return None


def _resolved(evaluated: Evaluated, config: SweepConfig) -> bool:
    width = _selector.expansion_width(
        config.value_range, config.points_per_stage, config.top_k, config.scale
    )
    return _selector.resolved(
        evaluated.points,
        evaluated.scores,
        evaluated.seed_scores,
        scale=config.scale,
        expand=config.expand,
        value_range=config.value_range,
        width=width,
        stage_size=config.points_per_stage,
    )


def _summary(evaluated: Evaluated, config: SweepConfig) -> SearchSummary:
    flat = plateaus(evaluated, config)
    reached = precision(evaluated, config)
    notes = [_plateau_note(p, config) for p in flat]
    edge = _edge_note(evaluated, config, flat)
    if edge is not None:
        notes.append(edge)
    if config.precision is not None and reached > config.precision:
        notes.append(
            f"the requested precision {config.precision:g} was not reached: the interval's "
            f"relative half-width is {_width_words(reached)} after {evaluated.lanes} lanes "
            "(raise max_lanes or stages, or add seeds)"
        )
    return SearchSummary(reached, flat, tuple(notes))


def hierarchical() -> Search:
    """The coarse-to-fine search: a grid, then refinement of the best intervals, following an
    optimum beyond the range, stopping where the seeds' noise leaves nothing to resolve (or
    at a requested precision)."""
    return Search(plan=_plan, stop=_stop, summary=_summary)


# ----------------------------------------------------------------------------- words


def _name(config: SweepConfig) -> str:
    return config.hyperparam.replace("_", " ")


def _plateau_note(plateau: _selector.Plateau, config: SweepConfig) -> str:
    at = "at or below" if plateau.direction == "down" else "at or above"
    return (
        f"values of the {_name(config)} {at} {plateau.bound:.3g} score alike (evaluated out to "
        f"{plateau.edge:.3g}): a plateau, no longer expanded into; any of them is as good"
    )


def _edge_note(evaluated: Evaluated, config: SweepConfig, flat) -> str | None:
    """A warning for a sweep whose answer is not bracketed by what it evaluated, else None."""
    best_value, best_score = _selector.best_point(evaluated.points, evaluated.scores)
    if math.isinf(best_score):
        return "every evaluation diverged: try a lower range or a different optimizer"
    edge = _selector.edge_of_best(evaluated.points, evaluated.scores)
    if edge is None or edge in {p.direction for p in flat}:
        return None
    return (
        f"the best {_name(config)} {best_value:.3g} is at the edge of what was evaluated: the "
        "optimum may lie beyond it (run more stages or widen the range)"
    )


def _width_words(relative: float) -> str:
    return "unbounded (the interval is open)" if math.isinf(relative) else f"{relative:.3g}"
