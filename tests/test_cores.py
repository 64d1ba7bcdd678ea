"""``jaxsweep.use_cpu_cores``: the CPU as one JAX device per core, made before JAX starts.

JAX fixes its CPU device count when it starts, so every split is checked in a new process;
the sweep on several devices giving the one-device result is ``test_sharding``'s.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import jaxsweep
from jaxsweep import _cores, cli


def _in_new_process(code: str, **env) -> list:
    """Runs ``code`` in a fresh Python; it prints one JSON value as its last line."""
    environment = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_splits_the_cpu_before_jax_starts_and_refuses_afterwards():
    made, devices, kept, error = _in_new_process(
        """
        import json, jax, jaxsweep
        made = jaxsweep.use_cpu_cores(3)
        devices = len(jax.devices("cpu"))
        kept = jaxsweep.use_cpu_cores()  # what is configured stays
        jax.numpy.ones(3).sum().block_until_ready()  # JAX has started
        try:
            jaxsweep.use_cpu_cores(2)
            error = ""
        except RuntimeError as raised:
            error = str(raised)
        print(json.dumps([made, devices, kept, error]))
        """
    )
    assert (made, devices, kept) == (3, 3, 3)
    assert "3 device(s)" in error and "JAX_NUM_CPU_DEVICES=2" in error
    assert "before any JAX computation" in error


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, min(_cores.usable_cores(), _cores.MAX_DEFAULT_DEVICES)),
        ({"JAX_NUM_CPU_DEVICES": "1"}, 1),  # the user's own setting wins over the default
    ],
)
def test_default_is_one_device_per_core_unless_the_user_chose(env, expected):
    made, devices = _in_new_process(
        """
        import json, jax, jaxsweep
        made = jaxsweep.use_cpu_cores()
        print(json.dumps([made, len(jax.devices("cpu"))]))
        """,
        **env,
    )
    assert made == devices == expected


@pytest.mark.parametrize(
    "count, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_counts_name_the_argument(count, error):
    with pytest.raises(error, match="count"):
        jaxsweep.use_cpu_cores(count)


def test_after_jax_started_the_command_keeps_the_devices_it_has():
    # this test process has computed already: the command's own call must not fail
    import jax

    jax.numpy.zeros(()).block_until_ready()
    assert _cores.try_use_cpu_cores() in (None, len(jax.devices("cpu")))


@pytest.mark.parametrize("command, splits", [(["demo"], True), (["show", "nowhere"], False)])
def test_only_the_training_commands_split_the_cpu(command, splits, monkeypatch):
    calls = []
    monkeypatch.setattr(_cores, "try_use_cpu_cores", lambda: calls.append(1))
    monkeypatch.setattr(cli, "_demo", lambda args: 0)  # the split, not the sweep
    cli.main(command)
    assert bool(calls) == splits
