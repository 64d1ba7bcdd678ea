"""Smoke tests of the benchmarks at a minuscule size: structure and same-work checks, no timing.

The speed comparisons are only fair if every method trains the same thing; these tests pin
that the sequential baselines reproduce the vmapped lanes' losses, and that the precision
benchmark's closed-form loss is what gradient descent actually reaches.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# the benchmarks are a package of the source tree, not of the installed distribution
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    _common,
    cost_growth,
    data_sources,
    precision,
    stage_throughput,
    whole_sweep,
)
from jaxsweep.models import MLP  # noqa: E402

# each benchmark compiles several programs of its own, even at this size
pytestmark = pytest.mark.slow

TINY = dict(epochs=1, batch_size=32, limit=240)


def tiny_mlp():
    return MLP(hidden=(8,))


def _check_record(record, name):
    assert record["name"] == name
    assert record["tables"] and all(t["rows"] for t in record["tables"])
    for tab in record["tables"]:
        assert all(len(row) == len(tab["columns"]) for row in tab["rows"])
    assert set(record["load_average"]) == {"start", "end"}
    json.dumps(_common._jsonable(record))  # every record is JSON-ready


def test_stage_throughput_structure_and_same_work():
    record = stage_throughput.run(
        models={"tiny": tiny_mlp}, points=2, repeats=1, compile_repeats=1, **TINY
    )
    _check_record(record, "stage_throughput")
    model = record["data"]["models"]["tiny"]
    assert set(model["steady"]) == {"stage", "stage_1_lane", "vmap_plain", "sequential", "one_run"}
    assert set(model["with_compile"]) == {"stage", "vmap_plain", "sequential", "usual", "one_run"}
    assert model["params"] == 64 * 8 + 8 + 8 * 10 + 10
    # every baseline trains what the engine's lanes train: the same losses, rate by rate
    losses = model["final_val_loss"]
    assert set(losses) == {"stage", "stage_1_lane", "vmap_plain", "sequential", "usual"}
    for name in ("vmap_plain", "sequential", "usual"):
        np.testing.assert_allclose(losses[name], losses["stage"], rtol=2e-4)
    assert abs(losses["stage"][0] - losses["stage"][1]) > 0.01  # and the rates matter
    assert max(model["max_relative_loss_difference_to_sequential"].values()) < 1e-3


def test_whole_sweep_structure():
    record = whole_sweep.run(
        model_fn=tiny_mlp,
        stages=2,
        points_per_stage=2,
        dense_points=10,
        dense_chunk=2,
        search_seeds=1,
        retrain_seeds=1,
        repeats=1,
        engine_repeats=1,
        tpe=False,  # TPE is exercised by the precision test
        **TINY,
    )
    _check_record(record, "whole_sweep")
    data = record["data"]
    methods = data["quality"]["methods"]
    assert methods["dense grid 10"]["evaluations"] == 10
    assert methods["grid 4"]["evaluations"] == 4
    assert data["engine"]["evaluations"] == 4
    # (a) retrains the sweep's own rates and gets the sweep's own scores
    assert data["engine"]["max_relative_score_difference_sequential"] < 1e-3
    assert data["engine"]["diverged_agree"] and data["engine"]["same_rates_every_run"]
    # the dense grid contains the grid's range: it cannot be worse than its best
    assert methods["dense grid 10"]["best_loss"][0] <= methods["grid 4"]["best_loss"][0] + 1e-3
    assert all(len(m["retrained_loss"]) == len(m["best_lr"]) for m in methods.values())


def test_precision_closed_form_matches_gradient_descent():
    problem = precision.make_problem("edge", seed=3)
    lrs = np.asarray([1e-4, problem.optimum(), 1.05 * 2 / problem.eigenvalues.max()])
    exact = problem.loss(lrs)
    trained = precision._scores(problem, lrs)
    np.testing.assert_allclose(trained, exact, rtol=1e-4)
    # the optimum is a minimum: both neighbours are worse
    best = problem.optimum()
    assert problem.loss(best) < min(problem.loss(best * 0.999), problem.loss(best * 1.001))
    assert best < 2 / problem.eigenvalues.max()


def test_precision_structure():
    record = precision.run(kinds=("outside",), seeds=1, trials=5)
    _check_record(record, "precision")
    (case,) = record["data"]["cases"]
    assert case["optimum"] > precision.DEFAULT_RANGE[1]  # the optimum lies outside the range
    assert case["sweep_score_max_relative_error_vs_exact"] < 1e-3
    assert case["relative_error"]["hierarchical"] < 0.05
    assert case["relative_error"]["grid 5"] > 0.5  # a grid cannot leave its range


def test_cost_growth_structure():
    record = cost_growth.run(
        lanes=(1, 2), widths=(8,), width_lanes=(1, 2), base_width=8, repeats=1, **TINY
    )
    _check_record(record, "cost_growth")
    lanes = record["data"]["by_lanes"]["lanes"]
    one, two = lanes["1"]["memory"], lanes["2"]["memory"]
    # lanes share the data: two lanes need less than twice the memory of one
    assert one["data"] == two["data"] > 0
    assert one["total"] < two["total"] < 2 * one["total"]


def test_results_files(tmp_path):
    info = _common.machine()
    assert _common.machine_slug(info).startswith(info["backend"])
    record = _common.benchmark_record(
        "x", "X", [_common.table("t", ["a", "b"], [[1, math.inf]])], ["note"], {}, [0.1], 1.0
    )
    run = {"slug": "test", "mode": "quick", "machine": info, "benchmarks": [record]}
    json_path, md_path = _common.write_results(run, str(tmp_path))
    assert json_path.endswith("test-quick.json")
    saved = json.loads(Path(json_path).read_text())
    assert saved["benchmarks"][0]["tables"][0]["rows"] == [[1, "inf"]]
    text = Path(md_path).read_text()
    assert "| a | b |" in text and "| 1 | diverged |" in text


def test_summary_is_a_median():
    assert _common.summary([3.0, 1.0, 2.0])["median"] == 2.0
    with pytest.raises(ValueError):
        _common.summary([])


def test_data_sources_structure_same_work_and_bounded_validation():
    record = data_sources.run(mode="quick", steps=4, repeats=1, val_sizes=(600, 2400))
    _check_record(record, "data_sources")
    throughput = record["data"]["throughput"]
    assert "Python map dataset" in throughput["final_val_loss"]
    assert max(throughput["max_relative_diff"].values()) < 1e-5  # sources train the same
    memory = record["data"]["validation_memory"]
    batched = [memory[n]["batched (default)"]["temporaries"] for n in (600, 2400)]
    whole = [memory[n]["one batch"]["temporaries"] for n in (600, 2400)]
    assert batched[1] < 1.5 * batched[0] < whole[1]  # batched stays flat, one batch grows
