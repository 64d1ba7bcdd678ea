"""Lanes over devices: padding and placement, and one sweep on 4 devices and on 2 processes.

Several CPU devices and ``jax.distributed`` must be set up before JAX starts, so those runs
happen in subprocesses (``tests/_sharded_sweep.py``), all started at once; this process
computes the one-device reference meanwhile.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsweep
from jaxsweep import _sharding

HERE = pathlib.Path(__file__).parent
SCRIPT = HERE / "_sharded_sweep.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("_sharded_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    "lanes, devices, expected", [(1, 1, 1), (6, 4, 8), (8, 4, 8), (9, 4, 12), (3, 8, 8)]
)
def test_pad_count_is_the_next_multiple_of_the_device_count(lanes, devices, expected):
    assert _sharding.pad_count(lanes, devices) == expected


def test_pad_count_rejects_nonpositive():
    with pytest.raises(ValueError):
        _sharding.pad_count(0, 4)


def test_pad_lanes_repeats_the_last_lane_of_values_and_keys():
    keys = jax.random.split(jax.random.key(3), 3)
    values = jnp.asarray([1.0, 2.0, 3.0])
    padded_values, padded_keys = _sharding.pad_lanes((values, keys), 5)
    np.testing.assert_array_equal(padded_values, [1.0, 2.0, 3.0, 3.0, 3.0])
    raw, padded_raw = jax.random.key_data(keys), jax.random.key_data(padded_keys)
    np.testing.assert_array_equal(padded_raw[:3], raw)
    np.testing.assert_array_equal(padded_raw[3:], np.stack([raw[2], raw[2]]))
    assert _sharding.pad_lanes(values, 3) is values
    with pytest.raises(ValueError):
        _sharding.pad_lanes(values, 2)


def test_layout_places_and_gathers_without_padding():
    mesh = _sharding.lane_mesh(jax.devices()[:1])
    keys = jax.random.split(jax.random.key(0), 4)
    layout = _sharding.LaneLayout(mesh, lanes=3, padded=4)
    values, placed_keys = layout.place((jnp.arange(3.0), keys))  # values padded, keys not
    assert values.sharding.spec == jax.sharding.PartitionSpec("lanes")
    np.testing.assert_array_equal(values, [0.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(jax.random.key_data(placed_keys), jax.random.key_data(keys))
    host = layout.gather({"v": values})
    assert isinstance(host["v"], np.ndarray)
    np.testing.assert_array_equal(host["v"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(layout.real(values), [0.0, 1.0, 2.0])


def test_layout_pads_to_a_multiple_of_the_device_count():
    layout = _sharding.LaneLayout.over(_sharding.lane_mesh(jax.devices()[:1]), lanes=3)
    assert (layout.lanes, layout.padded) == (3, 3)


@pytest.mark.parametrize("index, writes", [(0, True), (1, False), (3, False)])
def test_only_process_zero_writes(monkeypatch, index, writes):
    # several real processes are in test_two_processes_run_one_sweep_together
    monkeypatch.setattr(jax, "process_index", lambda: index)
    assert _sharding.is_writer() is writes


def test_devices_default_to_every_local_device():
    assert _sharding.resolve_devices(None) == jax.local_devices()
    assert _sharding.resolve_devices(tuple(jax.devices()[:1])) == jax.devices()[:1]


@pytest.mark.parametrize(
    "devices, error",
    [("cpu", TypeError), ([], ValueError), ([0], TypeError), ([None], TypeError)],
)
def test_bad_devices_fail_before_anything_compiles(blobs, devices, error):
    with pytest.raises(error, match="devices"):
        jaxsweep.run(lambda: None, blobs, devices=devices, progress=False)


def test_a_device_twice_is_refused(blobs):
    device = jax.devices()[0]
    with pytest.raises(ValueError, match="devices: each device"):
        jaxsweep.run(lambda: None, blobs, devices=[device, device], progress=False)


# ----------------------------------------------------------------------------- subprocesses


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(out: pathlib.Path, local_devices: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, f"subprocess failed:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One sweep three ways: 1 device here, 4 devices in one process, 2 processes x 2 devices."""
    root = tmp_path_factory.mktemp("sharded")
    coordinator = f"127.0.0.1:{_free_port()}"
    processes = [_start(root / "four", 4, "--separate-too")]
    processes += [
        _start(
            root / "hosts",
            2,
            "--coordinator",
            coordinator,
            "--process-id",
            str(index),
            "--processes",
            "2",
            # lax.map over each device's own lanes (shard_map), across processes
            "--lanes",
            "map",
        )
        for index in range(2)
    ]
    try:
        reference = _load_script().tiny_sweep(devices=jax.devices()[:1])
    finally:
        for process in processes:
            _finish(process)
    return reference, root


def _read(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def _fields(result: jaxsweep.SweepResult, *names: str) -> list[dict]:
    return [{name: getattr(e, name) for name in names} for e in result.evaluations]


def _assert_same_sweep(result: jaxsweep.SweepResult, reference: jaxsweep.SweepResult):
    assert [e.value for e in result.evaluations] == [e.value for e in reference.evaluations]
    losses = ("seed_val_loss", "train_loss")
    chex.assert_trees_all_close(
        _fields(result, *losses), _fields(reference, *losses), rtol=1e-4, atol=1e-6
    )
    chex.assert_trees_all_close(
        _fields(result, "grad_norm"), _fields(reference, "grad_norm"), rtol=1e-3, atol=1e-6
    )
    assert result.best_value == reference.best_value
    np.testing.assert_allclose(result.best_score, reference.best_score, rtol=1e-4)


@pytest.mark.slow
def test_four_devices_give_the_one_device_result(runs):
    reference, root = runs
    assert reference.environment["device_count"] == 1
    report = _read(root / "four" / "process-0.json")
    # the epoch program's outputs were split over all 4 devices, 6 lanes padded to 8
    assert report["metrics_sharding"] == {
        "devices": 4,
        "spec": ["lanes"],
        "lanes": 8,
    }
    result = jaxsweep.load(root / "four" / "result.json")
    assert result.environment["device_count"] == 4
    assert len(result.evaluations) == 2 * 3  # padded lanes are never reported
    _assert_same_sweep(result, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name, devices", [("separate-last", 1), ("separate-all", 4)])
def test_one_lane_calls_on_any_devices_give_the_one_device_result(runs, name, devices):
    """On the last device alone, and on all four (6 lanes: 2, 2, 2 and 0 trained, the
    padding skipped; the lanes stacked back for every checkpoint)."""
    reference, root = runs
    result = jaxsweep.load(root / "four" / f"{name}.json")
    assert result.environment["lanes"]["strategy"] == "separate"
    assert result.environment["device_count"] == devices
    _assert_same_sweep(result, reference)


@pytest.mark.slow
def test_two_processes_run_one_sweep_together(runs):
    reference, root = runs
    reports = [_read(root / "hosts" / f"process-{i}.json") for i in range(2)]
    assert [r["process_count"] for r in reports] == [2, 2]
    assert [r["global_devices"] for r in reports] == [4, 4]
    assert [r["writer"] for r in reports] == [True, False]
    assert all(r["metrics_sharding"]["devices"] == 4 for r in reports)
    # each process holds only its own lanes, yet both see every evaluation
    results = [jaxsweep._result.from_dict(r["result"]) for r in reports]
    for result in results:
        assert result.environment["lanes"]["strategy"] == "map"
        assert result.environment["device_count"] == 4
        assert result.environment["process_count"] == 2
        _assert_same_sweep(result, reference)
    assert results[0].to_dict()["evaluations"] == results[1].to_dict()["evaluations"]
    # only the writer saved the result file
    assert sorted(p.name for p in (root / "hosts").iterdir()) == [
        "process-0.json",
        "process-1.json",
        "result.json",
    ]
