"""Crash-safe resume: sweeps killed with SIGKILL at real points, rerun, equal the uninterrupted run.

The sweeps run in subprocesses (tests/checkpoint_sweep.py) so that a kill is a real kill; they
share a persistent compilation cache so that only the first one pays for compiling.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import chex
import pytest
from checkpoint_sweep import sweep
from conftest import TinyMLP, comparable, make_classification

import jaxsweep
from jaxsweep import _checkpoint
from jaxsweep._checkpoint import CheckpointWarning, ConfigurationMismatchError

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_sweep.py")
EPOCHS_IN_FULL_RUN = 3 * 2  # 3 stages of 2 epochs


# ----------------------------------------------------------------------------- helpers


def steps_on_disk(directory) -> list[int]:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if "tmp" in name]


def trained(result) -> int:
    record = result if isinstance(result, dict) else result.to_dict()
    return record["environment"]["checkpoint"]["epochs_trained"]


def leg(env, directory, out, *options, killed: bool):
    """Runs the helper sweep once; checks it was killed (or finished) as asked."""
    process = subprocess.run(
        [sys.executable, HELPER, str(directory), str(out), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if killed:
        assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
        assert not os.path.exists(out)
        return None
    assert process.returncode == 0, process.stderr[-3000:]
    with open(out) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def reference(helper_env, tmp_path_factory):
    """The uninterrupted sweep: its result and its (finished) checkpoint directory."""
    root = tmp_path_factory.mktemp("reference")
    result = leg(helper_env, root / "ckpt", root / "result.json", killed=False)
    return result, root / "ckpt"


@pytest.fixture(scope="module")
def killed_sweep(helper_env, reference, tmp_path_factory):
    """One sweep killed three times at different points, then finished by a fourth run.

    Saves happen after every epoch (checkpoint_every_seconds=0): with 2 epochs a stage, step
    1 is stage 0 after epoch 1, step 2 the end of stage 0, step 3 stage 1 after epoch 1, ...
    """
    root = tmp_path_factory.mktemp("killed")
    directory, out = root / "ckpt", root / "result.json"
    disk = {}
    # early, during an async save: step 1 is complete, the commit of step 2 is killed
    leg(helper_env, directory, out, "--kill-in-save", "2", killed=True)
    disk["in_save"] = steps_on_disk(directory)
    disk["in_save_leftovers"] = leftovers(directory)
    # inside stage 0 (step 1) to between stages: killed once the end of stage 0 is saved
    leg(helper_env, directory, out, "--kill-after-save", "1", killed=True)
    disk["between"] = steps_on_disk(directory)
    disk["between_leftovers"] = leftovers(directory)
    # mid-stage: resumed at stage 1, killed after its first epoch's save (step 3)
    leg(helper_env, directory, out, "--kill-after-save", "1", killed=True)
    disk["mid"] = steps_on_disk(directory)
    shutil.copytree(directory, root / "mid-stage-copy")
    result = leg(helper_env, directory, out, killed=False)
    disk["final"] = steps_on_disk(directory)
    disk["final_leftovers"] = leftovers(directory)
    return result, disk, root / "mid-stage-copy"


# ----------------------------------------------------------------------------- kills


@pytest.mark.slow
def test_reference_run_trains_every_epoch_and_keeps_two_steps(reference):
    result, directory = reference
    assert trained(result) == EPOCHS_IN_FULL_RUN
    assert result["environment"]["checkpoint"]["resumed_from"] is None
    assert steps_on_disk(directory) == [5, 6]  # the latest two of steps 1..6
    assert leftovers(directory) == []


@pytest.mark.slow
def test_killed_sweep_left_complete_steps_only_where_expected(killed_sweep):
    _, disk, _ = killed_sweep
    assert disk["in_save"] == [1]  # step 2 never became a step
    assert disk["in_save_leftovers"], "the kill inside the commit left no temporary directory"
    assert disk["between"] == [1, 2]
    assert disk["between_leftovers"] == []  # removed by the rerun
    assert disk["mid"] == [2, 3]
    assert disk["final"] == [5, 6]
    assert disk["final_leftovers"] == []


@pytest.mark.slow
def test_killed_and_resumed_sweep_equals_the_uninterrupted_one(reference, killed_sweep):
    expected, _ = reference
    result, _, _ = killed_sweep
    assert comparable(result) == comparable(expected)  # bitwise: floats compared exactly


@pytest.mark.slow
def test_resumed_leg_trains_only_what_was_not_saved(killed_sweep):
    result, _, _ = killed_sweep
    # the last leg resumed from step 3 (stage 1 after 1 epoch): 1 + 2 epochs are left
    assert result["environment"]["checkpoint"]["resumed_from"] == {"stage": 1, "epoch": 1}
    assert trained(result) == 3 < EPOCHS_IN_FULL_RUN


# ----------------------------------------------------------------------------- reruns


def copy_of(directory, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(directory, target)
    return target


def snapshot(directory) -> dict:
    found = {}
    for folder, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


@pytest.mark.slow
def test_finished_directory_returns_the_stored_result_without_training(reference, tmp_path):
    expected, directory = reference
    directory = copy_of(directory, tmp_path)
    before = snapshot(directory)
    result = sweep(directory)
    assert comparable(result.to_dict()) == comparable(expected)
    assert result.environment["checkpoint"] == {
        "directory": str(directory),
        "resumed_from": "finished",
        "epochs_trained": 0,
    }
    assert snapshot(directory) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, field",
    [
        ({"epochs": 3}, "config.epochs: 2 -> 3"),
        ({"lr_range": (1e-3, 1.0)}, "config.lr_range"),
        ({"model": lambda: TinyMLP(hidden=8)}, "model.parameters"),
        ({"data": make_classification(n=200, seed=1)}, "data.content"),
    ],
)
def test_a_different_sweep_is_refused_and_nothing_is_touched(reference, tmp_path, change, field):
    _, directory = reference
    directory = copy_of(directory, tmp_path)
    before = snapshot(directory)
    with pytest.raises(ConfigurationMismatchError) as caught:
        sweep(directory, **change)
    message = str(caught.value)
    assert field in message
    assert "resume='overwrite'" in message and "another checkpoint_dir" in message
    assert isinstance(caught.value, ValueError)
    assert snapshot(directory) == before


@pytest.mark.slow
def test_overwrite_replaces_a_different_sweep(reference, tmp_path):
    _, directory = reference
    directory = copy_of(directory, tmp_path)
    # an hour between saves inside a stage: only the end of the stage is saved
    changed = dict(stages=1, checkpoint_every_seconds=3600.0)
    with pytest.warns(CheckpointWarning, match="config.stages: 3 -> 1"):
        result = sweep(directory, resume="overwrite", **changed)
    assert trained(result) == 2
    assert steps_on_disk(directory) == [2]  # no step 1 (after epoch 1); the old 5, 6 are gone
    again = sweep(directory, **changed)  # now this sweep's directory
    assert trained(again) == 0
    assert comparable(again.to_dict()) == comparable(result.to_dict())


def test_require_refuses_an_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume='require'"):
        sweep(tmp_path / "empty", resume="require")


@pytest.mark.slow
def test_damaged_checkpoints_are_set_aside_for_the_previous_complete_one(
    reference, killed_sweep, tmp_path
):
    """Steps 5 and 6 (from the finished run) and 3 are damaged; step 2 is the one left."""
    expected, finished = reference
    _, _, mid_stage = killed_sweep
    directory = copy_of(mid_stage, tmp_path)  # steps 2 (end of stage 0) and 3 (stage 1, epoch 1)
    for step in (5, 6):
        shutil.copytree(finished / str(step), directory / str(step))
    os.remove(directory / "6" / "progress" / "metadata")  # the final JSON record is gone
    for step in (5, 3):  # the array chunks of both mid-stage steps are gone
        chunks = directory / str(step) / "lanes" / "d"
        for name in os.listdir(chunks):
            os.remove(chunks / name)
    with pytest.warns(CheckpointWarning) as caught:
        result = sweep(directory)
    messages = [str(w.message) for w in caught if w.category is CheckpointWarning]
    assert len(messages) == 3
    for step, message in zip((6, 5, 3), messages, strict=True):
        assert f"step {step} of {directory} could not be read" in message
        assert (directory / f"{step}.damaged").is_dir()  # set aside, not deleted
    assert result.environment["checkpoint"]["resumed_from"] == {"stage": 1, "epoch": 0}
    assert trained(result) == 4  # stages 1 and 2 again, from the end of stage 0
    assert comparable(result.to_dict()) == comparable(expected)


@pytest.mark.slow
def test_resume_on_another_device_count(helper_env, reference, tmp_path):
    """Saved on one device, resumed with the lanes spread (and padded) over two."""
    expected, finished = reference
    directory = copy_of(finished, tmp_path)
    shutil.rmtree(directory / "6")  # back to step 5: stage 2 after its first epoch
    env = {**helper_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = leg(env, directory, tmp_path / "out.json", "--all-devices", killed=False)
    assert result["environment"]["device_count"] == 2
    assert result["environment"]["checkpoint"]["resumed_from"] == {"stage": 2, "epoch": 1}
    assert trained(result) == 1
    # finished stages are read back as they were; the resumed epoch agrees to float precision
    assert result["evaluations"][:6] == expected["evaluations"][:6]
    got, want = result["evaluations"][6:], expected["evaluations"][6:]
    assert [e["value"] for e in got] == [e["value"] for e in want]
    chex.assert_trees_all_close(
        [(e["score"], e["train_loss"]) for e in got],
        [(e["score"], e["train_loss"]) for e in want],
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "arguments, error, match",
    [
        ({"checkpoint_every_seconds": -1.0}, ValueError, "checkpoint_every_seconds"),
        ({"checkpoint_every_seconds": "often"}, TypeError, "checkpoint_every_seconds"),
        ({"resume": "always"}, ValueError, "resume"),
        ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir"),
    ],
)
def test_checkpoint_arguments_are_checked(blobs, arguments, error, match):
    with pytest.raises(error, match=match):
        jaxsweep.run(lambda: TinyMLP(), blobs, progress=False, **arguments)


def test_a_file_as_checkpoint_dir_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("mine")
    with pytest.raises(ValueError, match="not a directory"):
        sweep(path)
    assert path.read_text() == "mine"


# ----------------------------------------------------------------------------- in-process


class Interrupted(Exception):
    """Stands for a kill (Ctrl-C, preemption) that comes once a chosen save has started."""


def interrupt_after_save(monkeypatch, count: int) -> None:
    """Raises :class:`Interrupted` out of the ``count``-th checkpoint save of this process."""
    original, calls = _checkpoint.StepStore.save, []

    def save(self, step, progress, lanes_item):
        original(self, step, progress, lanes_item)
        calls.append(step)
        if len(calls) == count:
            raise Interrupted(f"after the save of step {step}")

    monkeypatch.setattr(_checkpoint.StepStore, "save", save)


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_interrupted_mid_stage_and_rerun_equals_the_uninterrupted_sweep(tmp_path, monkeypatch):
    small = dict(stages=1, epochs=2)
    interrupt_after_save(monkeypatch, 1)  # step 1: stage 0 after its first epoch
    with pytest.raises(Interrupted):
        sweep(tmp_path / "ckpt", **small)
    monkeypatch.undo()
    assert steps_on_disk(tmp_path / "ckpt") == [1]  # the interrupted save still completed
    resumed = sweep(tmp_path / "ckpt", **small)
    assert resumed.environment["checkpoint"]["resumed_from"] == {"stage": 0, "epoch": 1}
    assert trained(resumed) == 1  # the second epoch of stage 0
    expected = sweep(tmp_path / "fresh", **small)
    assert comparable(resumed.to_dict()) == comparable(expected.to_dict())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_demo_command_resumes_with_checkpoint_dir(tmp_path, monkeypatch, capsys):
    from jaxsweep import cli

    demo = ["demo", "--quiet", "--epochs", "1", "--stages", "2"]
    resumable = [*demo, "--checkpoint-dir", str(tmp_path / "ckpt")]
    interrupt_after_save(monkeypatch, 1)  # the end of stage 0 (saves inside a stage wait 30 s)
    with pytest.raises(Interrupted):
        cli.main([*resumable, "--out", str(tmp_path / "killed")])
    monkeypatch.undo()
    assert not (tmp_path / "killed" / "result.json").exists()
    capsys.readouterr()
    assert cli.main([*resumable, "--out", str(tmp_path / "resumed")]) == 0
    assert f"resumed from {tmp_path / 'ckpt'}" in capsys.readouterr().out
    resumed = jaxsweep.load(tmp_path / "resumed" / "result.json")
    assert resumed.environment["checkpoint"]["resumed_from"] == {"stage": 1, "epoch": 0}
    assert trained(resumed) == 1  # stage 1 only
    assert cli.main([*demo, "--out", str(tmp_path / "fresh")]) == 0
    fresh = jaxsweep.load(tmp_path / "fresh" / "result.json")
    assert comparable(resumed.to_dict()) == comparable(fresh.to_dict())
