"""Properties of the pure coarse-to-fine selector (hypothesis)."""

import math

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
