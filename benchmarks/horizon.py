"""Benchmark: the horizon check on real noisy data, against an optimum computed without the engine.

People sweep short and train long. This benchmark sweeps the digits MLP (Adam, the defaults)
for 3 epochs and asks for the rate of a 12-epoch run (``target_epochs=12``), then compares
three answers for that run against the noise-averaged optimum at 12 epochs, computed without
jaxsweep (plain flax/optax loops over a log grid of rates and many seeds, the minimum of a
smooth fit to the seed-mean curve: :func:`benchmarks.coverage.truth` with 12 epochs):

* the plain 3-epoch sweep's refined value, used as it is for the 12-epoch run;
* the horizon check's value at 12 epochs, and whether its interval holds the truth;
* a sweep run directly at 12 epochs (what the answer costs without a horizon check).

Each row is the median over sweep seeds; costs are wall time and lane-steps (lanes times the
steps each trained), the horizon stages included.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from typing import Any

import numpy as np

import jaxsweep
from jaxsweep.models import MLP

from . import _common as c
from . import coverage

NAME = "horizon"
TITLE = "Horizon check: the rate for a 12-epoch run from a 3-epoch sweep"
RESULTS = coverage.RESULTS

SETTINGS = {
    "full": dict(
        short=3,
        target=12,
        sweeps=5,
        truth_seeds=64,
        grid=(2e-3, 6e-2, 25),
        band=0.03,
        hidden=(128, 128),
        truth_dir=RESULTS,
        chunk=512,
    ),
    # seconds, not minutes: every path runs, the statistics mean nothing
    "dry": dict(
        short=1,
        target=4,
        sweeps=1,
        truth_seeds=2,
        grid=(1e-3, 1e-1, 5),
        band=0.03,
        hidden=(8,),
        truth_dir=os.path.join(tempfile.gettempdir(), "jaxsweep-horizon-quick"),
        chunk=16,
    ),
}
SETTINGS["quick"] = SETTINGS["dry"]
SETTINGS["gpu"] = dict(SETTINGS["full"], sweeps=20, truth_seeds=256, chunk=4096)


def _problem(settings, epochs: int) -> coverage.Problem:
    hidden = tuple(settings["hidden"])
    return coverage.Problem(
        f"digits MLP 64-{'-'.join(map(str, hidden))}-10, {epochs} epochs",
        lambda: MLP(hidden=hidden),
        (*settings["grid"][:2], settings["grid"][2]),
        epochs,
    )


def _truth(settings) -> dict[str, Any]:
    """The noise-averaged optimum at the target length, cached beside the results."""
    problem = _problem(settings, settings["target"])
    path = os.path.join(settings["truth_dir"], f"horizon-truth-mlp-{settings['target']}.json")
    wanted = {"seeds": settings["truth_seeds"], "epochs": settings["target"]}
    wanted["rates"] = np.geomspace(*settings["grid"][:2], settings["grid"][2]).tolist()
    if os.path.exists(path):
        with open(path) as handle:
            stored = json.load(handle)
        if all(np.allclose(stored.get(k), v) for k, v in wanted.items()):
            return stored
    record = coverage.truth(
        problem, settings["truth_seeds"], settings["band"], chunk=settings["chunk"]
    )
    os.makedirs(settings["truth_dir"], exist_ok=True)
    with open(path, "w") as handle:
        json.dump(c._jsonable(record), handle)
        handle.write("\n")
    return record


def _lane_steps(result) -> int:
    evaluations = (*result.evaluations, *result.horizon_evaluations)
    return sum(len(e.seed_scores) * e.steps[-1] for e in evaluations)


def _sweep(settings, seed: int, epochs: int, **options):
    problem = _problem(settings, epochs)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        result = jaxsweep.run(
            problem.model_fn,
            coverage.sweep_data(problem),
            epochs=epochs,
            seed=seed,
            progress=False,
            compilation_cache=False,
            **options,
        )
    return result, time.perf_counter() - started


def _ratio_error(value: float, truth: float) -> float:
    return abs(value / truth - 1.0) if value > 0 and math.isfinite(value) else math.inf


def run(mode: str = "full", **overrides) -> dict:
    settings = {**SETTINGS[mode], **overrides}
    load_start, started = c.load_average(), time.perf_counter()
    known = _truth(settings)
    optimum = known["optimum"]
    runs = []
    for seed in range(settings["sweeps"]):
        plain, plain_seconds = _sweep(settings, seed, settings["short"])
        checked, checked_seconds = _sweep(
            settings, seed, settings["short"], target_epochs=settings["target"]
        )
        direct, direct_seconds = _sweep(settings, seed, settings["target"])
        horizon = checked.horizon
        runs.append(
            {
                "seed": seed,
                "plain": plain.refined_value,
                "plain_seconds": plain_seconds,
                "plain_lane_steps": _lane_steps(plain),
                "horizon": horizon.value,
                "horizon_interval": list(horizon.interval),
                "exponent": horizon.exponent,
                "ranking_held": horizon.ranking_held,
                "horizon_seconds": checked_seconds,
                "horizon_lane_steps": _lane_steps(checked),
                "horizons": [[o.steps, o.value, *o.interval] for o in horizon.horizons],
                "direct": direct.refined_value,
                "direct_interval": list(direct.value_interval),
                "direct_seconds": direct_seconds,
                "direct_lane_steps": _lane_steps(direct),
            }
        )
    median = lambda key: float(np.median([r[key] for r in runs]))  # noqa: E731
    error = lambda key: float(np.median([_ratio_error(r[key], optimum) for r in runs]))  # noqa: E731
    held = sum(r["horizon_interval"][0] <= optimum <= r["horizon_interval"][1] for r in runs)
    direct_held = sum(r["direct_interval"][0] <= optimum <= r["direct_interval"][1] for r in runs)
    sweeps = len(runs)
    rows = [
        [
            f"{settings['short']}-epoch sweep, its answer used as is",
            median("plain"),
            f"{100 * error('plain'):.0f}%",
            "-",
            median("plain_seconds"),
            1.0,
        ],
        [
            f"{settings['short']}-epoch sweep + horizon check (target_epochs={settings['target']})",
            median("horizon"),
            f"{100 * error('horizon'):.0f}%",
            f"{held}/{sweeps}",
            median("horizon_seconds"),
            median("horizon_lane_steps") / median("plain_lane_steps"),
        ],
        [
            f"{settings['target']}-epoch sweep (direct)",
            median("direct"),
            f"{100 * error('direct'):.0f}%",
            f"{direct_held}/{sweeps}",
            median("direct_seconds"),
            median("direct_lane_steps") / median("plain_lane_steps"),
        ],
    ]
    notes = [
        f"Truth: the noise-averaged optimum at {settings['target']} epochs, {optimum:.4g} "
        f"(bootstrap over its {known['seeds']} seeds: {known['optimum_bootstrap_95'][0]:.4g} to "
        f"{known['optimum_bootstrap_95'][1]:.4g}), from {len(known['rates'])} log-spaced rates "
        f"from {known['rates'][0]:.3g} to {known['rates'][-1]:.3g}, trained without jaxsweep "
        f"(plain flax/optax loops, {known['seconds']:.0f} s).",
        f"Each row: the median over {sweeps} sweep seeds of jaxsweep.run with its defaults on the "
        "fixed digits split (0.2 held out, split seed 0); 'error' is |value / truth - 1|; "
        "'holds truth' counts intervals that contain it; cost is wall time (compilation "
        f"included) and lane-steps relative to the plain {settings['short']}-epoch sweep.",
        f"Median exponent of the fitted law: {median('exponent'):.2f}; the sweep's best stayed "
        f"inside every longer interval in {sum(r['ranking_held'] for r in runs)}/{sweeps} sweeps.",
    ]
    tables = [
        c.table(
            f"The rate for a {settings['target']}-epoch run",
            [
                "answer",
                "median value",
                "median error",
                "holds truth",
                "median seconds",
                "lane-steps (x plain)",
            ],
            rows,
        )
    ]
    data = {
        "settings": {k: v for k, v in settings.items() if k != "truth_dir"},
        "runs": runs,
        "truth": {k: v for k, v in known.items() if k != "losses"},
    }
    return c.benchmark_record(
        NAME, TITLE, tables, notes, data, load_start, time.perf_counter() - started
    )
