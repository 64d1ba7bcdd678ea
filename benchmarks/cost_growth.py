"""Benchmark 4: how the time and memory of a stage grow with its lanes and with the model.

A stage is the engine's compiled epoch program over every lane (steady state: compiled once,
timed over the sweep's epochs). Memory is the compiled program's own account (arguments,
outputs and temporaries, less what is aliased), which XLA reports on every backend; on a GPU
the device's peak is recorded as well. The data is an argument shared by all lanes, so only
parameters, optimizer states and activations should grow with the lanes.

"vmap pays" while a stage of L lanes costs less than L one-lane stages: the efficiency
``L * t(1) / t(L)`` is how many one-lane runs a stage is worth per unit of time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxsweep.models import MLP

from . import _common as c
from ._workloads import EngineStage, Sequential, Workload, digits

NAME = "cost_growth"
TITLE = "4. Cost growth: a stage's time and memory as lanes and model grow"

FULL = dict(
    lanes=(1, 2, 5, 10, 20),
    widths=(32, 128, 512, 1024),
    width_lanes=(1, 5),
    base_width=128,
    epochs=3,
    batch_size=128,
    repeats=5,
    limit=None,
)
SETTINGS = {
    "full": FULL,
    "quick": dict(FULL, widths=(32, 512), epochs=1, repeats=3),
    # an accelerator runs many more lanes (and wider models) before its cores are busy
    "gpu": dict(FULL, lanes=(1, 2, 5, 10, 20, 50, 100), widths=(128, 512, 1024, 2048, 4096)),
    "dry": dict(
        FULL,
        lanes=(1, 2),
        widths=(8,),
        width_lanes=(1, 2),
        base_width=8,
        epochs=1,
        batch_size=32,
        repeats=1,
        limit=240,
    ),
}


def _device_peak() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure(width: int, lane_counts: Sequence[int], settings: Mapping) -> dict:
    """Steady-state time and compiled memory of stages of ``lane_counts`` lanes, one width."""
    workload = Workload(
        lambda: MLP(hidden=(width, width)),
        digits(limit=settings["limit"]),
        settings["epochs"],
        settings["batch_size"],
    )
    stage = EngineStage(workload)
    lrs = {n: list(np.geomspace(1e-4, 1e-2, n)) for n in lane_counts}
    compile_seconds = {}
    for n in lane_counts:
        compile_seconds[n] = c.timed(lambda n=n: stage.compile(n))[0]
        stage.run(lrs[n])  # warm-up
    # one run of baseline (a), the best-practice sequential code, as the unit of cost
    sequential = Sequential(workload)
    sequential.run([1e-3])
    samples = c.interleaved(
        {
            **{n: (lambda n=n: stage.run(lrs[n])) for n in lane_counts},
            "one_run": lambda: sequential.run([1e-3]),
        },
        settings["repeats"],
    )
    params = width * 64 + width + width * width + width + width * 10 + 10
    return {
        "width": width,
        "params_per_lane": params,
        "one_run_seconds": c.summary(samples["one_run"]),
        "lanes": {
            str(n): {
                "seconds": c.summary(samples[n]),
                "compile_seconds": compile_seconds[n],
                "memory": stage.memory_bytes(n),
            }
            for n in lane_counts
        },
        "device_peak_bytes": _device_peak(),
    }


def run(mode: str = "full", **overrides) -> dict:
    """Lanes grow on the base model; then the model grows at 1 and 5 lanes."""
    settings = {**SETTINGS[mode], **overrides}
    load_start, started = c.load_average(), time.perf_counter()
    by_lanes = measure(settings["base_width"], settings["lanes"], settings)
    by_width = [
        by_lanes
        if w == settings["base_width"] and set(settings["width_lanes"]) <= set(settings["lanes"])
        else measure(w, settings["width_lanes"], settings)
        for w in settings["widths"]
    ]

    one = by_lanes["lanes"][str(settings["lanes"][0])]
    t1, m1 = one["seconds"]["median"], one["memory"]["total"]
    run_a = by_lanes["one_run_seconds"]["median"]
    lane_rows = []
    for n in settings["lanes"]:
        entry = by_lanes["lanes"][str(n)]
        t, mem = entry["seconds"]["median"], entry["memory"]
        lane_rows.append(
            [
                n,
                t,
                c.ratio(t, t1),
                c.ratio(n * t1, t),
                c.ratio(n * run_a, t),
                mem["total"] / 2**20,
                c.ratio(mem["total"], m1),
                (mem["total"] - mem["data"]) / n / 2**20,
            ]
        )
    low, high = (str(n) for n in settings["width_lanes"])
    k = int(high)
    width_rows = []
    for entry in by_width:
        a, b = entry["lanes"][low], entry["lanes"][high]
        ta, tb = a["seconds"]["median"], b["seconds"]["median"]
        width_rows.append(
            [
                f"64-{entry['width']}-{entry['width']}-10",
                entry["params_per_lane"],
                ta,
                tb,
                c.ratio(tb, ta),
                c.ratio(k * ta, tb),
                c.ratio(k * entry["one_run_seconds"]["median"], tb),
                a["memory"]["total"] / 2**20,
                c.ratio(b["memory"]["total"], a["memory"]["total"]),
            ]
        )
    memory_ratio = max(r[-1] for r in width_rows)
    base_efficiency = next((r[3] for r in lane_rows if r[0] == k), None)
    targets = {
        f"{k} lanes need <= 5.5x the memory of 1 (worst model)": memory_ratio <= 5.5,
    }
    efficiency = {r[0]: r[5] for r in width_rows}
    against_a = {r[0]: r[6] for r in width_rows}
    low_gain = [name for name, e in efficiency.items() if e < 1.25]
    wins = [name for name, v in against_a.items() if v > 1.0]
    lanes_a = {r[0]: r[4] for r in lane_rows}
    notes = [
        f"Efficiency = L x t(1 lane) / t(L lanes): how many one-lane stages a stage of L lanes "
        "is worth; 1 means vmap no longer saves anything. 'vs (a) runs' = L x t(one run of "
        "(a)) / t(L lanes): the same against the best-practice sequential code, which has "
        "no per-stage overhead (above 1: the stage wins). Base model 64-"
        f"{settings['base_width']}-{settings['base_width']}-10, {settings['epochs']} epochs of "
        "digits per stage.",
        "Memory: the compiled epoch program's arguments + outputs + temporaries - aliased "
        "(XLA's own account); the digits data is counted once, shared by every lane.",
        f"Against one-lane stages, {k} lanes are worth "
        f"{min(efficiency.values()):.2f} to {max(efficiency.values()):.2f} one-lane stages "
        f"across model sizes (below 1.25 for: {', '.join(low_gain) or 'none'}). What lanes "
        "share is the per-call cost (dispatch, the per-epoch fetch of metrics, small "
        "operations); the arithmetic is not shared: once one lane's arithmetic fills the "
        "cores, L lanes cost about L times one.",
        f"Against runs of (a), a stage of {k} lanes wins for: {', '.join(wins) or 'no model size'}"
        f" (from {min(against_a.values()):.2f} to {max(against_a.values()):.2f}); on the base "
        f"model, from {lanes_a[settings['lanes'][0]]:.2f} (1 lane) to "
        f"{lanes_a[settings['lanes'][-1]]:.2f} ({settings['lanes'][-1]} lanes): more lanes "
        "spread the stage's fixed cost over more runs.",
    ]
    if base_efficiency is not None:
        notes.append(f"Base model, {k} lanes: efficiency {base_efficiency:.2f}.")
    tables = [
        c.table(
            f"Lanes grow (MLP 64-{settings['base_width']}-{settings['base_width']}-10)",
            [
                "lanes",
                "stage (s)",
                "time / 1 lane",
                "efficiency",
                "vs (a) runs",
                "memory (MiB)",
                "memory / 1 lane",
                "MiB per lane (without data)",
            ],
            lane_rows,
        ),
        c.table(
            f"Model grows ({low} against {high} lanes)",
            [
                "model",
                "params per lane",
                f"{low} lane (s)",
                f"{high} lanes (s)",
                "time ratio",
                "efficiency",
                "vs (a) runs",
                f"memory, {low} lane (MiB)",
                "memory ratio",
            ],
            width_rows,
        ),
        c.table(
            "Targets", ["target", "met"], [[t, "yes" if ok else "no"] for t, ok in targets.items()]
        ),
    ]
    return c.benchmark_record(
        NAME,
        TITLE,
        tables,
        notes,
        {"settings": settings, "by_lanes": by_lanes, "by_width": by_width, "targets": targets},
        load_start,
        time.perf_counter() - started,
    )
