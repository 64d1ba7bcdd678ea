"""Several processes under jax.distributed: a killed sweep resumes exactly, with one writer.

The processes' meetings are checked here in one process, with a stand-in coordination service.
The sweeps run for real: every process of a two-process sweep is a subprocess of its own
(``tests/hosts_sweep.py``), talking over loopback (127.0.0.1) with gloo, two CPU devices each.
The runs that do not depend on each other start together, and a shared persistent compilation
cache spares the later one most of its compiling. Every process still running when the fixture
ends is killed, with its process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from conftest import comparable
from hosts_sweep import hosts_sweep

import jaxsweep
from jaxsweep import _hosts
from jaxsweep._result import from_dict
from jaxsweep._warnings import warn

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hosts_sweep.py")
EPOCHS_IN_FULL_RUN = 3 * 2  # 3 stages of 2 epochs
WAIT_SECONDS = 400  # a run that takes longer hangs (the shared 2-core machine is slow)

slow = pytest.mark.slow  # the tests that use the two-process runs (about a minute together)


# ----------------------------------------------------------------------------- meetings


class FakeClient:
    """The coordination service's key-value store, as one process sees it: what the other
    processes said is given in advance; a key nobody set times out."""

    def __init__(self, said: dict[str, str]):
        self.said = dict(said)

    def key_value_set(self, key: str, value: str) -> None:
        self.said[key] = value

    def blocking_key_value_get(self, key: str, timeout_in_ms: int) -> str:
        if key not in self.said:
            raise RuntimeError(f"DEADLINE_EXCEEDED: {key} not set in {timeout_in_ms} ms")
        return self.said[key]


@pytest.fixture
def client(monkeypatch):
    def install(said: dict[str, str]) -> FakeClient:
        fake = FakeClient(said)
        monkeypatch.setattr(_hosts, "_client", lambda: fake)
        return fake

    return install


def test_one_process_meets_no_one():
    hosts = _hosts.Hosts(index=0, count=1, namespace="jaxsweep/t")
    assert hosts.writer
    assert hosts.exchange("setup", "mine") == ["mine"]
    assert hosts.writer_says("step", lambda: "3") == "3"
    _hosts.agree_on_sweep(hosts, {"config.epochs": 2})  # nothing to compare with


def test_differences_name_each_field():
    assert _hosts.differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": [4]}) == [
        "b: 2 -> 3",
        "c: (absent) -> [4]",
    ]


def test_a_process_given_another_sweep_is_named_with_the_field(client):
    fields = {"config.epochs": 2, "data.content": "aaa"}
    other = {**fields, "data.content": "bbb"}
    client({"jaxsweep/t/setup/0": json.dumps(fields), "jaxsweep/t/setup/2": json.dumps(other)})
    client_view = _hosts.Hosts(index=1, count=3, namespace="jaxsweep/t")
    with pytest.raises(_hosts.ProcessMismatchError) as caught:
        _hosts.agree_on_sweep(client_view, fields)
    message = str(caught.value)
    assert "process 2 differs from process 0 in: data.content: aaa -> bbb" in message
    assert "process 1 differs" not in message
    assert isinstance(caught.value, ValueError)


def test_a_process_that_never_comes_is_named(client):
    fake = client({})
    hosts = _hosts.Hosts(index=0, count=2, namespace="jaxsweep/t")
    with pytest.raises(_hosts.ProcessLostError, match="setup.*process 1 of this sweep"):
        hosts.exchange("setup", "mine")
    assert fake.said == {"jaxsweep/t/setup/0": "mine"}  # it did give its own value


def test_the_others_follow_the_writer_and_hear_of_its_failure(client):
    fake = client({})
    writer = _hosts.Hosts(index=0, count=2, namespace="jaxsweep/t")
    assert writer.writer_says("save 1.1", lambda: "yes") == "yes"
    with pytest.raises(OSError):
        writer.writer_says("open", lambda: (_ for _ in ()).throw(OSError("disk full")))
    other = _hosts.Hosts(index=1, count=2, namespace="jaxsweep/t")
    assert other.writer_says("save 1.1", lambda: pytest.fail("only the writer decides")) == "yes"
    with pytest.raises(RuntimeError, match="open: process 0 failed: OSError: disk full"):
        other.writer_says("open", lambda: "")
    assert set(fake.said) == {"jaxsweep/t/save 1.1/said", "jaxsweep/t/open/said"}


def test_only_the_writer_warns(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn("the same note in every process", jaxsweep.SearchRangeWarning)
    assert caught == []
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with pytest.warns(jaxsweep.SearchRangeWarning, match="the same note"):
        warn("the same note in every process", jaxsweep.SearchRangeWarning)


# ----------------------------------------------------------------------------- running pairs


_PORTS_GIVEN: set[int] = set()


def _free_port() -> int:
    """A free port no other pair of this run was given: the pairs start together, and two
    coordinators on one port let a process join the other pair's sweep (JAX then aborts both
    with "tried to connect with a different incarnation")."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


class Pair:
    """Processes 0 and 1 of one two-process sweep, started at once; ``options`` per process."""

    def __init__(self, env, root, name: str, directory, options=((), ())):
        self.out = root / name
        self.out.mkdir(parents=True, exist_ok=True)
        coordinator = f"127.0.0.1:{_free_port()}"
        self.logs = [self.out / f"log-{i}.txt" for i in range(2)]
        self.processes = []
        for index in range(2):
            command = [sys.executable, HELPER, str(directory), str(self.out)]
            command += ["--coordinator", coordinator, "--process-id", str(index)]
            command += ["--processes", "2", *options[index]]
            with open(self.logs[index], "w") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed as one
                    )
                )

    def wait(self) -> list[int]:
        """The return codes; a process still running after WAIT_SECONDS fails the test."""
        deadline = time.monotonic() + WAIT_SECONDS
        for process in self.processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{self.out.name}: a process hung:\n{self.log(0)}\n{self.log(1)}")
        return [process.returncode for process in self.processes]

    def kill_once_stopped(self) -> None:
        """SIGKILL to both once both said they stopped (``--stop-after-save``)."""
        deadline = time.monotonic() + WAIT_SECONDS
        markers = [self.out / f"stopped-{i}" for i in range(2)]
        while not all(marker.exists() for marker in markers):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.kill()
                pytest.fail(f"{self.out.name}: did not stop:\n{self.log(0)}\n{self.log(1)}")
            time.sleep(0.2)
        self.kill()

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, index: int, tail: int = 6000) -> str:
        return self.logs[index].read_text()[-tail:]

    def report(self, index: int) -> dict:
        return json.loads((self.out / f"process-{index}.json").read_text())


def _env(cache) -> dict:
    # conftest's XLA flags (fast compiling) are kept; each process gets 2 CPU devices
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": flags.strip(),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def steps_on_disk(directory) -> list[int]:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if "tmp" in name]


def trained(result: dict) -> int:
    return result["environment"]["checkpoint"]["epochs_trained"]


def _plant_damaged_steps(directory) -> None:
    """Two copies of step 3 that cannot be used: step 4 without its array data, step 5
    without its JSON record. The first fails when its lanes are read, the second at once."""
    for step in (4, 5):
        shutil.copytree(directory / "3", directory / str(step))
    for name in os.listdir(directory / "4" / "lanes" / "d"):
        os.remove(directory / "4" / "lanes" / "d" / name)
    os.remove(directory / "5" / "progress" / "metadata")
    # and what a save killed in its commit leaves behind
    os.makedirs(directory / "6.orbax-checkpoint-tmp-1234567" / "lanes")


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Every two-process run of this module: the independent ones together, then the resume.

    - ``reference``: an uninterrupted sweep, saving inside a stage once an hour by the
      writer's clock (so only at stage ends);
    - ``killed``: both processes are killed with SIGKILL once step 3 (stage 1 after 1 of its
      2 epochs) is on disk; then ``resumed`` reruns both on the same directory, where damaged
      steps and a temporary directory were planted;
    - ``writer_dies`` / ``other_dies``: only process 0 / only process 1 is killed there;
    - ``mismatch``: process 1 is given other data and another epoch count.
    """
    root = tmp_path_factory.mktemp("hosts")
    env = _env(tmp_path_factory.mktemp("compilation-cache"))
    killed_dir = root / "killed-ckpt"
    stop, kill, beat = ("--stop-after-save", "3"), ("--kill-after-save", "3"), ("--heartbeat", "10")
    pairs = {
        "reference": Pair(
            env, root, "reference", root / "reference-ckpt", (("--every", "3600"),) * 2
        ),
        "killed": Pair(env, root, "killed", killed_dir, (stop, stop)),
        "writer_dies": Pair(env, root, "writer-dies", root / "w-ckpt", ((*kill, *beat), beat)),
        "other_dies": Pair(env, root, "other-dies", root / "o-ckpt", (beat, (*kill, *beat))),
        "mismatch": Pair(
            env, root, "mismatch", root / "m-ckpt", ((), ("--data-seed", "1", "--epochs", "3"))
        ),
    }
    try:
        pairs["killed"].kill_once_stopped()
        codes = {name: pair.wait() for name, pair in pairs.items()}
        disk = {"killed": steps_on_disk(killed_dir), "killed_leftovers": leftovers(killed_dir)}
        disk["reference"] = steps_on_disk(root / "reference-ckpt")
        shutil.copytree(killed_dir, root / "mid-stage-copy")
        _plant_damaged_steps(killed_dir)
        pairs["resumed"] = Pair(env, root, "resumed", killed_dir)
        codes["resumed"] = pairs["resumed"].wait()
        disk["final"] = steps_on_disk(killed_dir)
        disk["final_leftovers"] = leftovers(killed_dir)
        disk["set_aside"] = sorted(n for n in os.listdir(killed_dir) if "damaged" in n)
    finally:
        for pair in pairs.values():
            pair.kill()
    return {"pairs": pairs, "codes": codes, "disk": disk, "root": root}


def _finished(sweeps, name: str) -> list[dict]:
    pair = sweeps["pairs"][name]
    assert sweeps["codes"][name] == [0, 0], f"{pair.log(0)}\n{pair.log(1)}"
    return [pair.report(i) for i in range(2)]


# ----------------------------------------------------------------------------- kill both


@slow
def test_killed_two_process_sweep_resumes_to_the_uninterrupted_result(sweeps):
    reference = _finished(sweeps, "reference")
    resumed = _finished(sweeps, "resumed")
    assert sweeps["codes"]["killed"] == [-signal.SIGKILL, -signal.SIGKILL]
    expected = comparable(reference[0]["result"])
    for report in resumed:
        assert report["process_count"] == 2
        assert comparable(report["result"]) == expected  # bitwise: floats compared exactly
    assert trained(reference[0]["result"]) == EPOCHS_IN_FULL_RUN
    for report in resumed:  # stage 1 after 1 epoch: 1 + 2 epochs were left
        checkpoint = report["result"]["environment"]["checkpoint"]
        assert checkpoint["resumed_from"] == {"stage": 1, "epoch": 1}
        assert checkpoint["epochs_trained"] == 3 < EPOCHS_IN_FULL_RUN


@slow
def test_a_step_is_on_disk_only_once_every_process_committed_it(sweeps):
    disk = sweeps["disk"]
    # the writer's clock decided for both processes: no save inside a stage, none missed
    assert disk["reference"] == [4, 6]
    assert disk["killed"] == [2, 3]  # killed once step 3 was complete
    assert disk["killed_leftovers"] == []
    assert disk["final"] == [5, 6]
    assert disk["final_leftovers"] == []  # the planted temporary directory is gone too
    # each process wrote the shards of its own devices' lanes into the step
    lanes = sweeps["root"] / "mid-stage-copy" / "3" / "lanes"
    for index in range(2):
        assert os.listdir(lanes / f"ocdbt.process_{index}" / "d"), f"process {index} wrote none"


@slow
def test_one_process_writes_warnings_and_sets_damaged_steps_aside(sweeps):
    writer, other = (report["warnings"] for report in _finished(sweeps, "resumed"))
    assert other == []  # the same sweep, the same notes: said once, by process 0
    checkpoint = [w for w in writer if w.startswith("CheckpointWarning")]
    assert len(checkpoint) == 2
    assert "step 5 of" in checkpoint[0] and "could not be read" in checkpoint[0]
    assert "step 4 of" in checkpoint[1] and "process 0: " in checkpoint[1]
    assert sweeps["disk"]["set_aside"] == ["4.damaged", "5.damaged"]
    notes = _finished(sweeps, "resumed")[0]["result"]["warnings"]
    assert notes, "this sweep searches beyond its range: it has notes to give"
    assert [w for w in writer if w.startswith("SearchRangeWarning")] == [
        f"SearchRangeWarning: {note}" for note in notes
    ]
    assert _finished(sweeps, "reference")[1]["warnings"] == []
    # and only the writer saved the result file
    assert (sweeps["pairs"]["resumed"].out / "result.json").exists()


# ----------------------------------------------------------------------------- kill one


@slow
@pytest.mark.parametrize("name, victim", [("writer_dies", 0), ("other_dies", 1)])
def test_the_survivor_of_a_killed_process_stops_with_a_clear_error(sweeps, name, victim):
    pair = sweeps["pairs"][name]
    codes = sweeps["codes"][name]  # wait() returned: nobody hung
    survivor = 1 - victim
    assert codes[victim] == -signal.SIGKILL
    assert codes[survivor] not in (0, None), pair.log(survivor)
    log = pair.log(survivor, tail=10**6)
    ours = "ProcessLostError" in log and "restart every process with the same call" in log
    if victim == 1:
        # the survivor holds the coordination service, which sees the death only after the
        # heartbeat timeout: the next collective with the dead process fails first
        assert ours, log[-6000:]
    else:
        # the coordination service died with process 0: JAX may end the survivor itself
        # (its own message) before the collective fails
        assert ours or "another task died" in log, log[-6000:]


# ----------------------------------------------------------------------------- mismatch


@slow
def test_processes_given_different_sweeps_are_refused_before_anything_compiles(sweeps):
    pair = sweeps["pairs"]["mismatch"]
    assert sweeps["codes"]["mismatch"] == [1, 1], f"{pair.log(0)}\n{pair.log(1)}"
    assert _finished(sweeps, "reference")[0]["compiles"] > 0  # what a sweep does compile
    for index in range(2):
        report = pair.report(index)
        assert report["compiles"] == 0
        message = report["error"]
        assert message.startswith("ProcessMismatchError")
        assert "process 1 differs from process 0 in: config.epochs: 2 -> 3" in message
        assert "data.content" in message
    assert not (sweeps["root"] / "m-ckpt").exists()  # nothing written


# ----------------------------------------------------------------------------- process count


@slow
def test_a_two_process_checkpoint_resumes_in_one_process(sweeps, tmp_path):
    """Saved by 2 processes over 4 devices (6 lanes padded to 8), resumed here on 1 device."""
    expected = _finished(sweeps, "reference")[0]["result"]
    directory = tmp_path / "ckpt"
    shutil.copytree(sweeps["root"] / "mid-stage-copy", directory)
    with pytest.warns(jaxsweep.SearchRangeWarning):
        result = hosts_sweep(directory, devices=jax.devices()[:1])
    environment = result.environment
    assert (environment["process_count"], environment["device_count"]) == (1, 1)
    assert environment["checkpoint"]["resumed_from"] == {"stage": 1, "epoch": 1}
    assert trained(result.to_dict()) == 3
    # stage 0 is read back as it was; the rest agrees to float precision
    assert result.to_dict()["evaluations"][:3] == expected["evaluations"][:3]
    want = from_dict(expected)
    for got, wanted in zip(result.evaluations[3:], want.evaluations[3:], strict=True):
        assert got.lr == wanted.lr
        np.testing.assert_allclose(got.score, wanted.score, rtol=1e-5)
        np.testing.assert_allclose(got.train_loss, wanted.train_loss, rtol=1e-5)
    assert result.best_lr == want.best_lr
