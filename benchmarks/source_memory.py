"""Benchmark 9: peak host memory of a sweep trained from a large data source, against its size.

A random-access source of N examples (``__len__``, ``__getitems__``; each example computed from
its index, so the source itself holds nothing) is swept for a fixed step budget (one stage of
5 rates, 3 seeds, 200 steps of 128 examples: about 77,000 examples read, whatever N is). Each
run is a fresh process; its peak resident memory (``ru_maxrss``) is reported above that of the
smallest source, so the JAX runtime and the compiled programs cancel. "Whole permutations" is
the same sweep with every epoch ordered by one ``jax.random.permutation`` of the dataset (the
rule up to 2**20 examples, forced here for every size): what every size cost before large
epochs were ordered batch by batch (:mod:`jaxsweep._shuffle`).

make bench-source-memory  # or: python -m benchmarks.run_all --only source_memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from . import _common as c

NAME = "source_memory"
SETTINGS = {
    "full": {"sizes": (10**5, 10**6, 10**7, 10**8), "steps": 200, "whole_up_to": 10**7},
    "quick": {"sizes": (10**5, 10**6, 10**7), "steps": 100, "whole_up_to": 10**7},
    "gpu": {"sizes": (10**5, 10**6, 10**7, 10**8), "steps": 200, "whole_up_to": 10**7},
    "dry": {"sizes": (10**3, 10**4), "steps": 4, "whole_up_to": 10**4},
}

# One sweep in a fresh process; prints its peak resident memory in bytes (Linux: KiB * 1024).
_CHILD = r"""
import json, resource, sys
import numpy as np
import jaxsweep
from jaxsweep import _shuffle
n, steps, whole = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "whole"
if whole:
    _shuffle.PERMUTATION_MAX = 2**40  # every epoch one permutation of the whole dataset

class Computed:
    # example i is computed from i: the source holds nothing of its own
    def __len__(self):
        return n
    def __getitem__(self, i):
        return self.__getitems__([i])[0]
    def __getitems__(self, indices):
        i = np.asarray(indices, np.int64)
        y = (i % 10).astype(np.int32)
        x = (np.sin(i[:, None] * np.arange(1, 17)) + y[:, None] * 0.1).astype(np.float32)
        return list(zip(x, y))

rng = np.random.default_rng(1)
y_val = rng.integers(0, 10, 512).astype(np.int32)
x_val = (rng.normal(size=(512, 16)) + y_val[:, None] * 0.1).astype(np.float32)
from jaxsweep.models import MLP
result = jaxsweep.run(
    lambda: MLP(hidden=(64,), outputs=10), {"train": Computed(), "val": (x_val, y_val)},
    steps=steps, eval_every=steps, stages=1, seeds=3, batch_size=128, progress=False,
    compilation_cache=False,
)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "best": result.best_value}))
"""


def _peak(n: int, steps: int, whole: bool) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(steps), "whole" if whole else "batch"],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"source of {n} examples failed:\n{out.stderr[-2000:]}")
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return {**record, "seconds": time.perf_counter() - started}


def run(mode: str = "full", **overrides) -> dict:
    settings = {**SETTINGS[mode], **overrides}
    load_start, started = c.load_average(), time.perf_counter()
    sizes = settings["sizes"]
    measured = {
        (n, whole): _peak(n, settings["steps"], whole)
        for n in sizes
        for whole in (False, True)
        if not whole or n <= settings["whole_up_to"]
    }
    base = measured[sizes[0], False]["peak"]
    rows = []
    for n in sizes:
        batch = measured[n, False]
        whole = measured.get((n, True))
        rows.append(
            [
                f"{n:,}",
                c.fmt((batch["peak"] - base) / 2**20),
                "-" if whole is None else c.fmt((whole["peak"] - base) / 2**20),
                c.fmt(batch["seconds"]),
            ]
        )
    table = c.table(
        "Peak host memory above the smallest source (MiB), same sweep",
        ["examples in the source", "batch by batch (now)", "whole permutations", "seconds"],
        rows,
    )
    notes = [
        f"One stage of 5 rates x 3 seeds, {settings['steps']} steps of 128 examples, an MLP "
        "16-64-10; every run a fresh process (compilation cache off), its ru_maxrss.",
        f"Baseline: the {sizes[0]:,}-example source with batch-by-batch orders, "
        f"{c.fmt(base / 2**20)} MiB (the JAX runtime, the compiled programs, the validation set).",
        "Up to 2**20 examples an epoch is one permutation either way: both columns run the "
        "same code there, so their difference is this measurement's noise (peak RSS of "
        "separate processes). Beyond, the batch-by-batch order reads only the rows each call "
        "trains.",
    ]
    data = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "runs": [{"n": n, "whole": whole, **r} for (n, whole), r in measured.items()],
    }
    return c.benchmark_record(
        NAME,
        "Memory of a large data source",
        [table],
        notes,
        data,
        load_start,
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    print(c.render_markdown({"benchmarks": [run("quick")], "machine": c.machine()}))
