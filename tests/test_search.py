"""The hierarchical search against its worst cases, on simulated objectives of known optimum.

Each test drives the real search (``_search.hierarchical()``: plan, stop, summary) the way the
driver does, on per-seed scores drawn from an objective whose *expected* optimum is known:
lanes that blow up to huge finite losses, zero noise, flat ends, heavy-tailed seed noise, and
a requested precision. Nothing here trains a model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxsweep import _confidence, _noise, _search, _selector
from jaxsweep._config import make_config
from jaxsweep._history import blown_up

OPTIMUM = 3e-3


def _config(**overrides):
    settings = dict(
        hyperparam="learning_rate",
        value_range=(1e-5, 1e-2),
        range_name="lr_range",
        scale="log",
        points_per_stage=5,
        stages=None,
        top_k=2,
        epochs=3,
        batch_size=32,
        seeds=3,
        seed=0,
        min_improvement=None,
        validation_fraction=0.2,
        expand=True,
    )
    return make_config(**{**settings, **overrides})


def _valley(values) -> np.ndarray:
    """An expected loss with its minimum at OPTIMUM: steep above, shallow below (in log)."""
    d = np.log(np.asarray(values, np.float64) / OPTIMUM)
    return 0.3 * (np.exp(1.5 * d) - 1.5 * d - 1) + 0.15


def _seed_effects(values, trial: int, seeds: int, noise) -> np.ndarray:
    """Per (value, seed): a seed's shift and tilt of the whole curve (they average out, so
    the expected optimum stays put) plus ``noise(rng)``, a fixed function of (seed, value)."""
    d = np.log(np.asarray(values, np.float64) / OPTIMUM)
    rows = np.zeros((len(d), seeds))
    for s in range(seeds):
        shift, tilt = np.random.default_rng([trial, s]).normal(0, [0.03, 0.1])
        for i, value in enumerate(values):
            rng = np.random.default_rng([trial, s, round(abs(math.log(value)) * 1e9)])
            rows[i, s] = shift + tilt * d[i] + noise(rng)
    return rows


def _normal(rng) -> float:
    return rng.normal(0, 0.02)


def _simulate(scores_of, config, start: float = 2.3):
    """The driver's loop on simulated scores: plan, score (a lane whose loss ends 10x above
    ``start`` counts as diverged, as the engine records it), stop, summarise."""
    search = _search.hierarchical()
    points, rows, bests = [], [], []
    while True:
        evaluated = _evaluated(points, rows, bests)
        plan = search.plan(evaluated, config)
        raw = scores_of(np.asarray(plan.points))
        exploded = blown_up(raw.ravel(), np.full(raw.size, start)).reshape(raw.shape)
        scored = np.where(exploded | ~np.isfinite(raw), np.inf, raw)
        points += list(plan.points)
        rows += [tuple(float(v) for v in row) for row in scored]
        bests.append(_selector.best_point(points, [np.mean(r) for r in rows])[1])
        evaluated = _evaluated(points, rows, bests)
        reason = search.stop(evaluated, config)
        if reason is not None:
            return evaluated, reason, search.summary(evaluated, config)


def _evaluated(points, rows, bests) -> _search.Evaluated:
    means = tuple(float(np.mean(r)) for r in rows)
    lanes = sum(len(r) for r in rows)
    return _search.Evaluated(tuple(points), means, tuple(rows), tuple(bests), lanes)


def _sweeps(objective, trials: int, **overrides):
    config = _config(**overrides)
    return [_simulate(lambda v, t=t: objective(v, t), config) for t in range(trials)]


def _estimate(evaluated, config):
    return _search.confidence(evaluated, config).best


def _coverage_and_widths(runs) -> tuple[float, list, list]:
    """Of simulated sweeps (defaults): how often the interval holds OPTIMUM, each interval's
    width (upper / lower) and each refined value's relative error."""
    config = _config()
    estimates = [_estimate(evaluated, config) for evaluated, _, _ in runs]
    covered = float(np.mean([e.contains(OPTIMUM) for e in estimates]))
    widths = [e.high / e.low for e in estimates]
    return covered, widths, [abs(e.lr / OPTIMUM - 1) for e in estimates]


# ----------------------------------------------------------------------------- blown-up lanes


def _exploding_valley(values, trial: int) -> np.ndarray:
    """The valley, but every seed past 1.6x the optimum blows up to a huge finite loss (full
    batches past the divergence edge: 1e25, not NaN)."""
    scores = _valley(values)[:, None] + _seed_effects(values, trial, 3, _normal)
    past = np.asarray(values) > 1.6 * OPTIMUM
    return np.where(past[:, None], 1e25 * (1 + np.arange(3)), scores)


def test_a_huge_finite_lane_does_not_inflate_the_noise_floor():
    values = np.geomspace(1e-4, 1e-2, 6)
    quiet = _valley(values)[:, None] + _seed_effects(values, 0, 3, _normal)
    loud = quiet.copy()
    loud[-1] = [1.5e4, 1.6e6, 3.0e25]  # finite, far away from the best
    assert _noise.pooled_error(loud) == pytest.approx(_noise.pooled_error(quiet[:-1]))
    # the pooled floor of every finite row (the old rule) would be enormous
    rows = loud - loud.mean(1, keepdims=True) - loud.mean(0) + loud.mean()
    assert math.sqrt(2 * np.median(rows.var(axis=1, ddof=1)) / 3) > 1e3
    first, last = _noise.tied_run(loud)
    assert last < len(values) - 1  # the blown-up value is worse, not tied


def test_blown_up_lanes_count_as_diverged():
    start = np.array([2.3, 2.3, 2.4, 0.0, 2.3])
    final = np.array([1.4, 1.5e4, 23.0, 5.0, np.inf])
    assert blown_up(final, start).tolist() == [False, True, False, False, False]
    # a lane starting low is judged against the stage's typical start
    assert blown_up(np.array([5.0, 30.0]), np.array([0.1, 2.3])).tolist() == [False, True]


def test_search_beside_a_divergence_edge_finds_the_optimum():
    runs = _sweeps(_exploding_valley, trials=40)
    covered, widths, errors = _coverage_and_widths(runs)
    assert covered >= 0.9, covered
    assert np.median(widths) < 3.0, np.median(widths)
    assert np.median(errors) < 0.15, np.median(errors)
    # nothing searched far below the optimum: the tied run did not swallow the range
    assert all(min(evaluated.points) >= 1e-5 for evaluated, _, _ in runs)


# ----------------------------------------------------------------------------- zero noise


def _descent_loss(values) -> np.ndarray:
    """Exact loss of 20 full-batch descent steps from zero (Hessian eigenvalues 1.5..24)."""
    eigenvalues = np.geomspace(1.5, 24.0, 16)
    with np.errstate(over="ignore"):
        steps = (1.0 - np.asarray(values, np.float64)[..., None] * eigenvalues) ** 40
    return (0.5 * eigenvalues * steps).sum(axis=-1)


def test_zero_noise_identical_seeds_locate_the_optimum():
    dense = np.geomspace(1e-3, 0.2, 400001)
    truth = float(dense[np.argmin(_descent_loss(dense))])
    start = float(_descent_loss(0.0))

    def identical(values):
        return np.repeat(_descent_loss(values)[:, None], 3, axis=1)

    config = _config()
    evaluated, reason, summary = _simulate(identical, config, start=start)
    estimate = _estimate(evaluated, config)
    assert estimate.contains(truth), (estimate, truth)
    assert abs(estimate.lr / truth - 1) < 0.01
    assert summary.precision < 0.05 and not summary.plateaus
    assert reason in ("completed", "resolution")


# ----------------------------------------------------------------------------- flat ends


def _flat_below(values, trial: int) -> np.ndarray:
    """A weight decay's score: flat below 1e-3 (small decays all score alike), rising above."""
    excess = np.maximum(np.log(np.asarray(values) / 1e-3), 0.0)
    expected = 0.5 + 0.2 * excess**2
    shift = np.random.default_rng(trial).normal(0, 0.03, size=3)
    jitter = [
        np.random.default_rng([trial, round(abs(math.log(v)) * 1e9)]).normal(0, 0.01, size=3)
        for v in values
    ]
    return expected[:, None] + shift + np.array(jitter)


def test_a_flat_end_is_reported_as_a_plateau_not_chased():
    config = _config(value_range=(1e-5, 1e-1), hyperparam="weight_decay")
    lowest = []
    for trial in range(12):
        evaluated, reason, summary = _simulate(lambda v, t=trial: _flat_below(v, t), config)
        lowest.append(min(evaluated.points))
        # one expansion below the range (two where its groups differ by chance) confirmed
        # the flat end, then no more: never the old chase down to 1e-12
        assert lowest[-1] >= 1e-9 * (1 - 1e-9), lowest[-1]
        assert [p.direction for p in summary.plateaus] == ["down"]
        plateau = summary.plateaus[0]
        assert 1e-5 * (1 - 1e-9) <= plateau.bound <= 1e-2  # the flat part ends at 1e-3
        assert any("score alike" in note for note in summary.notes)
        assert not any("at the edge" in note for note in summary.notes)
        estimate = _estimate(evaluated, config)
        assert estimate.method == "plateau" and not estimate.bracketed
        assert math.isinf(summary.precision)
        assert reason in ("resolution", "completed")
    assert sum(low >= 1e-7 * (1 - 1e-9) for low in lowest) >= 10, lowest


def test_an_optimum_beyond_the_range_is_followed_not_taken_for_a_plateau():
    # a real slope down to the optimum at 3e-3, searched from a range far above it
    config = _config(value_range=(1e-2, 1.0))
    evaluated, _, summary = _simulate(lambda v: _valley(v)[:, None] + 0.001 * np.arange(3), config)
    assert not summary.plateaus
    assert _estimate(evaluated, config).contains(OPTIMUM)


# ----------------------------------------------------------------------------- heavy tails


def _heavy_tailed(values, trial: int) -> np.ndarray:
    """The valley with Student-t (2 degrees of freedom) seed noise: rare seeds far off."""
    return _valley(values)[:, None] + _seed_effects(
        values, trial, 3, lambda rng: 0.01 * rng.standard_t(2)
    )


def test_heavy_tailed_seed_noise_keeps_the_interval_honest_and_useful():
    covered, widths, _ = _coverage_and_widths(_sweeps(_heavy_tailed, trials=40))
    assert covered >= 0.85, covered
    assert np.median(widths) < 4.0, np.median(widths)


def test_every_seed_worse_is_worse_despite_one_erratic_seed():
    best = np.array([1.40, 1.38, 1.42])
    near = [best + d for d in (0.01, -0.01, 0.02, 0.0)]
    erratic = best + np.array([1.3, 1.2, 900.0])  # worse on every seed, one seed wildly
    matrix = _noise.score_matrix([*near[:2], best, *near[2:], erratic])
    floor = _noise.pooled_error(matrix)
    assert _noise.worse(matrix, 5, 2, floor=floor)
    # a t test alone sees the erratic seed's spread and calls it tied
    difference = matrix[5] - matrix[2]
    t = difference.mean() / (difference.std(ddof=1) / math.sqrt(3))
    assert t < _noise.t_quantile(0.95, 2)
    # but one seed better is not "worse on every seed"
    mixed = matrix.copy()
    mixed[5] = best + np.array([-0.05, 1.2, 900.0])
    assert not _noise.worse(mixed, 5, 2, floor=_noise.pooled_error(mixed))


# ----------------------------------------------------------------------------- precision


def _valley_noise(values, trial: int) -> np.ndarray:
    return _valley(values)[:, None] + _seed_effects(values, trial, 3, _normal)


def test_a_requested_precision_is_reached_and_still_covers():
    runs = _sweeps(_valley_noise, trials=30, precision=0.5)
    config = _config(precision=0.5)
    reasons = [reason for _, reason, _ in runs]
    # each seed tilts its curve, so 3 seeds bound how narrow an honest interval can get:
    # most sweeps reach +-50%, the rest stop at the stage bound and say what they reached
    assert reasons.count("precision") >= 20, reasons
    assert set(reasons) <= {"precision", "budget"}
    for evaluated, reason, summary in runs:
        estimate = _estimate(evaluated, config)
        if reason == "precision":
            assert summary.precision <= 0.5
            assert estimate.high / estimate.low <= 1.5**2 * (1 + 1e-9)
        else:
            assert summary.precision > 0.5 and evaluated.stages == config.stages
            assert any("was not reached" in note for note in summary.notes)
    covered = np.mean([_estimate(e, config).contains(OPTIMUM) for e, _, _ in runs])
    assert covered >= 0.85, covered


def test_max_lanes_ends_a_precision_sweep_with_what_it_reached():
    config = _config(precision=0.01, max_lanes=45)
    evaluated, reason, summary = _simulate(lambda v: _valley_noise(v, 0), config)
    assert reason == "budget" and evaluated.lanes == 45
    assert summary.precision > 0.01
    assert any("precision 0.01 was not reached" in note for note in summary.notes)


def test_precision_and_max_lanes_are_checked():
    with pytest.raises(ValueError, match="precision"):
        _config(precision=0.0)
    with pytest.raises(TypeError, match="precision"):
        _config(precision="0.5")
    with pytest.raises(ValueError, match="max_lanes"):
        _config(max_lanes=10)  # a stage alone trains 15
    # the seeds a precision brings count, and the message says where they came from
    with pytest.raises(ValueError, match=r"50 lanes \(seeds=10: what precision=0.5 needs"):
        _config(precision=0.5, seeds=None, max_lanes=45)
    assert _config(precision=0.5, max_lanes=45).max_lanes == 45  # 3 seeds given: 15 a stage
    assert _config(precision=0.5).stages == 20 and _config().stages == 5


# ----------------------------------------------------------------------------- the seam


def test_the_search_is_pure_and_the_stop_rules_keep_their_order():
    config = _config()
    evaluated, reason, _ = _simulate(lambda v: _valley_noise(v, 3), config)
    search = _search.hierarchical()
    again = _search.Evaluated(*evaluated)
    assert search.stop(again, config) == reason  # same history, same answer
    assert search.plan(again, config) == search.plan(evaluated, config)
    one_seed = _config(seeds=1)
    flat = _search.Evaluated((1e-3, 1e-2), (1.0, 1.0), ((1.0,), (1.0,)), (1.0, 1.0), 2)
    assert search.stop(flat, one_seed) == "min_improvement"
    assert search.stop(flat, _config(seeds=1, stages=2)) == "min_improvement"
    assert search.stop(flat, _config(seeds=1, stages=2, min_improvement=0.0)) == "completed"


def test_a_search_plugs_into_the_driver_without_touching_it(monkeypatch, split_blobs):
    """A two-stage search of its own: the driver trains what it plans and stops as it says."""
    from conftest import TinyMLP

    import jaxsweep

    planned = [(1e-3, 1e-2), (3e-3, 2e-2)]

    def plan(evaluated, config):
        return _selector.StagePlan(planned[evaluated.stages], (), None)

    def stop(evaluated, config):
        assert evaluated.lanes == 2 * config.seeds * evaluated.stages
        return "completed" if evaluated.stages == len(planned) else None

    def summary(evaluated, config):
        return _search.SearchSummary(math.inf, (), (f"{len(evaluated.points)} values, my way",))

    custom = _search.Search(plan, stop, summary)
    monkeypatch.setattr(_search, "hierarchical", lambda: custom)
    with pytest.warns(jaxsweep.SearchRangeWarning, match="4 values, my way"):
        result = jaxsweep.run(
            TinyMLP, split_blobs, epochs=1, batch_size=64, seeds=2, progress=False
        )
    assert [s.values for s in result.stages] == planned
    assert result.stop_reason == "completed"
    assert sorted(e.value for e in result.evaluations) == sorted(sum(planned, ()))

    # a stage with steps of its own trains that long, and stays apart from the sweep's own
    def longer(evaluated, config):
        if evaluated.stages == 0:
            return _selector.StagePlan((1e-3, 1e-2), (), None)
        return _selector.StagePlan((2e-3, 5e-3), (), None, steps=2 * evaluated.steps)

    def twice(evaluated, config):
        return "completed" if evaluated.longer else None

    monkeypatch.setattr(_search, "hierarchical", lambda: custom._replace(plan=longer, stop=twice))
    with pytest.warns(jaxsweep.SearchRangeWarning, match="2 values, my way"):
        result = jaxsweep.run(
            TinyMLP, split_blobs, epochs=1, batch_size=64, seeds=2, progress=False
        )
    assert [s.values for s in result.stages] == [(1e-3, 1e-2)]
    assert [s.values for s in result.horizon_stages] == [(2e-3, 5e-3)]
    sweep_steps = result.evaluations[0].steps[-1]
    assert [e.steps[-1] for e in result.horizon_evaluations] == [2 * sweep_steps] * 2
    assert len(result.horizon_evaluations[0].steps) == len(result.evaluations[0].steps)


def test_a_precision_brings_the_seeds_an_honest_interval_needs():
    # three seeds leave two degrees of freedom for their spread: a sweep that stops when its
    # interval is narrow stops on the intervals narrow by chance
    assert _config(seeds=None).seeds == 3
    assert _config(seeds=None, precision=0.5).seeds == 10
    assert _config(seeds=None, precision=0.25).seeds == 40  # half the width: 4x the seeds
    assert _config(seeds=None, precision=0.01).seeds == 64  # and a bound on the spend
    assert _config(seeds=None, precision=3.0).seeds == 3
    assert _config(seeds=4, precision=0.5).seeds == 4  # what the user asks for stands
    with pytest.raises(ValueError, match="seeds"):
        _config(seeds=0, precision=0.5)


def test_a_precision_sweeps_interval_spans_every_closing_window():
    config = _config(precision=0.5, seeds=None)
    evaluated, _, _ = _simulate(
        lambda v: _valley(v)[:, None] + _seed_effects(v, 1, config.seeds, _normal), config
    )
    latest = _confidence.estimate(
        evaluated.points, evaluated.scores, evaluated.seed_scores, every_window=True
    ).best
    narrowest = _confidence.estimate(evaluated.points, evaluated.scores, evaluated.seed_scores).best
    reported = _search.confidence(evaluated, config).best
    assert (latest.low, latest.high) != (narrowest.low, narrowest.high)  # wider fits disagree
    assert reported.low <= latest.low <= narrowest.low
    assert reported.high >= latest.high >= narrowest.high


def test_with_the_seeds_a_precision_brings_it_is_reached_and_covers():
    config = _config(precision=0.5, seeds=None)

    def objective(values, trial):
        return _valley(values)[:, None] + _seed_effects(values, trial, config.seeds, _normal)

    runs = _sweeps(objective, trials=20, precision=0.5, seeds=None)
    reasons = [reason for _, reason, _ in runs]
    assert reasons.count("precision") >= 18, reasons
    estimates = [_estimate(evaluated, config) for evaluated, _, _ in runs]
    assert np.mean([e.contains(OPTIMUM) for e in estimates]) >= 0.9
    assert all(e.seeds == config.seeds == 10 for e in estimates)
