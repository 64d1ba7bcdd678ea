"""Benchmark 5: does the reported 95% interval contain the noise-averaged optimum?

The target of a learning-rate sweep is the rate that minimises the *expected* final validation
loss over the training randomness (initialisation and batch order), on a fixed split. This
benchmark computes that rate without jaxsweep: a dense log grid of rates, many seeds each,
trained by plain flax/optax code (one ``jax.vmap`` over (rate, seed) lanes, the same recipe
as the sweep: Adam, the sweep's epochs and batch size, a fresh permutation per epoch with the
remainder dropped, the final validation loss). The optimum is the minimum of a smooth fit to
the seed-mean curve in log rate, and its own uncertainty comes from a bootstrap over the
truth's seeds. The truth is cached in ``benchmarks/results/coverage-truth-<problem>.json``.

Then the default sweep (``jaxsweep.run`` with the split fixed, only ``seed`` changed) runs
for many sweep seeds, and the benchmark reports how often its interval contains the truth
(coverage), the median width of the interval (upper over lower bound), its cost (seconds and
lanes trained) and the loss of the chosen rate retrained on new seeds by the same plain code.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsweep
from jaxsweep._data import Split, prepare
from jaxsweep.models import MLP

from . import _common as c

NAME = "coverage"
TITLE = "5. Coverage: the 95% interval against an independently computed optimum"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ----------------------------------------------------------------------------- the problems


def _patches(x: jax.Array, stride: int) -> jax.Array:
    """Every 3x3 window of ``x`` (n, h, w, c) that a "SAME" convolution with this stride
    reads, zero padded as XLA pads it (the extra row or column below and right): (n, h', w', 9c).

    Slices rather than a convolution op: under ``jax.vmap`` with one kernel per lane, XLA's
    CPU convolutions run many times slower than the matrix products they amount to.
    """
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h, pad_w = max((out_h - 1) * stride + 3 - h, 0), max((out_w - 1) * stride + 3 - w, 0)
    padded = jnp.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    rows = [padded[:, i : i + (out_h - 1) * stride + 1 : stride] for i in range(3)]
    windows = [
        row[:, :, j : j + (out_w - 1) * stride + 1 : stride] for row in rows for j in range(3)
    ]
    return jnp.concatenate(windows, axis=-1)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions on the 8x8x1 digit images (8 channels, then 16 with stride 2),
    then a dense read-out. A convolution is a dense map shared by every image position,
    applied here to the extracted patches (the same function as ``nn.Conv``, "SAME" padding).
    """

    channels: Sequence[int] = (8, 16)
    outputs: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], 8, 8, 1))
        x = nn.relu(nn.Dense(self.channels[0])(_patches(x, 1)))
        x = nn.relu(nn.Dense(self.channels[1])(_patches(x, 2)))
        return nn.Dense(self.outputs)(x.reshape((x.shape[0], -1)))


class Problem(NamedTuple):
    """A model on the digits split, and the grid of rates its truth is computed on."""

    label: str
    model_fn: Callable[[], nn.Module]
    grid: tuple[float, float, int]  # lowest and highest rate, number of log-spaced rates
    epochs: int = 3  # jaxsweep.run's default
    batch_size: int = 128  # jaxsweep.run's default
    split_seed: int = 0  # the split jaxsweep.run(..., seed=0) makes of (x, y)


PROBLEMS = {
    # seconds, not minutes: the dry mode's check that every path runs (no statistics)
    "tiny": Problem("tiny MLP 64-8-10 (dry run)", lambda: MLP(hidden=(8,)), (1e-3, 1e-1, 5), 1),
    "mlp": Problem("digits MLP 64-128-128-10 (the quick start)", MLP, (2e-3, 1e-1, 33)),
    "cnn": Problem("digits CNN conv8, conv16/2, dense10", DigitsCNN, (4e-3, 1.5e-1, 33)),
}


@functools.lru_cache(maxsize=4)
def digits_split(split_seed: int) -> Split:
    """The digits split exactly as ``jaxsweep.run((x, y), seed=split_seed)`` makes it."""
    from jaxsweep.datasets import load_digits

    return prepare(load_digits(), 0.2, split_seed)


# ----------------------------------------------------------------------------- plain training


def make_train(problem: Problem, split: Split) -> Callable:
    """``train(lr, key) -> final validation loss``: one plain flax/optax run, no jaxsweep.

    The recipe a sweep lane follows: parameters from one key, a new permutation of the
    training set per epoch from another (the last partial batch dropped), Adam with the rate
    given as an array, the mean cross-entropy on the validation set after the last epoch.
    """
    module = problem.model_fn()
    x_train, y_train, x_val, y_val = (jnp.asarray(a) for a in split)
    n, batch = len(x_train), problem.batch_size
    steps = n // batch

    def loss_of(params, x, y):
        logits = module.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train(lr, key):
        init_key, order_key = jax.random.split(key)
        params = module.init(init_key, x_train[:1])["params"]
        tx = optax.adam(lr)

        def step(carry, indices):
            params, opt_state = carry
            grads = jax.grad(loss_of)(params, x_train[indices], y_train[indices])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def epoch(carry, e):
            order = jax.random.permutation(jax.random.fold_in(order_key, e), n)
            carry, _ = jax.lax.scan(step, carry, order[: steps * batch].reshape(steps, batch))
            return carry, None

        (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jnp.arange(problem.epochs))
        return loss_of(params, x_val, y_val)

    return train


def train_lanes(problem: Problem, lrs: np.ndarray, keys: jax.Array, chunk: int = 256) -> np.ndarray:
    """Final validation losses of one run per (rate, key) lane, ``chunk`` lanes per call.

    A diverged run scores +inf. The last chunk is padded with copies, so one program serves all.
    """
    train = jax.jit(jax.vmap(make_train(problem, digits_split(problem.split_seed))))
    lrs = np.asarray(lrs, np.float32)
    count = len(lrs)
    pad = -count % chunk
    lrs = np.concatenate([lrs, np.repeat(lrs[-1:], pad)])
    keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
    out = [
        np.asarray(train(jnp.asarray(lrs[i : i + chunk]), keys[i : i + chunk]))
        for i in range(0, len(lrs), chunk)
    ]
    losses = np.concatenate(out)[:count].astype(np.float64)
    return np.where(np.isfinite(losses), losses, np.inf)


def seed_keys(base: int, seeds: int) -> jax.Array:
    """Independent training keys, from a base far from the sweeps' seeds."""
    return jax.random.split(jax.random.key(base), seeds)


# ----------------------------------------------------------------------------- the truth

TRUTH_KEY_BASE = 1_000_003  # truth keys: unrelated to any sweep seed
RETRAIN_KEY_BASE = 2_000_003  # retraining the chosen rates: unrelated to both


def smooth_minimum(rates: np.ndarray, losses: np.ndarray, band: float) -> dict[str, Any]:
    """The minimum of a quartic in log rate fitted to the seed-mean curve near its lowest point.

    The window is the run of grid rates around the lowest mean whose means lie within
    ``band`` of it (at least 7 rates): wide enough to average the noise of neighbouring
    rates, narrow enough that a quartic follows an asymmetric valley. The fit weights each
    rate by its number of finite seeds over its variance.
    """
    finite = np.isfinite(losses)
    mean = np.where(
        finite.any(axis=1), np.nanmean(np.where(finite, losses, np.nan), axis=1), np.inf
    )
    lowest = int(np.argmin(mean))
    inside = mean <= mean[lowest] + band
    low = high = lowest
    while low > 0 and inside[low - 1]:
        low -= 1
    while high < len(rates) - 1 and inside[high + 1]:
        high += 1
    # widen symmetrically where the band is too narrow (a short grid: all of it)
    while high - low + 1 < min(7, len(rates)):
        low, high = max(low - 1, 0), min(high + 1, len(rates) - 1)
    window = slice(low, high + 1)
    u = np.log(rates[window])
    centre, half = u.mean(), (u.max() - u.min()) / 2
    z = (u - centre) / half
    counts = finite[window].sum(axis=1)
    variance = np.var(losses[window], axis=1, ddof=1, where=finite[window])
    weights = np.sqrt(counts / np.maximum(variance, 1e-12))
    coefficients = np.polyfit(z, mean[window], 4, w=weights)
    fine = np.linspace(z.min(), z.max(), 4001)
    best = fine[int(np.argmin(np.polyval(coefficients, fine)))]
    return {
        "optimum": float(np.exp(centre + best * half)),
        "window": [float(rates[low]), float(rates[high])],
        "at_window_edge": bool(best in (z.min(), z.max())),
        "loss_at_optimum": float(np.polyval(coefficients, best)),
    }


def truth_losses(
    problem: Problem, rates: np.ndarray, seeds: int, chunk: int
) -> tuple[np.ndarray, float]:
    """The final validation losses ``(rates, seeds)`` on the truth's keys, and the seconds."""
    keys = seed_keys(TRUTH_KEY_BASE, seeds)
    started = time.perf_counter()
    # the seeds are shared by all rates (as a sweep's are): lane = (rate, seed), rate-major
    lanes = keys[np.tile(np.arange(seeds), len(rates))]
    losses = train_lanes(problem, np.repeat(rates, seeds), lanes, chunk)
    return losses.reshape(len(rates), seeds), time.perf_counter() - started


def truth(
    problem: Problem, seeds: int, band: float, bootstrap: int = 200, chunk: int = 256
) -> dict[str, Any]:
    """The noise-averaged optimum of ``problem`` on its grid, trained without jaxsweep."""
    lo, hi, count = problem.grid
    rates = np.geomspace(lo, hi, count)
    losses, seconds = truth_losses(problem, rates, seeds, chunk)
    fit = smooth_minimum(rates, losses, band)
    rng = np.random.default_rng(0)
    resampled = [
        smooth_minimum(rates, losses[:, rng.integers(0, seeds, seeds)], band)["optimum"]
        for _ in range(bootstrap)
    ]
    log_spread = np.log(resampled)
    return {
        "problem": problem.label,
        "rates": rates.tolist(),
        "seeds": seeds,
        "losses": losses.tolist(),  # (rates, seeds)
        "band": band,
        **fit,
        # the truth's own precision: bootstrap over its seeds
        "optimum_bootstrap_95": [
            float(np.exp(np.quantile(log_spread, 0.025))),
            float(np.exp(np.quantile(log_spread, 0.975))),
        ],
        "optimum_log_sd": float(np.std(log_spread)),
        "seconds": seconds,
        "epochs": problem.epochs,
        "batch_size": problem.batch_size,
        "split_seed": problem.split_seed,
        "machine": {k: v for k, v in c.machine().items() if k != "date_utc"},
    }


# A second reference, on the benchmark's own machine: a dense grid over a factor of 3 around
# the optimum, so that the fit needs no band and no quartic over an asymmetric valley.
DENSE_GRIDS = {"mlp": (0.012, 0.036, 25)}


def dense_truth(
    name: str, seeds: int, directory: str = RESULTS, chunk: int = 256, bootstrap: int = 200
) -> dict[str, Any]:
    """The optimum of a quadratic in log rate fitted to the seed-mean curve on
    ``DENSE_GRIDS[name]`` (the truth's own keys), trained here without jaxsweep; cached in
    ``coverage-dense-<name>.json`` (recomputed when made with other settings)."""
    low, high, count = DENSE_GRIDS[name]
    rates = np.geomspace(low, high, count)
    path = os.path.join(directory, f"coverage-dense-{name}.json")
    if os.path.exists(path):
        with open(path) as handle:
            stored = json.load(handle)
        if stored.get("seeds") == seeds and np.allclose(stored.get("rates"), rates):
            return stored
    losses, seconds = truth_losses(PROBLEMS[name], rates, seeds, chunk)
    rng = np.random.default_rng(0)
    resampled = [
        _quadratic_minimum(rates, losses[:, rng.integers(0, seeds, seeds)])
        for _ in range(bootstrap)
    ]
    record = {
        "rates": rates.tolist(),
        "seeds": seeds,
        "optimum": _quadratic_minimum(rates, losses),
        "optimum_bootstrap_95": np.quantile(resampled, [0.025, 0.975]).tolist(),
        "seconds": seconds,
        "machine": {k: v for k, v in c.machine().items() if k != "date_utc"},
        "losses": losses.tolist(),
    }
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(c._jsonable(record), handle)
        handle.write("\n")
    return record


def _quadratic_minimum(rates: np.ndarray, losses: np.ndarray) -> float:
    """The vertex of a least-squares quadratic in log rate through the seed means."""
    a, b, _ = np.polyfit(np.log(rates), losses.mean(axis=1), 2)
    return float(np.exp(-b / (2 * a)))


def truth_path(name: str, directory: str = RESULTS) -> str:
    return os.path.join(directory, f"coverage-truth-{name}.json")


def cached_truth(
    name: str, seeds: int, band: float, directory: str = RESULTS, chunk: int = 256
) -> dict[str, Any]:
    """The truth of ``PROBLEMS[name]`` from its cache file, computed (and written) when the
    file is missing or was made with other settings."""
    problem = PROBLEMS[name]
    path = truth_path(name, directory)
    wanted = {
        "rates": np.geomspace(*problem.grid[:2], problem.grid[2]).tolist(),
        "seeds": seeds,
        "band": band,
        "epochs": problem.epochs,
        "batch_size": problem.batch_size,
        "split_seed": problem.split_seed,
    }
    if os.path.exists(path):
        with open(path) as handle:
            stored = json.load(handle)
        if all(np.allclose(stored.get(k), v) for k, v in wanted.items()):
            return stored
    record = truth(problem, seeds, band, chunk=chunk)
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(c._jsonable(record), handle)
        handle.write("\n")
    return record


# ----------------------------------------------------------------------------- the sweeps

# what a user of each version runs: the same call, only the defaults differ
CONFIGS = {
    "one seed (the previous defaults)": dict(seeds=1, min_improvement=0.01),
    "defaults": {},
    "5 seeds": dict(seeds=5),
    "precision=0.5": dict(precision=0.5),
}
PRECISE = 2.25  # upper / lower of an interval within best / 1.5 .. best * 1.5

FULL = dict(
    problems=("mlp", "cnn"),
    sweeps={"mlp": 20, "cnn": 8},
    truth_seeds={"mlp": 256, "cnn": 256},  # cached: computed once (on a GPU, in float32)
    band=0.03,
    retrain_seeds=16,
    configs=("one seed (the previous defaults)", "defaults"),
    truth_dir=RESULTS,
    seconds_per_problem=None,  # stop a problem's sweeps after this long (None: run them all)
    chunk=256,  # lanes per call of the plain training (the truth, the retraining)
)
SETTINGS = {
    "full": FULL,
    "quick": dict(FULL, problems=("mlp",), sweeps={"mlp": 3}, retrain_seeds=4),
    # the search's own comparison: the defaults against a requested precision
    "search": dict(
        FULL,
        problems=("mlp",),
        sweeps={"mlp": 20},
        configs=("defaults", "precision=0.5"),
        dense_seeds=256,  # the dense reference beside the truth (DENSE_GRIDS)
    ),
    "dry": dict(
        FULL,
        problems=("tiny",),
        sweeps={"tiny": 1},
        truth_seeds={"tiny": 2},
        retrain_seeds=2,
        chunk=16,
        truth_dir=os.path.join(tempfile.gettempdir(), "jaxsweep-coverage-dry"),
    ),
    # many sweeps: compiled programs come from a cache after the first sweep of each kind
    "gpu": dict(
        FULL,
        sweeps={"mlp": 100, "cnn": 100},
        configs=tuple(CONFIGS),
        seconds_per_problem=150,
        chunk=4096,
        compile_cache=os.path.join(tempfile.gettempdir(), "jaxsweep-coverage-compile-cache"),
    ),
}


def sweep_data(problem: Problem) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The split as an explicit train/val pair: a sweep's ``seed`` then changes only the
    training randomness (initialisation, batch order), never which examples score it."""
    split = digits_split(problem.split_seed)
    return {"train": (split.x_train, split.y_train), "val": (split.x_val, split.y_val)}


def one_sweep(
    problem: Problem, seed: int, overrides: Mapping[str, Any], cache: str | None = None
) -> dict[str, Any]:
    """Runs ``jaxsweep.run`` as a user would (defaults, progress off) and records its answer.

    ``cache``: a folder for the compiled programs (every sweep after the first of its kind
    loads them), or None to compile afresh as a first sweep does.
    """
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        result = jaxsweep.run(
            problem.model_fn,
            sweep_data(problem),
            epochs=problem.epochs,
            batch_size=problem.batch_size,
            seed=seed,
            progress=False,
            compilation_cache=cache if cache is not None else False,
            **overrides,
        )
    seconds = time.perf_counter() - started
    best = result.confidence.best
    seeds = int(result.config["seeds"])
    return {
        "seed": seed,
        "seconds": seconds,
        "lanes": sum(len(s.values) for s in result.stages) * seeds,
        "evaluations": len(result.evaluations),
        "stages": len(result.stages),
        "stop_reason": result.stop_reason,
        "best_value": result.best_value,
        "refined_value": result.confidence.refined.lr,
        "interval": [best.low, best.high],
        "method": best.method,
        "label": best.label,
        "precision": result.precision,
    }


def retrained_losses(
    problem: Problem, values: Sequence[float], seeds: int, chunk: int = 256
) -> np.ndarray:
    """Mean final validation loss of each value over ``seeds`` new runs (plain code)."""
    values = np.asarray(values, np.float64)
    keys = seed_keys(RETRAIN_KEY_BASE, seeds)
    lanes = keys[np.tile(np.arange(seeds), len(values))]
    losses = train_lanes(problem, np.repeat(values, seeds), lanes, chunk)
    return losses.reshape(len(values), seeds).mean(axis=1)


def _summary(runs: Sequence[dict], optimum: float) -> dict[str, Any]:
    covered = [r["interval"][0] <= optimum <= r["interval"][1] for r in runs]
    widths = [r["interval"][1] / r["interval"][0] for r in runs]
    stops: dict[str, int] = {}
    for r in runs:
        stops[r["stop_reason"]] = stops.get(r["stop_reason"], 0) + 1
    methods: dict[str, int] = {}
    for r in runs:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    return {
        "sweeps": len(runs),
        "covered": int(sum(covered)),
        "coverage": float(np.mean(covered)),
        "median_width": float(np.median(widths)),
        "median_seconds": float(np.median([r["seconds"] for r in runs])),
        "median_lanes": float(np.median([r["lanes"] for r in runs])),
        "median_evaluations": float(np.median([r["evaluations"] for r in runs])),
        "retrained_best": float(np.median([r["retrained_best"] for r in runs])),
        "retrained_refined": float(np.median([r["retrained_refined"] for r in runs])),
        "stop_reasons": stops,
        "methods": methods,
        "within_precise": int(sum(w <= PRECISE * (1 + 1e-9) for w in widths)),
        "median_precision": float(np.median([r.get("precision", math.inf) for r in runs])),
    }


def _coverage_interval(covered: int, sweeps: int) -> tuple[float, float]:
    """Wilson's 95% interval for a coverage of ``covered`` out of ``sweeps``."""
    if sweeps == 0:
        return math.nan, math.nan
    z, p = 1.959963984540054, covered / sweeps
    centre = (p + z * z / (2 * sweeps)) / (1 + z * z / sweeps)
    half = z * math.sqrt(p * (1 - p) / sweeps + z * z / (4 * sweeps**2)) / (1 + z * z / sweeps)
    return max(centre - half, 0.0), min(centre + half, 1.0)


RETRAINED = ("best_value", "refined_value")  # the chosen values whose worth is measured


def run(mode: str = "full", **overrides) -> dict:
    """The truth of each problem (cached), then every configuration over many sweep seeds."""
    settings = {**SETTINGS[mode], **overrides}
    load_start, started = c.load_average(), time.perf_counter()
    data: dict[str, Any] = {
        "settings": {k: v for k, v in settings.items() if k not in ("truth_dir", "compile_cache")},
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
    }
    rows, notes = [], []
    # the dense reference's column, where one is computed (only the MLP has a dense grid)
    dense_column = bool(settings.get("dense_seeds")) and any(
        name in DENSE_GRIDS for name in settings["problems"]
    )
    for name in settings["problems"]:
        problem = PROBLEMS[name]
        known = cached_truth(
            name,
            settings["truth_seeds"][name],
            settings["band"],
            settings["truth_dir"],
            settings["chunk"],
        )
        optimum = known["optimum"]
        dense = None
        if dense_column and name in DENSE_GRIDS:
            dense = dense_truth(
                name, settings["dense_seeds"], settings["truth_dir"], settings["chunk"]
            )
        runs: dict[str, list[dict]] = {label: [] for label in settings["configs"]}
        problem_started, limit = time.perf_counter(), settings["seconds_per_problem"]
        first = settings.get("first_seed", 0)
        for seed in range(first, first + settings["sweeps"][name]):  # interleaved over configs
            if limit is not None and time.perf_counter() - problem_started > limit:
                break
            for label in settings["configs"]:
                cache = settings.get("compile_cache")
                runs[label].append(one_sweep(problem, seed, CONFIGS[label], cache))
        chosen = [r[key] for label in runs for r in runs[label] for key in RETRAINED]
        retrained = retrained_losses(problem, chosen, settings["retrain_seeds"], settings["chunk"])
        losses = iter(retrained.tolist())
        per_config = {}
        for label, config_runs in runs.items():
            for r in config_runs:
                r.update({f"retrained_{key.split('_')[0]}": next(losses) for key in RETRAINED})
            summary = _summary(config_runs, optimum)
            if dense is not None:
                summary["covered_dense"] = _summary(config_runs, dense["optimum"])["covered"]
            low, high = _coverage_interval(summary["covered"], summary["sweeps"])
            per_config[label] = {"summary": summary, "runs": config_runs}
            rows.append(
                [
                    problem.label,
                    label,
                    summary["sweeps"],
                    f"{summary['covered']}/{summary['sweeps']} ({100 * summary['coverage']:.0f}%,"
                    f" {100 * low:.0f}-{100 * high:.0f}%)",
                    *(
                        [f"{summary.get('covered_dense', '-')}/{summary['sweeps']}"]
                        if dense_column
                        else []
                    ),
                    summary["median_width"],
                    f"{summary['within_precise']}/{summary['sweeps']}",
                    summary["median_precision"],
                    ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items())),
                    summary["median_seconds"],
                    summary["median_lanes"],
                    summary["retrained_best"],
                    summary["retrained_refined"],
                ]
            )
        data[name] = {
            "truth": {k: v for k, v in known.items() if k not in ("losses",)},
            "configs": per_config,
        }
        notes.append(
            f"{problem.label}: noise-averaged optimum {optimum:.4g} (bootstrap over the truth's "
            f"{known['seeds']} seeds: {known['optimum_bootstrap_95'][0]:.4g} to "
            f"{known['optimum_bootstrap_95'][1]:.4g}), from {len(known['rates'])} log-spaced "
            f"rates from {known['rates'][0]:.3g} to {known['rates'][-1]:.3g}, trained without "
            f"jaxsweep; its loss there: {known['loss_at_optimum']:.4f}."
        )
        if dense is not None:
            data[name]["dense"] = {k: v for k, v in dense.items() if k != "losses"}
            notes.append(
                f"{problem.label}, dense reference: {dense['optimum']:.4g} (bootstrap "
                f"{dense['optimum_bootstrap_95'][0]:.4g} to {dense['optimum_bootstrap_95'][1]:.4g})"
                f", the vertex of a quadratic in log rate through the means of "
                f"{dense['seeds']} seeds at {len(dense['rates'])} rates from "
                f"{dense['rates'][0]:.3g} to {dense['rates'][-1]:.3g}, trained on this machine "
                "without jaxsweep ('covered, dense reference')."
            )
    notes += [
        "Each sweep is jaxsweep.run with its defaults on the fixed digits split (0.2 held out, "
        "split seed 0), only the sweep's seed changed; 'one seed' adds seeds=1, "
        "min_improvement=0.01 (the previous defaults); 'precision=0.5' asks the sweep to go on "
        "until its interval lies within best/1.5 .. best*1.5 (at most 20 stages; 10 seeds, "
        "what run gives a precision of 0.5 when seeds are not given).",
        f"Precision reached: the interval's relative half-width around the refined value "
        f"(result.precision); width <= {PRECISE}: sweeps whose upper / lower is at most "
        f"{PRECISE}, what precision=0.5 asks for.",
        "Coverage: sweeps whose reported interval contains the noise-averaged optimum (Wilson "
        "95% interval in brackets). Width: upper over lower end of the interval (median). "
        "Lanes: values times seeds trained (median). Seconds: wall time of one jaxsweep.run "
        "(median), "
        + (
            "its compiled programs loaded from a persistent cache (every sweep but the first)."
            if settings.get("compile_cache")
            else "compilation included (each sweep compiles afresh, as a new process does)."
        ),
        f"Retrained: mean final validation loss of the chosen value over "
        f"{settings['retrain_seeds']} new seeds (plain code), median over sweeps; 'best' is "
        "the best evaluated value, 'refined' the value the result recommends "
        "(confidence.refined).",
    ]
    tables = [
        c.table(
            "Coverage of the reported 95% interval",
            [
                "problem",
                "sweep",
                "sweeps",
                "covered",
                *(["covered, dense reference"] if dense_column else []),
                "median width (upper / lower)",
                f"width <= {PRECISE}",
                "median precision reached",
                "stop reasons",
                "median seconds",
                "median lanes",
                "retrained loss, best value",
                "retrained loss, refined value",
            ],
            rows,
        )
    ]
    return c.benchmark_record(
        NAME, TITLE, tables, notes, data, load_start, time.perf_counter() - started
    )
