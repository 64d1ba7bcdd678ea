"""Holds a checkpoint directory for test_checkpoint_safety.py, like a sweep still running.

Usage: python tests/safety_sweep.py DIR READY

Runs the sweep of tests/checkpoint_sweep.py (one stage) on DIR; once its first checkpoint is
complete on disk it writes its pid to READY and sleeps until it is killed, holding DIR.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from checkpoint_sweep import sweep  # noqa: E402

from jaxsweep import _checkpoint  # noqa: E402


def main() -> None:
    directory, ready = sys.argv[1:3]
    original = _checkpoint.StepStore.save

    def save(self, step, progress, lanes_item):
        original(self, step, progress, lanes_item)
        self._manager.wait_until_finished()
        with open(f"{ready}.partial", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(f"{ready}.partial", ready)
        while True:  # a sweep that goes on training, until it is killed
            time.sleep(1)

    _checkpoint.StepStore.save = save
    sweep(directory, stages=1)


if __name__ == "__main__":
    main()
