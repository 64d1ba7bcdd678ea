"""The precision estimates of ``_confidence`` against scores whose optimum is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxsweep import _confidence, _selector


def _hierarchical_points(score_fn, value_range=(1e-5, 1e-2), stages=5):
    """The rates the real selector would evaluate on ``score_fn`` (no training involved)."""
    step = math.log(value_range[1] / value_range[0]) / 4
    points = list(_selector.initial_points(value_range, 5))
    for _ in range(stages - 1):
        scores = [score_fn(p) for p in points]
        plan = _selector.next_stage(points, scores, count=5, top_k=2, initial_step=step)
        points += plan.points
    return np.array(points), np.array([score_fn(p) for p in points])


def test_t_quantiles_match_an_independent_implementation():
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 5, 10, 29, 30, 31, 50, 200, 10_000]:
        assert _confidence.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)
    with pytest.raises(ValueError, match="df"):
        _confidence.t_quantile_975(0)


def test_exact_parabola_is_recovered_to_rounding():
    optimum = 2.7e-3
    lrs = np.geomspace(1e-4, 1e-1, 9)
    scores = 0.3 * np.log(lrs / optimum) ** 2 + 0.1
    estimate = _confidence.quadratic_refine(lrs, scores)
    assert estimate.method == "quadratic_fit"
    assert estimate.lr == pytest.approx(optimum, rel=1e-9)
    assert estimate.low <= optimum <= estimate.high
    assert estimate.fit is not None
    assert estimate.fit.predict([optimum])[0] == pytest.approx(0.1, abs=1e-9)


@pytest.mark.parametrize(
    "optimum, score_fn",
    [
        # asymmetric in log rate: steep above the optimum, shallow below (like training loss)
        (3e-3, lambda lr: math.exp(2 * math.log(lr / 3e-3)) - 2 * math.log(lr / 3e-3)),
        # flat-bottomed, far from a parabola
        (4.2e-4, lambda lr: math.log(lr / 4.2e-4) ** 4 + 1.0),
    ],
)
def test_interval_contains_the_optimum_of_a_non_parabolic_score(optimum, score_fn):
    lrs, scores = _hierarchical_points(score_fn)
    confidence = _confidence.estimate(lrs, scores)
    assert confidence.best is confidence.refined  # one seed: the fit's interval is shown
    estimate = confidence.refined
    assert estimate.bracketed
    assert estimate.low <= optimum <= estimate.high, estimate
    # and it is a real refinement, not the whole searched span
    assert math.log(estimate.high / estimate.low) < 0.1 * math.log(lrs.max() / lrs.min())


def test_fieller_interval_covers_the_optimum_at_its_level_under_noise():
    rng = np.random.default_rng(0)
    optimum = 3e-3
    lrs = np.geomspace(optimum / 10 * 1.13, optimum * 10 * 1.07, 41)
    covered, bracket_covered, widths = 0, 0, []
    trials = 300
    for _ in range(trials):
        scores = 0.5 * np.log(lrs / optimum) ** 2 + 1 + 0.2 * rng.normal(size=lrs.size)
        estimate = _confidence.quadratic_refine(lrs, scores)
        covered += estimate.contains(optimum)
        bracket_covered += _confidence.neighbours(lrs, scores).contains(optimum)
        widths.append(math.log(estimate.high / estimate.low))
    assert covered / trials >= 0.9  # a 95% interval, up to sampling error
    assert bracket_covered / trials < 0.5  # the fit, not the widening, does the work here
    assert np.median(widths) < 1.5  # log units: narrower than 1.5 of the 4.6 searched


def test_best_rate_on_the_edge_is_not_bracketed_and_says_so():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    estimate = _confidence.quadratic_refine(lrs, [4.0, 3.0, 2.0, 1.0])
    assert estimate.method == "neighbours"
    assert not estimate.bracketed
    assert (estimate.low, estimate.high) == (1e-2, 1e-1)
    assert "not bracketed" in estimate.note and "above" in estimate.note


def test_scores_without_curvature_fall_back_to_the_neighbours():
    rng = np.random.default_rng(3)
    lrs = np.geomspace(1e-4, 1e-2, 12)
    scores = 1.0 + 0.01 * rng.normal(size=12)  # pure noise: no optimum to locate
    estimate = _confidence.quadratic_refine(lrs, scores)
    best = int(np.argmin(scores))
    assert estimate.method == "neighbours"
    assert "no reliable quadratic fit" in estimate.note
    assert (estimate.low, estimate.high) == (lrs[best - 1], lrs[best + 1])


def test_diverged_evaluations_are_ignored_and_all_diverged_gives_no_interval():
    lrs = np.geomspace(1e-4, 1e-1, 9)
    scores = 0.3 * np.log(lrs / 2e-3) ** 2
    with_diverged = np.append(scores, [math.inf, math.nan])
    estimate = _confidence.quadratic_refine(np.append(lrs, [0.5, 1.0]), with_diverged)
    assert estimate.lr == pytest.approx(2e-3, rel=1e-9)
    nothing = _confidence.estimate([1e-3, 1e-2], [math.inf, math.inf]).best
    assert nothing.method == "none" and math.isnan(nothing.low)


def test_seed_bootstrap_spans_the_spread_of_per_seed_optima():
    lrs = np.geomspace(1e-4, 1e-2, 21)
    centres = [8e-4, 1e-3, 1.3e-3, 1.6e-3]  # each seed prefers a different rate
    per_seed = np.stack([np.log(lrs / c) ** 2 for c in centres], axis=1)
    estimate = _confidence.seed_bootstrap(lrs, per_seed)
    mean_best = lrs[np.argmin(per_seed.mean(axis=1))]
    assert estimate.method == "seed_bootstrap"
    assert estimate.lr == mean_best
    assert estimate.low <= mean_best <= estimate.high
    assert estimate.low <= 1e-3 and estimate.high >= 1.3e-3
    assert estimate == _confidence.seed_bootstrap(lrs, per_seed)  # deterministic
    # identical seeds: no spread, only the evaluated neighbours remain
    same = np.stack([per_seed[:, 1]] * 3, axis=1)
    tight = _confidence.seed_bootstrap(lrs, same)
    best = int(np.argmin(same[:, 0]))
    assert (tight.low, tight.high) == (lrs[best - 1], lrs[best + 1])
    assert "widened to the evaluated neighbours" in tight.note


def test_estimate_uses_the_bootstrap_only_with_several_seeds():
    lrs = np.geomspace(1e-4, 1e-2, 9)
    scores = np.log(lrs / 1e-3) ** 2
    one = _confidence.estimate(lrs, scores, [[s] for s in scores])
    two = _confidence.estimate(lrs, scores, [[s, s + 0.01] for s in scores])
    assert one.best.method == "quadratic_fit"
    assert two.best.method == "seed_bootstrap" and two.refined.method == "quadratic_fit"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="seed_scores"):
        _confidence.seed_bootstrap([1e-3, 1e-2], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="seed_scores"):
        _confidence.seed_bootstrap([1e-3, 1e-2], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="scores"):
        _confidence.quadratic_refine([1e-3, 1e-2], [1.0])


def test_linear_scale_fits_against_the_value_itself_zero_included():
    values = np.linspace(0.0, 0.99, 12)  # momentum-like: zero is a valid value
    scores = 2.0 * (values - 0.62) ** 2 + 0.5
    estimate = _confidence.quadratic_refine(values, scores, scale="linear")
    assert estimate.method == "quadratic_fit"
    assert estimate.lr == pytest.approx(0.62, abs=1e-9)
    assert estimate.fit is not None and estimate.fit.axis == "linear"
    assert estimate.fit.predict([0.62])[0] == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="scale"):
        _confidence.quadratic_refine(values, scores, scale="cubic")
