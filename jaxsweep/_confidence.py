"""How precisely a sweep located its best value: intervals that say what they rest on.

Pure numpy on plain sequences (no result objects, no I/O), so every estimate can be checked
against synthetic scores whose optimum is known. The target is the value that minimises the
*expected* score over the training randomness (initialisation, batch order). Each method
returns an :class:`Estimate`:

* ``seed_curve`` (``seeds >= 2``, the default): a cubic in log value fitted to each seed's
  scores around the best; the refined value is the minimum of the seed-averaged cubic and the
  95% interval holds the values where its slope is not significantly different from zero,
  with the standard error taken from the spread of the slopes between seeds (Student's t).
* ``not_worse`` (``seeds >= 2``, when no reliable fit exists): the evaluated values not
  significantly worse than the best (paired t test over seeds) and their outer neighbours.
* ``quadratic_fit`` (one seed): a least-squares parabola of score against log value around the
  best evaluated value, with Fieller's interval for its vertex. It describes one seed's
  curve: nothing in one seed shows how the minimum moves from seed to seed.
* ``neighbours`` (one seed, no reliable fit): the evaluated values on either side of the best.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _noise, _scale

LEVEL = 0.95  # every interval here is a 95% interval

MIN_FIT_POINTS = 5  # a parabola has 3 parameters: 5 points leave 2 degrees of freedom for noise


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    return _noise.t_quantile(0.975, df)


@dataclass(frozen=True)
class QuadraticFit:
    """``score ≈ a u² + b u + c`` with ``u = (axis(lr) - center) / scale``, fitted on a window.

    ``axis`` is ``log`` for a log-scale sweep (learning rates) and the identity for a linear one.
    """

    center: float  # the best evaluated rate on the axis
    scale: float  # half-width of the window on the axis (keeps u in [-1, 1])
    a: float
    b: float
    c: float
    window: tuple[float, float]  # lowest and highest rate used by the fit
    points: int  # evaluations inside the window
    curvature_t: float  # a / se(a): how clearly the parabola opens upwards
    residual_std: float  # root mean square residual (per degree of freedom)
    axis: str = "log"  # "log" or "linear": the sweep's scale

    @property
    def terms(self) -> int:
        """Coefficients fitted (3 for a parabola)."""
        return 3

    def predict(self, lrs) -> np.ndarray:
        """The fitted score at ``lrs``."""
        u = (_scale.to_axis(np.asarray(lrs, np.float64), self.axis) - self.center) / self.scale
        return self.a * u**2 + self.b * u + self.c


@dataclass(frozen=True)
class Estimate:
    """A learning rate and a 95% interval, with the method and the reasons behind them."""

    lr: float  # the point estimate
    low: float  # interval, inclusive
    high: float
    method: str  # "seed_curve" | "not_worse" | "plateau" | "quadratic_fit" | "neighbours" | "none"
    bracketed: bool  # evaluated rates exist on both sides of the best one
    note: str  # one or two sentences a reader can quote: what the interval rests on
    fit: QuadraticFit | SeedCurveFit | None = None  # the fitted curve, where one was used
    seeds: int = 1  # seeds behind each score: with one, nothing shows seed-to-seed variation

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high

    @property
    def label(self) -> str:
        """What the interval is, in words: a 95% interval only where a method gives one."""
        if self.method == "plateau":
            return "plateau (no bound on the flat side)"
        if self.method in ("seed_curve", "not_worse"):
            return "95% interval" if self.bracketed else "open 95% interval (not bracketed)"
        if self.method == "quadratic_fit":
            return "one-seed interval"
        if self.method == "neighbours":
            return "bracket" if self.bracketed else "open bracket (optimum not bracketed)"
        return "no interval"

    def contains(self, lr: float) -> bool:
        return self.low <= lr <= self.high


@dataclass(frozen=True)
class Confidence:
    """What a result says about its optimum: the interval shown, and the refined estimate."""

    best: Estimate  # the interval reported for the optimum
    refined: Estimate  # the refined value: the fitted curve's minimum (or its fallback)


# ----------------------------------------------------------------------------- helpers


def _finite_sorted(
    lrs: Sequence[float], scores: Sequence[float], scale: str = "log"
) -> tuple[np.ndarray, np.ndarray]:
    """Rates and scores, sorted by rate, without diverged (non-finite) evaluations."""
    _scale.check(scale)
    x = np.asarray(lrs, np.float64)
    y = np.asarray(scores, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"scores: expected one score per value, got {y.shape} for {x.shape}")
    keep = np.isfinite(y) & np.isfinite(x) & ((x > 0) if scale == "log" else True)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _best_index(y: np.ndarray) -> int:
    # rates are sorted, so argmin's first hit is the smaller rate on ties (as the selector does)
    return int(np.argmin(y))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def neighbours(lrs: Sequence[float], scores: Sequence[float], scale: str = "log") -> Estimate:
    """The bracket of evaluated rates around the best one (the best itself on an open side).

    Raises:
      ValueError: no evaluation has a finite score.
    """
    x, y = _finite_sorted(lrs, scores, scale)
    if len(x) == 0:
        raise ValueError("scores: every evaluation diverged, there is no best value to bracket")
    i = _best_index(y)
    best = float(x[i])
    low = float(x[i - 1]) if i > 0 else best
    high = float(x[i + 1]) if i < len(x) - 1 else best
    bracketed = 0 < i < len(x) - 1
    if bracketed:
        note = (
            f"the evaluated values next to the best one ({_fmt(low)} and {_fmt(high)}); "
            "a noise-free unimodal score has its minimum inside this bracket"
        )
    elif len(x) == 1:
        note = "only one evaluation has a finite score: its value is all that is known"
    else:
        side = "smallest" if i == 0 else "largest"
        beyond = "below" if i == 0 else "above"
        note = (
            f"the best value is the {side} evaluated, so the minimum is not bracketed and may "
            f"lie {beyond} {_fmt(best)}; the interval only reaches the nearest evaluated value"
        )
    return Estimate(best, low, high, "neighbours", bracketed, note)


def _widen(estimate: Estimate, bracket: Estimate) -> Estimate:
    """The estimate with its interval stretched to contain the bracket, saying so if it did."""
    low, high = min(estimate.low, bracket.low), max(estimate.high, bracket.high)
    if (low, high) == (estimate.low, estimate.high):
        return estimate
    note = (
        f"{estimate.note}; widened to the evaluated neighbours of the best value "
        f"({_fmt(bracket.low)} to {_fmt(bracket.high)}), the finest resolution the sweep reached"
    )
    return Estimate(estimate.lr, low, high, estimate.method, estimate.bracketed, note, estimate.fit)


# ----------------------------------------------------------------------------- quadratic fit


def _fit_window(u: np.ndarray, y: np.ndarray):
    """OLS parabola on ``u``; returns coefficients (a, b, c), their covariance and residual var."""
    design = np.stack([u**2, u, np.ones_like(u)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    df = len(u) - 3
    variance = float(residual @ residual) / df
    gram_inverse = np.linalg.pinv(design.T @ design)
    return coef, variance * gram_inverse, variance


def _fieller(a: float, b: float, cov: np.ndarray, t: float) -> tuple[float, float] | None:
    """Fieller's interval for the vertex ``-b / 2a``: the ``u`` where the slope ``2au + b`` is
    within ``t`` standard errors of zero. None when it is unbounded (curvature not significant).
    """
    vaa, vab, vbb = cov[0, 0], cov[0, 1], cov[1, 1]
    # (2au + b)^2 <= t^2 (4u^2 vaa + 4u vab + vbb), divided by 4:
    qa = a * a - t * t * vaa
    qb = a * b - t * t * vab
    qc = (b * b - t * t * vbb) / 4
    if qa <= 0:
        return None
    disc = max(qb * qb - 4 * qa * qc, 0.0)  # >= 0 up to rounding: the vertex satisfies it
    root = math.sqrt(disc)
    return (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)


def _window_fit(logs: np.ndarray, y: np.ndarray, center: float, half_width: float, scale: str):
    """The parabola on the rates within ``half_width`` (axis units) of ``center``, if it
    qualifies: returns ``(fit, vertex, (low, high))`` on the axis, or a reason string."""
    inside = np.abs(logs - center) <= half_width * (1 + 1e-12)
    n = int(inside.sum())
    if n < MIN_FIT_POINTS or not (logs[inside].min() < center < logs[inside].max()):
        return "points"
    u = (logs[inside] - center) / half_width
    coef, cov, variance = _fit_window(u, y[inside])
    a, b, c = (float(v) for v in coef)
    t = t_quantile_975(n - 3)
    se_a = math.sqrt(max(float(cov[0, 0]), 0.0))
    curvature_t = a / se_a if se_a > 0 else (math.inf if a > 0 else -math.inf)
    if a <= 0 or curvature_t <= t:
        return "curvature"
    vertex = -b / (2 * a)
    if not (u.min() <= vertex <= u.max()):
        return "vertex"
    bounds = _fieller(a, b, cov, t) if se_a > 0 else (vertex, vertex)
    if bounds is None:  # unreachable after the curvature test, kept for safety
        return "curvature"
    fit = QuadraticFit(
        center=float(center),
        scale=float(half_width),
        a=a,
        b=b,
        c=c,
        window=(
            float(_scale.from_axis(logs[inside].min(), scale)),
            float(_scale.from_axis(logs[inside].max(), scale)),
        ),
        points=n,
        curvature_t=float(curvature_t),
        residual_std=math.sqrt(variance),
        axis=scale,
    )
    low, high = (center + q * half_width for q in bounds)
    return fit, center + vertex * half_width, (low, high)


def quadratic_refine(lrs: Sequence[float], scores: Sequence[float], scale: str = "log") -> Estimate:
    """Refines the best rate with a parabola in log learning rate, with Fieller's 95% interval.

    Windows centred on the best evaluated rate grow one evaluated rate at a time. A window
    *qualifies* when it holds at least :data:`MIN_FIT_POINTS` rates, some on both sides of the
    best, its parabola curves upwards significantly (curvature above ``t`` standard errors)
    and its vertex lies inside it. The first window that qualifies *together with the next
    wider one* is used: a single narrow window can pass by chance on noisy scores, two in a
    row rarely do. The refined rate is the narrower window's vertex (least bias from a score
    that is not exactly parabolic); the interval is the union of both windows' Fieller
    intervals and the evaluated neighbours of the best rate, clipped to the evaluated span.
    When no window qualifies, the result is :func:`neighbours` with a note saying why.

    Args:
      lrs: evaluated rates (any order, positive).
      scores: their scores, lower is better; non-finite (diverged) ones are ignored.
      scale: ``"log"`` fits against log rate (learning rates); ``"linear"`` against the value.

    Returns:
      An :class:`Estimate` whose ``lr`` is the vertex and ``fit`` the parabola, or the bracket.

    >>> lrs = [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2]
    >>> est = quadratic_refine(lrs, [(np.log(v / 2e-3)) ** 2 for v in lrs])
    >>> est.method, round(est.lr, 6)
    ('quadratic_fit', 0.002)
    """
    bracket = neighbours(lrs, scores, scale)
    if not bracket.bracketed:
        return bracket
    x, y = _finite_sorted(lrs, scores, scale)
    logs = _scale.to_axis(x, scale)
    center = logs[_best_index(y)]
    distances = np.unique(np.abs(logs - center))
    # rates placed symmetrically about the best differ in distance only by rounding: one window
    widths = distances[1:][np.diff(distances) > 1e-9 * max(float(distances[-1]), 1.0)]
    fits = [_window_fit(logs, y, center, h, scale) for h in widths]
    for k, outcome in enumerate(fits):
        if isinstance(outcome, str):
            continue
        following = fits[k + 1] if k + 1 < len(fits) else None
        if isinstance(following, str):
            continue
        fit, vertex_log, (low_log, high_log) = outcome
        windows = f"the {fit.points} evaluations between {_fmt(fit.window[0])} and "
        windows += f"{_fmt(fit.window[1])}"
        if following is not None:
            low_log = min(low_log, following[2][0])
            high_log = max(high_log, following[2][1])
            windows += f" (and the next wider window of {following[0].points}, which agrees)"
        low_log, high_log = max(low_log, logs[0]), min(high_log, logs[-1])
        against = "the logarithm of the value" if scale == "log" else "the value"
        note = f"vertex of a parabola in {against} fitted to {windows}; 95% Fieller interval"
        estimate = Estimate(
            float(_scale.from_axis(vertex_log, scale)),
            float(_scale.from_axis(low_log, scale)),
            float(_scale.from_axis(high_log, scale)),
            "quadratic_fit",
            True,
            note,
            fit,
        )
        return _widen(estimate, bracket)
    reasons = {r for r in fits if isinstance(r, str)} - {"points"}
    if not reasons:
        why = f"fewer than {MIN_FIT_POINTS} finite evaluations around the best value"
    elif reasons == {"vertex"}:
        why = "the fitted parabolas put their minimum outside the values they were fitted to"
    else:
        why = (
            "no two successive windows around the best value show a significant upward "
            "curvature (noisy scores or a flat optimum)"
        )
    note = f"no reliable quadratic fit ({why}): {bracket.note}"
    return Estimate(bracket.lr, bracket.low, bracket.high, "neighbours", True, note)


# ----------------------------------------------------------------------------- seeds

CURVE_DEGREE = 3  # a cubic follows a valley that is steeper on one side than the other
MIN_CURVE_POINTS = CURVE_DEGREE + 3  # each seed's cubic then rests on more rates than it has terms
# The fit's windows around the best value, tried narrowest first until the interval closes
# inside one: fixed spans on the axis, chosen without looking at where the scores put the
# optimum. Windows drawn from the tied run instead shrink as a search packs values around its
# noisy best, and the first such window whose interval closed excluded the optimum ever more
# often (coverage 0.85 after 5 stages, 0.55 after 12, on simulated scores); fixed spans with
# the slopes' scatter floor keep it at 0.93 to 0.97 for any number of stages. Narrow windows
# serve noise-free scores (full-batch descent), where a wide cubic's bias is all the error.
# log scale: from best / f to best * f
WINDOW_FACTORS = (1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 4.5, 7.0)  # fmt: skip
# linear scale: +- this share of the evaluated span
WINDOW_FRACTIONS = (0.02, 0.05, 0.1, 0.15, 0.22, 0.33)


@dataclass(frozen=True)
class SeedCurveFit:
    """The seed-averaged score as a polynomial in ``u = (axis(value) - center) / scale``.

    ``coefficients`` are the mean over seeds of each seed's least-squares polynomial (highest
    power first), fitted to the same values for every seed.
    """

    center: float
    scale: float
    coefficients: tuple[float, ...]
    window: tuple[float, float]  # lowest and highest value used by the fit
    points: int  # values inside the window
    seeds: int
    residual_std: float  # root mean square residual of the seed-averaged scores (per df)
    axis: str = "log"

    @property
    def terms(self) -> int:
        """Coefficients fitted per seed."""
        return len(self.coefficients)

    def predict(self, values) -> np.ndarray:
        """The fitted seed-averaged score at ``values``."""
        u = (_scale.to_axis(np.asarray(values, np.float64), self.axis) - self.center) / self.scale
        return np.polyval(self.coefficients, u)


def _seed_rows(values, seed_scores, scale: str):
    """Values sorted (valid on ``scale``) with their ``(values, seeds)`` score matrix."""
    _scale.check(scale)
    x = np.asarray(values, np.float64)
    matrix = _noise.score_matrix(seed_scores)
    if len(matrix) != len(x) or x.ndim != 1:
        raise ValueError("seed_scores: expected one row of per-seed scores per value")
    keep = np.isfinite(x) & ((x > 0) if scale == "log" else True)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], matrix[keep][order]


def not_worse(
    values: Sequence[float], seed_scores: Sequence[Sequence[float]], scale: str = "log"
) -> Estimate:
    """The span of the values not significantly worse than the best, and their outer neighbours.

    A value is *worse* when its mean score over seeds exceeds the best one's by more than
    ``t`` standard errors of their paired, seed-by-seed difference (one-sided 95%, Student's
    t with ``seeds - 1`` degrees of freedom). The optimum of the expected score lies next to
    the evaluated value nearest to it, which is not worse than the best unless that test errs;
    the interval runs from the evaluated value below the lowest such value to the one above
    the highest. It assumes nothing about the shape of the curve, and is wide for that.

    Raises:
      ValueError: fewer than 2 seeds, or no finite score.
    """
    x, matrix = _seed_rows(values, seed_scores, scale)
    seeds = matrix.shape[1]
    if seeds < 2:
        raise ValueError(f"seed_scores: a test between seeds needs >= 2 seeds, got {seeds}")
    if not np.isfinite(matrix.mean(axis=1)).any():
        raise ValueError("seed_scores: every value diverged, there is no best value")
    best = _noise.best_index(matrix)
    first, last = _noise.tied_run(matrix)
    low, high = float(x[max(first - 1, 0)]), float(x[min(last + 1, len(x) - 1)])
    bracketed = first > 0 and last < len(x) - 1
    note = (
        f"{_count(last - first + 1, 'evaluated value')} around the best not significantly "
        f"worse than it (paired one-sided t test over {seeds} seeds, 95%), and the evaluated "
        "values beyond"
    )
    if not bracketed:
        side = "smallest" if first == 0 else "largest"
        note += (
            f"; the {side} evaluated value is among them, so the optimum may lie beyond the "
            "evaluated range"
        )
    return Estimate(float(x[best]), low, high, "not_worse", bracketed, note, seeds=seeds)


def _span_window(axis: np.ndarray, finite: np.ndarray, best: int, half: float) -> slice | None:
    """The finite rows within ``half`` (axis units) of the best row, contiguous around it;
    None when fewer than :data:`MIN_CURVE_POINTS`."""
    low = high = best
    while low > 0 and finite[low - 1] and axis[best] - axis[low - 1] <= half * (1 + 1e-12):
        low -= 1
    while (
        high < len(axis) - 1
        and finite[high + 1]
        and axis[high + 1] - axis[best] <= half * (1 + 1e-12)
    ):
        high += 1
    return slice(low, high + 1) if high - low + 1 >= MIN_CURVE_POINTS else None


def _half_spans(axis: np.ndarray, scale: str) -> tuple[float, ...]:
    """The windows' half-widths to try, narrowest first: fixed factors of the value on a log
    scale (the shape of a loss against log rate barely depends on where its optimum is),
    fractions of the evaluated span on a linear one."""
    if scale == "log":
        return tuple(math.log(f) for f in WINDOW_FACTORS)
    span = float(axis.max() - axis.min())
    return tuple(span * f for f in WINDOW_FRACTIONS)


def seed_curve(
    values: Sequence[float],
    seed_scores: Sequence[Sequence[float]],
    scale: str = "log",
    *,
    every_window: bool = False,
) -> Estimate:
    """The optimum of the seed-averaged score, with a 95% interval from the spread between seeds.

    The window holds the finite values within a fixed span of the best one (from a factor of
    1.05 up to 7 on a log scale: :data:`WINDOW_FACTORS`), at least :data:`MIN_CURVE_POINTS`
    of them, the narrowest whose interval closes inside it. Each seed's scores there get a
    least-squares cubic in log value; every seed is an independent replicate of the same fit,
    so at any point the seeds' fitted slopes are independent draws around the slope of the
    expected score. The refined value is the minimum of the mean cubic; the interval is the
    set of values around it where the mean slope is within ``t`` standard errors of zero
    (two-sided 95%, Student's t with ``seeds - 1`` degrees of freedom; the standard error from
    the slopes' spread over seeds, at least what the seeds' scatter about their cubics
    implies, and the fit's misfit). Whatever the correlation between one seed's scores at
    different values, the test at the true optimum is exact when the cubic describes the
    expected score in the window.

    With ``every_window`` (a sweep asked for a precision) the interval is the union of the
    intervals of every window that closes, not the narrowest one's alone (the refined value
    stays the narrowest one's): see :func:`_across_windows`.

    Falls back to :func:`not_worse` (with a note saying why) when the window cannot be
    filled, the mean cubic has no minimum inside it, or the interval reaches its edge.
    """
    fallback = not_worse(values, seed_scores, scale)
    if not fallback.bracketed:
        return fallback
    x, matrix = _seed_rows(values, seed_scores, scale)
    finite = np.isfinite(matrix).all(axis=1)
    axis, best = _scale.to_axis(x, scale), _noise.best_index(matrix)
    reason = "too few evaluated values around the best for a fit"
    tried, closed = set(), []
    for half in _half_spans(axis, scale):
        window = _span_window(axis, finite, best, half)
        if window is None or (window.start, window.stop) in tried:
            continue
        tried.add((window.start, window.stop))
        outcome = _slope_interval(x[window], matrix[window], scale)
        if isinstance(outcome, str):
            reason = outcome
            continue
        if not every_window:
            return outcome
        closed.append(outcome)
    return _across_windows(closed) if closed else _with_reason(fallback, reason)


def _across_windows(closed: Sequence[Estimate]) -> Estimate:
    """The narrowest window's estimate, its interval stretched over every other window's.

    Each window's interval is exact only where a cubic describes the expected score across
    it, and no window can show its own misfit when the valley is flat at the bottom: there a
    misfit far below the seeds' noise still moves the cubic's minimum. On the digits MLP the
    cubic of the noise-free curve (256 seeds) over windows of 3x to 4.5x around a best that
    noise put at 0.025 has its minimum at 0.025 to 0.028, 20% to 35% above the optimum
    (0.0205), and a precision sweep's intervals, narrowing with every stage, excluded it ever
    more often (10 seeds, narrowest window: 16 of 20 covered at the stop, 15 after 12
    stages). Where windows of every size agree, their bias is bounded by their
    disagreement; with the union the same sweeps covered 18 of 19 at the stop, 17 of 20
    after 12 stages (``benchmarks/precision_study.py``).
    """
    first = closed[0]
    if len(closed) == 1:
        return first
    low, high = min(e.low for e in closed), max(e.high for e in closed)
    note = (
        f"{first.note}; stretched over the intervals of the {len(closed) - 1} wider windows "
        "whose fits also close (a cubic's bias changes with its window)"
    )
    return dataclasses.replace(first, low=low, high=high, note=note)


def _slope_interval(x: np.ndarray, matrix: np.ndarray, scale: str) -> Estimate | str:
    """:func:`seed_curve` on one window: the estimate, or why the window gives none."""
    seeds = matrix.shape[1]
    axis = _scale.to_axis(x, scale)
    center, half = float(axis.mean()), float(axis.max() - axis.min()) / 2
    u = (axis - center) / half
    per_seed = np.polyfit(u, matrix, CURVE_DEGREE)  # (degree + 1, seeds)
    grid = np.linspace(u.min(), u.max(), 2001)
    vertex = int(np.argmin(np.polyval(per_seed.mean(axis=1), grid)))
    if vertex in (0, len(grid) - 1):
        return "the seed-averaged fit has no minimum inside its window"
    slopes = np.stack([np.polyval(np.polyder(per_seed[:, s]), grid) for s in range(seeds)], 1)
    between = slopes.var(axis=1, ddof=1) / seeds  # (grid,) variance of the mean slope
    # two or three seeds' slopes can agree closely by chance, most often in a narrow window:
    # their spread is floored by what the seeds' own scatter about their cubics implies
    between = np.maximum(between, _scatter_slope_variance(u, matrix, per_seed, grid))
    misfit, misfit_df = _misfit_slope_variance(u, matrix, grid)
    accepted = np.abs(slopes.mean(axis=1)) <= _t_combined(between, seeds - 1, misfit, misfit_df)
    low = high = vertex
    while low > 0 and accepted[low - 1]:
        low -= 1
    while high < len(grid) - 1 and accepted[high + 1]:
        high += 1
    if low == 0 or high == len(grid) - 1:
        return "the fit's interval reaches the edge of its window"
    # one grid step beyond the accepted points: the optimum between two grid points is inside
    low_value = _scale.from_axis(center + grid[low - 1] * half, scale)
    high_value = _scale.from_axis(center + grid[high + 1] * half, scale)
    misfits = _misfit_ratio(u, matrix) > MISFIT_RATIO
    mean_coefficients = per_seed.mean(axis=1)
    residual = matrix.mean(axis=1) - np.polyval(mean_coefficients, u)
    fit = SeedCurveFit(
        center=center,
        scale=half,
        coefficients=tuple(float(c) for c in mean_coefficients),
        window=(float(x[0]), float(x[-1])),
        points=len(x),
        seeds=seeds,
        residual_std=math.sqrt(float(residual @ residual) / (len(x) - CURVE_DEGREE - 1)),
        axis=scale,
    )
    note = (
        f"minimum of a cubic in {'log value' if scale == 'log' else 'the value'} fitted to each "
        f"of {seeds} seeds over the {len(x)} evaluated values from {_fmt(x[0])} to "
        f"{_fmt(x[-1])}; 95% interval: the values where the seed-averaged slope is within "
        f"t({seeds - 1}) standard errors of zero (from the spread of the slopes between seeds "
        "and the fit's misfit)"
    )
    # the fit's own bounds: moving them out to the evaluated values would make the interval
    # as coarse as the grid, where the seeds' slopes justify a finer statement (coverage of
    # these bounds is measured against an optimum computed without the engine). A cubic that
    # misses the scores by far more than their noise has a bias its slopes do not show: then
    # the bounds reach out to the evaluated values, which bracket the optimum regardless.
    refined = float(_scale.from_axis(center + grid[vertex] * half, scale))
    if misfits:  # the evaluated neighbours of the best bracket a unimodal optimum regardless
        best = int(np.argmin(matrix.mean(axis=1)))
        refined = float(x[best])  # and the best itself beats a biased vertex
        low_value = min(x[x <= low_value].max(), x[max(best - 1, 0)])
        high_value = max(x[x >= high_value].min(), x[min(best + 1, len(x) - 1)])
        note += (
            "; the cubic misses the seed means by far more than their noise, so the interval "
            "reaches out to the nearest evaluated values and those next to the best one, and "
            "the best evaluated value stands for the optimum"
        )
    return Estimate(
        refined,
        float(low_value),
        float(high_value),
        "seed_curve",
        True,
        note,
        fit,
        seeds=seeds,
    )


# The cubic's misfit, as a multiple of what the seeds' noise explains, beyond which the
# cubic does not describe the scores (the 95% point of F(k, 2) is about 19 for any k, the
# loosest case: 3 seeds). Near-noise-free scores (full-batch descent, identical seeds) beside
# a divergence edge reach 1e6: the fit's minimum then carries a bias no noise term shows.
MISFIT_RATIO = 20.0


def _misfit_ratio(u: np.ndarray, scores: np.ndarray) -> float:
    """The residual sum of squares of the seed-averaged cubic over what the noise of the
    seed means would leave (``inf`` when the seeds agree exactly and the cubic misses)."""
    design = np.stack([u**k for k in range(CURVE_DEGREE, -1, -1)], axis=1)
    hat = design @ np.linalg.pinv(design)
    mean = scores.mean(axis=1)
    residual = mean - hat @ mean
    noise = float(np.trace((np.eye(len(u)) - hat) @ (np.cov(scores) / scores.shape[1])))
    misfit = float(residual @ residual)
    scale = max(float(np.abs(mean).max()), 1e-300)
    if misfit <= (1e-12 * scale) ** 2:  # exact to float rounding
        return 0.0
    return misfit / noise if noise > 0 else math.inf


def _scatter_slope_variance(
    u: np.ndarray, scores: np.ndarray, per_seed: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """The variance of the seed-averaged slope at ``grid`` that the seeds' scatter about
    their own cubics implies (``(grid,)``).

    Each seed's residuals less their mean over seeds (the misfit every seed shares, counted
    in :func:`_misfit_slope_variance`) leave the seed-specific noise, pooled over values and
    seeds; propagated through the least-squares cubic it is the variance of one seed's slope.
    The spread of a few seeds' slopes estimates the same variance (and the seeds' own tilts
    besides) but by chance can come out near zero; this cannot. Noise-free scores give zero.
    """
    design = np.stack([u**k for k in range(CURVE_DEGREE, -1, -1)], axis=1)
    residual = scores - design @ per_seed  # (points, seeds)
    own = residual - residual.mean(axis=1, keepdims=True)
    seeds = scores.shape[1]
    df = (len(u) - design.shape[1]) * (seeds - 1)
    variance = float((own**2).sum()) / df if df > 0 else 0.0
    powers = np.arange(CURVE_DEGREE, -1, -1)
    derivative = np.stack([p * grid ** np.maximum(p - 1, 0) for p in powers], axis=1)
    gram_inverse = np.linalg.pinv(design.T @ design)
    per_slope = np.einsum("gi,ij,gj->g", derivative, gram_inverse, derivative)
    return variance * per_slope / seeds


def _misfit_slope_variance(
    u: np.ndarray, scores: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, int]:
    """What the cubic's misfit adds to the variance of the mean slope at ``grid``, and the
    degrees of freedom of that estimate.

    The seed-averaged scores deviate from the mean cubic by the seeds' noise and by the
    expected score's own departure from a cubic, a bias every seed shares, so the spread
    between seeds cannot show it. Its size comes from the residuals beyond what the noise
    explains (the noise's share estimated from the covariance of the scores between seeds);
    treated as independent errors of that size, it widens the slope's standard error.
    """
    design = np.stack([u**k for k in range(CURVE_DEGREE, -1, -1)], axis=1)  # (points, terms)
    free = len(u) - design.shape[1]
    pinv = np.linalg.pinv(design)
    hat = design @ pinv
    mean = scores.mean(axis=1)
    residual = mean - hat @ mean
    noise = np.cov(scores) / scores.shape[1]  # covariance of the mean over seeds
    excess = float(residual @ residual - np.trace((np.eye(len(u)) - hat) @ noise)) / free
    if excess <= 0:
        return np.zeros_like(grid), free
    powers = np.arange(CURVE_DEGREE, -1, -1)
    derivative = np.stack([p * grid ** np.maximum(p - 1, 0) for p in powers], axis=1)
    gram_inverse = pinv @ pinv.T
    return excess * np.einsum("gi,ij,gj->g", derivative, gram_inverse, derivative), free


def _t_combined(a: np.ndarray, a_df: int, b: np.ndarray, b_df: int) -> np.ndarray:
    """``t * sqrt(a + b)`` for two independent variance estimates, Student's t (two-sided 95%)
    at their Welch-Satterthwaite degrees of freedom (rounded down: the wider interval)."""
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / (a**2 / a_df + b**2 / b_df)
    df = np.where(np.isfinite(df), np.maximum(np.floor(df), 1), max(a_df, b_df))
    quantiles = np.array([_noise.t_quantile(0.975, int(d)) for d in np.unique(df)])
    return quantiles[np.searchsorted(np.unique(df), df)] * np.sqrt(total)


def _with_reason(estimate: Estimate, reason: str) -> Estimate:
    note = f"no reliable fit over seeds ({reason}): {estimate.note}"
    return dataclasses.replace(estimate, note=note)


def on_plateau(
    values: Sequence[float],
    seed_scores: Sequence[Sequence[float]],
    scale: str,
    direction: str,
    bound: float,
) -> Estimate:
    """The statement for a flat end: values at or below (``"down"``) or at or above
    (``"up"``) ``bound`` score alike with the best, so no interval bounds the optimum there.

    The interval runs from the farthest value evaluated that way to ``bound``, or to the
    evaluated value just beyond the best's tied run where that lies farther: what was seen,
    not a claim about what lies past the edge.
    """
    tied = not_worse(values, seed_scores, scale)
    x, _ = _seed_rows(values, seed_scores, scale)
    seeds = tied.seeds
    at = "at or below" if direction == "down" else "at or above"
    far = float(x[0] if direction == "down" else x[-1])
    note = (
        f"a plateau: values {at} {_fmt(bound)} score alike (none significantly worse than the "
        f"best, paired one-sided t test over {seeds} seeds, 95%) from {_fmt(bound)} out to "
        f"{_fmt(far)}, the farthest evaluated; any of them is as good, and the search stopped "
        "following that end"
    )
    # the plateau reaches ``bound`` even where the best's own tied run stops short of it
    low, high = (far, max(tied.high, bound)) if direction == "down" else (min(tied.low, bound), far)
    return dataclasses.replace(
        tied, low=low, high=high, method="plateau", bracketed=False, note=note
    )


STABLE_STAGES = 3  # a requested precision holds only over this many successive stages


def stable_union(estimates: Sequence[Estimate]) -> Estimate:
    """The latest estimate, its interval stretched over the intervals of the estimates before
    it (the last :data:`STABLE_STAGES` stages of a sweep asked for a precision).

    A sweep that stops the first time its interval is narrow picks the intervals that came
    out narrow by chance: on the digits MLP, stopping on one stage's interval covered the
    noise-averaged optimum in 9 of 16 sweeps; the union over three successive stages in 14
    of 16, at a median width of 2.06 (upper / lower). Unbracketed estimates leave it open.
    """
    latest, window = estimates[-1], list(estimates[-STABLE_STAGES:])
    if len(window) < STABLE_STAGES or not all(e.bracketed for e in window):
        return dataclasses.replace(latest, bracketed=False) if latest.bracketed else latest
    low, high = min(e.low for e in window), max(e.high for e in window)
    note = (
        f"{latest.note}; stretched over the intervals after each of the last {len(window)} "
        "stages (a precision is declared only where successive stages agree)"
    )
    return dataclasses.replace(latest, low=low, high=high, note=note)


def relative_half_width(estimate: Estimate, scale: str = "log") -> float:
    """How precisely an estimate locates its value: the larger of ``high / value - 1`` and
    ``value / low - 1`` on a log scale (the interval lies within ``value / (1 + p)`` to
    ``value * (1 + p)``), of ``(high - value) / |value|`` and ``(value - low) / |value|`` on a
    linear one. ``inf`` for an interval that is open, unbracketed or missing."""
    value, low, high = estimate.lr, estimate.low, estimate.high
    if not estimate.bracketed or not all(map(math.isfinite, (value, low, high))):
        return math.inf
    if scale == "log":
        if min(value, low, high) <= 0:
            return math.inf
        return max(high / value, value / low) - 1.0
    if value == 0:
        return math.inf
    return max(high - value, value - low) / abs(value)


def estimate(
    values: Sequence[float],
    scores: Sequence[float],
    seed_scores: Sequence[Sequence[float]] | None = None,
    scale: str = "log",
    plateaus: Sequence = (),
    *,
    every_window: bool = False,
) -> Confidence:
    """The interval shown for the best value and the refined estimate, from a sweep's history.

    With two or more seeds both come from :func:`seed_curve` (or its :func:`not_worse`
    fallback): the interval covers the optimum of the *expected* score over seeds. With one
    seed they come from :func:`quadratic_refine`, which sees only that seed's curve.
    ``plateaus`` (the search's flat ends, ``_selector.plateaus``) turn the interval into the
    plateau's statement (:func:`on_plateau`): the nearest flat end to the best's side first.
    """
    if not np.isfinite(np.asarray(scores, np.float64)).any():
        smallest = float(np.min(values)) if len(values) else math.nan
        nothing = Estimate(
            smallest, math.nan, math.nan, "none", False, "every evaluation diverged: no interval"
        )
        return Confidence(best=nothing, refined=nothing)
    if _noise.seed_count(seed_scores) >= 2 and plateaus:
        flat = on_plateau(values, seed_scores, scale, plateaus[0].direction, plateaus[0].bound)
        return Confidence(best=flat, refined=flat)
    if _noise.seed_count(seed_scores) >= 2:
        curve = seed_curve(values, seed_scores, scale, every_window=every_window)
        return Confidence(best=curve, refined=curve)
    refined = quadratic_refine(values, scores, scale)
    return Confidence(best=refined, refined=refined)


def sweep_confidence(
    values: Sequence[float],
    scores: Sequence[float],
    seed_scores: Sequence[Sequence[float]],
    stages: Sequence[int],
    scale: str = "log",
    plateaus: Sequence = (),
    *,
    stable: bool = False,
    every_window: bool | None = None,
) -> Confidence:
    """:func:`estimate` of a sweep's evaluations (``stages``: each one's stage); with
    ``stable`` (a sweep asked for a precision), each estimate's interval spans every fit
    window that closes (``every_window``) and the interval is :func:`stable_union` over the
    estimates after each of the last stages (the refined value stays the latest).
    ``every_window``: None follows ``stable``; a bool sets it alone (for comparing the two)."""
    every_window = stable if every_window is None else every_window
    latest = estimate(values, scores, seed_scores, scale, plateaus, every_window=every_window)
    if not stable or latest.best.method not in ("seed_curve", "not_worse"):
        return latest
    last = max(stages)
    history = []
    for stage in range(max(last - STABLE_STAGES + 1, 0), last):
        keep = [i for i, s in enumerate(stages) if s <= stage]
        if len(keep) >= 2:
            prefix = [values[i] for i in keep], [scores[i] for i in keep]
            rows = [seed_scores[i] for i in keep]
            history.append(estimate(*prefix, rows, scale, every_window=every_window).best)
    return Confidence(best=stable_union([*history, latest.best]), refined=latest.refined)
