"""Benchmark 5: training from a data source against arrays, and validation memory.

(1) Throughput: one stage of 5 learning rates trained for a step budget, its training part
given as device-resident arrays, as a Python map dataset (``__len__`` and ``__getitem__``,
read batch by batch on the host with prefetching) and as a grain ``MapDataset`` when grain is
installed. Steps per second of the whole stage (all lanes), steady state, compiled programs
reused, runs interleaved.

(2) Validation memory: the compiled training call of a stage of 5 lanes (a small CNN, one step
of 64 examples, then the validation), validating in batches of the default size against the
whole validation set as one batch, at growing validation-set sizes (XLA's compiled estimate of
arguments + outputs + temporaries).

python -m benchmarks.run_all --only data_sources [--quick]
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

import jaxsweep
from jaxsweep._driver import build_stage_programs
from jaxsweep._setup import setup
from jaxsweep._stage import compiled_memory

from . import _common as c

NAME = "data_sources"
SETTINGS = {
    "full": {"steps": 300, "batch_size": 128, "repeats": 5, "val_sizes": (1000, 4000, 16000)},
    "quick": {"steps": 60, "batch_size": 128, "repeats": 2, "val_sizes": (1000, 4000)},
    "gpu": {"steps": 600, "batch_size": 256, "repeats": 5, "val_sizes": (1000, 4000, 16000)},
}
LANES = 5


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(256)(nn.relu(nn.Dense(256)(x)))))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class Pairs:
    """A user's map dataset: item i is (x[i], y[i])."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _data(n: int, shape: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    x = (rng.normal(size=(n, *shape)) + y.reshape(-1, *([1] * len(shape))) * 0.1).astype(np.float32)
    return x, y


def _stage(model_fn, data, **kwargs):
    """The sweep's own stage programs for ``data``, one device, started with 5 lanes."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(jaxsweep.run).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    checked = setup(
        model_fn,
        data,
        **{**defaults, "devices": jax.local_devices()[:1], "progress": False, **kwargs},
    )
    stage = build_stage_programs(checked)
    lanes = stage.start(np.geomspace(1e-4, 1e-2, LANES).tolist(), seed=0, seeds=1)
    stage.compile(lanes)
    return stage, lanes


def _train_all(stage, lanes):
    *_, (_, _, metrics) = stage.train(lanes, lanes.state)  # as a sweep trains a stage
    return metrics.val_loss


def _throughput(settings) -> tuple[dict, dict]:
    x, y = _data(20_000, (64,))
    val = _data(1000, (64,), seed=1)
    budget = {"steps": settings["steps"], "epochs": None, "batch_size": settings["batch_size"]}
    sources: dict[str, Any] = {
        "arrays (device-resident)": (x, y),
        "Python map dataset": Pairs(x, y),
    }
    try:
        import grain

        sources["grain MapDataset"] = grain.MapDataset.source(Pairs(x, y))
    except ImportError:
        pass
    stages = {
        name: _stage(lambda: MLP(), {"train": train, "val": val}, **budget)
        for name, train in sources.items()
    }
    # the same work: every source trains the same batches, so the same losses
    losses = {name: np.asarray(_train_all(*s)).tolist() for name, s in stages.items()}
    reference = np.asarray(losses["arrays (device-resident)"])
    difference = {
        name: float(np.max(np.abs(np.asarray(v) - reference) / np.abs(reference)))
        for name, v in losses.items()
    }
    samples = c.interleaved(
        {name: (lambda s=s: _train_all(*s)) for name, s in stages.items()}, settings["repeats"]
    )
    base = np.median(samples["arrays (device-resident)"])
    rows = []
    for name, times in samples.items():
        median = float(np.median(times))
        rate = settings["steps"] / median
        rows.append([name, median, rate, rate * LANES * settings["batch_size"], base / median])
    table = c.table(
        f"Training from a source: one stage of {LANES} rates, {settings['steps']} steps of "
        f"{settings['batch_size']} examples (MLP 64-256-256-10, 20,000 examples)",
        ["training data", "stage (s)", "steps/s", "examples/s (all lanes)", "vs arrays"],
        [[r[0], c.fmt(r[1]), c.fmt(r[2]), c.fmt(r[3]), c.fmt(r[4])] for r in rows],
    )
    timings = {name: c.summary(t) for name, t in samples.items()}
    return table, {"timings": timings, "final_val_loss": losses, "max_relative_diff": difference}


def _validation_memory(settings) -> tuple[dict, dict]:
    x, y = _data(2000, (16, 16, 1))
    rows, data = [], {}
    for n_val in settings["val_sizes"]:
        val = _data(n_val, (16, 16, 1), seed=2)
        sizes = {}
        for label, eval_batch in (("batched (default)", None), ("one batch", n_val)):
            stage, lanes = _stage(
                lambda: CNN(),
                {"train": (x, y), "val": val},
                steps=1,
                epochs=None,
                batch_size=64,
                eval_batch_size=eval_batch,
            )
            memory = compiled_memory(stage.compiled_call(lanes))
            sizes[label] = memory
        data[n_val] = sizes
        batched, whole = sizes["batched (default)"], sizes["one batch"]
        rows.append(
            [
                n_val,
                c.fmt(batched["temporaries"] / 2**20),
                c.fmt(batched["total"] / 2**20),
                c.fmt(whole["temporaries"] / 2**20),
                c.fmt(whole["total"] / 2**20),
            ]
        )
    table = c.table(
        f"Validation memory of a stage of {LANES} lanes (CNN conv16, conv32/2 on 16x16x1), "
        "compiled estimate in MiB",
        [
            "validation examples",
            "batched: temporaries",
            "batched: total",
            "one batch: temporaries",
            "one batch: total",
        ],
        rows,
    )
    return table, data


def run(mode: str = "full", **overrides) -> dict:
    settings = {**SETTINGS[mode], **overrides}
    load_start, started = c.load_average(), time.perf_counter()
    throughput, throughput_data = _throughput(settings)
    memory, memory_data = _validation_memory(settings)
    notes = [
        "A source is read on the host, batch by batch, in the engine's order, while the "
        "previous call trains; arrays are gathered on the device inside the compiled program.",
        "Validation totals include the validation data itself (an argument of the program); "
        "batched temporaries depend on the batch size, not on the number of examples.",
    ]
    return c.benchmark_record(
        NAME,
        "Data sources and validation memory",
        [throughput, memory],
        notes,
        {"throughput": throughput_data, "validation_memory": memory_data, "settings": settings},
        load_start,
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    print(c.render_markdown({"benchmarks": [run("quick")], "machine": c.machine()}))
