"""The precision estimates of ``_confidence`` against scores whose optimum is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxsweep import _confidence, _noise, _selector


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
        assert _noise.t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.95, df), abs=2e-4)
    with pytest.raises(ValueError, match="df"):
        _confidence.t_quantile_975(0)
    with pytest.raises(ValueError, match="probability"):
        _noise.t_quantile(0.9, 3)


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
    assert estimate.label == "one-seed interval" and estimate.seeds == 1
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


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="seed_scores"):
        _confidence.seed_curve([1e-3, 1e-2], [[1.0], [2.0]])  # one seed: no test between seeds
    with pytest.raises(ValueError, match="seed_scores"):
        _confidence.seed_curve([1e-3, 1e-2], [[1.0, 2.0]])  # one row for two values
    with pytest.raises(ValueError, match="seed_scores"):
        _confidence.not_worse([1e-3, 1e-2], [[1.0, 2.0], [1.0]])  # ragged
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


# ----------------------------------------------------------------------------- several seeds

OPTIMUM = 3e-3


def _valley(value: float) -> float:
    """An expected score with its minimum at OPTIMUM: steep above, shallow below (in log)."""
    d = math.log(value / OPTIMUM)
    return 0.3 * (math.exp(1.5 * d) - 1.5 * d - 1) + 0.15


def _noisy_scores(values, trial: int, seeds: int) -> list[tuple[float, ...]]:
    """Per-seed scores whose expectation over seeds is ``_valley``.

    A seed shifts and tilts the whole curve (its own optimum moves) and adds noise that is
    a fixed function of (seed, value): a seed rerun at a value scores the same, as training
    does. The tilt averages out, so the expected optimum is OPTIMUM exactly.
    """
    rows = []
    for value in values:
        d = math.log(value / OPTIMUM)
        row = []
        for s in range(seeds):
            shift, tilt = np.random.default_rng([trial, s]).normal(0, [0.03, 0.1])
            jitter = np.random.default_rng([trial, s, round(abs(math.log(value)) * 1e9)])
            row.append(_valley(value) + shift + tilt * d + jitter.normal(0, 0.02))
        rows.append(tuple(row))
    return rows


def _noise_aware_sweep(trial: int, seeds: int, stages: int = 5):
    """The real selector on the synthetic scores, stopping on resolution as the driver does."""
    step = math.log(1e-2 / 1e-5) / 4
    points = list(_selector.initial_points((1e-5, 1e-2), 5))
    seed_scores = _noisy_scores(points, trial, seeds)
    stop = "completed"
    for _ in range(stages - 1):
        means = [float(np.mean(row)) for row in seed_scores]
        if _selector.resolved(points, means, seed_scores):
            stop = "resolution"
            break
        plan = _selector.next_stage(
            points, means, count=5, top_k=2, initial_step=step, seed_scores=seed_scores
        )
        points += plan.points
        seed_scores += _noisy_scores(plan.points, trial, seeds)
    means = [float(np.mean(row)) for row in seed_scores]
    return _confidence.estimate(points, means, seed_scores).best, stop


def test_intervals_cover_the_expected_optimum_of_a_noisy_objective():
    trials = 100
    runs = [_noise_aware_sweep(trial, seeds=3) for trial in range(trials)]
    covered = np.mean([estimate.contains(OPTIMUM) for estimate, _ in runs])
    widths = [estimate.high / estimate.low for estimate, _ in runs]
    assert covered >= 0.9, covered  # a 95% interval, up to the cubic's misfit and sampling
    assert np.median(widths) < 4.0  # and informative: the search spanned a factor of 1000+
    assert any(stop == "resolution" for _, stop in runs)
    assert {e.method for e, _ in runs} <= {"seed_curve", "not_worse"}
    # one seed of the same objective: the fit sees only that seed's tilted curve
    one = [_noise_aware_sweep(trial, seeds=1) for trial in range(trials)]
    assert np.mean([estimate.contains(OPTIMUM) for estimate, _ in one]) < 0.75
    assert all(estimate.seeds == 1 for estimate, _ in one)


def test_seed_curve_finds_a_cubic_optimum_shared_by_every_seed():
    values = np.geomspace(1e-4, 1e-1, 15)
    u = np.log(values / 2e-3)
    expected = 0.2 * u**2 + 0.05 * u**3 + 1.0  # minimum at u = 0 (and a maximum far below)
    offsets = np.array([0.0, 0.3, -0.2])  # seeds differ by a constant: slopes agree exactly
    estimate = _confidence.seed_curve(values, expected[:, None] + offsets)
    assert estimate.method == "seed_curve" and estimate.bracketed
    assert estimate.lr == pytest.approx(2e-3, rel=5e-3)
    assert estimate.fit is not None and estimate.fit.seeds == 3
    assert estimate.fit.predict([2e-3])[0] == pytest.approx(1.0 + offsets.mean(), abs=1e-4)
    # no spread between seeds and an exact cubic: the fit's own interval, far finer than the
    # evaluated values around the optimum (it is not moved out to them)
    below, above = values[values <= 2e-3].max(), values[values >= 2e-3].min()
    assert estimate.contains(2e-3)
    assert below < estimate.low and estimate.high < above
    assert estimate.high / estimate.low < 1.01


def _descent_loss(values) -> np.ndarray:
    """The exact loss of 20 full-batch gradient-descent steps from zero on a least-squares
    problem with Hessian eigenvalues 1.5..24: a valley beside the divergence edge 2/24."""
    eigenvalues = np.geomspace(1.5, 24.0, 16)
    steps = (1.0 - np.asarray(values, np.float64)[..., None] * eigenvalues) ** 40
    return (0.5 * eigenvalues * steps).sum(axis=-1)


def test_a_cubic_that_misses_noise_free_scores_reaches_out_to_the_evaluated_values():
    dense = np.geomspace(0.01, 0.2, 200001)
    truth = float(dense[np.argmin(_descent_loss(dense))])
    # the values a sweep evaluates near such an optimum, denser toward it, one past the edge
    ratios = [0.54, 0.62, 0.72, 0.83, 0.86, 0.89, 0.92, 0.936, 0.947, 0.959, 0.975, 0.99]
    values = truth * np.array([*ratios, 1.0064, 1.0227, 1.09, 1.162])
    # noise-free but for float rounding: identical seeds of a deterministic problem
    rounding = np.array([0.0, 1e-7, -1e-7])
    estimate = _confidence.seed_curve(values, _descent_loss(values)[:, None] * (1 + rounding))
    assert estimate.method == "seed_curve"
    # the cubic's minimum is biased by the steep wall; its own slope interval (noise-free,
    # nearly a point) would miss the optimum, the evaluated neighbours hold it
    assert "reaches out to the nearest evaluated values" in estimate.note
    assert estimate.low in values and estimate.high in values
    assert estimate.contains(truth) and abs(estimate.lr / truth - 1) < 0.01


def test_not_worse_keeps_the_tied_run_around_the_best_and_its_neighbours():
    values = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    seed_scores = [
        [2.0, 2.1, 2.2],  # clearly worse
        [1.0, 1.3, 1.1],  # tied with the best (paired differences too noisy)
        [1.05, 1.0, 1.08],  # the best mean
        [3.0, 3.1, 2.9],  # clearly worse
        [1.5, 0.7, 1.1],  # tied again, but beyond a worse value: not part of the run
    ]
    estimate = _confidence.not_worse(values, seed_scores)
    assert estimate.method == "not_worse" and estimate.bracketed
    assert (estimate.low, estimate.high) == (1e-4, 1e-1)
    assert estimate.lr == 1e-2
    assert estimate.note.startswith("2 evaluated values around the best")
    diverged = [row[:] for row in seed_scores]
    diverged[3] = [3.0, math.inf, 2.9]  # a value that diverged in one seed is worse
    assert _confidence.not_worse(values, diverged).high == 1e-1
    edge = _confidence.not_worse(values[1:], seed_scores[1:])  # tied run reaches the edge
    assert not edge.bracketed and "beyond the evaluated range" in edge.note
    assert edge.label.startswith("open")


def test_seed_curve_falls_back_and_says_why():
    values = np.geomspace(1e-4, 1e-1, 4)  # too few values for a cubic per seed
    seed_scores = [[2.0, 2.2], [1.0, 1.1], [1.1, 1.0], [2.0, 2.1]]
    estimate = _confidence.seed_curve(values, seed_scores)
    assert estimate.method == "not_worse"
    assert estimate.note.startswith("no reliable fit over seeds (too few evaluated values")


def test_paired_comparisons_use_the_shared_seeds_and_a_pooled_floor():
    quiet = _noise.score_matrix([[1.0, 2.0, 3.0], [1.1, 2.1, 3.1], [1.3, 2.3, 3.3]])
    # a constant 0.1 worse in every seed: significant although the seeds differ by 1.0
    assert _noise.pooled_error(quiet) == pytest.approx(0.0, abs=1e-12)
    assert _noise.worse(quiet, 1, 0) and not _noise.worse(quiet, 0, 1)
    assert _noise.different(quiet, 0, 1)
    assert _noise.tied_with_best(quiet).tolist() == [True, False, False]
    assert _noise.tied_run(quiet) == (0, 0)  # the run stops at the worse neighbour
    # one noisy value: the same paired differences of 0.1 no longer stand out, because two
    # or three seeds agreeing closely is what chance gives when values scatter this much
    noisy = _noise.score_matrix([[1.0, 2.0, 3.0], [1.1, 2.1, 3.1], [1.6, 1.7, 3.2]])
    residual = noisy - noisy.mean(1, keepdims=True) - noisy.mean(0) + noisy.mean()
    expected = math.sqrt(2 * np.median(residual.var(axis=1, ddof=1)) / 3)
    assert _noise.pooled_error(noisy) == pytest.approx(expected) and expected > 0.05
    assert _noise.worse(noisy, 1, 0)  # without the floor
    assert not _noise.worse(noisy, 1, 0, floor=_noise.pooled_error(noisy))
    assert not _noise.different(noisy, 0, 1)


def _asymmetric_valley_scores(seeds: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Many values around an asymmetric valley (steep above its optimum, flat below), each
    seed's curve shifted and tilted, with scatter: fits over windows of every size close."""
    values = np.geomspace(2e-4, 2e-2, 41)
    u = np.log(values / 2e-3)
    expected = 0.3 * (np.exp(1.5 * u) - 1.5 * u - 1)
    shifts, tilts = rng.normal(0, 0.03, seeds), rng.normal(0, 0.01, seeds)
    scatter = rng.normal(0, 0.004, (len(values), seeds))
    return values, expected[:, None] + shifts + tilts * u[:, None] + scatter


def test_every_window_spans_the_interval_of_each_window_that_closes(monkeypatch):
    values, scores = _asymmetric_valley_scores(10, np.random.default_rng(3))
    spanned = _confidence.seed_curve(values, scores, every_window=True)
    narrowest = _confidence.seed_curve(values, scores)
    # each window alone, fitted by the public function restricted to that one span
    closed = []
    for factor in _confidence.WINDOW_FACTORS:
        monkeypatch.setattr(_confidence, "WINDOW_FACTORS", (factor,))
        alone = _confidence.seed_curve(values, scores)
        if alone.method == "seed_curve" and not alone.note.startswith("no reliable fit"):
            closed.append(alone)
    assert len({(e.low, e.high) for e in closed}) >= 3  # several windows close, and differ
    assert spanned.low == pytest.approx(min(e.low for e in closed), rel=1e-12)
    assert spanned.high == pytest.approx(max(e.high for e in closed), rel=1e-12)
    # the refined value and the fit stay the narrowest window's; only the interval grows
    assert spanned.lr == narrowest.lr == closed[0].lr and spanned.fit == narrowest.fit
    assert (spanned.low, spanned.high) != (narrowest.low, narrowest.high)
    assert "wider windows" in spanned.note and "wider windows" not in narrowest.note
