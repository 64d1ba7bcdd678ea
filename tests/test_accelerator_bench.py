"""The accelerator benchmark: its dry run, the sizes of its models, and that it compares the
same work (a lane of the engine's stage trains what the sequential baseline trains)."""

import json
import math

import jax
import numpy as np
import pytest

from benchmarks import _common, accelerator
from benchmarks._accelerator_models import (
    ResNet18,
    Transformer,
    markov_entropy,
    markov_tokens,
    parameter_counts,
)


@pytest.mark.slow
def test_dry_run_measures_every_workload_with_finite_numbers():
    record = accelerator.run("dry")
    assert record["name"] == "accelerator"
    assert not [n for n in record["notes"] if "failed" in n or "skipped" in n], record["notes"]
    json.dumps(_common._jsonable(record))  # JSON-ready
    workloads = record["data"]["workloads"]
    assert set(workloads) == set(accelerator.WORKLOADS)
    titles = {r["title"] for r in workloads.values()}
    assert len(record["tables"]) == 4  # stages, compiles, sweep, strategies: no device memory
    for tab in record["tables"]:
        if tab["title"].startswith("Lane strategies"):  # measured for the MLP alone when dry
            assert {row[0] for row in tab["rows"]} == {workloads["mlp"]["title"]}
        else:
            assert {row[0] for row in tab["rows"]} == titles, tab["title"]  # one per workload
        for row in tab["rows"]:
            assert len(row) == len(tab["columns"])
            for value in row[1:]:
                assert isinstance(value, (str, int, float)), (tab["title"], row)
                if not isinstance(value, str):
                    assert math.isfinite(value), (tab["title"], row)
    for key, r in workloads.items():
        # the engine's lanes and (a) train the same: the same losses, lane by lane
        assert r["stages"]["max_relative_difference_to_a"] < 1e-3, key
        assert r["sweep"]["lanes"] == r["sweep"]["evaluations"] * r["sweep"]["seeds"] > 0
        assert r["sweep"]["max_relative_difference_to_a"] < 2e-2, key
    strategies = workloads["mlp"]["strategies"]
    assert strategies["strategies"] == ["vmap", "separate"]
    assert max(strategies["max_relative_difference_to_vmap"].values()) < 1e-4


def test_a_spent_budget_skips_every_part_and_says_so():
    record = accelerator.run("dry", seconds=0)
    assert all(not t["rows"] for t in record["tables"])
    for key, r in record["data"]["workloads"].items():
        assert "skipped" in r["stages"], key
        assert any(note.startswith(f"{key}: stages skipped") for note in record["notes"])


def test_full_size_models_have_their_parameter_counts():
    gpu = accelerator.SETTINGS["gpu"]
    resnet = gpu["resnet18"]
    counts = parameter_counts(
        lambda: ResNet18(widths=resnet["widths"]), np.zeros((1, 32, 32, 3), np.float32)
    )
    assert counts["total"] == 11_173_962  # the CIFAR ResNet-18 with a 3x3 stem
    t = gpu["transformer"]
    d, layers, vocab, seq = t["width"], t["layers"], t["vocab"], t["seq"]
    model = Transformer(vocab=vocab, width=d, layers=layers, heads=t["heads"], max_len=seq)
    counts = parameter_counts(lambda: model, np.zeros((1, seq), np.int32))
    blocks = sum(v for k, v in counts.items() if k.startswith("Block"))
    # attention 4(d^2 + d), two LayerNorms 4d, the MLP 8d^2 + 5d, per layer
    assert blocks == layers * (12 * d * d + 13 * d) == 10_646_784
    # and the embeddings (the read-out tied to them), the positions and the final LayerNorm
    assert counts["total"] == blocks + vocab * d + seq * d + 2 * d == 12_318_720


def test_the_synthetic_language_is_learnable():
    x, y = markov_tokens(64, 32, vocab=50)
    assert x.shape == y.shape == (64, 32) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next tokens
    assert markov_entropy(50) < 0.5 * math.log(50)  # far below a uniform guess


def test_a_lane_of_the_engines_stage_is_the_baseline_run_at_its_rate():
    """The tiny transformer: every lane of the engine's stage (vmapped) reproduces (a)'s run
    at the same rate, from the same keys and batches: both sides do the same work."""
    sizes = dict(accelerator.SETTINGS["dry"]["transformer"], steps=4)
    problem = accelerator.make_problem("transformer", sizes)
    device = jax.local_devices()[0]
    rates = [3e-4, 1e-2]
    stage = accelerator.Stage(problem, "vmap", device).run(rates)
    sequential = accelerator.Sequential(problem, device).run(rates)
    assert stage.shape == sequential.shape == (2, 1)
    np.testing.assert_allclose(stage, sequential, rtol=1e-5)
    assert abs(stage[0, -1] - stage[1, -1]) > 1e-3  # and the rates train differently
