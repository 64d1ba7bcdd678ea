"""Benchmark 5: what a sweep costs besides training, how lanes run, and what diagnostics cost.

For each model (the small MLP, the wide MLP, the small CNN of benchmark 1):

* **Whole sweep**: ``jaxsweep.run`` (5 stages of 5 rates, no early stop, compilation cache
  off) against its own 25 rates trained by (a) best-practice sequential code, built fresh
  (compile included), interleaved; and in steady state (compiled programs reused: the sweep's
  stages against 25 calls of (a)). (b), the usual loop, compiles a step per rate: it is timed
  on a few of the rates and scaled to 25 (its cost is linear in the rates).
* **Fixed costs**: programs compiled per sweep, seconds spent compiling them, and the
  first-step latency: wall time from calling ``run`` to the first call of the epoch program.
* **Warm cache**: the same sweep twice in fresh processes sharing a new cache folder: the
  second loads its programs instead of compiling them.
* **Lane strategies**: one stage of 5 rates in steady state with every strategy, against 5
  runs of (a); what ``lanes="auto"`` picks. Every strategy trains the same numbers.
* **Diagnostics**: the sweep's stage against the same stage whose step computes no gradient
  norms and no update ratios.
* **The default seeds**: one stage of 5 rates with ``run``'s default 3 seeds each (15 lanes)
  against (a) trained on the same 15 (rate, seed) pairs.

The engine's stages use the sweep's devices: every device of the process (``run_all`` splits
the CPU into one device per core first, as the ``jaxsweep`` command does); the sequential
baselines run on the first, as plain JAX code does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping

import jax
import numpy as np

import jaxsweep
from jaxsweep import _stage

from . import _common as c
from ._workloads import (
    DRY_MODELS,
    MODELS,
    EngineStage,
    Sequential,
    Workload,
    digits,
    digits_xy,
    train_usual,
)

NAME = "engine_costs"
TITLE = "5. Engine costs: whole sweeps per model, fixed costs, compile cache, lanes, diagnostics"

FULL = dict(
    epochs=3,
    batch_size=128,
    stages=5,
    points=5,
    lr_range=(1e-4, 1e-1),
    repeats=5,
    sweep_repeats=2,
    usual_rates=5,
    strategies=("vmap", "map", "chunks:2", "separate"),
    seeds=3,  # the default sweep's seeds per rate, for its one-stage comparison
    rerun=True,
    limit=None,
)
SETTINGS = {
    "full": FULL,
    "quick": dict(FULL, repeats=3, sweep_repeats=1, usual_rates=2),
    # sized to finish inside gpu.sh's limit: compiling dominates there
    "gpu": dict(
        FULL, repeats=3, sweep_repeats=1, usual_rates=1, strategies=("vmap", "map", "separate")
    ),
    # seconds on a CPU, for the tests and gpu.sh --dry: every code path, no meaningful time
    "dry": dict(
        FULL,
        epochs=1,
        batch_size=32,
        stages=2,
        points=2,
        repeats=1,
        sweep_repeats=1,
        usual_rates=1,
        strategies=("vmap", "separate"),
        seeds=2,
        limit=240,
    ),
}


# ----------------------------------------------------------------------------- the sweep


@contextlib.contextmanager
def _first_epoch_clock():
    """Records when the sweep starts training (its first training call is dispatched then)."""
    seen: list[float] = []
    original = _stage.StagePrograms.train

    def watched(self, *args, **kwargs):
        if not seen:
            seen.append(time.perf_counter())
        return original(self, *args, **kwargs)

    _stage.StagePrograms.train = watched
    try:
        yield seen
    finally:
        _stage.StagePrograms.train = original


def sweep(model_fn: Callable, settings: Mapping, cache=False) -> tuple[jaxsweep.SweepResult, dict]:
    """``jaxsweep.run`` as a user calls it, and its fixed costs."""
    x, y = digits_xy(settings["limit"])
    with warnings.catch_warnings(), _first_epoch_clock() as first_epoch:
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        started = time.perf_counter()
        result = jaxsweep.run(
            model_fn,
            (x, y),
            lr_range=settings["lr_range"],
            stages=settings["stages"],
            points_per_stage=settings["points"],
            epochs=settings["epochs"],
            batch_size=settings["batch_size"],
            seeds=1,  # (a) trains each of the sweep's rates once: the same work
            min_improvement=0.0,
            progress=False,
            compilation_cache=cache,
        )
        seconds = time.perf_counter() - started
    programs = result.environment["compilation_cache"]
    costs = {
        "seconds": seconds,
        "first_step_seconds": first_epoch[0] - started,
        "programs": programs["programs"],
        "cache_hits": programs["cache_hits"],
        "compile_seconds": programs["seconds"],
        "lanes": result.environment["lanes"]["strategy"],
    }
    return result, costs


def _child(model: str, mode: str, cache: str) -> None:
    """One sweep in this fresh process (``--child``): prints its costs as JSON."""
    settings = SETTINGS[mode]
    models = DRY_MODELS if mode == "dry" else MODELS
    started = time.perf_counter()
    _, costs = sweep(models[model], settings, cache=cache)
    costs["process_seconds"] = time.perf_counter() - started
    print(json.dumps(costs))


def warm_cache(model: str, mode: str) -> dict:
    """The same sweep in two fresh processes sharing a new cache folder: cold, then warm."""
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for name in ("cold", "warm"):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.engine_costs", "--child", model, mode, folder],
                capture_output=True,
                text=True,
                timeout=600,
                # the same CPU devices as this process (``jaxsweep.use_cpu_cores``)
                env=dict(os.environ, PYTHONPATH=_root_path(), JAX_NUM_CPU_DEVICES=_cpu_devices()),
                cwd=_root(),
            )
            if done.returncode != 0:
                raise RuntimeError(f"warm-cache child failed:\n{done.stderr[-3000:]}")
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return runs


def _cpu_devices() -> str:
    return str(len(jax.local_devices(backend="cpu")))


def _devices() -> str:
    devices = jax.local_devices()
    return f"{len(devices)} {devices[0].platform.upper()} device(s)"


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _root_path() -> str:
    return os.pathsep.join(p for p in (_root(), os.environ.get("PYTHONPATH", "")) if p)


# ----------------------------------------------------------------------------- stages


def _compiled_stage(workload: Workload, lanes: str, rates, diagnostics=True) -> EngineStage:
    # the sweep's own devices: ``jaxsweep.run`` spreads lanes over every local one
    stage = EngineStage(workload, lanes=lanes, diagnostics=diagnostics, devices=jax.local_devices())
    stage.run(rates)  # compiles, and warms up
    return stage


# ----------------------------------------------------------------------------- one model


def measure_model(name: str, model_fn: Callable, settings: Mapping, mode: str) -> dict:
    split = digits(limit=settings["limit"])
    workload = Workload(model_fn, split, settings["epochs"], settings["batch_size"])
    record: dict = {}

    # the whole sweep, built fresh, against (a) on its own rates, built fresh
    kept: dict = {}

    def run_fresh():
        kept["result"], costs = sweep(model_fn, settings)
        kept.setdefault("costs", []).append(costs)
        return kept["result"]

    def sequential_fresh():
        rates = [e.lr for e in kept["result"].evaluations]
        kept["sequential"] = Sequential(workload)
        return kept["sequential"].run(rates)

    with_compile = c.interleaved(
        {"jaxsweep.run": run_fresh, "(a) sequential": sequential_fresh}, settings["sweep_repeats"]
    )
    result, sequential = kept["result"], kept["sequential"]
    rates = [e.lr for e in result.evaluations]
    stage_rates = [list(s.lrs) for s in result.stages]
    usual_rates = rates[: settings["usual_rates"]]
    usual_seconds = c.timed(lambda: train_usual(workload, usual_rates))[0]
    record["usual_seconds_all"] = usual_seconds * len(rates) / len(usual_rates)

    # steady state: the sweep's stages (its own strategy) against one call of (a) per rate
    auto = result.environment["lanes"]["strategy"]
    stage = _compiled_stage(workload, auto, stage_rates[0])
    sequential.run(rates)
    steady = c.interleaved(
        {
            "jaxsweep stages": lambda: [stage.run(r) for r in stage_rates],
            "(a) sequential": lambda: sequential.run(rates),
        },
        settings["repeats"],
    )

    # lane strategies: one stage of 5 rates, steady, against 5 runs of (a)
    first = stage_rates[0]
    measured = dict.fromkeys((*settings["strategies"], auto))  # auto's pick, always
    stages = {s: _compiled_stage(workload, s, first) for s in measured}
    losses = {s: st.run(first) for s, st in stages.items()}
    methods = {s: (lambda st=st: st.run(first)) for s, st in stages.items()}
    methods["(a) 5 runs"] = lambda: sequential.run(first)
    methods["(a) one run"] = lambda: sequential.run(first[:1])
    strategies = c.interleaved(methods, settings["repeats"])
    reference = losses.get("vmap", next(iter(losses.values())))
    agreement = {
        s: float(np.nanmax(np.abs(v - reference) / np.abs(reference))) for s, v in losses.items()
    }

    # the default sweep's stage: every rate with its seeds (15 lanes; a new lane count, so
    # compiled first), against (a) on the same (rate, seed) pairs
    seeds = settings["seeds"]
    engine_losses, sequential_losses = stage.run(first, seeds=seeds), sequential.run(first, seeds)
    seed_difference = float(np.max(np.abs(engine_losses - sequential_losses) / sequential_losses))
    with_seeds = c.interleaved(
        {
            "jaxsweep stage": lambda: stage.run(first, seeds=seeds),
            "(a)": lambda: sequential.run(first, seeds),
        },
        settings["repeats"],
    )

    # diagnostics: the same stage (the sweep's strategy) with and without them
    bare = _compiled_stage(workload, auto, first, diagnostics=False)
    diagnostics = c.interleaved(
        {"with": lambda: stage.run(first), "without": lambda: bare.run(first)},
        settings["repeats"] * 2,
    )

    record.update(
        {
            "strategy_auto": auto,
            "strategy_reason": result.environment["lanes"]["reason"],
            "evaluations": len(rates),
            "with_compile": {k: c.summary(v) for k, v in with_compile.items()},
            "steady": {k: c.summary(v) for k, v in steady.items()},
            "sweep_costs": kept["costs"],
            "strategies": {k: c.summary(v) for k, v in strategies.items()},
            "strategy_max_relative_difference_to_vmap": agreement,
            "diagnostics": {k: c.summary(v) for k, v in diagnostics.items()},
            "default_seeds": {k: c.summary(v) for k, v in with_seeds.items()},
            "default_seeds_max_relative_difference_to_a": seed_difference,
        }
    )
    if settings["rerun"]:
        record["warm_cache"] = warm_cache(name, mode)
    return record


# ----------------------------------------------------------------------------- tables


def _median(summary: Mapping) -> float:
    return summary["median"]


def run(
    mode: str = "full",
    models: Mapping[str, Callable] | None = None,
    on_partial: Callable[[dict], None] | None = None,
    **overrides,
) -> dict:
    """Runs the benchmark; ``overrides`` replace entries of the mode's settings.

    ``on_partial`` receives the record after each model (a run cut short keeps those).
    """
    settings = {**SETTINGS[mode], **overrides}
    if models is None:
        models = DRY_MODELS if mode == "dry" else MODELS
    load_start, started = c.load_average(), time.perf_counter()
    results: dict = {}
    for name, fn in models.items():
        results[name] = measure_model(name, fn, settings, mode)
        if on_partial is not None:
            on_partial(_record(results, settings, load_start, started))
    return _record(results, settings, load_start, started)


def _record(results: Mapping, settings: Mapping, load_start, started: float) -> dict:
    """The benchmark record (tables, notes, every sample) of the models measured so far."""

    sweep_rows, fixed_rows, cache_rows, lane_rows, diag_rows, seed_rows = [], [], [], [], [], []
    for name, r in results.items():
        w = {k: _median(v) for k, v in r["with_compile"].items()}
        s = {k: _median(v) for k, v in r["steady"].items()}
        sweep_rows.append(
            [
                name,
                r["strategy_auto"],
                w["jaxsweep.run"],
                w["(a) sequential"],
                r["usual_seconds_all"],
                c.ratio(w["(a) sequential"], w["jaxsweep.run"]),
                c.ratio(r["usual_seconds_all"], w["jaxsweep.run"]),
                s["jaxsweep stages"],
                s["(a) sequential"],
                c.ratio(s["(a) sequential"], s["jaxsweep stages"]),
            ]
        )
        costs = r["sweep_costs"]
        fixed_rows.append(
            [
                name,
                int(np.median([x["programs"] for x in costs])),
                float(np.median([x["compile_seconds"] for x in costs])),
                float(np.median([x["first_step_seconds"] for x in costs])),
                float(np.median([x["seconds"] for x in costs])),
            ]
        )
        if "warm_cache" in r:
            cold, warm = r["warm_cache"]["cold"], r["warm_cache"]["warm"]
            cache_rows.append(
                [
                    name,
                    cold["compile_seconds"],
                    warm["compile_seconds"],
                    c.ratio(warm["compile_seconds"], cold["compile_seconds"]),
                    f"{warm['cache_hits']}/{warm['programs']}",
                    cold["first_step_seconds"],
                    warm["first_step_seconds"],
                    cold["seconds"],
                    warm["seconds"],
                ]
            )
        st = {k: _median(v) for k, v in r["strategies"].items()}
        best = min((k for k in st if not k.startswith("(a)")), key=lambda k: st[k])
        lane_rows.append(
            [
                name,
                *(c.ratio(st["(a) 5 runs"], st[k]) for k in settings["strategies"]),
                r["strategy_auto"],
                best,
                c.ratio(st[r["strategy_auto"]], st["(a) one run"]),
                max(r["strategy_max_relative_difference_to_vmap"].values()),
            ]
        )
        d = {k: _median(v) for k, v in r["diagnostics"].items()}
        diag_rows.append([name, d["with"], d["without"], 100 * (d["with"] / d["without"] - 1)])
        if "default_seeds" in r:
            t = {k: _median(v) for k, v in r["default_seeds"].items()}
            seed_rows.append(
                [
                    name,
                    r["strategy_auto"],
                    t["jaxsweep stage"],
                    t["(a)"],
                    c.ratio(t["(a)"], t["jaxsweep stage"]),
                ]
            )

    epochs, points, stages = settings["epochs"], settings["points"], settings["stages"]
    tables = [
        c.table(
            f"Whole sweep ({stages} stages x {points} rates, {epochs} epochs, digits), seconds",
            [
                "model",
                "lanes (auto)",
                "jaxsweep.run, with compile",
                "(a), with compile",
                "(b) (scaled to every rate)",
                "(a) / run",
                "(b) / run",
                "jaxsweep stages, steady",
                "(a), steady",
                "(a) / stages, steady",
            ],
            sweep_rows,
        ),
        c.table(
            "Fixed costs of one jaxsweep.run (compilation cache off)",
            [
                "model",
                "programs compiled",
                "compile seconds (backend)",
                "run() to first training step (s)",
                "whole sweep (s)",
            ],
            fixed_rows,
        ),
        c.table(
            "A second identical sweep in a fresh process, with the compilation cache",
            [
                "model",
                "compile s, first process",
                "compile s, second",
                "second / first",
                "programs loaded",
                "first step (s), first",
                "first step (s), second",
                "sweep (s), first",
                "sweep (s), second",
            ],
            cache_rows,
        ),
        c.table(
            f"Lane strategies: one stage of {points} rates, steady state, (a) 5 runs / stage",
            [
                "model",
                *settings["strategies"],
                "auto picks",
                "fastest",
                "stage (auto) / one run of (a)",
                "max relative loss difference to vmap",
            ],
            lane_rows,
        ),
        c.table(
            "Diagnostics (gradient norms per module, update ratios): one stage, steady, seconds",
            ["model", "with", "without", "overhead %"],
            diag_rows,
        ),
        c.table(
            f"The default seeds: one stage of {points} rates x {settings['seeds']} seeds, "
            "steady, seconds",
            ["model", "lanes (auto)", "jaxsweep stage", "(a) on the same lanes", "(a) / stage"],
            seed_rows,
        ),
    ]
    notes = [
        "jaxsweep.run is timed as a user calls it, with its compilation cache off (every "
        "timed sweep compiles, as a first one does); the warm-cache table runs the same sweep in "
        "two new processes sharing a new cache folder.",
        "(b) compiles a new step for every rate; it is timed on "
        f"{settings['usual_rates']} of the sweep's rates and scaled linearly to all of them.",
        "First training step: wall time from calling run() to the first call of the epoch "
        "program (checks, tracing, initialisation, lane start, compiling).",
        "Lane strategies train the same numbers: the largest relative difference of a final "
        "validation loss to vmap's is in the last column (float32 summation order).",
        "Diagnostics overhead: the same stage with run(diagnostics=False): no per-step "
        "gradient norms, no per-segment update ratios.",
        "The default-seeds stage and (a) train the same (rate, seed) lanes; their final "
        "validation losses agree to float rounding at small rates (about 1e-6 relative) and "
        "drift apart where a large rate makes training chaotic (up to 20% at 0.1 for the "
        "wide MLP): record['default_seeds_max_relative_difference_to_a'].",
        f"Devices: jaxsweep spreads its lanes over the process's {_devices()} (on a CPU, "
        "one per core: jaxsweep.use_cpu_cores(), as the jaxsweep command does); (a) and (b) "
        "run on the first device, as a plain JAX program does.",
    ]
    return c.benchmark_record(
        NAME,
        TITLE,
        tables,
        notes,
        {"settings": settings, "models": results},
        load_start,
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
    else:
        sys.exit("usage: python -m benchmarks.engine_costs --child MODEL MODE CACHE_FOLDER")
