"""Benchmark 1: one stage of 5 rates, vmapped, against the same 5 rates trained one by one.

For each model, the same 5 rates (stage 0 of the default range) are trained by:

* the jaxsweep stage: the engine's vmapped epoch program (with its in-graph diagnostics);
* vmap alone: baseline (a)'s own function under ``jax.vmap`` (no diagnostics);
* (a) best-practice sequential: one jit, the rate an argument, ``lax.scan`` epochs, 5 calls;
* (b) the usual loop: a new ``optax.adam(lr)`` and jitted step per rate, a Python step loop;
* one run: a single call of (a), the unit in which a stage's cost is expressed.

Steady state reuses compiled programs (what every later stage of a sweep pays); "including
compile" builds everything fresh each time (what the first stage pays).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import jax
import numpy as np

from jaxsweep._selector import initial_points

from . import _common as c
from ._workloads import (
    DRY_MODELS,
    MODELS,
    EngineStage,
    Sequential,
    VmappedPlain,
    Workload,
    digits,
    train_usual,
)

NAME = "stage_throughput"
TITLE = "1. Stage throughput: 5 rates vmapped against 5 runs one after another"

FULL = dict(points=5, epochs=3, batch_size=128, repeats=5, compile_repeats=2, limit=None)
SETTINGS = {
    "full": FULL,
    "quick": dict(FULL, epochs=1, repeats=3, compile_repeats=1),
    "gpu": FULL,
    "dry": dict(FULL, points=2, epochs=1, batch_size=32, limit=240, repeats=1, compile_repeats=1),
}


def parameter_count(model_fn: Callable, x_example) -> int:
    # trainable parameters only: batch statistics are state, not parameters
    shapes = jax.eval_shape(lambda k: model_fn().init(k, x_example)["params"], jax.random.key(0))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes)))


def measure_model(model_fn: Callable, settings: Mapping) -> dict:
    """Every method on one model: timings (steady and including compile) and their losses."""
    split = digits(limit=settings["limit"])
    workload = Workload(model_fn, split, settings["epochs"], settings["batch_size"])
    lrs = list(initial_points((1e-5, 1e-2), settings["points"]))
    one = lrs[len(lrs) // 2 : len(lrs) // 2 + 1]

    # Including compile: every method built fresh, interleaved; the last ones built are kept
    # (compiled) for the steady-state round, their losses for the same-work check.
    built, losses = {}, {}

    def fresh(name: str, make: Callable, rates: list[float]) -> Callable:
        def build_and_run():
            built[name] = make(workload)
            losses[name] = built[name].run(rates)
            return losses[name]

        return build_and_run

    def usual():
        losses["usual"] = train_usual(workload, lrs)
        return losses["usual"]

    with_compile = c.interleaved(
        {
            "stage": fresh("stage", EngineStage, lrs),
            "vmap_plain": fresh("vmap_plain", VmappedPlain, lrs),
            "sequential": fresh("sequential", Sequential, lrs),
            "usual": usual,
            "one_run": fresh("one_run", Sequential, one),
        },
        settings["compile_repeats"],
    )

    # Steady state: the compiled programs (warmed up), timed interleaved.
    stage, plain, sequential = built["stage"], built["vmap_plain"], built["sequential"]
    losses["stage_1_lane"] = stage.run(one)
    del losses["one_run"]
    steady = c.interleaved(
        {
            "stage": lambda: stage.run(lrs),
            "stage_1_lane": lambda: stage.run(one),
            "vmap_plain": lambda: plain.run(lrs),
            "sequential": lambda: sequential.run(lrs),
            "one_run": lambda: sequential.run(one),
        },
        settings["repeats"],
    )
    reference = {k: losses["sequential"] for k in losses}
    reference["stage_1_lane"] = losses["sequential"][lrs.index(one[0]) : lrs.index(one[0]) + 1]
    return {
        "params": parameter_count(model_fn, split.x_train[:1]),
        "lrs": lrs,
        "steady": {k: c.summary(v) for k, v in steady.items()},
        "with_compile": {k: c.summary(v) for k, v in with_compile.items()},
        "final_val_loss": {k: v[:, -1].tolist() for k, v in losses.items()},
        "max_relative_loss_difference_to_sequential": {
            k: float(np.nanmax(np.abs(v - reference[k]) / np.abs(reference[k])))
            for k, v in losses.items()
        },
    }


def run(mode: str = "full", models: Mapping[str, Callable] | None = None, **overrides) -> dict:
    """Runs the benchmark; ``overrides`` replace entries of the mode's settings."""
    settings = {**SETTINGS[mode], **overrides}
    if models is None:
        models = DRY_MODELS if mode == "dry" else MODELS
    load_start, started = c.load_average(), time.perf_counter()
    results = {name: measure_model(fn, settings) for name, fn in models.items()}

    steady_rows, compile_rows = [], []
    for name, r in results.items():
        s = {k: v["median"] for k, v in r["steady"].items()}
        w = {k: v["median"] for k, v in r["with_compile"].items()}
        steady_rows.append(
            [
                name,
                r["params"],
                s["stage"],
                s["vmap_plain"],
                s["sequential"],
                w["usual"],
                s["one_run"],
                c.ratio(s["sequential"], s["stage"]),
                c.ratio(w["usual"], s["stage"]),
                c.ratio(s["stage"], s["one_run"]),
                c.ratio(s["stage"], s["stage_1_lane"]),
                c.ratio(s["vmap_plain"], s["one_run"]),
            ]
        )
        compile_rows.append(
            [
                name,
                w["stage"],
                w["vmap_plain"],
                w["sequential"],
                w["usual"],
                w["one_run"],
                c.ratio(w["sequential"], w["stage"]),
                c.ratio(w["usual"], w["stage"]),
                c.ratio(w["stage"], w["one_run"]),
            ]
        )
    epochs = settings["epochs"]
    worst_difference = max(
        max(r["max_relative_loss_difference_to_sequential"].values()) for r in results.values()
    )
    tables = [
        c.table(
            f"Steady state (compiled programs reused), seconds for {settings['points']} rates x "
            f"{epochs} epochs",
            [
                "model",
                "params",
                "jaxsweep stage (s)",
                "vmap alone (s)",
                "(a) sequential (s)",
                "(b) usual loop (s)",
                "one run (a) (s)",
                "(a) / stage",
                "(b) / stage",
                "stage / one run",
                "stage / 1-lane stage",
                "vmap alone / one run",
            ],
            steady_rows,
        ),
        c.table(
            "Including compile (everything built fresh), seconds",
            [
                "model",
                "jaxsweep stage (s)",
                "vmap alone (s)",
                "(a) sequential (s)",
                "(b) usual loop (s)",
                "one run (a) (s)",
                "(a) / stage",
                "(b) / stage",
                "stage / one run",
            ],
            compile_rows,
        ),
    ]
    notes = [
        "stage: jaxsweep's vmapped epoch program with its in-graph diagnostics (grad norms, "
        "update ratios per module); vmap alone: the function of (a) under jax.vmap, no "
        "diagnostics; both train all 5 rates in one call per epoch.",
        "(b) compiles a new step for every rate by construction, so it has no steady state: "
        "its column in the steady table is its whole cost, compiles included.",
        "All methods start from the same parameters and see the same batches: their final "
        "validation losses differ from (a)'s by a relative "
        f"{worst_difference:.1g} at most (float32 rounding), so they do the same work.",
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
