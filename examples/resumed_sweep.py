"""A resumed sweep: killed after its first stage, rerun with the same call, it carries on.

``run(..., checkpoint_dir=DIR)`` saves the sweep as it goes (Orbax). This script starts the
sweep in a child process, kills it (SIGKILL, as a preempted machine or a restarted notebook
runtime would) as soon as the checkpoint of the end of stage 0 is on disk, then makes the very
same call here: the finished stage is read back instead of trained, and the sweep continues
from there. A third call finds the sweep complete and returns its result without training.

  python examples/resumed_sweep.py                 # 5 stages of 5 rates, 3 epochs each
  python examples/resumed_sweep.py --dir ckpt      # keep the checkpoints in ./ckpt
  python examples/resumed_sweep.py --quick         # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import jaxsweep
from jaxsweep.datasets import load_digits
from jaxsweep.models import MLP


def sweep(checkpoint_dir: str, quick: bool, progress: bool) -> jaxsweep.SweepResult:
    """The one call both processes make; identical arguments are what make resuming possible."""
    x, y = load_digits()
    if quick:
        # a few more epochs than the other quick examples keep stage 1 running long enough
        # for the kill to land in it, at almost no extra cost (the epoch program is reused)
        x, y, hidden = x[:500], y[:500], (32,)
        settings = dict(stages=2, points_per_stage=3, epochs=6, batch_size=32)
    else:
        hidden = (128, 128)
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=128)
    return jaxsweep.run(
        lambda: MLP(hidden=hidden),
        (x, y),
        lr_range=(1e-4, 1e-1),
        min_improvement=0.0,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_seconds=0,  # save after every epoch, not only at stage ends
        progress=progress,
        **settings,
    )


def completed_steps(checkpoint_dir: str) -> list[int]:
    """Step numbers of the checkpoints fully written (Orbax renames a step when complete)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def start_and_kill(checkpoint_dir: str, quick: bool, epochs: int) -> int:
    """Runs the sweep in a child process and kills it once stage 0 is checkpointed.

    Returns:
      The latest checkpoint step on disk when the child was killed.
    """
    command = [sys.executable, os.path.abspath(__file__), "--child", "--dir", checkpoint_dir]
    child = subprocess.Popen(command + (["--quick"] if quick else []))
    try:
        # step = stage * epochs + epochs done, so step >= epochs means stage 0 is finished
        while not [s for s in completed_steps(checkpoint_dir) if s >= epochs]:
            if child.poll() is not None:
                raise RuntimeError(f"the first run ended by itself (exit code {child.returncode})")
            time.sleep(0.005)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError("the first run finished before it could be interrupted")
    return completed_steps(checkpoint_dir)[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Interrupt a checkpointed sweep, then resume it.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    parser.add_argument("--dir", help="checkpoint directory (default: a temporary one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # the run that gets killed
        sweep(args.dir, args.quick, progress=False)
        return

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint_dir = args.dir or os.path.join(scratch, "checkpoints")
        epochs = 6 if args.quick else 3
        step = start_and_kill(checkpoint_dir, args.quick, epochs)
        print(f"first run killed; latest checkpoint: stage {step // epochs}, epoch {step % epochs}")

        result = sweep(checkpoint_dir, args.quick, progress=not args.quick)  # the same call
        record = result.environment["checkpoint"]
        origin = record["resumed_from"]
        print(
            f"rerun resumed from stage {origin['stage']}, epoch {origin['epoch']}; "
            f"trained {record['epochs_trained']} epochs instead of "
            f"{len(result.stages) * epochs} from scratch"
        )
        for stage in result.stages:
            rates = ", ".join(f"{lr:.3g}" for lr in stage.lrs)
            print(f"stage {stage.index}: rates [{rates}] -> best so far {stage.best_lr:.4g}")

        again = sweep(checkpoint_dir, args.quick, progress=False)  # complete: nothing to train
        print(
            f"third call: {again.environment['checkpoint']['resumed_from']}, "
            f"{again.environment['checkpoint']['epochs_trained']} epochs trained, "
            f"same result: {again.evaluations == result.evaluations}"
        )
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
