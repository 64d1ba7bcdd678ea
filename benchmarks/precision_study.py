"""Benchmark 11: what a requested precision needs, stage by stage.

Sweeps of the digits MLP that ask for a precision none of them reaches (so none stops early)
are run for a fixed number of stages, with several seed counts; then the interval a
``precision=0.5`` sweep would report is recomputed after every stage from each sweep's
history, with the fit's narrowest closing window alone and with every closing window
(``_confidence.sweep_confidence(..., every_window=)``). Where it is first within 0.5 is where
such a sweep stops: how often that happens, how often the interval there holds the
noise-averaged optimum (the coverage benchmark's truth, and its dense reference), how wide it
is, and how coverage moves with the stages when nothing stops the sweep.

A sweep's plan depends on its own interval, so every row of one seed count shares the same
sweeps (planned with every window, as ``run`` does): the rows compare the intervals, not the
searches.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

import jaxsweep
from jaxsweep import _confidence, _selector

from . import _common as c
from . import coverage

NAME = "precision_study"
TITLE = "11. What a requested precision needs: seeds, fit windows and coverage by stage"
WANTED = 0.5  # the precision whose stop is studied
NEVER = 1e-9  # a precision no sweep reaches: every sweep runs all its stages

FULL = dict(
    problem="mlp",
    seed_counts=(3, 6, 10),
    sweeps=20,
    stages=12,
    report_stages=(6, 9, 12),
    truth_seeds=256,
    dense_seeds=256,
    truth_dir=coverage.RESULTS,
    compile_cache=os.path.join(tempfile.gettempdir(), "jaxsweep-precision-study-cache"),
)
SETTINGS = {
    "full": FULL,
    "dry": dict(
        FULL,
        problem="tiny",
        seed_counts=(2,),
        sweeps=1,
        stages=3,
        report_stages=(2, 3),
        truth_seeds=2,
        dense_seeds=None,
        truth_dir=os.path.join(tempfile.gettempdir(), "jaxsweep-coverage-dry"),
    ),
}
RULES = {"narrowest window": False, "every window": True}  # label: every_window


def history(problem: coverage.Problem, seed: int, seeds: int, stages: int, cache) -> dict:
    """One sweep that never stops early: its values and per-seed scores, in the order
    evaluated (lower is better), and its stage size."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = jaxsweep.run(
            problem.model_fn,
            coverage.sweep_data(problem),
            epochs=problem.epochs,
            batch_size=problem.batch_size,
            seed=seed,
            seeds=seeds,
            stages=stages,
            precision=NEVER,
            progress=False,
            compilation_cache=cache,
        )
    return {
        "seed": seed,
        "values": [e.value for e in result.evaluations],
        "seed_scores": [list(e.objective_seed_scores()) for e in result.evaluations],
        "points_per_stage": int(result.config["points_per_stage"]),
        "seconds": time.perf_counter() - started,
    }


def intervals_by_stage(sweep: dict, every_window: bool) -> list[tuple[float, float, float]]:
    """After each stage: the interval a precision sweep reports, and its precision."""
    values, rows = sweep["values"], [tuple(r) for r in sweep["seed_scores"]]
    stages = _selector.stage_indices(len(values), sweep["points_per_stage"])
    out = []
    for stage in range(max(stages) + 1):
        keep = [i for i, s in enumerate(stages) if s <= stage]
        kept_rows = [rows[i] for i in keep]
        best = _confidence.sweep_confidence(
            [values[i] for i in keep],
            [float(np.mean(r)) for r in kept_rows],
            kept_rows,
            [stages[i] for i in keep],
            stable=True,
            every_window=every_window,
        ).best
        out.append((best.low, best.high, _confidence.relative_half_width(best)))
    return out


def _covers(interval, optimum: float) -> bool:
    return interval[0] <= optimum <= interval[1]


def summarise(per_sweep: Sequence[list], references: dict[str, float], report_stages) -> dict:
    """Stops (the first stage within WANTED), coverage there and after fixed stages."""
    stops = [next((i for i, x in enumerate(r) if x[2] <= WANTED), None) for r in per_sweep]
    reached = [(r[i], i + 1) for r, i in zip(per_sweep, stops, strict=True) if i is not None]
    return {
        "sweeps": len(per_sweep),
        "reached": len(reached),
        "covered_at_stop": {
            name: sum(_covers(x, opt) for x, _ in reached) for name, opt in references.items()
        },
        "median_width_at_stop": float(np.median([x[1] / x[0] for x, _ in reached]))
        if reached
        else math.nan,
        "median_stop_stage": float(np.median([k for _, k in reached])) if reached else math.nan,
        "covered_after": {
            str(k): {
                name: sum(_covers(r[k - 1], opt) for r in per_sweep if len(r) >= k)
                for name, opt in references.items()
            }
            for k in report_stages
        },
    }


def run(mode: str = "full", **overrides) -> dict:
    settings = {**SETTINGS[mode], **overrides}
    load_start, started = c.load_average(), time.perf_counter()
    name = settings["problem"]
    problem = coverage.PROBLEMS[name]
    truth = coverage.cached_truth(
        name, settings["truth_seeds"], 0.03, settings["truth_dir"], chunk=256
    )
    references = {"truth": truth["optimum"]}
    if settings["dense_seeds"]:
        dense = coverage.dense_truth(name, settings["dense_seeds"], settings["truth_dir"])
        references["dense"] = dense["optimum"]
    data: dict[str, Any] = {"settings": dict(settings), "references": references}
    rows = []
    for seeds in settings["seed_counts"]:
        sweeps = [
            history(problem, seed, seeds, settings["stages"], settings["compile_cache"])
            for seed in range(settings["sweeps"])
        ]
        data[f"seeds={seeds}"] = {"sweeps": sweeps}
        for label, every in RULES.items():
            per_sweep = [intervals_by_stage(s, every) for s in sweeps]
            summary = summarise(per_sweep, references, settings["report_stages"])
            data[f"seeds={seeds}"][label] = summary
            n = summary["sweeps"]
            rows.append(
                [
                    seeds,
                    label,
                    f"{summary['reached']}/{n}",
                    summary["median_stop_stage"],
                    " / ".join(
                        f"{v}/{summary['reached']}" for v in summary["covered_at_stop"].values()
                    ),
                    summary["median_width_at_stop"],
                    *(
                        f"{summary['covered_after'][str(k)]['truth']}/{n}"
                        for k in settings["report_stages"]
                    ),
                    float(np.median([s["seconds"] for s in sweeps])),
                ]
            )
    names = " / ".join(references)
    notes = [
        f"{problem.label}: {settings['sweeps']} sweeps per seed count, {settings['stages']} stages "
        f"each (precision={NEVER:g}, so none stops early; compiled programs cached after the "
        "first sweep). The intervals are recomputed offline from each sweep's history as "
        f"precision={WANTED} would report them (the union over the last "
        f"{_confidence.STABLE_STAGES} stages), with the narrowest closing fit window alone or "
        "with every closing window; the sweeps themselves planned with every window.",
        "References: "
        + ", ".join(f"{k} {v:.4g}" for k, v in references.items())
        + " (the coverage benchmark's noise-averaged optimum, and its dense reference).",
    ]
    table = c.table(
        f"A stop at precision={WANTED}, and coverage after fixed stages",
        [
            "seeds",
            "interval",
            "reached",
            "median stop stage",
            f"covered at the stop ({names})",
            "median width at the stop",
            *(f"covered after stage {k} (truth)" for k in settings["report_stages"]),
            "median seconds per sweep",
        ],
        rows,
    )
    return c.benchmark_record(
        NAME, TITLE, [table], notes, data, load_start, time.perf_counter() - started
    )
