"""What the report, methods paragraph and result say about the new search, checked against
results built to make each sentence true or false (simulated scores, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_search import _config, _flat_below, _simulate, _valley_noise

from jaxsweep import _search
from jaxsweep._result import Evaluation, Stage, SweepResult
from jaxsweep.report import markdown, methods_tex, precision_sentence


def _result(scores_of, stop_reason=None, **overrides) -> SweepResult:
    """A SweepResult of the simulated search on ``scores_of``, as the driver records it."""
    config = _config(**overrides)
    evaluated, reason, summary = _simulate(scores_of, config)
    count = config.points_per_stage
    evaluations = tuple(
        Evaluation(
            value=v,
            stage=i // count,
            score=float(np.mean(row)),
            diverged=not np.isfinite(row).all(),
            seed_scores=tuple(row),
            train_loss=(1.0,),
            val_loss=(float(np.mean(row)),),
            seed_val_loss=tuple((s,) for s in row),
            grad_norm=(1.0,),
            grad_norm_max=(1.0,),
            loss_reduction_rate=(0.1,),
            stability=(0.01,),
        )
        for i, (v, row) in enumerate(zip(evaluated.points, evaluated.seed_scores, strict=True))
    )
    stages = tuple(
        Stage(
            index=k,
            values=evaluated.points[k * count : (k + 1) * count],
            intervals=(),
            expansion=None,
            best_value=math.nan,
            best_score=best,
            seconds=1.0,
            seconds_per_epoch=(1.0,),
            compile_seconds=0.0,
            memory_bytes=0,
            memory_source="unavailable",
        )
        for k, best in enumerate(evaluated.stage_bests)
    )
    record = {**config.to_json(), "model": "simulated", "optimizer": "adamw", "loss": "mse"}
    return SweepResult(
        best_value=min(evaluations, key=lambda e: e.score).value,
        best_score=min(e.score for e in evaluations),
        evaluations=evaluations,
        stages=stages,
        config=record,
        environment={},
        stop_reason=stop_reason or reason,
        warnings=summary.notes,
    )


@pytest.fixture(scope="module")
def flat():
    return _result(lambda v: _flat_below(v, 0), value_range=(1e-5, 1e-1), hyperparam="weight_decay")


@pytest.fixture(scope="module")
def valley():
    return _result(lambda v: _valley_noise(v, 0))


def test_a_plateau_is_stated_as_one_not_as_an_interval_down_to_the_edge(flat):
    assert [p.direction for p in flat.plateaus] == ["down"]
    bound = flat.plateaus[0].bound
    assert flat.confidence.best.method == "plateau" and math.isinf(flat.precision)
    words = f"values at or below {bound:.3g} score alike"
    assert words in markdown(flat)
    assert "No precision can be stated" in markdown(flat)
    tex = methods_tex(flat)
    assert "plateau the search stopped following" in tex and "Precision reached" not in tex
    assert any("a plateau, no longer expanded into" in w for w in flat.warnings)


def test_a_bracketed_optimum_states_its_precision_and_no_plateau(valley):
    assert not valley.plateaus
    low, high = valley.value_interval
    value = valley.confidence.best.lr
    reached = max(high / value, value / low) - 1  # computed here from the interval itself
    assert valley.precision == pytest.approx(reached)
    sentence = precision_sentence(valley)
    assert f"Precision reached: {reached:.3g}" in sentence
    lanes = sum(len(e.seed_scores) for e in valley.evaluations)
    assert f"after {lanes} lanes" in sentence and f"about {3 * lanes} more lanes" in sentence
    # what a run asking for half the width would train: its seeds follow the precision
    half = float(f"{reached / 2:.2g}")
    wanted = min(max(math.ceil(10 * (0.5 / half) ** 2 - 1e-9), 3), 64)
    assert f"run(precision={half:g}) would train {wanted} seeds per value" in sentence
    assert "score alike" not in markdown(valley) and "plateau" not in methods_tex(valley)


def test_the_words_follow_whether_a_requested_precision_was_reached():
    reached = _result(lambda v: _valley_noise(v, 1), precision=0.5)
    assert reached.stop_reason == "precision" and reached.precision <= 0.5
    assert "The requested precision 0.5 was reached." in precision_sentence(reached)
    assert "requested precision" in methods_tex(reached)
    short = _result(lambda v: _valley_noise(v, 1), precision=0.01, max_lanes=45)
    assert short.stop_reason == "budget" and short.precision > 0.01
    words = precision_sentence(short)
    assert "was not reached" in words and "was reached." not in words
    more = math.ceil(45 * ((short.precision / 0.01) ** 2 - 1))
    assert f"about {more} more lanes" in words
    assert "stopped at its budget" in methods_tex(short)


def test_the_searchs_own_summary_agrees_with_the_result(valley, flat):
    for result in (valley, flat):
        config = _config(
            **(
                {"value_range": (1e-5, 1e-1), "hyperparam": "weight_decay"}
                if result is flat
                else {}
            )
        )
        evaluated = _search.Evaluated(
            tuple(e.value for e in result.evaluations),
            tuple(e.score for e in result.evaluations),
            tuple(e.objective_seed_scores() for e in result.evaluations),
            tuple(s.best_score for s in result.stages),
            sum(len(e.seed_scores) for e in result.evaluations),
        )
        summary = _search.hierarchical().summary(evaluated, config)
        assert summary.precision == result.precision
        assert summary.plateaus == result.plateaus


def test_the_expansion_warning_says_why_the_search_left_the_range():
    from types import SimpleNamespace

    from jaxsweep._driver import _expansion_note
    from jaxsweep._selector import StagePlan

    config = _config()
    plan = StagePlan((0.0178, 0.0316), ((0.01, 0.1),), "up")
    at_edge = SimpleNamespace(points=(1e-3, 3e-3, 1e-2), scores=(0.5, 0.4, 0.3))
    note = _expansion_note(1, plan, config, at_edge)
    assert "the best learning rate was the largest evaluated" in note
    assert "outside the given range" in note
    inside = SimpleNamespace(points=(1e-3, 3e-3, 1e-2), scores=(0.5, 0.3, 0.31))
    note = _expansion_note(1, plan, config, inside)
    assert "was the largest" not in note
    assert "values not significantly worse than the best learning rate reach the largest" in note
