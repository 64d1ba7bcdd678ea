"""checkpoint_dir is jaxsweep's alone: a folder it did not write is refused untouched, one
sweep writes it at a time, and a checkpoint whose bytes changed on disk is not resumed.

The slow tests run sweeps in subprocesses (tests/checkpoint_sweep.py, tests/safety_sweep.py)
so that a kill is a real kill.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from checkpoint_sweep import sweep
from conftest import comparable
from test_checkpoint import leg

from jaxsweep import _checkpoint
from jaxsweep._checkpoint import (
    LOCK,
    MARKER,
    CheckpointInUseError,
    CheckpointWarning,
    StepStore,
)
from jaxsweep._hosts import Hosts

HERE = os.path.dirname(os.path.abspath(__file__))
SWEEP_HELPER = os.path.join(HERE, "checkpoint_sweep.py")
HOLD_HELPER = os.path.join(HERE, "safety_sweep.py")
ONE_STAGE = dict(stages=1, epochs=2)


# ----------------------------------------------------------------------------- helpers


def snapshot(directory) -> dict:
    """Every folder and file below ``directory``, files with their bytes."""
    found = {}
    for folder, folders, files in os.walk(directory):
        for name in folders:
            found[os.path.relpath(os.path.join(folder, name), directory)] = "folder"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


def trained(result) -> int:
    record = result if isinstance(result, dict) else result.to_dict()
    return record["environment"]["checkpoint"]["epochs_trained"]


def resumed_from(result):
    record = result if isinstance(result, dict) else result.to_dict()
    return record["environment"]["checkpoint"]["resumed_from"]


def write(path, content: bytes = b"data") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)


class Interrupted(Exception):
    """Stands for a kill that comes once the first checkpoint save of a sweep has started."""


def interrupted_after_first_save(monkeypatch, directory) -> None:
    original = _checkpoint.StepStore.save

    def save(self, step, progress, lanes_item):
        original(self, step, progress, lanes_item)
        raise Interrupted(f"after the save of step {step}")

    monkeypatch.setattr(_checkpoint.StepStore, "save", save)
    with pytest.raises(Interrupted):
        sweep(directory, **ONE_STAGE)
    monkeypatch.undo()


# ----------------------------------------------------------------------------- ownership


def _class_folders(root) -> None:  # a class-per-folder image dataset
    for label in ("0", "1", "2"):
        for index in range(2):
            write(os.path.join(root, label, f"img{index}.png"), f"{label}-{index}".encode())


def _numbered_runs(root) -> None:  # runs/1, runs/2 of some other tool, Orbax-like
    for run in ("1", "2"):
        write(os.path.join(root, run, "_CHECKPOINT_METADATA"), b"{}")
        write(os.path.join(root, run, "state", "manifest.ocdbt"), b"other")
    write(os.path.join(root, "notes.txt"), b"mine")


def _foreign_progress(root) -> None:  # numbered folders with a "progress" folder not of ours
    for run in ("3", "4"):
        write(os.path.join(root, run, "progress", "metadata"), b'{"loss": 0.1}')


@pytest.mark.parametrize(
    "layout, resume",
    [
        (_class_folders, "auto"),
        (_class_folders, "overwrite"),
        (_numbered_runs, "auto"),
        (_numbered_runs, "overwrite"),
        (_foreign_progress, "auto"),
    ],
)
def test_a_folder_jaxsweep_did_not_write_is_refused_and_left_as_it_was(tmp_path, layout, resume):
    directory = tmp_path / "mydata"
    layout(directory)
    before = snapshot(directory)
    with pytest.raises(ValueError) as caught:
        sweep(directory, resume=resume, **ONE_STAGE)
    message = str(caught.value)
    assert message.startswith("checkpoint_dir: ")
    assert str(directory) in message
    assert "empty or new folder" in message and "nothing was changed" in message
    assert snapshot(directory) == before  # nothing renamed, deleted, added (no lock, no marker)


def test_an_empty_checkpoint_dir_is_refused_not_taken_as_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir: an empty path"):
        sweep("", **ONE_STAGE)
    assert os.listdir(tmp_path) == []


def test_a_new_directory_gets_the_marker_and_an_empty_lock_file(tmp_path):
    directory = tmp_path / "new" / "ckpt"
    store = StepStore(str(directory), Hosts(0, 1, "jaxsweep/test"))
    try:
        with open(directory / MARKER) as handle:
            marker = json.load(handle)
        assert marker["written_by"] == "jaxsweep" and marker["format"] == 1
        holder = json.loads((directory / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    finally:
        store.close()
    assert (directory / LOCK).read_text() == ""  # released: nobody is named
    assert sorted(os.listdir(directory)) == sorted([LOCK, MARKER])


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_a_checkpoint_dir_of_an_earlier_version_is_adopted_and_resumed(tmp_path, monkeypatch):
    """Earlier versions set no marker, took no lock and saved no checksums."""
    directory = tmp_path / "ckpt"
    interrupted_after_first_save(monkeypatch, directory)  # step 1: stage 0 after epoch 1
    os.remove(directory / MARKER)
    os.remove(directory / LOCK)
    record_path = directory / "1" / "progress" / "metadata"
    record = json.loads(record_path.read_text())
    del record["checksums"]
    record_path.write_text(json.dumps(record))
    # what its killed saves and set-aside steps left
    os.makedirs(directory / "2.orbax-checkpoint-tmp-1234567" / "lanes")
    write(str(directory / "7.damaged" / "progress" / "metadata"), b"{")
    resumed = sweep(directory, **ONE_STAGE)
    assert resumed_from(resumed) == {"stage": 0, "epoch": 1}
    assert trained(resumed) == 1
    assert json.loads((directory / MARKER).read_text())["format"] == 1
    assert not (directory / "2.orbax-checkpoint-tmp-1234567").exists()
    assert (directory / "7.damaged").is_dir()  # kept, as earlier versions left it
    fresh = sweep(tmp_path / "fresh", **ONE_STAGE)
    assert comparable(resumed.to_dict()) == comparable(fresh.to_dict())


# ----------------------------------------------------------------------------- one writer


def test_a_second_opening_of_a_held_directory_is_refused_naming_the_holder(tmp_path):
    directory = str(tmp_path / "ckpt")
    first = StepStore(directory, Hosts(0, 1, "jaxsweep/first"))
    try:
        before = snapshot(directory)
        with pytest.raises(CheckpointInUseError) as caught:
            StepStore(directory, Hosts(0, 1, "jaxsweep/second"))
        message = str(caught.value)
        assert f"process {os.getpid()} on host {socket.gethostname()}" in message
        assert directory in message and "another checkpoint_dir" in message
        assert isinstance(caught.value, RuntimeError)
        assert snapshot(directory) == before
    finally:
        first.close()
    StepStore(directory, Hosts(0, 1, "jaxsweep/third")).close()  # free again once closed


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_a_sweep_on_a_directory_a_live_sweep_holds_is_refused_until_it_is_killed(
    helper_env, tmp_path
):
    directory, ready, log = tmp_path / "ckpt", tmp_path / "ready", tmp_path / "holder.log"
    with open(log, "w") as output:
        holder = subprocess.Popen(
            [sys.executable, HOLD_HELPER, str(directory), str(ready)],
            env=helper_env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            if holder.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the holding sweep did not save: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        assert int(ready.read_text()) == holder.pid
        before = snapshot(directory)
        with pytest.raises(CheckpointInUseError) as caught:
            sweep(directory, **ONE_STAGE)
        assert f"process {holder.pid} on host {socket.gethostname()}" in str(caught.value)
        assert snapshot(directory) == before
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    # the killed holder's lock went with it (its pid is still written in the file)
    assert str(holder.pid) in (directory / LOCK).read_text()
    resumed = sweep(directory, **ONE_STAGE)
    assert resumed_from(resumed) == {"stage": 0, "epoch": 1}
    assert trained(resumed) == 1


# ----------------------------------------------------------------------------- integrity


def test_checksums_cover_every_block_and_catch_one_changed_bit():
    (device,) = jax.devices()[:1]
    item = {
        "state": {"w": jax.device_put(np.arange(12, dtype=np.float32).reshape(3, 4), device)},
        "counters": np.asarray([1, 1], np.int32),
    }
    checksums = _checkpoint.lane_checksums(item, Hosts(0, 1, "jaxsweep/test"), 1)
    host = jax.tree.map(np.asarray, item)
    _checkpoint.check_checksums(host, checksums)  # as saved: accepted
    changed = jax.tree.map(np.copy, host)
    changed["state"]["w"].reshape(-1).view(np.uint8)[17] ^= 1
    with pytest.raises(
        ValueError, match=r"checksum mismatch, \['state'\]\['w'\] \(rows 0:3\) changed"
    ):
        _checkpoint.check_checksums(changed, checksums)
    with pytest.raises(ValueError, match="other arrays"):
        _checkpoint.check_checksums({"state": host["state"]}, checksums)


def _read_arrays(item) -> dict:
    """Every array of an Orbax array item as a reader gets it (decompressed), bypassing the
    checkpoint code (no caching between calls)."""
    import tensorstore

    context = tensorstore.Context()
    kvstore = {"driver": "ocdbt", "base": f"file://{item}"}
    keys = tensorstore.KvStore.open(kvstore, context=context).result().list().result()
    names = [key.decode()[: -len("/.zarray")] for key in keys if key.endswith(b"/.zarray")]
    assert names, f"no arrays in {item}"
    arrays = {}
    for name in names:
        spec = {"driver": "zarr", "kvstore": {**kvstore, "path": f"{name}/"}}
        array = tensorstore.open(spec, context=context).result().read().result()
        arrays[name] = array.tobytes()
    return arrays


def _xor(path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))


_BTREE_NODE = bytes.fromhex("0cdb20de")  # how OCDBT's b-tree node files start


def flip_one_byte_that_is_read(item) -> str:
    """XORs one byte in the largest data file of an array item that holds array chunks: the
    first byte from its start whose change a reader takes without an error.

    Data files hold chunks or b-tree nodes (skipped: a changed node fails to read); a byte
    of a chunk's compression header fails to read too, and parts of a file may be
    unreferenced: a flip is kept only when an array a reader gets changed and no error said
    so (what a disk fault that no check notices does).
    """
    files = glob.glob(os.path.join(item, "**", "d", "*"), recursive=True)
    before = _read_arrays(item)
    for path in sorted(files, key=os.path.getsize, reverse=True):
        with open(path, "rb") as handle:
            if handle.read(len(_BTREE_NODE)) == _BTREE_NODE:
                continue
        for offset in range(min(os.path.getsize(path), 256)):
            _xor(path, offset)
            try:
                if _read_arrays(item) != before:
                    return path
            except ValueError:  # the reader notices this one
                pass
            _xor(path, offset)  # put it back
    pytest.fail(f"no byte of the data files of {item} changes silently what is read")


@pytest.mark.slow
def test_a_flipped_byte_in_the_latest_lanes_is_caught_and_the_result_stays_exact(
    helper_env, tmp_path
):
    expected = leg(helper_env, tmp_path / "reference", tmp_path / "reference.json", killed=False)
    directory = tmp_path / "ckpt"
    # steps 1, 2, 3 saved (stage 1 after its first epoch), then killed
    leg(helper_env, directory, tmp_path / "out.json", "--kill-after-save", "3", killed=True)
    assert sorted(int(n) for n in os.listdir(directory) if n.isdigit()) == [2, 3]
    flip_one_byte_that_is_read(directory / "3" / "lanes")
    with pytest.warns(CheckpointWarning) as caught:
        result = sweep(directory)
    messages = [str(w.message) for w in caught if w.category is CheckpointWarning]
    assert len(messages) == 1
    assert f"step 3 of {directory} could not be read" in messages[0]
    assert "checksum mismatch" in messages[0], messages[0]
    assert (directory / "3.damaged").is_dir()
    assert resumed_from(result) == {"stage": 1, "epoch": 0}  # step 2, the end of stage 0
    assert trained(result) == 4
    assert comparable(result.to_dict()) == comparable(expected)
