"""Benchmark 10: realistic accelerator workloads, the engine's stages against sequential runs.

Three workloads of real shape, their data made on the fly (:mod:`benchmarks._accelerator_models`;
nothing downloaded): the CIFAR ResNet-18 (11.2M parameters, BatchNorm) on 32x32x3 images,
50,000 of them in batches of 128; a decoder-only transformer (d_model 384, 6 layers, 6 heads,
vocabulary 4096, sequences of 256 tokens; 10.6M parameters in its blocks) on a synthetic
Markov-chain language; the digits MLP, the small end. The ``gpu`` mode trains them at that
size for a few steps per lane; the CPU modes (``quick``, ``full``) shrink the widths and the
data (the record says to what), and ``dry`` runs every code path at a tiny size (about a
minute on 2 CPU cores, nearly all of it compiling).

For each workload, with the default range's first 5 rates:

* **Stages**: one stage of 5 lanes (5 rates) and one of 15 (5 rates x 3 seeds, the default
  sweep's stage) with the ``vmap`` strategy, against 5 / 15 runs of (a) on the same lanes and
  against one run of (a); steady state (compiled programs reused), interleaved repeats.
* **Compile time and memory**: each program's compile time and XLA's compiled memory estimate
  (arguments, outputs, temporaries) per lane count and strategy, the extra memory of one more
  lane, and the device's own counters where the backend keeps them (GPU).
* **The whole default sweep**: ``jaxsweep.run`` with its default search (5 rates a stage, 3
  seeds, up to 5 stages, the resolution stop) compiled afresh, against (a) on the same
  (rate, seed) lanes; then its stages again with compiled programs (steady state) against
  (a)'s calls.
* **Lane strategies**: ``separate`` and ``map`` stages of 5 and 15 lanes, interleaved with
  the ``vmap`` stage and (a) on the same lanes.

(a) is the best-practice sequential code: one ``jax.jit`` function with the rate as an
argument, compiled once and called once per lane, training the same thing as the engine's
lanes (the same initial parameters, the same batches in the same order, the same optimizer,
validated in the same batches), so both do the same work: the record holds the largest
relative difference of their final validation losses.

On an accelerator the run has a time budget (``seconds``): a part whose estimate (from the
workload's measured stages) would pass it is skipped and named in the notes, so the rest of
``gpu.sh`` keeps its time. Parts run in order of importance: every workload's stages, then
every workload's sweep, then the strategies.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsweep
from jaxsweep._budget import make_budget
from jaxsweep._data import Split, epoch_batches
from jaxsweep._driver import build_stage_programs
from jaxsweep._losses import cross_entropy
from jaxsweep._selector import initial_points
from jaxsweep._setup import setup
from jaxsweep._stage import compiled_memory, lane_inputs
from jaxsweep._validation import default_eval_batch_size
from jaxsweep.models import MLP

from . import _common as c
from ._accelerator_models import (
    ResNet18,
    Transformer,
    images,
    markov_entropy,
    markov_tokens,
    parameter_counts,
)
from ._workloads import _linen_steps, _train_step, digits, run_arguments

NAME = "accelerator"
TITLE = "10. Accelerator workloads: ResNet-18, a 10M-parameter transformer, the digits MLP"

MIB = 2**20
WORKLOADS = ("resnet18", "transformer", "mlp")

# the full-size models (gpu mode); the CPU modes shrink them
RESNET = dict(widths=(64, 128, 256, 512), n_train=50_000, n_val=1024, batch_size=128, steps=20)
# validated 32 sequences at a time: the default (512 examples) would hold 512 x 256 x 4096
# float32 logits, 2 GiB, per lane at every validation
TRANSFORMER = dict(vocab=4096, width=384, layers=6, heads=6, seq=256, n_train=8192, n_val=256,
                   batch_size=32, eval_batch_size=32, steps=20)  # fmt: skip
DIGITS_MLP = dict(hidden=(128, 128), limit=None, batch_size=128, steps=33)  # 3 epochs

COMMON = dict(
    points=5,  # rates of a stage (the default range's first stage)
    seeds=3,  # the default sweep's seeds: a stage of points x seeds lanes
    strategies=("vmap", "separate", "map"),
    repeats=3,
    sweep_repeats=1,
    sweep={},  # jaxsweep.run's search arguments beyond its defaults (none: the default sweep)
    seconds=None,  # time budget for the whole benchmark (None: none)
    workloads=WORKLOADS,
    strategy_workloads=WORKLOADS,  # the workloads whose other lane strategies are measured
)


def _on_cpu(repeats: int, resnet18: Mapping, transformer: Mapping) -> dict[str, Any]:
    """A CPU mode: the same models narrower (``resnet18``, ``transformer`` replace sizes of
    the full ones), on less data, for fewer steps."""
    return dict(
        COMMON,
        repeats=repeats,
        resnet18=dict(RESNET, **resnet18),
        transformer=dict(TRANSFORMER, **transformer),
        mlp=DIGITS_MLP,
    )


SETTINGS: dict[str, dict[str, Any]] = {
    # sized for one H200 inside gpu.sh's limit: compiling the ResNet's programs dominates
    "gpu": dict(COMMON, seconds=200, resnet18=RESNET, transformer=TRANSFORMER, mlp=DIGITS_MLP),
    "full": _on_cpu(
        3,
        dict(widths=(16, 32, 64, 128), n_train=5120, n_val=512, batch_size=64, steps=5),
        dict(vocab=1024, width=128, layers=2, heads=4, seq=128, n_train=2048, n_val=256,
             batch_size=16, eval_batch_size=16, steps=10),
    ),
    "quick": _on_cpu(
        2,
        dict(widths=(8, 16, 32, 64), n_train=1024, n_val=256, batch_size=32, steps=4),
        dict(vocab=512, width=64, layers=2, heads=2, seq=64, n_train=512, n_val=64,
             batch_size=16, eval_batch_size=16, steps=5),
    ),
    # seconds on a CPU, for the tests and gpu.sh --dry: every code path, no meaningful time
    "dry": dict(
        COMMON,
        points=2,
        seeds=1,  # one lane count: every program compiles once
        strategies=("vmap", "separate"),
        # the strategies' code is the same for every model (and on a CPU the ResNet's sweep
        # runs "separate" already): one workload is enough to run it
        strategy_workloads=("mlp",),
        repeats=1,
        # the sweep's code on a few lanes, its stages the vmap stages' size and strategy: its
        # steady state reuses their compiled programs
        sweep=dict(points_per_stage=2, stages=2, seeds=1, lanes="vmap"),
        # two stages of one block (a ResNet-6: both kinds of shortcut), a third of the layers
        resnet18=dict(RESNET, widths=(4, 8), blocks=1, n_train=16, n_val=4, batch_size=4,
                      steps=2),
        transformer=dict(TRANSFORMER, vocab=32, width=16, layers=1, heads=2, seq=16,
                         n_train=32, n_val=8, batch_size=8, eval_batch_size=8, steps=2),
        mlp=dict(DIGITS_MLP, hidden=(8,), limit=240, batch_size=32, steps=2),
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- workloads


class Problem(NamedTuple):
    """One workload: what the engine's lanes and (a) both train, with the same settings."""

    key: str
    title: str  # the model and its size, for the tables
    model_fn: Callable
    split: Split  # host arrays
    batch_size: int
    steps: int  # training steps per lane
    eval_batch_size: int  # validation examples per batch (both sides)
    sizes: dict
    seed: int = 0
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam
    loss: Callable = cross_entropy  # (a)'s loss; the engine's is jaxsweep.run's default

    @property
    def n_train(self) -> int:
        return len(self.split.y_train)

    @property
    def n_val(self) -> int:
        return len(self.split.y_val)


def _split(x, y, n_val: int) -> Split:
    return Split(x[n_val:], y[n_val:], x[:n_val], y[:n_val])


def make_problem(key: str, sizes: Mapping) -> Problem:
    """The workload ``key`` ("resnet18", "transformer", "mlp") at ``sizes``, its data made."""
    sizes = dict(sizes)
    if key == "resnet18":
        widths, blocks = tuple(sizes["widths"]), sizes.get("blocks", 2)
        x, y = images(sizes["n_train"] + sizes["n_val"])
        split = _split(x, y, sizes["n_val"])
        depth = 2 + 2 * blocks * len(widths)  # the stem, the blocks' convolutions, the read-out
        title = f"ResNet-{depth} (widths {'-'.join(map(str, widths))}, 32x32x3, 10 classes)"
        model_fn: Callable = lambda: ResNet18(widths=widths, blocks=blocks)  # noqa: E731
    elif key == "transformer":
        x, y = markov_tokens(sizes["n_train"] + sizes["n_val"], sizes["seq"], sizes["vocab"])
        split = _split(x, y, sizes["n_val"])
        title = (
            f"transformer (d {sizes['width']}, {sizes['layers']} layers, {sizes['heads']} "
            f"heads, seq {sizes['seq']}, vocab {sizes['vocab']})"
        )
        shape = dict(
            vocab=sizes["vocab"],
            width=sizes["width"],
            layers=sizes["layers"],
            heads=sizes["heads"],
            max_len=sizes["seq"],
        )
        model_fn = lambda: Transformer(**shape)  # noqa: E731
        sizes["chain_entropy_nats"] = markov_entropy(sizes["vocab"])
    elif key == "mlp":
        hidden = tuple(sizes["hidden"])
        split = digits(limit=sizes["limit"])
        title = f"digits MLP (64-{'-'.join(map(str, hidden))}-10)"
        model_fn = lambda: MLP(hidden=hidden)  # noqa: E731
        sizes.update(n_train=len(split.y_train), n_val=len(split.y_val))
    else:
        raise ValueError(f"unknown workload {key!r}; expected one of {WORKLOADS}")
    n_val = len(split.y_val)
    eval_batch = sizes.get("eval_batch_size") or default_eval_batch_size(n_val, sizes["batch_size"])
    if n_val % eval_batch:  # (a) validates in equal batches: no padding to weigh
        raise ValueError(f"{key}: {n_val} validation examples in batches of {eval_batch}")
    return Problem(
        key, title, model_fn, split, sizes["batch_size"], sizes["steps"], eval_batch, sizes
    )


def rates(points: int) -> list[float]:
    """The default range's first stage: the rates every part of the benchmark trains."""
    return [float(r) for r in initial_points((1e-5, 1e-2), points)]


# ----------------------------------------------------------------------------- (a) best practice


def make_train_lane(problem: Problem) -> Callable:
    """(a): one lane, one call, the rate an argument (so one compile serves every rate).

    ``train(lr, init_key, data_key, x_train, y_train, x_val, y_val)`` returns the validation
    loss at each of the engine's validations. The steps take their batches from the seed's
    epoch permutations exactly as the engine's lanes do (``jaxsweep._data.epoch_batches``,
    step ``s`` from row ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``); BatchNorm
    trains with ``train=True`` and mutable ``batch_stats``, validates with ``train=False``, in
    batches of the engine's size. Not jitted.
    """
    model = _linen_steps(problem.model_fn(), problem.loss)
    n_train, batch_size = problem.n_train, problem.batch_size
    budget = make_budget(None, problem.steps, None, n_train, batch_size)
    ends = budget.validation_steps()
    epochs = math.ceil(budget.total / budget.steps_per_epoch)
    eval_batch, n_val = problem.eval_batch_size, problem.n_val

    def train(lr, init_key, data_key, x_train, y_train, x_val, y_val):
        tx = problem.optimizer(learning_rate=lr)
        params, stats = model.init(init_key, x_train[:1])
        orders = [epoch_batches(data_key, e, n_train, batch_size) for e in range(epochs)]
        rows = jnp.concatenate(orders)[: budget.total]
        step = _train_step(model, tx, x_train, y_train)  # its losses unused: jit drops them

        def validate(params, stats):
            def batches(a):
                return a.reshape((n_val // eval_batch, eval_batch, *a.shape[1:]))

            losses = jax.lax.map(
                lambda b: model.val_loss(params, stats, *b), (batches(x_val), batches(y_val))
            )
            return jnp.mean(losses)

        carry, start, val_losses = (params, stats, tx.init(params)), 0, []
        for end in ends:
            carry, _ = jax.lax.scan(step, carry, rows[start:end])
            val_losses.append(validate(carry[0], carry[1]))
            start = end
        return jnp.stack(val_losses)

    return train


def lane_arguments(problem: Problem, lrs: Sequence[float], seeds: int) -> list[tuple]:
    """Per lane (rate, init key, data key) as ``jaxsweep.run`` derives them, value-major,
    each its own array: made once per set of lanes, outside every timing."""
    lanes = lane_inputs(tuple(float(r) for r in lrs), problem.seed, seeds)
    return [
        (lanes.values[i], lanes.init_keys[i], lanes.data_keys[i])
        for i in range(len(lanes.seed_index))
    ]


class Sequential:
    """(a) for a list of lanes: compiled once (timed), then one call per lane."""

    def __init__(self, problem: Problem, device):
        self.problem = problem
        self.data = tuple(jax.device_put(a, device) for a in problem.split)
        self._lanes: dict = {}
        first = self.lanes(rates(1), 1)[0]
        started = time.perf_counter()
        self.compiled = jax.jit(make_train_lane(problem)).lower(*first, *self.data).compile()
        self.compile_seconds = time.perf_counter() - started
        self.memory = compiled_memory(self.compiled)

    def lanes(self, lrs: Sequence[float], seeds: int) -> list[tuple]:
        key = (tuple(lrs), seeds)
        if key not in self._lanes:
            self._lanes[key] = jax.block_until_ready(lane_arguments(self.problem, lrs, seeds))
        return self._lanes[key]

    def run(self, lrs: Sequence[float], seeds: int = 1) -> np.ndarray:
        """The validation losses ``(lanes, validations)``; one call per (rate, seed)."""
        results = [self.compiled(*lane, *self.data) for lane in self.lanes(lrs, seeds)]
        return np.stack(jax.device_get(results))


# ----------------------------------------------------------------------------- the engine


def split_data(problem: Problem) -> dict:
    split = problem.split
    return {"train": (split.x_train, split.y_train), "val": (split.x_val, split.y_val)}


class Stage:
    """The engine's own stage programs for one problem and lane strategy, on one device:
    built as ``jaxsweep.run`` builds them (``build_stage_programs`` of a checked setup), so
    a stage starts, trains and fetches its metrics as a sweep's stage does."""

    def __init__(self, problem: Problem, lanes: str, device):
        self.problem = problem
        # the engine's loss is jaxsweep.run's default ("auto")
        arguments = run_arguments(
            problem,
            steps=problem.steps,
            eval_batch_size=problem.eval_batch_size,
            devices=[device],
            compilation_cache=False,
            lanes=lanes,
        )
        checked = setup(problem.model_fn, split_data(problem), **arguments)
        self.programs = build_stage_programs(checked)

    def _start(self, lrs: Sequence[float], seeds: int):
        lanes = self.programs.start(list(lrs), seed=self.problem.seed, seeds=seeds)
        self.programs.compile(lanes)
        return lanes

    def compile(self, lrs: Sequence[float], seeds: int) -> float:
        """Seconds to a ready stage of these lanes: lane start and compiling (the first
        compile of a stage also makes the seeds' start, as a sweep's first stage does)."""
        return c.timed(lambda: self._start(lrs, seeds).state)[0]

    def run(self, lrs: Sequence[float], seeds: int = 1) -> np.ndarray:
        """Trains the lanes as one stage: validation losses ``(lanes, validations)``."""
        lanes = self._start(lrs, seeds)
        val = [metrics.val_loss for _, _, metrics in self.programs.train(lanes, lanes.state)]
        return np.stack(val, axis=1)

    def memory(self, lrs: Sequence[float], seeds: int) -> dict[str, int]:
        """The compiled training call's memory estimate (for ``separate``: the one-lane
        program's)."""
        return compiled_memory(self.programs.compiled_call(self._start(lrs, seeds)))


def device_memory(device) -> dict[str, int] | None:
    """The backend's own counters (GPU, TPU): bytes in use and the process's peak so far."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest relative difference of the final validation losses of two sets of lanes."""
    a, b = np.asarray(a)[:, -1], np.asarray(b)[:, -1]
    return float(np.nanmax(np.abs(a - b) / np.abs(b)))


# ----------------------------------------------------------------------------- the parts


def built_stage(problem: Problem, strategy: str, settings: Mapping, device, kept: dict) -> Stage:
    """The problem's stage for ``strategy``, built once and compiled for both lane counts
    (5 lanes, 15 lanes); its compile times and memory estimates are kept with it."""
    stages = kept.setdefault("stages", {})
    if strategy not in stages:
        lrs, seeds = rates(settings["points"]), settings["seeds"]
        stage = Stage(problem, strategy, device)
        for count in sorted({1, seeds}):  # one seed, then the default sweep's seeds
            label = f"{strategy}, {len(lrs) * count} lanes"
            kept.setdefault("compile_seconds", {})[label] = stage.compile(lrs, count)
            kept.setdefault("memory", {})[label] = stage.memory(lrs, count)
        stages[strategy] = stage
    return stages[strategy]


def _compiled(kept: dict, strategies: Sequence[str]) -> tuple[dict, dict]:
    """The compile times and memory estimates kept for these strategies' stages."""
    names = tuple(f"{s}, " for s in strategies)
    return (
        {k: v for k, v in kept.get("compile_seconds", {}).items() if k.startswith(names)},
        {k: v for k, v in kept.get("memory", {}).items() if k.startswith(names)},
    )


def measure_stages(problem: Problem, settings: Mapping, device, kept: dict) -> dict:
    """The vmap stages of 5 and 15 lanes against (a), steady; compile times and memory."""
    lrs, seeds = rates(settings["points"]), settings["seeds"]
    one = lrs[len(lrs) // 2 : len(lrs) // 2 + 1]
    sequential = Sequential(problem, device)
    stage = built_stage(problem, "vmap", settings, device, kept)
    compile_seconds, memory = _compiled(kept, ["vmap"])
    compile_seconds["(a), one lane"] = sequential.compile_seconds
    memory["(a), one lane"] = sequential.memory
    # warm-up, and the same-work check: every lane against (a) on the same lane
    losses = {"stage": stage.run(lrs, seeds), "(a)": sequential.run(lrs, seeds)}
    sequential.run(lrs, 1), stage.run(lrs, 1), sequential.run(one, 1)
    steady = c.interleaved(
        {
            "stage 1": lambda: stage.run(lrs, 1),
            "(a) 1": lambda: sequential.run(lrs, 1),
            "stage S": lambda: stage.run(lrs, seeds),
            "(a) S": lambda: sequential.run(lrs, seeds),
            "one run": lambda: sequential.run(one, 1),
        },
        settings["repeats"],
    )
    kept["sequential"] = sequential
    return {
        "lrs": lrs,
        "seeds": seeds,
        "lanes": [len(lrs), len(lrs) * seeds],
        "compile_seconds": compile_seconds,
        "memory": memory,
        "steady": {k: c.summary(v) for k, v in steady.items()},
        "final_val_loss": {k: v[:, -1].tolist() for k, v in losses.items()},
        "max_relative_difference_to_a": relative_difference(losses["stage"], losses["(a)"]),
        "device_memory": device_memory(device),
    }


def measure_sweep(problem: Problem, settings: Mapping, device, kept: dict) -> dict:
    """``jaxsweep.run`` with its default search, compiled afresh, against (a) on its lanes;
    then the sweep's stages again in steady state (the same strategy, compiled programs
    reused) against (a)'s calls."""
    sequential: Sequential = kept["sequential"]
    runs: dict = {}

    def sweep():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
            # the default search (and optimizer, adam, and seed, 0), this problem's budget
            runs["result"] = jaxsweep.run(
                problem.model_fn,
                split_data(problem),
                steps=problem.steps,
                batch_size=problem.batch_size,
                eval_batch_size=problem.eval_batch_size,
                devices=[device],
                progress=False,
                compilation_cache=False,
                **settings["sweep"],
            )
        return runs["result"]

    def lanes_of_a():
        result = runs["result"]
        runs["(a)"] = sequential.run([e.value for e in result.evaluations], result.config["seeds"])
        return runs["(a)"]

    timings = c.interleaved({"jaxsweep.run": sweep, "(a)": lanes_of_a}, settings["sweep_repeats"])
    result = runs["result"]
    seeds = result.config["seeds"]
    engine = np.asarray(
        [[e.seed_val_loss[s][-1]] for e in result.evaluations for s in range(seeds)]
    )
    # steady state: the sweep's own stages with its strategy, compiled once
    strategy = result.environment["lanes"]["strategy"]
    stage = built_stage(problem, strategy, settings, device, kept)
    values = [list(s.values) for s in result.stages]
    every = [e.value for e in result.evaluations]
    for stage_values in values:  # warm-up: a stage of another size compiles here
        stage.run(stage_values, seeds)
    steady = c.interleaved(
        {
            "jaxsweep stages": lambda: [stage.run(v, seeds) for v in values],
            "(a)": lambda: sequential.run(every, seeds),
        },
        settings["repeats"],
    )
    compiles = result.environment["compilation_cache"]
    memory = max(result.stages, key=lambda s: s.memory_bytes)
    return {
        "seconds": {k: c.summary(v) for k, v in timings.items()},
        "steady": {k: c.summary(v) for k, v in steady.items()},
        "stages": len(result.stages),
        "evaluations": len(result.evaluations),
        "seeds": seeds,
        "lanes": len(result.evaluations) * seeds,
        "stop_reason": result.stop_reason,
        "strategy": strategy,
        "programs": compiles.get("programs"),
        "compile_seconds": compiles.get("seconds"),
        "memory_bytes": memory.memory_bytes,
        "memory_source": memory.memory_source,
        "best_value": result.best_value,
        "a_compile_seconds": sequential.compile_seconds,
        "max_relative_difference_to_a": relative_difference(engine, runs["(a)"]),
    }


def measure_strategies(problem: Problem, settings: Mapping, device, kept: dict) -> dict:
    """Every other strategy's stages of 5 and 15 lanes, interleaved with vmap's and (a)."""
    lrs, seeds = rates(settings["points"]), settings["seeds"]
    sequential = kept["sequential"]
    names = ["vmap", *(s for s in settings["strategies"] if s != "vmap")]
    stages = {name: built_stage(problem, name, settings, device, kept) for name in names}
    losses = {name: st.run(lrs, seeds) for name, st in stages.items()}  # and warm
    methods = {}
    for count in sorted({1, seeds}):
        for name, st in stages.items():
            methods[f"{name} {count}"] = lambda st=st, count=count: st.run(lrs, count)
        methods[f"(a) {count}"] = lambda count=count: sequential.run(lrs, count)
    steady = c.interleaved(methods, settings["repeats"])
    compile_seconds, memory = _compiled(kept, names[1:])
    return {
        "strategies": names,
        "compile_seconds": compile_seconds,
        "memory": memory,
        "steady": {k: c.summary(v) for k, v in steady.items()},
        "max_relative_difference_to_vmap": {
            k: relative_difference(v, losses["vmap"]) for k, v in losses.items() if k != "vmap"
        },
    }


PARTS: dict[str, Callable] = {
    "stages": measure_stages,
    "sweep": measure_sweep,
    "strategies": measure_strategies,
}


def estimate_seconds(part: str, measured: Mapping, settings: Mapping) -> float:
    """A part's expected seconds from the workload's measured stages (0 for the stages)."""
    stages = measured.get("stages")
    if part == "stages" or not isinstance(stages, Mapping) or "steady" not in stages:
        return 0.0
    med = {k: v["median"] for k, v in stages["steady"].items()}
    compile_many = max(stages["compile_seconds"].values())
    if part == "sweep":  # up to 5 stages of the default sweep's lanes, and (a) on them all
        per_repeat = 5 * (med["stage S"] + med["(a) S"])
        return (
            settings["sweep_repeats"] * (compile_many + per_repeat)
            + (settings["repeats"] + 1) * per_repeat
        )
    others = len([s for s in settings["strategies"] if s != "vmap"])
    runs = med["stage 1"] + med["stage S"] + med["(a) 1"] + med["(a) S"]
    return others * 2 * compile_many + (settings["repeats"] + 2) * (others + 2) * runs


# ----------------------------------------------------------------------------- the benchmark


def run(
    mode: str = "full",
    workloads: Sequence[str] | None = None,
    on_partial: Callable[[dict], None] | None = None,
    **overrides,
) -> dict:
    """Runs the benchmark; ``overrides`` replace entries of the mode's settings (a
    workload's sizes too: ``transformer=dict(...)``). ``on_partial`` receives the record
    after each part (a run cut short keeps those)."""
    settings = {**SETTINGS[mode], **overrides}
    if workloads is not None:
        settings["workloads"] = tuple(workloads)
    load_start, started = c.load_average(), time.perf_counter()
    device = jax.local_devices()[0]
    problems = {key: make_problem(key, settings[key]) for key in settings["workloads"]}
    results: dict = {
        key: {
            "title": p.title,
            "sizes": p.sizes,
            "params": parameter_counts(p.model_fn, p.split.x_train[:1]),
            "steps": p.steps,
            "batch_size": p.batch_size,
            "eval_batch_size": p.eval_batch_size,
            "n_train": p.n_train,
            "n_val": p.n_val,
        }
        for key, p in problems.items()
    }
    kept: dict = {key: {} for key in problems}
    notes: list[str] = []
    for part, measure in PARTS.items():
        for key, problem in problems.items():
            if part != "stages" and _measured(results[key], "stages") is None:
                continue  # nothing to compare with
            if part == "strategies" and key not in settings["strategy_workloads"]:
                continue
            elapsed = time.perf_counter() - started
            expected = estimate_seconds(part, results[key], settings)
            if settings["seconds"] is not None and elapsed + expected > settings["seconds"]:
                results[key][part] = {"skipped": f"time budget ({expected:.0f} s expected)"}
                notes.append(
                    f"{key}: {part} skipped: {elapsed:.0f} s spent, about {expected:.0f} s "
                    f"more expected, budget {settings['seconds']} s"
                )
                continue
            print(f"  accelerator: {key} {part}", file=sys.stderr, flush=True)
            part_started = time.perf_counter()
            try:
                results[key][part] = measure(problem, settings, device, kept[key])
            except Exception as error:  # recorded; the other parts still run
                traceback.print_exc()
                first_line = (str(error).splitlines() or [""])[0][:300]
                message = f"{type(error).__name__}: {first_line}"
                results[key][part] = {"failed": message}
                notes.append(f"{key}: {part} failed: {message}")
            results[key][part]["part_seconds"] = time.perf_counter() - part_started
            if on_partial is not None:
                on_partial(_record(results, settings, notes, load_start, started))
    return _record(results, settings, notes, load_start, started)


# ----------------------------------------------------------------------------- tables


def _median(summary: Mapping) -> float:
    return summary["median"]


def _mib(value) -> float | None:
    return None if value is None else value / MIB


def _measured(result: Mapping, part: str) -> Mapping | None:
    """A part's measurements; None where it was skipped, failed or never ran."""
    value = result.get(part)
    if not isinstance(value, Mapping) or "skipped" in value or "failed" in value:
        return None
    return value


def _given(arguments: Mapping) -> str:
    """``; given a=1, b=2`` for the arguments given beyond the defaults; empty for none."""
    if not arguments:
        return ""
    return "; given " + ", ".join(f"{k}={v!r}" for k, v in arguments.items())


def _record(results: Mapping, settings: Mapping, notes: list, load_start, started) -> dict:
    stage_rows, memory_rows, device_rows, sweep_rows, strategy_rows = [], [], [], [], []
    for r in results.values():
        model = r["title"]
        stages = _measured(r, "stages")
        if stages is not None:
            s = {k: _median(v) for k, v in stages["steady"].items()}
            few, many = stages["lanes"]
            row = [model, r["params"]["total"], r["steps"], s["one run"]]
            for n in ("1", "S"):  # the stage of one seed, then of the default sweep's seeds
                stage, a = s[f"stage {n}"], s[f"(a) {n}"]
                row += [stage, a, c.ratio(a, stage), c.ratio(stage, s["one run"])]
            stage_rows.append([*row, stages["max_relative_difference_to_a"]])
            compiled = {**stages["compile_seconds"]}
            memory = {**stages["memory"]}
            strategies = _measured(r, "strategies")
            if strategies is not None:
                compiled.update(strategies["compile_seconds"])
                memory.update(strategies["memory"])
            for label, seconds in compiled.items():
                lanes = 1 if label.startswith("(a)") else int(label.split(", ")[1].split()[0])
                m = memory.get(label) or {}
                total = m.get("total")
                memory_rows.append(
                    [
                        model,
                        label,
                        seconds,
                        _mib(total),
                        None if total is None else _mib(total) / lanes,
                        _mib(m.get("arguments")),
                        _mib(m.get("temporaries")),
                    ]
                )
            for name in ("vmap", *(strategies or {}).get("strategies", ())[1:]):
                pair = [memory.get(f"{name}, {n} lanes", {}).get("total") for n in (few, many)]
                if None not in pair and many > few:
                    memory_rows.append(
                        [
                            model,
                            f"{name}: one more lane ({few} to {many} lanes)",
                            None,
                            _mib(pair[1] - pair[0]) / (many - few),
                            None,
                            None,
                            None,
                        ]
                    )
            if stages.get("device_memory"):
                d = stages["device_memory"]
                in_use, peak = _mib(d.get("bytes_in_use")), _mib(d["peak_bytes_in_use"])
                device_rows.append([model, in_use, peak])
        sweep = _measured(r, "sweep")
        if sweep is not None:
            t = {k: _median(v) for k, v in sweep["seconds"].items()}
            with_compile = t["(a)"] + sweep["a_compile_seconds"]
            steady = {k: _median(v) for k, v in sweep["steady"].items()}
            sweep_rows.append(
                [
                    model,
                    sweep["strategy"],
                    sweep["stages"],
                    sweep["lanes"],
                    t["jaxsweep.run"],
                    sweep["compile_seconds"],
                    with_compile,
                    c.ratio(with_compile, t["jaxsweep.run"]),
                    steady["jaxsweep stages"],
                    steady["(a)"],
                    c.ratio(steady["(a)"], steady["jaxsweep stages"]),
                    _mib(sweep["memory_bytes"]),
                    sweep["memory_source"],
                    sweep["max_relative_difference_to_a"],
                ]
            )
        strategies = _measured(r, "strategies") if stages is not None else None
        if strategies is not None:
            st = {k: _median(v) for k, v in strategies["steady"].items()}
            for count in sorted({1, stages["seeds"]}):
                lanes = count * len(stages["lrs"])
                a = st[f"(a) {count}"]
                row = [model, lanes, a]
                for name in strategies["strategies"]:
                    row += [st[f"{name} {count}"], c.ratio(a, st[f"{name} {count}"])]
                worst = max(strategies["max_relative_difference_to_vmap"].values(), default=0.0)
                strategy_rows.append([*row, worst])

    points, seeds = settings["points"], settings["seeds"]
    strategy_names = ["vmap", *(s for s in settings["strategies"] if s != "vmap")]
    tables = [
        c.table(
            f"Stages against (a), steady state (compiled programs reused), seconds: {points} "
            f"rates, then {points} rates x {seeds} seeds; one device",
            [
                "model",
                "params",
                "steps per lane",
                "one run of (a)",
                f"stage, {points} lanes",
                f"(a), {points} runs",
                f"(a) / stage, {points}",
                f"stage {points} / one run",
                f"stage, {points * seeds} lanes",
                f"(a), {points * seeds} runs",
                f"(a) / stage, {points * seeds}",
                f"stage {points * seeds} / one run",
                "max relative loss difference to (a)",
            ],
            stage_rows,
        ),
        c.table(
            "Compile time and XLA's compiled memory estimate per program (MiB)",
            [
                "model",
                "program",
                "compile (s)",
                "memory (MiB)",
                "memory per lane (MiB)",
                "arguments (MiB)",
                "temporaries (MiB)",
            ],
            memory_rows,
        ),
    ]
    if device_rows:
        tables.append(
            c.table(
                "Device memory after each workload's stages (the backend's counters, MiB; the "
                "peak is the process's high-water mark so far)",
                ["model", "in use", "peak so far"],
                device_rows,
            )
        )
    tables.append(
        c.table(
            "The whole sweep (jaxsweep.run's default search: 5 rates a stage, 3 seeds, up to 5 "
            f"stages{_given(settings['sweep'])}), compiled afresh, against (a) on the same "
            "(rate, seed) lanes, seconds",
            [
                "model",
                "lanes",
                "stages",
                "lanes trained",
                "jaxsweep.run",
                "of it compiling",
                "(a), with its compile",
                "(a) / run",
                "its stages, steady",
                "(a), steady",
                "(a) / stages, steady",
                "stage memory (MiB)",
                "memory measured as",
                "max relative loss difference to (a)",
            ],
            sweep_rows,
        )
    )
    tables.append(
        c.table(
            "Lane strategies, steady state, seconds, and (a)'s time over each",
            [
                "model",
                "lanes",
                "(a)",
                *(f"{name}{part}" for name in strategy_names for part in ("", ": (a) / it")),
                "max relative loss difference to vmap",
            ],
            strategy_rows,
        )
    )
    notes = [
        "(a): one jax.jit function per workload with the rate as an argument, compiled once "
        "and called once per lane, on the same device; the engine's lanes and (a) start from "
        "the same parameters, see the same batches and validate in the same batches: the "
        "last column of the stage and sweep tables is the largest relative difference of "
        "their final validation losses (float rounding; it grows where a large rate makes "
        "training chaotic).",
        "The engine runs with jaxsweep.run's defaults: loss 'auto' (token-level cross-entropy "
        "for the transformer's (batch, seq) labels against its (batch, seq, vocab) logits, "
        "with the accuracy recorded), per-step gradient norms and update ratios "
        "(diagnostics=True); (a) computes the loss alone.",
        "Stage times include starting the lanes (a fresh optimizer state per lane) and "
        "fetching their metrics, as in a sweep; compile times include the first stage's "
        "seed initialisation. '(a), with its compile' is its compile time (measured once, "
        "in the compile table) plus its calls. 'Its stages, steady': the sweep's own stages "
        "(its values, its strategy) trained again by compiled programs, interleaved with (a) "
        "on every lane. 'Stage memory' is the sweep's own record of its largest stage: the "
        "device's peak where the backend reports one, else the compiled estimate.",
        "Memory per lane is the compiled estimate over the lanes it holds; 'one more lane' is "
        "the growth from the smaller stage to the larger one, per added lane (the data is "
        "shared). For 'separate' the estimate is the one-lane program's: the other lanes' "
        "states wait outside it.",
        *(
            f"{r['title']}: {r['n_train']} training and {r['n_val']} validation examples, "
            f"batches of {r['batch_size']}, {r['steps']} steps per lane, validated in batches "
            f"of {r['eval_batch_size']}"
            for r in results.values()
        ),
        *notes,
    ]
    return c.benchmark_record(
        NAME,
        TITLE,
        tables,
        notes,
        {"settings": settings, "workloads": results},
        load_start,
        time.perf_counter() - started,
    )
