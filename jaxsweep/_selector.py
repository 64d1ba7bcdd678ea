"""The coarse-to-fine search: which values to evaluate next, and when to stop.

Everything here is a pure function of the evaluated history (values, scores and, with
several seeds, the per-seed scores), so the same history always yields the same next stage:
no I/O, no globals, no randomness.

Vocabulary:
  * a *point* is a value of the swept hyperparameter (a learning rate by default);
  * an *interval* is the open span between two neighbouring evaluated points;
  * *scale* is ``"log"`` (spacing by ratios, the usual choice for learning rates) or
    ``"linear"`` (spacing by differences, e.g. for momentum);
  * with several seeds, the *tied run* is the run of neighbouring points around the best that
    are not significantly worse than it, and an interval is *resolvable* when its two ends
    differ significantly (paired t tests over seeds, see ``_noise``). The search refines only
    resolvable intervals that touch the tied run, and is *resolved* when none is left: finer
    values there could not be told apart from their neighbours with this many seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from . import _noise
from ._confidence import MIN_CURVE_POINTS
from ._config import KNOWN_RANGES
from ._scale import Scale, distance, fill, from_axis, spaced, to_axis

if TYPE_CHECKING:
    from ._config import SweepConfig

Direction = Literal["up", "down"]


class Interval(NamedTuple):
    """An open span between two neighbouring evaluated points, with its ranking key."""

    low: float
    high: float
    best_score: float  # the better (lower) of the two endpoint scores
    worst_score: float  # the worse of the two endpoint scores


class StagePlan(NamedTuple):
    """What the next stage evaluates and why."""

    points: tuple[float, ...]  # new, distinct, sorted values to evaluate
    intervals: tuple[tuple[float, float], ...]  # the kept intervals (or the expansion span)
    expansion: Direction | None  # set when the search left the evaluated range
    # training steps per lane of this stage (a longer horizon); None: the sweep's own
    steps: int | None = None


def clean_score(score: float) -> float:
    """Maps NaN and infinities to +inf: a diverged evaluation is the worst possible."""
    score = float(score)
    return score if math.isfinite(score) else math.inf


def initial_points(value_range: tuple[float, float], count: int, scale: Scale = "log") -> tuple:
    """Stage 0: ``count`` points evenly spaced (on ``scale``) over ``value_range``, ends included.

    >>> [f"{p:.1e}" for p in initial_points((1e-5, 1e-2), 5)]
    ['1.0e-05', '5.6e-05', '3.2e-04', '1.8e-03', '1.0e-02']
    """
    return spaced(value_range[0], value_range[1], count, scale)


def rank_intervals(points: Sequence[float], scores: Sequence[float]) -> list[Interval]:
    """Intervals between neighbouring evaluated points, best first.

    An interval is as good as its better endpoint; ties are broken by the worse endpoint,
    then by position (lower values first) so that the order is total and deterministic.
    """
    pairs = sorted(zip(points, (clean_score(s) for s in scores), strict=True))
    intervals = [
        Interval(lo, hi, min(s_lo, s_hi), max(s_lo, s_hi))
        for (lo, s_lo), (hi, s_hi) in zip(pairs, pairs[1:], strict=False)
    ]
    return sorted(intervals, key=lambda iv: (iv.best_score, iv.worst_score, iv.low))


def best_point(points: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """The evaluated point with the lowest score (ties: the smaller value) and that score.

    When every evaluation diverged, the smallest value is returned: smaller steps are the
    direction in which training becomes stable.
    """
    cleaned = [clean_score(s) for s in scores]
    index = min(range(len(points)), key=lambda i: (cleaned[i], points[i]))
    return float(points[index]), cleaned[index]


def edge_of_best(points: Sequence[float], scores: Sequence[float]) -> Direction | None:
    """``"up"``/``"down"`` when the best point is the largest/smallest value evaluated."""
    best, _ = best_point(points, scores)
    if best >= max(points):
        return "up"
    if best <= min(points):
        return "down"
    return None


def _split_count(total: int, parts: int) -> list[int]:
    """Splits ``total`` points over ``parts`` intervals, the better intervals first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def expansion_span(
    points: Sequence[float],
    direction: Direction,
    initial_step: float,
    widths: int,
    scale: Scale,
) -> tuple[float, float]:
    """The span just beyond the evaluated range, ``widths`` stage-0 steps wide (on ``scale``).

    On a linear scale a downward span from a positive edge never crosses zero (it stops at half
    of the edge value), since hyperparameters swept there are usually non-negative.
    """
    edge = max(points) if direction == "up" else min(points)
    width = widths * initial_step
    e = to_axis(edge, scale)
    if direction == "up":
        return edge, from_axis(e + width, scale)
    low = from_axis(e - width, scale)
    if scale == "linear" and edge > 0 and low <= 0:
        low = edge / 2
    return low, edge


class _Noisy(NamedTuple):
    """The per-seed view of a history: sorted points, their score matrix, the tied run."""

    points: tuple[float, ...]  # sorted
    matrix: np.ndarray  # (points, seeds) per-seed scores, non-finite as +inf
    run: tuple[int, int]  # first and last index of the tied run around the best


def _noisy(points: Sequence[float], seed_scores) -> _Noisy | None:
    """The per-seed view when every point has >= 2 seeds, else None (no noise estimate)."""
    if _noise.seed_count(seed_scores) < 2:
        return None
    if len(seed_scores) != len(points):
        raise ValueError(
            f"seed_scores: expected one row per point, got {len(seed_scores)} for {len(points)}"
        )
    order = sorted(range(len(points)), key=lambda i: points[i])
    matrix = _noise.score_matrix([seed_scores[i] for i in order])
    return _Noisy(tuple(float(points[i]) for i in order), matrix, _noise.tied_run(matrix))


def _noisy_direction(view: _Noisy, points, scores) -> Direction | None:
    """Expand towards an edge that the tied run reaches: the optimum may lie beyond it."""
    first, last = view.run
    top, bottom = last == len(view.points) - 1, first == 0
    if top and bottom:  # nothing is resolved yet: follow the best, as without seeds
        return edge_of_best(points, scores)
    return "up" if top else "down" if bottom else None


class Plateau(NamedTuple):
    """A flat end: toward ``direction``, every value evaluated scores alike with the best."""

    direction: Direction  # "down": values at or below ``bound`` score alike; "up": at or above
    bound: float  # the far end of the last band inward that scores like the edge's band
    edge: float  # the farthest value evaluated that way


def expansion_width(value_range, points_per_stage: int, top_k: int, scale: Scale) -> float:
    """How far (on ``scale``'s axis) one expansion reaches beyond the evaluated range."""
    return top_k * distance(value_range[0], value_range[1], scale) / (points_per_stage - 1)


def plateaus(
    points: Sequence[float],
    seed_scores: Sequence[Sequence[float]] | None,
    *,
    value_range: tuple[float, float],
    width: float,
    scale: Scale = "log",
    stages: Sequence[int] | None = None,
) -> tuple[Plateau, ...]:
    """The flat ends of a noise-aware search (several seeds), nearest the low end first.

    An end is flat when the search has already expanded beyond the given range that way and
    scores stopped changing there: the values within ``width`` (one expansion,
    :func:`expansion_width`) of the edge and those in the next ``width`` inward show no trend
    within either and do not differ as groups (seed by seed: each seed's slope over a group,
    each seed's mean over it; paired two-sided t tests, 95%, the pooled floor scaled to the
    groups). Groups against groups, not values against
    the best: among many alike values the best is the luckiest, and values compared with it
    look worse by chance. A further expansion would only find more of the same, so the search
    stops following that end and says "values at or below X score alike" (X: the far end of
    the last band inward, one width each, that still scores like the edge's band) instead of
    chasing the edge (a small weight decay, down to 1e-12). One
    seed never finds one: it has no measure of the noise.

    With ``stages`` (each point's stage), an end found flat after any stage stays flat: the
    values a later stage adds while refining elsewhere (next to an optimum at the plateau's
    inner end) must not reopen an end that an expansion already showed to be flat.
    """
    if _noise.seed_count(seed_scores) < 2:
        return ()  # one seed has no measure of the noise
    if stages is not None:  # a flat end shown after any stage stays flat
        return _plateaus_over_stages(points, seed_scores, stages, value_range, width, scale)
    view = _noisy(points, seed_scores)
    if view is None:
        return ()
    axis = np.asarray(to_axis(np.asarray(view.points), scale), np.float64)
    found = []
    if view.points[0] < value_range[0]:
        flat = _flat_end(view, axis[0] - axis, width)
        if flat is not None:
            found.append(Plateau("down", flat, view.points[0]))
    if view.points[-1] > value_range[1]:
        flat = _flat_end(view, axis - axis[-1], width, upward=True)
        if flat is not None:
            found.append(Plateau("up", flat, view.points[-1]))
    return tuple(found)


def _plateaus_over_stages(points, seed_scores, stages, value_range, width, scale):
    found: dict[str, Plateau] = {}
    for last in sorted(set(stages)):
        keep = [i for i, s in enumerate(stages) if s <= last]
        rows = [seed_scores[i] for i in keep]
        prefix = plateaus(
            [points[i] for i in keep], rows, value_range=value_range, width=width, scale=scale
        )
        found.update({p.direction: p for p in prefix})
    edges = {"down": min(points), "up": max(points)} if points else {}
    flat = [found[d]._replace(edge=edges[d]) for d in ("down", "up") if d in found]
    return tuple(flat)


def _flat_end(view: _Noisy, offset: np.ndarray, width: float, upward: bool = False):
    """The far value of the last band inward that scores like the edge's band, or None when
    the next band already differs.

    ``offset`` is each value's distance from the edge on the axis (its size is what counts);
    band ``k`` holds the values between ``k`` and ``k + 1`` widths from the edge. A band
    scores like the edge's when both are level (no significant slope within either) and
    their levels do not differ.
    """
    distance_from_edge = np.abs(offset)
    bands = np.floor(distance_from_edge / width * (1 - 1e-9)).astype(int)
    edge = bands == 0
    if not _level(view, edge, distance_from_edge):
        return None
    bound = None
    for k in range(1, int(bands.max()) + 1):
        band = bands == k
        if not (_level(view, band, distance_from_edge) and _alike(view, edge, band)):
            break
        values = np.asarray(view.points)[band]
        bound = float(values.min() if upward else values.max())
    return bound


def _level(view: _Noisy, band: np.ndarray, position: np.ndarray) -> bool:
    """Whether the scores of a band of values show no trend along the axis: each seed's
    least-squares slope over the band, paired two-sided t test (95%) of their mean, the
    standard error at least what the pooled floor implies for a slope."""
    if band.sum() < 2 or not np.isfinite(view.matrix[band]).all():
        return False
    x, y = position[band], view.matrix[band]
    centred = x - x.mean()
    spread = float(centred @ centred)
    if spread <= 0:
        return False
    slopes = centred @ (y - y.mean(axis=0)) / spread  # (seeds,)
    seeds = len(slopes)
    floor = _noise.pooled_error(view.matrix) / math.sqrt(2 * spread)
    error = max(float(slopes.std(ddof=1)) / math.sqrt(seeds), floor)
    return abs(float(slopes.mean())) <= _noise.t_quantile(0.975, seeds - 1) * error


def _alike(view: _Noisy, first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two groups of values score alike: each seed's mean over each group, paired
    two-sided t test (95%), the standard error at least the pooled floor scaled to the
    groups' sizes."""
    matrix = view.matrix
    if second.sum() < 1 or not np.isfinite(matrix[second]).all():
        return False
    difference = matrix[first].mean(axis=0) - matrix[second].mean(axis=0)  # (seeds,)
    seeds = len(difference)
    floor = _noise.pooled_error(matrix) * math.sqrt((1 / first.sum() + 1 / second.sum()) / 2)
    error = max(float(difference.std(ddof=1)) / math.sqrt(seeds), floor)
    return abs(float(difference.mean())) <= _noise.t_quantile(0.975, seeds - 1) * error


def _resolvable(view: _Noisy, ranked: list[Interval]) -> list[Interval]:
    """The ranked intervals worth refining: they touch the tied run and their ends differ
    significantly. While the fit around the best lacks values, every interval in its window."""
    first, last = view.run
    index = {p: i for i, p in enumerate(view.points)}
    low, high = max(first - 1, 0), min(last + 1, len(view.points) - 1)
    if high - low + 1 < MIN_CURVE_POINTS:
        return [iv for iv in ranked if low <= index[iv.low] and index[iv.high] <= high]
    return [
        iv
        for iv in ranked
        if index[iv.high] >= first
        and index[iv.low] <= last
        and _noise.different(view.matrix, index[iv.low], index[iv.high])
    ]


def resolved(
    points: Sequence[float],
    scores: Sequence[float],
    seed_scores: Sequence[Sequence[float]] | None,
    *,
    scale: Scale = "log",
    expand: bool = True,
    value_range: tuple[float, float] | None = None,
    width: float = math.inf,
    stage_size: int = 5,
) -> bool:
    """True when, with several seeds, no further stage can resolve anything new.

    That is: the tied run around the best is bracketed by worse values or by a flat end (see
    :func:`plateaus`, given ``value_range`` and the expansion ``width``; or ``expand`` is off),
    the window of a fit around it holds enough values, and no interval touching the run has
    significantly different ends. Always False with one seed (no estimate of the noise).
    """
    view = _noisy(points, seed_scores)
    if view is None or len(points) < 2:
        return False
    flat = _flat(points, seed_scores, value_range, width, scale, stage_size)
    if expand and _direction(view, points, scores, scale, flat) is not None:
        return False
    return not _resolvable(view, rank_intervals(points, scores))


def _direction(
    view: _Noisy | None, points, scores, scale: Scale, flat: Sequence[Direction] = ()
) -> Direction | None:
    if view is None:
        direction = edge_of_best(points, scores)
    else:
        direction = _noisy_direction(view, points, scores)
    if direction == "down" and scale == "linear" and min(points) <= 0:
        return None  # a linear sweep that reached zero does not go negative
    return None if direction in flat else direction  # a flat end is not followed


def stage_indices(count: int, per_stage: int) -> list[int]:
    """The stage of each of ``count`` values in evaluation order: every stage evaluates
    exactly ``per_stage`` of them (:func:`next_stage` places that many)."""
    return [i // per_stage for i in range(count)]


def _flat(points, seed_scores, value_range, width, scale, count) -> tuple[Direction, ...]:
    if value_range is None:
        return ()
    stages = stage_indices(len(points), count)
    found = plateaus(
        points, seed_scores, value_range=value_range, width=width, scale=scale, stages=stages
    )
    return tuple(p.direction for p in found)


def next_stage(
    points: Sequence[float],
    scores: Sequence[float],
    *,
    count: int,
    top_k: int,
    initial_step: float,
    scale: Scale = "log",
    expand: bool = True,
    seed_scores: Sequence[Sequence[float]] | None = None,
    value_range: tuple[float, float] | None = None,
) -> StagePlan:
    """Plans the next stage from everything evaluated so far.

    Args:
      points: every value evaluated in earlier stages (any order, distinct).
      scores: their scores, lower is better; NaN/inf count as diverged (worst).
      count: how many new points to place.
      top_k: how many of the best intervals to refine.
      initial_step: the spacing of stage 0 on ``scale`` (log-ratio for ``"log"``); sets the
        width of an expansion beyond the evaluated range.
      scale: ``"log"`` or ``"linear"``.
      expand: follow an optimum that sits on the edge of the evaluated range.
      seed_scores: per point, its score for each seed (optional). With two or more seeds the
        search is noise-aware: it expands when the tied run reaches an edge, and refines only
        resolvable intervals touching the run (all of them, ranked, once :func:`resolved`).
      value_range: the range stage 0 covered; given, a flat end beyond it (see
        :func:`plateaus`) is no longer expanded into.

    Returns:
      A :class:`StagePlan` with exactly ``count`` new, distinct, sorted points. When the best
      point (with seeds: the tied run) is on an edge, every point goes into the span beyond
      that edge (``expansion`` says which way); otherwise the ``top_k`` best intervals share
      them, the best interval getting any extra point. No point equals one already evaluated.

    >>> plan = next_stage([1e-3, 1e-2, 1e-1], [0.5, 0.2, 0.9], count=5, top_k=2,
    ...                   initial_step=math.log(10))
    >>> len(plan.points), plan.expansion
    (5, None)
    """
    if len(points) < 2:
        raise ValueError(f"points: need at least 2 evaluated points, got {len(points)}")
    view = _noisy(points, seed_scores)
    width = top_k * initial_step
    flat = _flat(points, seed_scores, value_range, width, scale, count)
    direction = _direction(view, points, scores, scale, flat) if expand else None
    if direction is not None:
        span = expansion_span(points, direction, initial_step, top_k, scale)
        new = fill(span[0], span[1], count, scale)
        return StagePlan(tuple(sorted(new)), (span,), direction)

    ranked = rank_intervals(points, scores)
    if view is not None:
        ranked = _resolvable(view, ranked) or _touching_run(view, ranked)
    ranked = ranked[:top_k]
    new: list[float] = []
    for interval, share in zip(ranked, _split_count(count, len(ranked)), strict=True):
        new.extend(fill(interval.low, interval.high, share, scale))
    kept = tuple(sorted((iv.low, iv.high) for iv in ranked))
    return StagePlan(tuple(sorted(new)), kept, None)


def _touching_run(view: _Noisy, ranked: list[Interval]) -> list[Interval]:
    """Once resolved, the intervals touching the tied run (the search goes on if asked to)."""
    first, last = view.run
    index = {p: i for i, p in enumerate(view.points)}
    touching = [iv for iv in ranked if index[iv.high] >= first and index[iv.low] <= last]
    return touching or ranked


def plan_stage(
    stage: int,
    points: Sequence[float],
    scores: Sequence[float],
    config: SweepConfig,
    seed_scores: Sequence[Sequence[float]] | None = None,
) -> StagePlan:
    """Stage 0 is the grid over the range; later stages come from the scores so far (and,
    with several seeds, from the per-seed scores: see :func:`next_stage`).

    >>> from jaxsweep._config import make_config
    >>> config = make_config(
    ...     hyperparam="learning_rate", value_range=(1e-3, 1e-1), range_name="lr_range",
    ...     scale="log", points_per_stage=3, stages=2, top_k=1, epochs=1, batch_size=8,
    ...     seeds=1, seed=0, min_improvement=0.0, validation_fraction=0.2, expand=True)
    >>> [round(p, 6) for p in plan_stage(0, [], [], config).points]
    [0.001, 0.01, 0.1]
    >>> plan_stage(1, [1e-3, 1e-2, 1e-1], [0.9, 0.5, 0.7], config).intervals
    ((0.01, 0.1),)
    """
    if stage == 0:
        grid = initial_points(config.value_range, config.points_per_stage, config.scale)
        return StagePlan(grid, (), None)
    plan = next_stage(
        points,
        scores,
        count=config.points_per_stage,
        top_k=config.top_k,
        initial_step=config.initial_step,
        scale=config.scale,
        expand=config.expand,
        seed_scores=seed_scores,
        value_range=config.value_range,
    )
    return _within_valid(plan, points, config)


def _within_valid(plan: StagePlan, points, config: SweepConfig) -> StagePlan:
    """An expansion kept short of a bound the hyperparameter may not reach (``b1`` < 1):
    beyond the edge, at most half way to the bound on the sweep's axis."""
    valid_high = KNOWN_RANGES.get(config.hyperparam, (0.0, math.inf))[1]
    if plan.expansion != "up" or not math.isfinite(valid_high):
        return plan
    low, high = plan.intervals[0]
    if high < valid_high:
        return plan
    edge = to_axis(max(points), config.scale)
    high = from_axis(edge + (to_axis(valid_high, config.scale) - edge) / 2, config.scale)
    new = fill(low, high, config.points_per_stage, config.scale)
    return StagePlan(tuple(sorted(new)), ((low, high),), "up")


def improvement(previous_best: float, new_best: float) -> float:
    """Relative improvement of the best score (positive is better); +inf from a diverged start."""
    previous_best, new_best = clean_score(previous_best), clean_score(new_best)
    if math.isinf(previous_best):
        return math.inf if math.isfinite(new_best) else 0.0
    if previous_best == new_best:
        return 0.0
    return (previous_best - new_best) / max(abs(previous_best), 1e-30)


def should_stop(previous_best: float, new_best: float, min_improvement: float) -> bool:
    """True when a stage improved the best score by less than ``min_improvement`` (relative).

    A sweep that has only diverged so far keeps going: nothing has been found to refine.
    """
    if min_improvement <= 0:
        return False
    if math.isinf(clean_score(previous_best)) and math.isinf(clean_score(new_best)):
        return False
    return improvement(previous_best, new_best) < min_improvement
