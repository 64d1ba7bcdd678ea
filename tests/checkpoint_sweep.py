"""A small checkpointed sweep run in a subprocess by test_checkpoint.py, killed on request.

Usage: python tests/checkpoint_sweep.py DIR OUT [--kill-before-save N | --kill-after-save N |
--kill-in-save N] [--every SECONDS] [--epochs E]

Writes the result as JSON to OUT unless killed. The kill options send SIGKILL to this process
at a real point of the N-th checkpoint save (counted from 1 within this process):
``--kill-before-save`` as the save starts (nothing of it is written), ``--kill-after-save``
once it is complete on disk, ``--kill-in-save`` inside Orbax's background commit of the N-th
step, after its items are written into its temporary directory and before it is renamed into
place (the method Orbax's own tests patch).
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from conftest import TinyMLP, make_classification  # noqa: E402

import jaxsweep  # noqa: E402
from jaxsweep import _checkpoint  # noqa: E402

# The sweep every test of test_checkpoint.py compares: 3 stages of 3 rates, 2 epochs each.
SWEEP = dict(
    stages=3,
    points_per_stage=3,
    batch_size=32,
    seeds=1,  # every stage runs: no stop on resolution
    min_improvement=0.0,
    lr_range=(1e-2, 1.0),
    progress=False,
)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(mode: str, target: int) -> None:
    original = _checkpoint.StepStore.save
    calls = {"n": 0}

    def save(self, step, progress, lanes_item):
        calls["n"] += 1
        if mode == "before" and calls["n"] == target:
            _kill()
        original(self, step, progress, lanes_item)
        if mode == "after" and calls["n"] == target:
            self._manager.wait_until_finished()
            _kill()

    _checkpoint.StepStore.save = save
    if mode == "in":
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def killing_finalize(self, *args, **kwargs):
            if self._final_path.name.isdigit():  # a step's commit, not one of its items'
                calls["commits"] = calls.get("commits", 0) + 1
                if calls["commits"] == target:
                    _kill()
            return await finalize(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize


def sweep(directory, *, model=TinyMLP, data=None, **overrides):
    """The sweep of these tests, checkpointed to ``directory`` (arguments as in ``run``)."""
    x, y = make_classification(n=200) if data is None else data
    arguments = {
        **SWEEP,
        "epochs": 2,
        "checkpoint_every_seconds": 0.0,
        "devices": jax.devices()[:1],
        **overrides,
    }
    return jaxsweep.run(lambda: model(), (x, y), checkpoint_dir=directory, **arguments)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("out")
    parser.add_argument("--kill-before-save", type=int)
    parser.add_argument("--kill-after-save", type=int)
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("--every", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--all-devices", action="store_true", help="spread lanes over all")
    args = parser.parse_args()
    for mode in ("before", "after", "in"):
        target = getattr(args, f"kill_{mode}_save")
        if target is not None:
            _install_kill(mode, target)
    result = sweep(
        args.directory,
        epochs=args.epochs,
        checkpoint_every_seconds=args.every,
        devices=None if args.all_devices else jax.devices()[:1],
    )
    result.save(args.out)


if __name__ == "__main__":
    main()
