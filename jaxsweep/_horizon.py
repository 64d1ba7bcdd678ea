"""The rate for the run the user will do: retrain around the optimum at longer horizons, fit
how the optimum moves with the number of steps, and extrapolate to the target.

People sweep short and train long, and the best rate moves with the training length (a power
law ``opt(T) = B * T**beta`` describes it well: beta about -0.3 for LLM pretraining, -1 for
early-stopped gradient descent on an over-parameterised regression, 0 where the divergence
edge caps the rate). After the search, :func:`with_horizon` plans stages that train
``points_per_stage`` values at 2x and 4x the sweep's steps (or the target itself where it is
that close), each placed where the horizons seen so far predict the optimum and refined there
by the sweep's own rules; :func:`estimate` finds each horizon's optimum and interval with the
sweep's statistics, fits ``log opt`` against ``log steps`` (weighted by the intervals, the
fit's misfit widening it) and carries both into the interval at the target.

Everything here is pure: the plan and the estimate follow from the history alone, so a
resumed sweep plans the same stages and a loaded result gives the same horizon.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from . import _confidence, _search, _selector
from ._config import SweepConfig

FACTORS = (2, 4)  # the horizons trained, as multiples of the sweep's steps
COST_SHARE = 3.0  # horizon stages cost at most this many times the sweep's lane-steps
STAGES_PER_HORIZON = 3  # a first placement, then refinement (or one expansion) by the sweep's rules
PRIOR_EXPONENT = -0.5  # before any longer horizon: the optimum moves by 2**-0.5 per doubling ...
PRIOR_SPAN = math.log(2.0)  # ... give or take a factor of 2 per doubling
MIN_SPAN = 0.3 * math.log(2.0)  # a placement never narrower than this on each side (log)
Z = 1.959963984540054  # the 97.5% normal quantile: every interval here is a 95% interval
# an interval reported as a point (no noise, exact fit) still rests on evaluated values
# placed some distance apart: its half-width is at least this share of the log step
FLOOR = 0.005


def horizon_steps(sweep_steps: int, target: int) -> tuple[int, ...]:
    """The longer horizons trained for a target of ``target`` steps: 2x and 4x the sweep's
    below it, and the target itself where it is within 4x (then nothing is extrapolated).

    >>> horizon_steps(100, 1600), horizon_steps(100, 300), horizon_steps(100, 100)
    ((200, 400), (200, 300), ())
    """
    if target == sweep_steps:
        return ()
    if target < sweep_steps:
        return (target,)
    below = tuple(f * sweep_steps for f in FACTORS if f * sweep_steps < target)
    return below + ((target,) if target <= FACTORS[-1] * sweep_steps else ())


# ----------------------------------------------------------------------------- the estimate


class Optimum(NamedTuple):
    """The optimum found at one horizon, with the sweep's statistics."""

    steps: int  # training steps per lane
    value: float  # the refined optimum (the fitted curve's minimum, or the best evaluated)
    interval: tuple[float, float]  # its 95% interval (open: an end at 0 or inf)
    method: str  # how the interval was found (``Estimate.method``)

    @property
    def log_error(self) -> float:
        """The standard error of ``log value`` the interval implies (inf when it is open)."""
        low, high = self.interval
        if not (0 < low <= high < math.inf):
            return math.inf
        return max((math.log(high) - math.log(low)) / (2 * Z), FLOOR)


class Horizon(NamedTuple):
    """The optimum for the run the user will do (``result.horizon``).

    ``value`` and ``interval`` hold at ``target_steps``: read off that horizon where it was
    trained, else extrapolated by the power law ``opt = B * steps**exponent`` fitted to every
    horizon's optimum (the sweep's own first). ``ranking_held`` says whether the sweep's best
    value stays inside every longer horizon's interval; ``note`` says it all in words.
    """

    target_steps: int
    value: float
    interval: tuple[float, float]
    exponent: float  # d log(optimum) / d log(steps); nan with fewer than 2 usable horizons
    exponent_interval: tuple[float, float]
    horizons: tuple[Optimum, ...]  # the sweep's horizon first, then each longer one
    ranking_held: bool
    extrapolated: bool  # the target lies beyond every horizon trained
    note: str

    @property
    def sweep_steps(self) -> int:
        return self.horizons[0].steps


class PowerLaw(NamedTuple):
    """``log opt = intercept + exponent * log steps``, fitted by weighted least squares."""

    intercept: float
    exponent: float
    covariance: np.ndarray  # of (intercept, exponent), widened by the misfit
    misfit: float  # chi-square per degree of freedom (nan with none)

    def predict(self, steps: float) -> tuple[float, float]:
        """``log opt`` at ``steps`` and its standard error."""
        x = np.array([1.0, math.log(steps)])
        return float(self.intercept + self.exponent * x[1]), float(np.sqrt(x @ self.covariance @ x))

    def exponent_interval(self) -> tuple[float, float]:
        half = Z * math.sqrt(self.covariance[1, 1])
        return self.exponent - half, self.exponent + half


def fit_power_law(optima: list[Optimum]) -> PowerLaw | None:
    """The power law through the optima with finite intervals; None with fewer than two.

    Each optimum weighs by its interval; where the points scatter more about the line than
    their intervals allow (chi-square per degree of freedom above 1), the covariance grows
    by that factor, so a law that does not quite hold widens the extrapolation.
    """
    usable = [o for o in optima if math.isfinite(o.log_error) and o.value > 0]
    if len({o.steps for o in usable}) < 2:
        return None
    x = np.log([float(o.steps) for o in usable])
    y = np.log([o.value for o in usable])
    weights = 1.0 / np.square([o.log_error for o in usable])
    design = np.stack([np.ones_like(x), x], axis=1)
    normal = design.T @ (weights[:, None] * design)
    covariance = np.linalg.inv(normal)
    coefficients = covariance @ design.T @ (weights * y)
    residuals = y - design @ coefficients
    dof = len(usable) - 2
    misfit = float(np.sum(weights * residuals**2) / dof) if dof > 0 else math.nan
    if dof > 0 and misfit > 1.0:
        covariance = covariance * misfit
    return PowerLaw(float(coefficients[0]), float(coefficients[1]), covariance, misfit)


def optimum_at(evaluated: _search.Evaluated, points_per_stage: int, scale: str) -> Optimum:
    """One horizon's optimum and interval, by the sweep's own statistics (no plateaus: the
    values of a horizon span only the neighbourhood of its optimum)."""
    if not evaluated.points:
        return Optimum(evaluated.steps, math.nan, (0.0, math.inf), "none")
    confidence = _confidence.sweep_confidence(
        evaluated.points,
        evaluated.scores,
        evaluated.seed_scores,
        _selector.stage_indices(len(evaluated.points), points_per_stage),
        scale,
    )
    return Optimum(
        evaluated.steps,
        float(confidence.refined.lr),
        tuple(float(v) for v in confidence.best.interval),
        confidence.best.method,
    )


def sweep_optimum(evaluated: _search.Evaluated, config: SweepConfig) -> Optimum:
    """The sweep's own optimum, as its result reports it."""
    confidence = _search.confidence(evaluated, config)
    return Optimum(
        evaluated.steps,
        float(confidence.refined.lr),
        tuple(float(v) for v in confidence.best.interval),
        confidence.best.method,
    )


def estimate(evaluated: _search.Evaluated, config: SweepConfig) -> Horizon:
    """The horizon check of a finished sweep with ``config.target_steps``."""
    target = int(config.target_steps)
    optima = [sweep_optimum(evaluated, config)] + [
        optimum_at(h, config.points_per_stage, config.scale) for h in evaluated.longer if h.points
    ]
    law = fit_power_law(optima)
    trained = {o.steps: o for o in optima}
    best_value = _selector.best_point(evaluated.points, evaluated.scores)[0]
    held = all(o.interval[0] <= best_value <= o.interval[1] for o in optima[1:])
    exponent, exponent_interval = math.nan, (math.nan, math.nan)
    if law is not None:
        exponent, exponent_interval = law.exponent, law.exponent_interval()
    if target in trained:
        at = trained[target]
        value, interval, extrapolated = at.value, at.interval, False
    elif law is not None:
        centre, error = law.predict(target)
        value, extrapolated = math.exp(centre), True
        interval = (math.exp(centre - Z * error), math.exp(centre + Z * error))
    else:
        value, interval, extrapolated = math.nan, (0.0, math.inf), True
    horizon = Horizon(
        target, value, interval, exponent, exponent_interval, tuple(optima), held, extrapolated, ""
    )
    return horizon._replace(note=describe(horizon, best_value, config.hyperparam))


# ----------------------------------------------------------------------------- the plan


def _cost(evaluated: _search.Evaluated) -> float:
    """Lane-steps trained: lanes times their steps."""
    return float(evaluated.lanes) * evaluated.steps


def _placement(
    evaluated: _search.Evaluated, config: SweepConfig, steps: int
) -> _selector.StagePlan:
    """The first stage at ``steps``: values spread evenly (log) around the optimum that the
    horizons seen so far predict there, as wide as the prediction is uncertain."""
    trained = [sweep_optimum(evaluated, config)] + [
        optimum_at(h, config.points_per_stage, config.scale)
        for h in evaluated.longer
        if h.points and h.steps < steps
    ]
    law = fit_power_law(trained)
    nearest = max(
        (o for o in trained if math.isfinite(o.value) and o.value > 0),
        key=lambda o: o.steps,
        default=None,
    )
    if law is not None and nearest is not None and nearest.steps != trained[0].steps:
        centre, error = law.predict(steps)
        half = min(
            max(2.5 * error, MIN_SPAN), PRIOR_SPAN * math.log2(steps / nearest.steps) + MIN_SPAN
        )
    else:
        anchor = (
            nearest.value
            if nearest is not None
            else _selector.best_point(evaluated.points, evaluated.scores)[0]
        )
        doublings = math.log2(steps / evaluated.steps)
        centre = math.log(anchor) + PRIOR_EXPONENT * math.log(2.0) * doublings
        half = PRIOR_SPAN * abs(doublings)
    low, high = math.exp(centre - half), math.exp(centre + half)
    valid_high = _selector.KNOWN_RANGES.get(config.hyperparam, (0.0, math.inf))[1]
    if high >= valid_high:  # a bounded hyperparameter (b1 < 1) stays short of its bound
        high = math.exp((centre + math.log(valid_high)) / 2)
    values = _selector.spaced(low, high, config.points_per_stage, "log")
    return _selector.StagePlan(tuple(values), ((low, high),), None, steps)


def _horizon_config(config: SweepConfig, first: _search.Evaluated) -> SweepConfig:
    """The sweep's settings for refining one horizon: its first placement as the range."""
    span = (
        min(first.points[: config.points_per_stage]),
        max(first.points[: config.points_per_stage]),
    )
    return dataclasses.replace(
        config, value_range=span, stages=STAGES_PER_HORIZON, precision=None, max_lanes=None
    )


def plan(evaluated: _search.Evaluated, config: SweepConfig) -> _selector.StagePlan | None:
    """The next horizon stage after the search, or None when the horizons are done (or the
    next stage would pass :data:`COST_SHARE` times the sweep's own cost)."""
    budget = COST_SHARE * _cost(evaluated)
    spent = sum(_cost(h) for h in evaluated.longer)
    for steps in horizon_steps(evaluated.steps, int(config.target_steps)):
        here = evaluated.at(steps)
        if here.stages == 0:
            planned = _placement(evaluated, config, steps)
        else:
            refine = _horizon_config(config, here)
            if here.stages >= STAGES_PER_HORIZON or _search.hierarchical().stop(here, refine):
                continue
            planned = _search.hierarchical().plan(here, refine)._replace(steps=steps)
        if spent + config.lanes_per_stage * steps > budget:
            return None
        return planned
    return None


def with_horizon(search: _search.Search) -> _search.Search:
    """``search``, then the horizon stages (:func:`plan`) once it has stopped; its stop reason
    is the sweep's. The inner search reads only the sweep's own horizon."""

    def finished(evaluated, config) -> str | None:
        return search.stop(evaluated, config) if evaluated.stages else None

    def plan_next(evaluated, config):
        if finished(evaluated, config) is None:
            return search.plan(evaluated, config)
        return plan(evaluated, config)

    def stop(evaluated, config):
        reason = finished(evaluated, config)
        if reason is None or plan(evaluated, config) is not None:
            return None
        return reason

    return _search.Search(plan=plan_next, stop=stop, summary=search.summary)


# ----------------------------------------------------------------------------- words


def _times(steps: int, sweep_steps: int) -> str:
    ratio = steps / sweep_steps
    return f"{ratio:g}x" if ratio == round(ratio) else f"{ratio:.3g}x"


def describe(horizon: Horizon, best_value: float, hyperparam: str) -> str:
    """The horizon check in words, generated from the record."""
    name, target = hyperparam.replace("_", " "), horizon.target_steps
    longer = horizon.horizons[1:]
    if not longer:
        return f"the target of {target} steps is the sweep's own: its answer holds as it is"
    trained = ", ".join(f"{o.steps} ({_times(o.steps, horizon.sweep_steps)})" for o in longer)
    parts = [f"the values around the optimum were retrained for {trained} steps"]
    if math.isfinite(horizon.exponent):
        low, high = horizon.exponent_interval
        parts.append(
            f"the optimal {name} scales as steps^{horizon.exponent:.2f} (95% interval "
            f"{low:.2f} to {high:.2f})"
        )
    if horizon.ranking_held:
        parts.append(f"the sweep's best {best_value:.3g} stays inside every longer interval")
    else:
        moved = next(o for o in longer if not (o.interval[0] <= best_value <= o.interval[1]))
        parts.append(
            f"the sweep's best {best_value:.3g} lies outside the interval at {moved.steps} "
            "steps: the short run's answer does not hold for the longer run"
        )
    low, high = horizon.interval
    if math.isfinite(horizon.value) and 0 < low and math.isfinite(high):
        how = "extrapolated" if horizon.extrapolated else "trained at the target"
        parts.append(
            f"for {target} steps use {horizon.value:.3g} ({how}; 95% interval {low:.3g} to "
            f"{high:.3g})"
        )
    else:
        parts.append(f"no interval at {target} steps: the horizons' optima are not bracketed")
    return "; ".join(parts)
