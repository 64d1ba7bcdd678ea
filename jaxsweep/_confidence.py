"""How precisely a sweep located its best learning rate: intervals that say what they rest on.

Pure numpy on plain sequences (no result objects, no I/O), so every estimate can be checked
against exact synthetic scores. Three methods, each returning an :class:`Estimate`:

* ``quadratic_fit``: a least-squares parabola of score against log learning rate (against the
  value itself for a linear-scale sweep) around the best evaluated rate. The refined rate is
  its vertex; the interval is Fieller's 95% interval for the vertex (the rates where the
  fitted slope is not significantly different from zero), which stays honest when the
  curvature is poorly determined, unlike a delta-method interval.
* ``seed_bootstrap`` (``seeds >= 2``): resamples seeds with replacement, averages each rate's
  per-seed scores over the resample and takes the best rate; the interval holds 95% of those
  optima.
* ``neighbours``: the evaluated rates on either side of the best. For a score that is a
  unimodal function of the rate and evaluated without noise, the minimum lies inside this
  bracket for certain. It is the fallback when a fit is poor or the minimum is not bracketed,
  and every other interval is widened to contain it: an estimate never claims more precision
  than the spacing of the rates actually evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _scale

LEVEL = 0.95  # every interval here is a 95% interval

# Two-sided 95% quantiles of Student's t (t_{0.975, df}) for df = 1..30; beyond, a
# Cornish-Fisher expansion around the normal quantile is accurate to 1e-4.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054

MIN_FIT_POINTS = 5  # a parabola has 3 parameters: 5 points leave 2 degrees of freedom for noise


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"df: must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


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
    method: str  # "quadratic_fit" | "seed_bootstrap" | "neighbours" | "none" (all diverged)
    bracketed: bool  # evaluated rates exist on both sides of the best one
    note: str  # one or two sentences a reader can quote: what the interval rests on
    fit: QuadraticFit | None = None  # the parabola, for ``quadratic_fit``

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high

    @property
    def label(self) -> str:
        """What the interval is, in words: a 95% interval only where a method gives one."""
        if self.method in ("quadratic_fit", "seed_bootstrap"):
            return "95% interval"
        if self.method == "neighbours":
            return "bracket" if self.bracketed else "open bracket (optimum not bracketed)"
        return "no interval"

    def contains(self, lr: float) -> bool:
        return self.low <= lr <= self.high


@dataclass(frozen=True)
class Confidence:
    """What a result says about its optimum: the interval shown, and the refined estimate."""

    best: Estimate  # the interval reported for the best rate (seed bootstrap when seeds >= 2)
    refined: Estimate  # the local quadratic fit (or its fallback), always computed


# ----------------------------------------------------------------------------- helpers


def _finite_sorted(
    lrs: Sequence[float], scores: Sequence[float], scale: str = "log"
) -> tuple[np.ndarray, np.ndarray]:
    """Rates and scores, sorted by rate, without diverged (non-finite) evaluations."""
    _scale.check(scale)
    x = np.asarray(lrs, np.float64)
    y = np.asarray(scores, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"scores: expected one score per rate, got {y.shape} for {x.shape}")
    keep = np.isfinite(y) & np.isfinite(x) & ((x > 0) if scale == "log" else True)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _best_index(y: np.ndarray) -> int:
    # rates are sorted, so argmin's first hit is the smaller rate on ties (as the selector does)
    return int(np.argmin(y))


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def neighbours(lrs: Sequence[float], scores: Sequence[float], scale: str = "log") -> Estimate:
    """The bracket of evaluated rates around the best one (the best itself on an open side).

    Raises:
      ValueError: no evaluation has a finite score.
    """
    x, y = _finite_sorted(lrs, scores, scale)
    if len(x) == 0:
        raise ValueError("scores: every evaluation diverged, there is no best rate to bracket")
    i = _best_index(y)
    best = float(x[i])
    low = float(x[i - 1]) if i > 0 else best
    high = float(x[i + 1]) if i < len(x) - 1 else best
    bracketed = 0 < i < len(x) - 1
    if bracketed:
        note = (
            f"the evaluated rates next to the best one ({_fmt(low)} and {_fmt(high)}); "
            "a noise-free unimodal score has its minimum inside this bracket"
        )
    elif len(x) == 1:
        note = "only one evaluation has a finite score: its rate is all that is known"
    else:
        side = "smallest" if i == 0 else "largest"
        beyond = "below" if i == 0 else "above"
        note = (
            f"the best rate is the {side} evaluated, so the minimum is not bracketed and may "
            f"lie {beyond} {_fmt(best)}; the interval only reaches the nearest evaluated rate"
        )
    return Estimate(best, low, high, "neighbours", bracketed, note)


def _widen(estimate: Estimate, bracket: Estimate) -> Estimate:
    """The estimate with its interval stretched to contain the bracket, saying so if it did."""
    low, high = min(estimate.low, bracket.low), max(estimate.high, bracket.high)
    if (low, high) == (estimate.low, estimate.high):
        return estimate
    note = (
        f"{estimate.note}; widened to the evaluated neighbours of the best rate "
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
        note = (
            f"vertex of a parabola in {'log rate' if scale == 'log' else 'the value'} fitted to "
            f"{windows}; 95% Fieller interval"
        )
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
        why = f"fewer than {MIN_FIT_POINTS} finite evaluations around the best rate"
    elif reasons == {"vertex"}:
        why = "the fitted parabolas put their minimum outside the rates they were fitted to"
    else:
        why = (
            "no two successive windows around the best rate show a significant upward "
            "curvature (noisy scores or a flat optimum)"
        )
    note = f"no reliable quadratic fit ({why}): {bracket.note}"
    return Estimate(bracket.lr, bracket.low, bracket.high, "neighbours", True, note)


# ----------------------------------------------------------------------------- seeds


def seed_bootstrap(
    lrs: Sequence[float],
    seed_scores: Sequence[Sequence[float]],
    *,
    resamples: int = 2000,
    seed: int = 0,
    scale: str = "log",
) -> Estimate:
    """95% interval of the best rate from the spread across seeds (percentile bootstrap).

    Each resample draws as many seeds as there are, with replacement, averages each rate's
    scores over them and records the rate with the lowest mean (non-finite scores count as
    +inf, ties go to the smaller rate). The interval runs from the 2.5% to the 97.5% quantile
    of those rates (both evaluated rates), widened to the best rate's evaluated neighbours.

    Args:
      lrs: evaluated rates.
      seed_scores: per rate, its final score for each seed (all the same length, >= 2).
      resamples: bootstrap draws.
      seed: seed of the resampling (the estimate is deterministic).
      scale: the sweep's scale (``"log"`` ignores non-positive rates).
    """
    x = np.asarray(lrs, np.float64)
    matrix = np.asarray(seed_scores, np.float64)
    if matrix.ndim != 2 or len(matrix) != len(x):
        raise ValueError("seed_scores: expected one row of per-seed scores per rate")
    seeds = matrix.shape[1]
    if seeds < 2:
        raise ValueError(f"seed_scores: a bootstrap over seeds needs >= 2 seeds, got {seeds}")
    order = np.argsort(x, kind="stable")
    x, matrix = x[order], np.where(np.isfinite(matrix[order]), matrix[order], np.inf)
    mean = matrix.mean(axis=1)
    bracket = neighbours(x, np.where(np.isfinite(mean), mean, np.nan), scale)
    draws = np.random.default_rng(seed).integers(0, seeds, size=(resamples, seeds))
    resampled = matrix[:, draws].mean(axis=2)  # (rates, resamples)
    optima = x[np.argmin(resampled, axis=0)]
    low = float(np.quantile(optima, 0.025, method="lower"))
    high = float(np.quantile(optima, 0.975, method="higher"))
    note = (
        f"95% percentile bootstrap over {seeds} seeds ({resamples} resamples) of the rate with "
        "the lowest mean score"
    )
    if not bracket.bracketed:
        note += f"; {bracket.note}"
    estimate = Estimate(bracket.lr, low, high, "seed_bootstrap", bracket.bracketed, note)
    return _widen(estimate, bracket)


def estimate(
    lrs: Sequence[float],
    scores: Sequence[float],
    seed_scores: Sequence[Sequence[float]] | None = None,
    scale: str = "log",
) -> Confidence:
    """The interval shown for the best rate and the refined estimate, from a sweep's history.

    With two or more seeds the shown interval is :func:`seed_bootstrap`; with one, it is the
    refined estimate's (:func:`quadratic_refine`, or its :func:`neighbours` fallback).
    """
    if not np.isfinite(np.asarray(scores, np.float64)).any():
        smallest = float(np.min(lrs)) if len(lrs) else math.nan
        nothing = Estimate(
            smallest, math.nan, math.nan, "none", False, "every evaluation diverged: no interval"
        )
        return Confidence(best=nothing, refined=nothing)
    refined = quadratic_refine(lrs, scores, scale)
    if seed_scores is not None and len(seed_scores) and len(seed_scores[0]) >= 2:
        return Confidence(best=seed_bootstrap(lrs, seed_scores, scale=scale), refined=refined)
    return Confidence(best=refined, refined=refined)
