"""The lane strategy chosen by measurement, and stages that fit in a memory limit.

A measured sweep must train exactly what a sweep forced to the winning strategy trains (the
losers' runs are thrown away), record the times it measured, and remember its choice; a
memory limit must turn a batched call into smaller groups that train the same numbers.
"""

import dataclasses
import json

import numpy as np
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import _checkpoint, _lanes, _measured
from jaxsweep.report import lanes_sentence

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")

STAGE = {**SMALL, **dict(stages=2, points_per_stage=3, seeds=2, lr_range=(1e-3, 1e-1))}


def losses(result):
    return [(e.lr, tuple(e.seed_val_loss), tuple(e.train_loss)) for e in result.evaluations]


class StubTimer:
    """Runs each timed call for real and says it took the next of ``seconds`` (in the order
    the trial times them: the rule's first call, its repeat, then each alternative's)."""

    def __init__(self, seconds):
        self.seconds, self.calls = list(seconds), 0

    def __call__(self, run):
        output = run()
        self.calls += 1
        return output, self.seconds.pop(0) if self.seconds else 1.0


@pytest.fixture
def measuring(monkeypatch):
    """Every sweep measures (no call is too cheap), with an empty memory of earlier choices."""
    monkeypatch.setattr(_measured, "MEASURE_FACTOR", 0.0)
    monkeypatch.setattr(_measured.Memo, "_process", {})

    def use(seconds):
        timer = StubTimer(seconds)
        monkeypatch.setattr(_measured, "timed", timer)
        return timer

    return use


def test_the_fastest_wins_and_the_rule_stands_within_the_noise():
    assert _measured.fastest({"vmap": 3.0, "separate": 1.0}, first="vmap") == "separate"
    assert _measured.fastest({"vmap": 1.0, "separate": 0.97}, first="vmap") == "vmap"
    assert _measured.fastest({"separate": 1.0, "vmap": 2.0}, first="separate") == "separate"


def test_a_trial_is_run_only_where_the_sweep_could_repay_it():
    # 40 calls of 10 ms: 0.4 s of training cannot repay compiling a strategy for 1 s
    assert not _measured.worth_measuring(0.01, 40, compile_seconds=1.0)
    assert _measured.worth_measuring(1.0, 40, compile_seconds=1.0)


def test_a_measured_sweep_trains_what_the_forced_winner_trains(split_blobs, measuring):
    timer = measuring([3.0, 3.0, 1.0, 1.0])  # vmap (the rule's), then separate: faster
    measured = jaxsweep.run(lambda: TinyMLP(), split_blobs, **STAGE)
    record = measured.environment["lanes"]
    assert timer.calls == 4  # vmap's first call and its repeat, separate's two
    assert record["strategy"] == "separate" and record["chosen_by"] == "measured"
    assert record["seconds_per_call"] == {"vmap": 3.0, "separate": 1.0}
    assert "vmap 3e+03 ms, separate 1e+03 ms per call" in record["reason"]
    forced = jaxsweep.run(lambda: TinyMLP(), split_blobs, lanes="separate", **STAGE)
    assert losses(measured) == losses(forced)  # bitwise: every number is the winner's


def test_the_rules_strategy_stays_when_it_is_fastest(split_blobs, measuring):
    measuring([1.0, 1.0, 2.0, 2.0])
    measured = jaxsweep.run(lambda: TinyMLP(), split_blobs, **STAGE)
    assert measured.environment["lanes"]["strategy"] == "vmap"
    forced = jaxsweep.run(lambda: TinyMLP(), split_blobs, lanes="vmap", **STAGE)
    assert losses(measured) == losses(forced)


def test_the_choice_is_remembered_beside_the_compilation_cache(split_blobs, measuring, tmp_path):
    measuring([3.0, 3.0, 1.0, 1.0])
    first = jaxsweep.run(lambda: TinyMLP(), split_blobs, compilation_cache=tmp_path, **STAGE)
    stored = json.loads((tmp_path / _measured.MEMO_FILE).read_text())
    assert [record["strategy"] for record in stored.values()] == ["separate"]
    _measured.Memo._process.clear()  # a new process: only the file remembers
    timer = measuring([0.1] * 4)  # would pick vmap if it measured again
    again = jaxsweep.run(lambda: TinyMLP(), split_blobs, compilation_cache=tmp_path, **STAGE)
    record = again.environment["lanes"]
    assert record["chosen_by"] == "remembered" and record["strategy"] == "separate"
    assert record["seconds_per_call"] == {"vmap": 3.0, "separate": 1.0}
    assert timer.calls == 1  # the rule's first call only, timed to decide whether to look
    assert losses(again) == losses(first)


def test_a_forced_strategy_is_never_measured(split_blobs, measuring):
    timer = measuring([])
    result = jaxsweep.run(lambda: TinyMLP(), split_blobs, lanes="map", **STAGE)
    assert result.environment["lanes"]["chosen_by"] == "forced"
    assert timer.calls == 0


def test_an_unreadable_memory_is_ignored(tmp_path):
    (tmp_path / _measured.MEMO_FILE).write_text("{not json")
    memo = _measured.Memo(str(tmp_path))
    assert memo._read() == {}
    memo.put("key", {"strategy": "vmap"})
    assert json.loads((tmp_path / _measured.MEMO_FILE).read_text()) == {"key": {"strategy": "vmap"}}


# ----------------------------------------------------------------------------- memory


@pytest.fixture(scope="module")
def unlimited(split_blobs):
    """The stage with a limit it fits in: its call's estimate, and what it trains."""
    return jaxsweep.run(lambda: TinyMLP(), split_blobs, lanes="vmap", device_memory=10**12, **STAGE)


def test_a_call_over_the_memory_limit_trains_its_lanes_in_chunks(split_blobs, unlimited):
    whole = unlimited.environment["lanes"]["memory"]
    assert whole["chunked"] is False
    need = whole["estimates"][0]["bytes"]
    chunked = jaxsweep.run(
        lambda: TinyMLP(), split_blobs, lanes="vmap", device_memory=need - 1, **STAGE
    )
    record = chunked.environment["lanes"]
    assert record["chosen"] == "vmap" and record["strategy"].startswith("chunks:")
    assert record["memory"]["chunked"] is True
    assert record["memory"]["estimates"][-1]["bytes"] <= need - 1
    for got, want in zip(chunked.evaluations, unlimited.evaluations, strict=True):
        assert got.lr == want.lr
        np.testing.assert_allclose(got.seed_val_loss, want.seed_val_loss, rtol=1e-5)
        np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=1e-5)


def test_lanes_that_never_fit_fail_with_what_to_change(split_blobs):
    with pytest.raises(MemoryError, match="one lane at a time.*batch_size"):
        jaxsweep.run(lambda: TinyMLP(), split_blobs, lanes="vmap", device_memory=1, **STAGE)


@pytest.mark.parametrize("value, error", [("1GB", TypeError), (0, ValueError), (True, TypeError)])
def test_bad_device_memory_fails_before_anything_compiles(split_blobs, value, error):
    with pytest.raises(error, match="device_memory"):
        jaxsweep.run(lambda: TinyMLP(), split_blobs, device_memory=value, **STAGE)


def test_the_group_shrinks_with_the_room_left_for_temporaries():
    estimate = {"total": 1000, "temporaries": 800}  # 200 bytes of arguments and outputs
    assert _lanes._smaller_group(8, estimate, limit=600) == 4  # room for half the temporaries
    assert _lanes._smaller_group(8, estimate, limit=100) == 4  # no room at all: halve
    assert _lanes._smaller_group(2, estimate, limit=999) == 1


def test_the_report_says_how_the_lanes_were_chosen_only_where_they_were(unlimited):
    def sentence(lanes):
        environment = {**unlimited.environment, "lanes": lanes}
        return lanes_sentence(dataclasses.replace(unlimited, environment=environment))

    by_rule = sentence({"strategy": "vmap", "chosen_by": "rule", "reason": "cpu"})
    assert "jax.vmap" in by_rule and "timed" not in by_rule and "limit" not in by_rule
    seconds = {"vmap": 0.003, "separate": 0.001}
    timed = sentence({"strategy": "separate", "chosen_by": "measured", "seconds_per_call": seconds})
    assert "its own call" in timed and "(vmap 3 ms, separate 1 ms)" in timed
    memory = {"chunked": True, "limit_bytes": 1000, "estimates": []}
    chunked = sentence({"strategy": "chunks:2", "chosen": "vmap", "memory": memory})
    assert "groups of 2" in chunked and "limit of 1000 bytes per device" in chunked
    memory_mib = {**memory, "limit_bytes": 3 * 2**20}
    assert "limit of 3 MiB" in sentence(
        {"strategy": "chunks:2", "chosen": "vmap", "memory": memory_mib}
    )
    fits = sentence({"strategy": "vmap", "memory": {**memory, "chunked": False}})
    assert "limit" not in fits


class Interrupted(Exception):
    """Stands for a kill that comes once the first checkpoint save has started."""


def test_a_resumed_sweep_runs_the_strategy_its_checkpoint_ran(
    split_blobs, measuring, monkeypatch, tmp_path
):
    measuring([3.0, 3.0, 1.0, 1.0])  # separate wins the trial
    original = _checkpoint.StepStore.save

    def save_then_die(self, step, progress, lanes_item):
        original(self, step, progress, lanes_item)
        raise Interrupted(step)

    settings = dict(checkpoint_dir=tmp_path / "ckpt", checkpoint_every_seconds=0, **STAGE)
    with monkeypatch.context() as patch:
        patch.setattr(_checkpoint.StepStore, "save", save_then_die)
        with pytest.raises(Interrupted):
            jaxsweep.run(lambda: TinyMLP(), split_blobs, **settings)
    _measured.Memo._process.clear()
    timer = measuring([0.1] * 4)  # a new trial would keep vmap
    resumed = jaxsweep.run(lambda: TinyMLP(), split_blobs, **settings)
    assert resumed.environment["checkpoint"]["resumed_from"] is not None
    record = resumed.environment["lanes"]
    assert record["strategy"] == "separate" and record["chosen_by"] == "resumed"
    assert timer.calls == 0
    forced = jaxsweep.run(lambda: TinyMLP(), split_blobs, lanes="separate", **STAGE)
    assert losses(resumed) == losses(forced)
