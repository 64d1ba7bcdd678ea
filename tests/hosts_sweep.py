"""One process of a checkpointed sweep run by several processes, killed on request.

Used by ``tests/test_hosts.py``: ``jax.distributed.initialize`` and the CPU device count must
come before JAX starts, so every process of a multi-process sweep is a process of its own.
Every process writes ``process-<index>.json`` (its result and what it saw) into OUT; only the
writer (process 0) writes ``result.json``.

  python tests/hosts_sweep.py DIR OUT --coordinator 127.0.0.1:PORT --process-id I --processes N
      [--kill-after-save K | --stop-after-save K] [--every SECONDS] [--epochs E]
      [--data-seed S] [--heartbeat SECONDS]

A run that fails writes ``process-<index>.json`` with its error and how many programs it had
compiled, then fails.

``--kill-after-save K`` sends SIGKILL to this process once its K-th checkpoint save (counted
from 1 in this process) is complete on disk in every process; ``--stop-after-save K`` writes
``OUT/stopped-<index>`` then and waits to be killed from outside. ``--processes 1`` runs
without ``jax.distributed``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# 3 values x 2 seeds = 6 lanes, padded to 8 over 2 processes x 2 devices; 3 stages of 2 epochs
SWEEP = dict(
    epochs=2,
    stages=3,
    points_per_stage=3,
    seeds=2,
    batch_size=64,
    min_improvement=0.0,
    lr_range=(1e-3, 3e-2),  # the best rate is above it: stages search beyond, with warnings
    checkpoint_every_seconds=0.0,
    progress=False,
)


def tiny_data(seed: int = 0):
    """256 examples of a separable two-class problem (204 train / 52 validation)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    return x, y


def hosts_sweep(directory, *, data_seed: int = 0, devices=None, **overrides):
    """The sweep of these tests, checkpointed to ``directory`` (arguments as in ``run``)."""
    import jaxsweep
    from jaxsweep.models import MLP

    arguments = {**SWEEP, "devices": devices, **overrides}
    return jaxsweep.run(
        lambda: MLP(hidden=(16,), outputs=2),
        tiny_data(data_seed),
        checkpoint_dir=directory,
        **arguments,
    )


def _after_save(target: int, then) -> None:
    """Calls ``then()`` once this process's ``target``-th save is complete on disk."""
    from jaxsweep import _checkpoint

    original = _checkpoint.StepStore.save
    calls = {"n": 0}

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == target:
            self._manager.wait_until_finished()  # complete on disk, in every process
            then()

    _checkpoint.StepStore.save = save


def _stop(marker: pathlib.Path):
    """Says it stopped (a file), then waits for the SIGKILL the test sends."""

    def stop():
        marker.write_text("stopped")
        time.sleep(3600)

    return stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--coordinator")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--kill-after-save", type=int)
    parser.add_argument("--stop-after-save", type=int)
    parser.add_argument("--every", type=float, default=SWEEP["checkpoint_every_seconds"])
    parser.add_argument("--epochs", type=int, default=SWEEP["epochs"])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--heartbeat", type=int, default=100)
    args = parser.parse_args()

    import jax

    if args.processes > 1:
        # CPU collectives between processes (gloo); a process that stops answering for
        # ``--heartbeat`` seconds is declared dead and every other process is stopped
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.processes,
            process_id=args.process_id,
            heartbeat_timeout_seconds=args.heartbeat,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.kill_after_save is not None:
        _after_save(args.kill_after_save, lambda: os.kill(os.getpid(), signal.SIGKILL))
    if args.stop_after_save is not None:
        marker = args.out / f"stopped-{jax.process_index()}"
        _after_save(args.stop_after_save, _stop(marker))
    # count what the sweep compiles; JAX compiles its eager key constructor once per process,
    # which setup uses for abstract tracing: done here first, it is not counted
    jax.random.key(0)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: compiles.append(event) if event == COMPILE_EVENT else None
    )

    import jaxsweep

    report_path = args.out / f"process-{jax.process_index()}.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = hosts_sweep(
                args.directory,
                data_seed=args.data_seed,
                epochs=args.epochs,
                checkpoint_every_seconds=args.every,
            )
        except Exception as error:
            failure = {"error": f"{type(error).__name__}: {error}", "compiles": len(compiles)}
            report_path.write_text(json.dumps(failure))
            raise
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "compiles": len(compiles),
        "result": result.to_dict(),
    }
    report_path.write_text(json.dumps(report))
    if jaxsweep.is_writer():
        result.save(args.out / "result.json")


if __name__ == "__main__":
    main()
