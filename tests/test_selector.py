"""Properties of the pure coarse-to-fine selector (hypothesis)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsweep import _selector as sel

LOG10_STEP = math.log(10**0.75)

exponents = st.lists(
    st.floats(min_value=-7.0, max_value=1.0, allow_nan=False),
    min_size=2,
    max_size=30,
    unique_by=lambda e: round(e, 3),
)
score = st.one_of(
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    st.sampled_from([math.inf, math.nan]),
)


@st.composite
def histories(draw):
    points = [10.0**e for e in draw(exponents)]
    scores = [draw(score) for _ in points]
    return points, scores


def test_initial_points_are_the_log_grid():
    points = sel.initial_points((1e-5, 1e-2), 5)
    expected = [1e-5, 10**-4.25, 10**-3.5, 10**-2.75, 1e-2]
    assert points == pytest.approx(expected, rel=1e-12)
    assert points[0] == 1e-5 and points[-1] == 1e-2


def test_initial_points_linear_scale():
    assert sel.initial_points((0.0, 1.0), 5, "linear") == pytest.approx([0, 0.25, 0.5, 0.75, 1])


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(2, 9), st.integers(1, 4))
def test_next_stage_count_distinct_new_and_placed(history, count, top_k):
    points, scores = history
    plan = sel.next_stage(points, scores, count=count, top_k=top_k, initial_step=LOG10_STEP)
    new = plan.points
    assert len(new) == count
    assert len(set(new)) == count, "points must be distinct"
    assert list(new) == sorted(new)
    assert not set(new) & set(points), "never re-evaluate a point"
    for p in new:  # each point lies strictly inside one kept interval (or the expansion span)
        assert any(lo < p < hi for lo, hi in plan.intervals)
    if plan.expansion is None:
        assert len(plan.intervals) == min(top_k, len(points) - 1)
        # kept intervals are between neighbouring evaluated points: none contains a point
        for lo, hi in plan.intervals:
            assert not any(lo < p < hi for p in points)
    else:
        ((lo, hi),) = plan.intervals
        if plan.expansion == "up":
            assert lo == max(points) and all(p > max(points) for p in new)
        else:
            assert hi == min(points) and all(p < min(points) for p in new)


@settings(max_examples=100, deadline=None)
@given(histories(), st.integers(2, 9), st.integers(1, 4))
def test_next_stage_is_deterministic_and_order_free(history, count, top_k):
    points, scores = history
    a = sel.next_stage(points, scores, count=count, top_k=top_k, initial_step=LOG10_STEP)
    b = sel.next_stage(
        points[::-1], scores[::-1], count=count, top_k=top_k, initial_step=LOG10_STEP
    )
    assert a == b


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(1, 4))
def test_kept_intervals_contain_the_best_point(history, top_k):
    points, scores = history
    _, best_score = sel.best_point(points, scores)
    # with ties, any point scoring the best score counts as "the best point"
    best_points = {p for p, s in zip(points, scores) if sel.clean_score(s) == best_score}
    plan = sel.next_stage(points, scores, count=5, top_k=top_k, initial_step=LOG10_STEP)
    if plan.expansion is None:
        assert any({lo, hi} & best_points for lo, hi in plan.intervals)
        # the best interval is ranked by its better endpoint: it must touch a best point
        ranked = sel.rank_intervals(points, scores)
        assert {ranked[0].low, ranked[0].high} & best_points


def test_interior_optimum_refines_both_sides():
    points = [1e-5, 1e-4, 1e-3, 1e-2]
    scores = [2.0, 1.0, 0.5, 0.8]
    plan = sel.next_stage(points, scores, count=5, top_k=2, initial_step=math.log(10))
    assert plan.expansion is None
    assert plan.intervals == ((1e-4, 1e-3), (1e-3, 1e-2))
    inside_best = [p for p in plan.points if 1e-3 < p < 1e-2]  # the better interval: 3 points
    assert len(inside_best) == 3
    # evenly spaced in log: ratios between neighbours are equal
    ratios = [b / a for a, b in zip([1e-3, *inside_best], [*inside_best, 1e-2])]
    assert ratios == pytest.approx([ratios[0]] * 4)


def test_edge_optimum_expands_beyond_the_range():
    points = sel.initial_points((1e-5, 1e-2), 5)
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]  # still improving at the top
    plan = sel.next_stage(points, scores, count=5, top_k=2, initial_step=LOG10_STEP)
    assert plan.expansion == "up"
    assert min(plan.points) > 1e-2
    assert max(plan.points) < 1e-2 * math.exp(2 * LOG10_STEP)
    down = sel.next_stage(points, scores[::-1], count=5, top_k=2, initial_step=LOG10_STEP)
    assert down.expansion == "down" and max(down.points) < 1e-5


def test_all_diverged_searches_lower():
    points = [1e-3, 1e-2, 1e-1]
    plan = sel.next_stage(
        points, [math.nan, math.inf, math.nan], count=3, top_k=2, initial_step=math.log(10)
    )
    assert plan.expansion == "down" and max(plan.points) < 1e-3


def test_linear_scale_does_not_expand_below_zero():
    points = sel.initial_points((0.0, 0.8), 5, "linear")
    plan = sel.next_stage(
        points, [0.1, 0.2, 0.3, 0.4, 0.5], count=4, top_k=2, initial_step=0.2, scale="linear"
    )
    assert plan.expansion is None and all(p > 0 for p in plan.points)


def test_stop_rule():
    assert sel.should_stop(1.0, 0.995, 0.01)
    assert not sel.should_stop(1.0, 0.95, 0.01)
    assert not sel.should_stop(1.0, 1.0, 0.0)  # 0 disables early stopping
    assert not sel.should_stop(math.inf, math.inf, 0.01)  # nothing found yet: keep going
    assert not sel.should_stop(math.inf, 1.0, 0.01)
    assert sel.improvement(2.0, 1.0) == pytest.approx(0.5)


@given(histories())
def test_best_point_is_minimal(history):
    points, scores = history
    best, best_score = sel.best_point(points, scores)
    cleaned = [sel.clean_score(s) for s in scores]
    assert best_score == min(cleaned)
    assert best == min(p for p, s in zip(points, cleaned) if s == best_score)


# ----------------------------------------------------------------------------- several seeds

seed_score = st.one_of(
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    st.sampled_from([math.inf, math.nan]),
)


@st.composite
def seeded_histories(draw):
    """Points with per-seed scores (2 to 4 seeds), the mean as the score."""
    points = [10.0**e for e in draw(exponents)]
    seeds = draw(st.integers(2, 4))
    seed_scores = [tuple(draw(seed_score) for _ in range(seeds)) for _ in points]
    scores = [float(np.mean(row)) for row in seed_scores]
    return points, scores, seed_scores


@settings(max_examples=300, deadline=None)
@given(seeded_histories(), st.integers(2, 9), st.integers(1, 4))
def test_noise_aware_stage_keeps_the_plan_contract(history, count, top_k):
    points, scores, seed_scores = history
    plan = sel.next_stage(
        points, scores, count=count, top_k=top_k, initial_step=LOG10_STEP, seed_scores=seed_scores
    )
    assert len(plan.points) == len(set(plan.points)) == count
    assert list(plan.points) == sorted(plan.points)
    assert not set(plan.points) & set(points)
    for p in plan.points:
        assert any(lo < p < hi for lo, hi in plan.intervals)
    if plan.expansion is None:
        assert 1 <= len(plan.intervals) <= top_k
        for lo, hi in plan.intervals:  # between neighbouring evaluated points
            assert not any(lo < p < hi for p in points)
    # pure: the same history in another order plans the same stage, and says the same
    backwards = sel.next_stage(
        points[::-1],
        scores[::-1],
        count=count,
        top_k=top_k,
        initial_step=LOG10_STEP,
        seed_scores=seed_scores[::-1],
    )
    assert backwards == plan
    assert sel.resolved(points, scores, seed_scores) == sel.resolved(
        points[::-1], scores[::-1], seed_scores[::-1]
    )


def _rows(means, spread):
    """Three seeds per point, ``mean + spread * pattern``, the pattern (-1, 0, 1) rotated
    from point to point so that paired differences between neighbours vary by seed."""
    patterns = [(-1, 0, 1), (1, -1, 0), (0, 1, -1)]
    return [
        tuple(m + s * e for e in patterns[i % 3]) for i, (m, s) in enumerate(zip(means, spread))
    ]


def test_noise_aware_search_refines_only_resolvable_edges_of_the_tied_run():
    points = [1e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1e-2, 1e-1]
    means = [3.0, 1.02, 1.0, 1.01, 1.03, 1.8, 3.0]
    # the middle four cannot be told apart (spread 0.2); the outer ones clearly differ
    seed_scores = _rows(means, [0.01, 0.2, 0.2, 0.2, 0.2, 0.01, 0.01])
    plan = sel.next_stage(
        points, means, count=5, top_k=2, initial_step=LOG10_STEP, seed_scores=seed_scores
    )
    # no point between the tied values: only where the curve visibly rises
    assert plan.expansion is None
    assert plan.intervals == ((1e-4, 1e-3), (8e-3, 1e-2))
    assert not sel.resolved(points, means, seed_scores)
    # without seeds the classic search refines around the noisy best
    classic = sel.next_stage(points, means, count=5, top_k=2, initial_step=LOG10_STEP)
    assert classic.intervals == ((1e-3, 2e-3), (2e-3, 4e-3))


def test_resolved_when_no_interval_next_to_the_tied_run_is_resolvable():
    points = [1e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1e-2, 1e-1]
    means = np.array([1.6, 1.25, 1.1, 1.0, 1.1, 1.25, 1.6])
    tiny, a, b, c = (0.01, -0.01, 0.01, -0.01), (1, -1, 1, -1), (1, 1, -1, -1), (1, -1, -1, 1)
    # the ends and the best are quiet, the values between them noisy (0.3 per seed)
    noise = np.array([tiny, b, a, tiny, c, np.negative(c), tiny], float)
    noise[[1, 2, 4, 5]] *= 0.3
    noisy = [tuple(row) for row in means[:, None] + noise]
    scores = [float(np.mean(row)) for row in noisy]
    # the ends are worse than the best, but no neighbours differ significantly
    assert sel.resolved(points, scores, noisy)
    assert not sel.resolved(points, scores, None)  # one seed: no measure of the noise
    assert not sel.resolved(points, scores, [(m,) for m in scores])
    # resolved, but asked for another stage: it stays next to the run, plan contract intact
    plan = sel.next_stage(
        points, scores, count=5, top_k=2, initial_step=LOG10_STEP, seed_scores=noisy
    )
    assert len(plan.points) == 5 and plan.expansion is None
    # the same means with little noise: the edges of the run are resolvable again
    quiet = [tuple(row) for row in means[:, None] + 0.001 * noise]
    assert not sel.resolved(points, [float(np.mean(r)) for r in quiet], quiet)


def test_noise_aware_search_expands_when_the_tied_run_reaches_an_edge():
    points = [1e-4, 1e-3, 1e-2]
    means = [2.0, 1.0, 1.05]  # the best is inside, but the top value is tied with it
    seed_scores = _rows(means, [0.01, 0.2, 0.2])
    plan = sel.next_stage(
        points, means, count=3, top_k=2, initial_step=LOG10_STEP, seed_scores=seed_scores
    )
    assert plan.expansion == "up" and min(plan.points) > 1e-2
    assert not sel.resolved(points, means, seed_scores)
    classic = sel.next_stage(points, means, count=3, top_k=2, initial_step=LOG10_STEP)
    assert classic.expansion is None


def test_seed_scores_must_match_the_points():
    with pytest.raises(ValueError, match="seed_scores"):
        sel.next_stage(
            [1e-3, 1e-2], [1.0, 2.0], count=2, top_k=1, initial_step=1.0, seed_scores=[(1.0, 2.0)]
        )
