"""The engine against independent computations: lanes, stages, divergence, models, losses."""

import dataclasses
import functools
import json
import math
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, make_classification, train_alone
from flax import nnx

import jaxsweep
from jaxsweep import _data, _driver, _model, _optim, _selector
from jaxsweep._progress import BarProgress, SilentProgress
from jaxsweep._warnings import warn

# Tiny ranges often leave the best rate on an edge; that warning is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")


@pytest.fixture(scope="module")
def one_stage(split_blobs):
    return jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        stages=1,
        points_per_stage=3,
        lr_range=(1e-3, 1e-1),
        **SMALL,
    )


def test_vmapped_lane_equals_the_rate_trained_alone(one_stage, split_blobs):
    assert len(one_stage.evaluations) == 3
    # float32 sums in another order (vmap, scan) drift by ~1e-5 relative over 12 Adam steps
    for evaluation in one_stage.evaluations:
        alone = train_alone(optax.adam(evaluation.value), split_blobs, epochs=2, batch_size=32)
        lane = {name: list(getattr(evaluation, name)) for name in alone}
        chex.assert_trees_all_close(lane, alone, rtol=1e-4)
        assert evaluation.score == pytest.approx(alone["val_loss"][-1], rel=1e-4)


def test_metrics_are_recorded_per_epoch_and_module(one_stage):
    evaluation = one_stage.evaluations[1]
    assert set(evaluation.module_grad_norm) == {"Dense_0", "Dense_1"}
    assert set(evaluation.update_ratio) == {"Dense_0", "Dense_1"}
    for series in (
        *evaluation.module_grad_norm.values(),
        *evaluation.update_ratio.values(),
        evaluation.stability,
        evaluation.loss_reduction_rate,
        evaluation.grad_norm_max,
    ):
        assert len(series) == 2 and all(math.isfinite(v) for v in series)
    # module norms combine into the global norm: sqrt(sum of squares) >= each part
    assert all(m >= g - 1e-6 for m, g in zip(evaluation.grad_norm_max, evaluation.grad_norm))
    assert all(r > 0 for r in evaluation.update_ratio["Dense_0"])
    stage = one_stage.stages[0]
    assert stage.compile_seconds > 0 and len(stage.seconds_per_epoch) == 2
    assert stage.memory_bytes > 0 and stage.memory_source in {"device_peak", "compiled_estimate"}
    assert one_stage.param_count == 6 * 16 + 16 + 16 * 3 + 3
    env = one_stage.environment
    assert env["backend"] == "cpu" and env["device_count"] == 1 and "jax" in env["versions"]


@pytest.fixture(scope="module")
def full_sweep(split_blobs):
    return jaxsweep.run(  # one seed: every stage runs (several would stop on resolution)
        lambda: TinyMLP(),
        split_blobs,
        epochs=1,
        batch_size=64,
        progress=False,
        seeds=1,
        min_improvement=0.0,
    )


def test_five_stages_of_five_distinct_rates(full_sweep):
    assert [len(s.values) for s in full_sweep.stages] == [5] * 5
    rates = [e.value for e in full_sweep.evaluations]
    assert len(rates) == 25 and len(set(rates)) == 25
    assert full_sweep.stages[0].values == pytest.approx(
        [1e-5, 10**-4.25, 10**-3.5, 10**-2.75, 1e-2], rel=1e-9
    )
    assert full_sweep.stop_reason == "completed"
    for stage in full_sweep.stages[1:]:  # each new rate lies inside a kept interval
        assert all(any(a < v < b for a, b in stage.intervals) for v in stage.values)
    best = min(full_sweep.evaluations, key=lambda e: e.score)
    assert full_sweep.best_value == best.value and full_sweep.best_score == best.score
    # best score never gets worse from stage to stage
    bests = [s.best_score for s in full_sweep.stages]
    assert bests == sorted(bests, reverse=True)


def test_every_stage_reuses_one_compiled_program(full_sweep):
    assert full_sweep.stages[0].compile_seconds > 0
    assert all(s.compile_seconds == 0 for s in full_sweep.stages[1:])


def test_traces_do_not_grow_with_stages(split_blobs):
    calls = []

    def counting_loss(logits, labels):
        calls.append(1)  # runs only while JAX traces, never per step
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def traces(stages):
        calls.clear()
        jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            loss=counting_loss,
            stages=stages,
            points_per_stage=2,
            lr_range=(1e-3, 1e-2),
            expand=False,
            **SMALL,
        )
        return len(calls)

    one, four = traces(1), traces(4)
    assert one > 0 and four == one


def test_early_stop_when_improvement_is_small(split_blobs):
    threshold = 0.5
    result = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        epochs=1,
        batch_size=64,
        progress=False,
        min_improvement=threshold,
        stages=5,
    )
    assert result.stop_reason == "min_improvement" and len(result.stages) < 5
    bests = [s.best_score for s in result.stages]
    gains = [(a - b) / a for a, b in zip(bests, bests[1:])]
    assert all(g >= threshold for g in gains[:-1]) and gains[-1] < threshold
    assert len(result.evaluations) == 5 * len(result.stages)


def test_divergence_is_flagged_and_isolated(split_blobs):
    sgd = optax.sgd
    wild = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        optimizer=sgd,
        lr_range=(1e-2, 1e6),
        points_per_stage=2,
        stages=1,
        **SMALL,
    )
    tame = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        optimizer=sgd,
        lr_range=(1e-2, 1e-1),
        points_per_stage=2,
        stages=1,
        **SMALL,
    )
    diverged = wild.evaluations[1]
    assert diverged.diverged and diverged.score == math.inf
    ok_wild, ok_tame = wild.evaluations[0], tame.evaluations[0]
    assert not ok_wild.diverged and ok_wild.value == ok_tame.value == 1e-2
    np.testing.assert_array_equal(ok_wild.val_loss, ok_tame.val_loss)  # not disturbed at all
    assert wild.best_value == 1e-2


def test_optimum_beyond_the_range_is_followed(split_blobs):
    with pytest.warns(jaxsweep.SearchRangeWarning, match="beyond"):
        result = jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            lr_range=(1e-7, 1e-6),
            points_per_stage=3,
            stages=2,
            **SMALL,
        )
    assert result.stages[1].expansion == "up"
    assert min(result.stages[1].values) > 1e-6
    assert result.best_value > 1e-6
    assert any("outside the given range" in w for w in result.warnings)


def test_search_beyond_warning_comes_before_the_stage_it_names(split_blobs, monkeypatch):
    events = []

    class Recording(SilentProgress):
        def __init__(self, *args, **kwargs):
            pass

        def start_stage(self, stage, stages, values, epochs):
            events.append(("start", stage))

        def stage_done(self, stage, *rest):
            events.append(("done", stage))

    def recorded(note, category):
        events.append(("warn", note.split(":")[0]))
        warn(note, category)

    monkeypatch.setattr(_driver, "BarProgress", Recording)
    monkeypatch.setattr(_driver, "warn", recorded)
    arguments = dict(SMALL, progress=True)
    with pytest.warns(jaxsweep.SearchRangeWarning, match="stage 1: .* beyond"):
        jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            lr_range=(1e-7, 1e-6),
            points_per_stage=2,
            stages=2,
            **arguments,
        )
    assert events[:4] == [("start", 0), ("done", 0), ("warn", "stage 1"), ("start", 1)]


def test_progress_counts_stages_from_zero(capsys):
    bar = BarProgress(total_stages=2, steps=1)
    with bar:
        bar.start_stage(0, 2, [1e-3], 1)
        bar.stage_done(0, 1e-3, 0.5)
        bar.start_stage(1, 2, [2e-3], 1)
    err = capsys.readouterr().err
    assert "stage 0/1" in err and "stage 0 done" in err and "stage 1/1" in err
    assert "stage 2" not in err


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 16, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def test_nnx_model_factory(split_blobs):
    # the class itself is a factory taking rngs, like `lambda rngs: NNXMLP(rngs)`
    assert _model.adapt(lambda rngs: NNXMLP(rngs), np.zeros((1, 6), np.float32)).kind == "nnx"
    result = jaxsweep.run(
        NNXMLP, split_blobs, stages=2, points_per_stage=3, lr_range=(1e-3, 1e-1), **SMALL
    )
    assert result.config["model_api"] == "nnx" and result.config["model"] == "NNXMLP"
    assert set(result.evaluations[0].module_grad_norm) == {"hidden", "out"}
    best = min(result.evaluations, key=lambda e: e.score)
    worst_initial = max(e.train_loss[0] for e in result.evaluations)
    assert best.score < worst_initial / 2  # it learned


def test_custom_loss_with_auxiliary_entries(split_blobs):
    def loss(logits, labels):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        penalty = 1e-3 * jnp.mean(logits**2)
        return {"loss": ce + penalty, "cross_entropy": ce, "logit_penalty": penalty}

    result = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        loss=loss,
        stages=1,
        points_per_stage=2,
        lr_range=(1e-3, 1e-2),
        **SMALL,
    )
    for e in result.evaluations:
        assert set(e.train_aux) == set(e.val_aux) == {"cross_entropy", "logit_penalty"}
        total = np.add(e.val_aux["cross_entropy"], e.val_aux["logit_penalty"])
        np.testing.assert_allclose(total, e.val_loss, rtol=1e-5)


def test_seeds_average_and_differ(split_blobs):
    result = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        stages=1,
        points_per_stage=2,
        lr_range=(1e-3, 1e-2),
        **{**SMALL, "seeds": 2},
    )
    e = result.evaluations[0]
    assert len(e.seed_scores) == 2 and e.seed_scores[0] != e.seed_scores[1]
    assert e.score == pytest.approx(np.mean(e.seed_scores))


def test_regression_targets_use_mse():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32))[:, None]
    result = jaxsweep.run(
        lambda: nn.Dense(1), (x, y), stages=1, points_per_stage=2, lr_range=(1e-2, 1e-1), **SMALL
    )
    assert result.config["loss"] == "mse"
    assert result.config["n_val"] == round(128 * 0.2)
    assert result.best_score < float(np.mean(y**2))


def test_json_round_trip_is_exact_and_standard(tmp_path, split_blobs):
    result = jaxsweep.run(
        lambda: TinyMLP(),
        split_blobs,
        optimizer=functools.partial(optax.sgd, momentum=0.5),
        lr_range=(1e-2, 1e6),
        points_per_stage=2,
        stages=1,
        **SMALL,
    )
    path = tmp_path / "out" / "result.json"
    result.save(path)

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    raw = json.loads(path.read_text(), parse_constant=reject)
    assert {"best_value", "best_score", "evaluations", "stages", "config", "environment"} <= set(
        raw
    )
    loaded = jaxsweep.load(path)
    assert loaded == result
    assert loaded.evaluations[1].score == math.inf and loaded.evaluations[1].diverged
    assert loaded.config["optimizer"] == "sgd(momentum=0.5)"
    assert dataclasses.replace(loaded, best_value=1.0) != result  # equality can fail


def test_optimizer_names_are_recorded_readably():
    assert _optim.describe_optimizer(optax.adam) == "adam"
    partial = functools.partial(optax.sgd, momentum=0.9)
    assert _optim.describe_optimizer(partial) == "sgd(momentum=0.9)"


def test_validation_split_is_deterministic_and_disjoint():
    x, y = make_classification(n=100)
    first, again = _data.prepare((x, y), 0.2, seed=3), _data.prepare((x, y), 0.2, seed=3)
    assert len(first.x_train) == 80 and len(first.x_val) == 20
    chex.assert_trees_all_equal(first, again)
    rows = {tuple(r) for r in first.x_train} | {tuple(r) for r in first.x_val}
    assert len(rows) == 100  # every example used once, none in both parts


def test_several_seeds_stop_when_nothing_is_left_to_resolve(split_blobs):
    arguments = {**SMALL, "seeds": 3}
    del arguments["min_improvement"]  # the default with seeds: no stop on small gains
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        result = jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            stages=6,
            points_per_stage=4,
            lr_range=(1e-3, 1.0),
            **arguments,
        )
    assert result.config["min_improvement"] == 0.0
    assert result.stop_reason == "resolution" and len(result.stages) < 6
    evaluations = result.evaluations

    def resolved(upto):
        kept = [e for e in evaluations if e.stage <= upto]
        return _selector.resolved(
            [e.value for e in kept], [e.score for e in kept], [e.seed_scores for e in kept]
        )

    last = result.stages[-1].index
    assert resolved(last) and not resolved(last - 1)  # it stopped at the first chance
    assert all(len(e.seed_scores) == 3 for e in evaluations)
    assert result.confidence.best.method in ("seed_curve", "not_worse")
