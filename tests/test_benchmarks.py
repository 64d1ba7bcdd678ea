"""Smoke tests of the benchmarks at a minuscule size: structure and same-work checks, no timing.

The speed comparisons are only fair if every method trains the same thing; these tests pin
that the sequential baselines reproduce the vmapped lanes' losses, and that the precision
benchmark's closed-form loss is what gradient descent actually reaches.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import (
    _common,
    cost_growth,
    coverage,
    data_sources,
    engine_costs,
    peers,
    precision,
    precision_study,
    stage_throughput,
    whole_sweep,
)
from benchmarks._workloads import DRY_MODELS
from jaxsweep.models import MLP

ROOT = Path(__file__).resolve().parents[1]

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


def test_batchnorm_baselines_carry_statistics_like_the_lanes():
    """The BatchNorm row is the same work too: every baseline trains with train=True and
    mutable batch statistics and validates with train=False, as the engine's lanes do."""
    from benchmarks._workloads import BatchNormCNN

    record = stage_throughput.run(
        models={"bn": lambda: BatchNormCNN(channels=(2, 4))},
        points=2,
        repeats=1,
        compile_repeats=1,
        **TINY,
    )
    model = record["data"]["models"]["bn"]
    assert model["params"] == 9 * 2 + 2 * 2 + 9 * 2 * 4 + 2 * 4 + 16 * 4 * 10 + 10
    losses = model["final_val_loss"]
    for name in ("vmap_plain", "sequential", "usual"):
        np.testing.assert_allclose(losses[name], losses["stage"], rtol=2e-4)
    assert abs(losses["stage"][0] - losses["stage"][1]) > 0.01


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


def test_engine_costs_structure_and_same_work():
    name = "tiny MLP (64-8-10)"
    record = engine_costs.run(mode="dry", models={name: DRY_MODELS[name]})
    _check_record(record, "engine_costs")
    model = record["data"]["models"][name]
    assert model["strategy_auto"] == "vmap"  # a tiny MLP on one CPU
    # every strategy trains what vmap trains
    assert max(model["strategy_max_relative_difference_to_vmap"].values()) < 1e-4
    costs = model["sweep_costs"][0]
    assert costs["programs"] == 3 and costs["cache_hits"] == 0
    assert 0 < costs["first_step_seconds"] < costs["seconds"]
    # the second process loaded every program from the cache the first one wrote
    warm = model["warm_cache"]["warm"]
    assert warm["cache_hits"] == warm["programs"] == 3
    assert set(model["diagnostics"]) == {"with", "without"}
    # the default-seeds stage and (a) train the same (rate, seed) lanes
    assert set(model["default_seeds"]) == {"jaxsweep stage", "(a)"}
    assert model["default_seeds_max_relative_difference_to_a"] < 1e-3


def test_gpu_script_dry_mode_writes_its_results(tmp_path):
    """gpu.sh --dry: the GPU script's own path on a CPU, results into $OUT."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--only", "cost_growth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = tmp_path.glob("*-dry.json")
    saved = json.loads(result.read_text())
    assert saved["mode"] == "dry"
    assert [b["name"] for b in saved["benchmarks"]] == ["cost_growth"]
    assert (tmp_path / result.name.replace(".json", ".md")).exists()


def test_a_failing_benchmark_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    from benchmarks import run_all

    class Broken:
        NAME = "broken"

        @staticmethod
        def run(mode, **_):
            raise RuntimeError("an API that moved")

    class Fine:
        NAME = "fine"

        @staticmethod
        def run(mode, **_):
            return _common.benchmark_record("fine", "Fine", [], [mode], {}, [], 0.0)

    monkeypatch.setattr(run_all, "BENCHMARKS", {"broken": Broken, "fine": Fine})
    assert run_all.main(["--dry", "--only", "broken,fine", "--out", str(tmp_path)]) == 0
    (saved,) = tmp_path.glob("*-dry.json")
    records = json.loads(saved.read_text())["benchmarks"]
    assert [r["name"] for r in records] == ["broken", "fine"]
    assert records[0]["notes"] == ["failed: RuntimeError: an API that moved"]
    assert records[1]["notes"] == ["dry"]


def test_digits_cnn_is_the_convolution_it_claims_to_be():
    import flax.linen as nn
    import jax

    class ConvCNN(nn.Module):  # the same network written with flax's convolutions
        @nn.compact
        def __call__(self, x):
            x = x.reshape((x.shape[0], 8, 8, 1))
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
            return nn.Dense(10)(x.reshape((x.shape[0], -1)))

    x = np.random.default_rng(0).uniform(size=(5, 64)).astype(np.float32)
    conv = ConvCNN().init(jax.random.key(0), x)["params"]
    dense = {
        f"Dense_{i}": {
            "kernel": conv[f"Conv_{i}"]["kernel"].reshape(
                -1, conv[f"Conv_{i}"]["kernel"].shape[-1]
            ),
            "bias": conv[f"Conv_{i}"]["bias"],
        }
        for i in range(2)
    }
    dense["Dense_2"] = conv["Dense_0"]
    np.testing.assert_allclose(
        coverage.DigitsCNN().apply({"params": dense}, x),
        ConvCNN().apply({"params": conv}, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_smooth_minimum_finds_a_known_asymmetric_minimum():
    rates = np.geomspace(1e-3, 1e-1, 41)
    d = np.log(rates / 0.02)
    curve = 0.3 * (np.exp(1.5 * d) - 1.5 * d - 1) + 0.15  # minimum at 0.02, steeper above
    losses = curve[:, None] + np.zeros((1, 4))
    fit = coverage.smooth_minimum(rates, losses, band=0.05)
    assert fit["optimum"] == pytest.approx(0.02, rel=0.02)
    assert fit["window"][0] < 0.02 < fit["window"][1]


def test_coverage_structure_and_the_truth_is_plain_training(tmp_path):
    import jax
    import optax

    record = coverage.run(mode="dry", truth_dir=str(tmp_path))
    _check_record(record, "coverage")
    data = record["data"]["tiny"]
    assert set(data["configs"]) == set(coverage.SETTINGS["dry"]["configs"])
    one = data["configs"]["one seed (the previous defaults)"]["runs"][0]
    default = data["configs"]["defaults"]["runs"][0]
    assert one["lanes"] == one["evaluations"] and default["lanes"] == 3 * default["evaluations"]
    stored = json.loads(Path(coverage.truth_path("tiny", str(tmp_path))).read_text())
    assert np.shape(stored["losses"]) == (5, 2)
    # the cache is reused as long as its settings match
    assert coverage.cached_truth("tiny", 2, 0.03, str(tmp_path)) == stored
    # one lane of the truth, trained again by a Python loop over optax steps
    rate, seed = 1, 1
    key = coverage.seed_keys(coverage.TRUTH_KEY_BASE, 2)[seed]
    init_key, order_key = jax.random.split(key)
    split = coverage.digits_split(0)
    module = coverage.PROBLEMS["tiny"].model_fn()
    params = module.init(init_key, split.x_train[:1])["params"]
    tx = optax.adam(np.float32(stored["rates"][rate]))
    opt_state = tx.init(params)

    def loss(p, x, y):
        logits = module.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    n = len(split.x_train)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, 0), n))
    for step in range(n // 128):
        batch = order[step * 128 : (step + 1) * 128]
        grads = jax.grad(loss)(params, split.x_train[batch], split.y_train[batch])
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    expected = float(loss(params, split.x_val, split.y_val))
    assert stored["losses"][rate][seed] == pytest.approx(expected, rel=1e-4)


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


def test_peers_get_the_sweeps_lanes_and_are_judged_on_the_same_seeds(tmp_path):
    record = peers.run(mode="dry", truth_dir=str(tmp_path))
    _check_record(record, "peers")
    data = record["data"]["tiny"]
    runs = data["runs"]
    sweep = runs[peers.JAXSWEEP_BEST][0]["sweep"]
    lanes, seeds = sweep["lanes"], sweep["seeds"]
    assert lanes == sweep["evaluations"] * seeds
    assert set(runs) == {peers.JAXSWEEP_BEST, peers.JAXSWEEP_REFINED, *peers.PEERS}
    for name in ("log grid", "random search"):
        (run,) = runs[name]
        assert run["values"] == lanes // seeds and run["lanes"] == run["values"] * seeds
    (tpe,) = runs["Optuna TPE"]
    assert tpe["values"] == tpe["lanes"] == lanes  # one seed per trial
    low, high = peers.SETTINGS["dry"]["lr_range"]
    for name in peers.PEERS:
        assert low <= runs[name][0]["chosen"] <= high
    # the optimum itself, retrained on the seeds every chosen rate was retrained on
    optimum = data["truth"]["optimum"]
    again = peers.seed_means("tiny", np.asarray([optimum]), 2, peers.RETRAIN_KEY_BASE)[0]
    assert data["optimum_retrained_loss"] == pytest.approx(again, rel=1e-5)
    for method in runs.values():
        (run,) = method
        assert run["log_distance"] == pytest.approx(abs(math.log(run["chosen"] / optimum)))


def test_the_dense_reference_trains_the_truths_lanes_and_finds_a_quadratics_vertex(
    tmp_path, monkeypatch
):
    rates = np.geomspace(0.01, 0.04, 9)
    curve = 0.2 * np.log(rates / 0.023) ** 2 + 0.14  # vertex at 0.023 in log rate
    assert coverage._quadratic_minimum(rates, curve[:, None] + np.zeros((1, 3))) == (
        pytest.approx(0.023, rel=1e-9)
    )
    # on the truth's own grid and keys, its lanes are the truth's lanes
    monkeypatch.setitem(coverage.DENSE_GRIDS, "tiny", coverage.PROBLEMS["tiny"].grid)
    dense = coverage.dense_truth("tiny", 2, str(tmp_path), chunk=16)
    truth = coverage.cached_truth("tiny", 2, 0.03, str(tmp_path), chunk=16)
    np.testing.assert_allclose(dense["losses"], truth["losses"], rtol=1e-6)
    assert dense["optimum"] == coverage._quadratic_minimum(
        np.asarray(truth["rates"]), np.asarray(truth["losses"])
    )
    assert coverage.dense_truth("tiny", 2, str(tmp_path)) == json.loads(
        Path(tmp_path, "coverage-dense-tiny.json").read_text()
    )


def test_precision_study_recomputes_each_stages_interval_from_the_sweeps_history(tmp_path):
    record = precision_study.run(mode="dry", truth_dir=str(tmp_path), compile_cache=False)
    _check_record(record, "precision_study")
    block = record["data"]["seeds=2"]
    (sweep,) = block["sweeps"]
    assert len(sweep["values"]) == 3 * sweep["points_per_stage"]  # every stage ran
    # the last stage's interval, recomputed here by the public function on the whole history
    from jaxsweep import _confidence, _selector

    stages = _selector.stage_indices(len(sweep["values"]), sweep["points_per_stage"])
    rows = [tuple(r) for r in sweep["seed_scores"]]
    means = [float(np.mean(r)) for r in rows]
    for label, every in precision_study.RULES.items():
        best = _confidence.sweep_confidence(
            sweep["values"], means, rows, stages, stable=True, every_window=every
        ).best
        assert precision_study.intervals_by_stage(sweep, every)[-1][:2] == (best.low, best.high)
        assert block[label]["sweeps"] == 1
    # a stop is the first stage within the precision, and coverage is counted there
    per_sweep = [[(0.5, 4.0, 1.0), (0.9, 1.1, 0.1), (2.0, 3.0, 0.05)]]
    summary = precision_study.summarise(per_sweep, {"truth": 1.0}, (1, 3))
    assert summary["reached"] == 1 and summary["median_stop_stage"] == 2
    assert summary["covered_at_stop"] == {"truth": 1}
    assert summary["covered_after"] == {"1": {"truth": 1}, "3": {"truth": 0}}
