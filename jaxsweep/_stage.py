"""A sweep's stage programs, compiled over a lane mesh: what the driver runs for every stage.

This is the one place that turns the pure programs of :mod:`jaxsweep._train` into running
code: lanes are laid out value-major over a one-axis device mesh, each seed's parameters are
initialised once per sweep, and the training call is compiled once per lane count (a sweep
has one), for the sweep's lane strategy (:mod:`jaxsweep._lanes`).

A sweep compiles three programs: ``init`` (every seed's keys, derived from the seed inside the
program, and parameters), ``start`` (a stage's lanes: each lane's seed gathered, a fresh
optimizer state holding its value, its keys) and the training call (``budget.chunk`` steps,
and the validation where a segment ends); a sweep reading a data source compiles a fourth, its
epochs' batch orders. Per-lane inputs are made and padded with numpy on the host, so no tiny
programs are compiled in between, and the training call compiles in a thread while the other
two compile and run. A segment's next call is dispatched before the previous one's metrics
are fetched, and a source's next batches are read on a thread while the devices train.

The benchmarks build their "jaxsweep stage" here too, so they time exactly what a
sweep runs::

    stage = StagePrograms(make_programs(...), split, jax.devices()[:1], budget)
    lanes = stage.start([1e-3, 1e-2], seed=0, seeds=1)
    stage.compile(lanes)
    for segment, state, host_metrics in stage.train(lanes, lanes.state):
        ...  # after each validation: the state and the metrics on the host

Randomness depends on (seed, seed index, epoch, step) only (:func:`seed_keys`,
:func:`derive_rng_keys`): every stage and every rerun of a sweep sees the same initial
parameters, batch orders and random streams (dropout masks).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _lanes, _sharding
from ._budget import Budget
from ._data import Split
from ._model import Start
from ._sharding import LaneLayout
from ._sources import SourceColumn, prefetch, read_batch
from ._train import EpochMetrics, LaneState, Packing, Programs, packed_call, segment_metrics

# Initialisation runs once per sweep, for milliseconds, but its random-number code is long:
# on CPU, skipping LLVM's optimisation passes compiles it ~3x faster (~2 s less per sweep).
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


class LaneInputs(NamedTuple):
    """Per-lane inputs of a stage, value-major (lane ``i * seeds + s``)."""

    values: jax.Array  # (lanes,) float32 swept values
    init_keys: jax.Array  # (lanes,) parameter-initialisation keys (one per seed)
    data_keys: jax.Array  # (lanes,) batch-order keys (one per seed)
    seed_index: np.ndarray  # (lanes,) int32: which seed each lane trains


class StageLanes(NamedTuple):
    """A started stage: its per-lane inputs and fresh lane state, padded and placed."""

    inputs: LaneInputs  # placed like the state
    layout: LaneLayout  # real and padded lane counts, the mesh
    state: LaneState  # fresh: the seeds' parameters, a new optimizer state per lane
    seed: int  # the sweep's root seed
    seeds: int  # seeds per value (``inputs.seed_index`` counts them)


class SeedStart(NamedTuple):
    """Every seed's start, made once per sweep (leading axis ``(seeds,)``, on every device)."""

    params: Any
    model_state: Any
    init_keys: jax.Array
    data_keys: jax.Array
    rng_keys: jax.Array  # the model's random streams (Linen), folded with (epoch, step)


def derive_seed_keys(seed, seeds: int) -> tuple[jax.Array, jax.Array]:
    """``(seeds,)`` init keys and data keys from (seed, seed index) alone; traceable.

    Seed ``s`` initialises with ``fold_in(fold_in(key(seed), s), 0)`` and orders its batches
    with ``fold_in(fold_in(key(seed), s), 1)``. ``seed`` may be traced (the sweep derives the
    keys inside its initialisation program; :func:`seed_argument` makes it).
    """
    base = jax.random.key(seed)
    per_seed = jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(seeds))
    init = jax.vmap(lambda k: jax.random.fold_in(k, 0))(per_seed)
    data = jax.vmap(lambda k: jax.random.fold_in(k, 1))(per_seed)
    return init, data


def derive_rng_keys(seed, seeds: int) -> jax.Array:
    """``(seeds,)`` keys of the model's random streams: ``fold_in(fold_in(key(seed), s), 2)``.

    A lane folds in the epoch and the step (:mod:`jaxsweep._train`), and a Linen stream its
    name's CRC-32 (:mod:`jaxsweep._model`); traceable like :func:`derive_seed_keys`.
    """
    base = jax.random.key(seed)
    per_seed = jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(seeds))
    return jax.vmap(lambda k: jax.random.fold_in(k, 2))(per_seed)


def seed_argument(seed: int) -> np.ndarray:
    """``seed`` as the integer array ``jax.random.key(seed)`` itself would make of it."""
    return np.asarray(np.int64(seed)).astype(jax.dtypes.canonicalize_dtype(np.int64))


@functools.lru_cache(maxsize=16)
def seed_keys(seed: int, seeds: int) -> tuple[jax.Array, jax.Array]:
    """``(seeds,)`` init keys and data keys, derived from (seed, seed index) alone (eager).

    >>> init, data = seed_keys(0, 2)
    >>> init.shape, data.shape
    ((2,), (2,))
    """
    return derive_seed_keys(seed_argument(seed), seeds)


def host_lanes(values: Sequence[float], seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-lane values (float32) and seed indices, value-major, as numpy (nothing compiles).

    >>> host_lanes([0.1, 0.2], seeds=2)[1].tolist()
    [0, 1, 0, 1]
    """
    seed_index = np.tile(np.arange(seeds, dtype=np.int32), len(values))
    return np.repeat(np.asarray(values, np.float64), seeds).astype(np.float32), seed_index


def lane_inputs(values: Sequence[float], seed: int, seeds: int) -> LaneInputs:
    """The per-lane inputs of a stage training ``values`` for ``seeds`` seeds (eager).

    >>> lane_inputs([0.1, 0.2], seed=0, seeds=2).seed_index.tolist()
    [0, 1, 0, 1]
    """
    seed_init_keys, seed_data_keys = seed_keys(seed, seeds)
    lane_values, seed_of_lane = host_lanes(values, seeds)
    return LaneInputs(
        values=jnp.asarray(lane_values),
        init_keys=seed_init_keys[seed_of_lane],
        data_keys=seed_data_keys[seed_of_lane],
        seed_index=seed_of_lane,
    )


def compiled_memory(compiled) -> dict[str, int]:
    """A compiled program's memory estimate: arguments, outputs, temporaries and their total.

    The total counts buffers the program aliases (donated inputs reused as outputs) once.
    """
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    parts = {
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes),
        "temporaries": int(analysis.temp_size_in_bytes),
    }
    return {**parts, "total": sum(parts.values()) - int(analysis.alias_size_in_bytes)}


class StagePrograms:
    """The programs of one sweep, jitted over a lane mesh; compiled on first use.

    Args:
      programs: the pure programs (:func:`jaxsweep._train.make_programs`).
      data: the host arrays of the split: placed whole on every device, once.
      devices: the devices the lanes are split over (:func:`_sharding.resolve_devices`).
      budget: the steps, validations and calls of every stage (:mod:`jaxsweep._budget`).
      strategy: how the lanes execute (:mod:`jaxsweep._lanes`); ``vmap`` by default.
      reason: why this strategy, for ``result.environment["lanes"]``.
      start: given (pretrained) values every lane starts from; None: a fresh initialisation.
    """

    def __init__(
        self,
        programs: Programs,
        data: Split,
        devices: Sequence,
        budget: Budget,
        strategy: _lanes.Strategy = _lanes.VMAP,
        reason: str = "given",
        start: Start | None = None,
    ):
        # lanes split over a one-axis mesh, data copied to every device; every output keeps
        # the lane axis split the same way. A training source stays on the host, read per call.
        self.mesh = _sharding.lane_mesh(devices)
        source = data.x_train.source if isinstance(data.x_train, SourceColumn) else None
        if source is None:
            self.data = _sharding.place_replicated(data, self.mesh)
        else:
            placed = _sharding.place_replicated((data.x_val, data.y_val), self.mesh)
            self.data = data._replace(x_val=placed[0], y_val=placed[1])
        self.source, self._sample = source, data
        self.budget = budget
        self.strategy, self.reason = strategy, reason
        self._lane_sharding = _sharding.lane_sharding(self.mesh)
        self._programs = programs
        # pretrained values are an argument of the init program, never a constant in it
        self._given = _sharding.place_replicated(start, self.mesh)

        def init(seed, seeds: int, given) -> SeedStart:  # the keys and every seed's start
            init_keys, data_keys = derive_seed_keys(seed, seeds)
            params, model_state = programs.init_seeds(init_keys, given)
            rng_keys = derive_rng_keys(seed, seeds)
            return SeedStart(params, model_state, init_keys, data_keys, rng_keys)

        def start(seed_start: SeedStart, seed_index, values):  # gathers, casts, starts
            state = programs.start_lanes(
                seed_start.params,
                seed_start.model_state,
                seed_start.rng_keys,
                seed_index,
                values,
            )
            return state, seed_start.init_keys[seed_index], seed_start.data_keys[seed_index]

        replicated = _sharding.replicated(self.mesh)
        self._init_fn, self._start_fn = init, start  # for shapes of any lane count
        self._init = jax.jit(init, static_argnums=1, out_shardings=replicated)
        self._start = jax.jit(start, out_shardings=self._lane_sharding)
        self._compiled_init: dict[int, Any] = {}  # seeds -> compiled init program
        self._seed_starts: dict[tuple[int, int], SeedStart] = {}
        self._orders = jax.jit(programs.epoch_orders)  # a source's batch orders (host side)
        self._epoch_orders: dict[tuple[int, int, int], np.ndarray] = {}
        # (real, padded) lanes -> (the compiled call, how its metrics are packed)
        self._compiled: dict[tuple[int, int], tuple[_lanes.LaneCall, Packing]] = {}
        self._compiling: dict[tuple[int, int], tuple[threading.Thread, list]] = {}
        self._setup_started: float | None = None  # when the one-time work began

    def seed_start(self, seed: int, seeds: int) -> SeedStart:
        """Each seed's keys and initial ``(params, model_state)``, leading axis ``(seeds,)``.

        Parameters depend on the seed alone: each seed is initialised once per sweep, and
        every stage only gathers them into its lanes and starts fresh optimizers.
        """
        if (seed, seeds) not in self._seed_starts:
            argument = seed_argument(seed)
            if seeds not in self._compiled_init:
                options = INIT_COMPILER_OPTIONS.get(jax.default_backend())
                lowered = self._init.lower(argument, seeds, self._given)
                self._compiled_init[seeds] = lowered.compile(compiler_options=options)
            self._seed_starts[seed, seeds] = self._compiled_init[seeds](argument, self._given)
        return self._seed_starts[seed, seeds]

    def layout(self, lanes: int) -> LaneLayout:
        return LaneLayout.over(self.mesh, lanes)

    def start(self, values: Sequence[float], seed: int, seeds: int) -> StageLanes:
        """Lays out a stage training ``values`` and starts its lanes, placed over the mesh.

        The first start of a lane count also starts compiling its epoch program, in a thread.
        """
        if self._setup_started is None:
            self._setup_started = time.perf_counter()
        lane_values, seed_index = host_lanes(values, seeds)
        layout = self.layout(len(seed_index))
        if _call_key(layout) not in (*self._compiled, *self._compiling):
            self._compile_in_thread(layout, seed, seeds)
        seed_start = self.seed_start(seed, seeds)
        placed_index, placed_values = layout.place((seed_index, lane_values))
        state, init_keys, data_keys = self._start(seed_start, placed_index, placed_values)
        inputs = LaneInputs(placed_values, init_keys, data_keys, placed_index)
        return StageLanes(inputs, layout, state, seed, seeds)

    def abstract_state(self, lanes: int, seed: int, seeds: int):
        """The lane state of ``lanes`` real lanes as shapes (traced, never run or compiled)."""
        return self._abstract_start(lanes, seed, seeds)[0]

    def _abstract_start(self, lanes: int, seed: int, seeds: int):
        seed_start = jax.eval_shape(
            lambda s, given: self._init_fn(s, seeds, given), seed_argument(seed), self._given
        )
        index = jax.ShapeDtypeStruct((lanes,), np.int32)
        values = jax.ShapeDtypeStruct((lanes,), np.float32)
        return jax.eval_shape(self._start_fn, seed_start, index, values)

    def _compile_in_thread(self, layout: LaneLayout, seed: int, seeds: int) -> None:
        """Compiles the training call from shapes alone while the caller initialises.

        XLA compiles without holding Python's lock: the init and start programs compile and
        run meanwhile (on a GPU or a many-core CPU, side by side).
        """
        state, _, data_keys = self._abstract_start(layout.padded, seed, seeds)
        state, data_keys = _placed_shapes((state, data_keys), self._lane_sharding)
        seed_index = jax.ShapeDtypeStruct((layout.padded,), np.int32, sharding=self._lane_sharding)
        lane_input = data_keys if self.source is None else seed_index
        lane_args = (state, state.params, lane_input)
        shared = _placed_shapes(
            self._shared(0, self.budget.chunk, True, self._train_shapes(seeds)), None
        )
        outcome: list = []

        def compile_call():
            try:
                outcome.append(self._compile_call(lane_args, shared, layout.lanes))
            except BaseException as error:  # handed to the caller's thread in compile()
                outcome.append(error)

        thread = threading.Thread(target=compile_call, name="jaxsweep-compile", daemon=True)
        self._compiling[_call_key(layout)] = (thread, outcome)
        thread.start()

    def _compile_call(self, lane_args, shared, real_lanes: int):
        """``(LaneCall, Packing)``: the call for the sweep's lane strategy (``real_lanes`` of
        its lanes are not padding), and how its metrics come back."""
        lane_fn = (
            self._programs.lane_call if self.source is None else self._programs.lane_call_batches
        )
        lane_fn, packing = packed_call(lane_fn, lane_args, shared)
        call = _lanes.compile_call(lane_fn, self.strategy, self.mesh, lane_args, shared, real_lanes)
        return call, packing

    def _train_shapes(self, seeds: int):
        """What a call trains from: the placed arrays, or the shapes of a source's batches
        ``(seeds, chunk, batch, ...)`` (replicated)."""
        if self.source is None:
            return self.data.x_train, self.data.y_train
        replicated = _sharding.replicated(self.mesh)
        lead = (seeds, self.budget.chunk, self.budget.batch_size)

        def batch(column: SourceColumn):
            return jax.ShapeDtypeStruct(lead + column.shape[1:], column.dtype, sharding=replicated)

        return batch(self._sample.x_train), batch(self._sample.y_train)

    def _shared(self, start: int, steps: int, validate: bool, train) -> tuple:
        """The arguments every lane of a call shares: where it starts, how many steps it
        trains, whether it validates, what it trains on and the validation set."""
        epoch, offset = divmod(start, self.budget.steps_per_epoch)
        flags = (np.int32(epoch), np.int32(offset), np.int32(steps), np.bool_(validate))
        return (*flags, *train, self.data.x_val, self.data.y_val)

    def compile(self, lanes: StageLanes) -> float:
        """Compiles the training call for this stage's lane count; seconds spent (0: reused).

        The first compilation reports the wall time from the sweep's first start to a ready
        program: initialisation, lane start and compiling, its one-time set-up.
        """
        key = _call_key(lanes.layout)
        if key in self._compiled:
            return 0.0
        started = time.perf_counter()
        if key not in self._compiling:
            self._compile_in_thread(lanes.layout, lanes.seed, lanes.seeds)
        thread, outcome = self._compiling.pop(key)
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        self._compiled[key] = outcome[0]
        if self._setup_started is not None:
            started, self._setup_started = min(started, self._setup_started), None
        return time.perf_counter() - started

    # ------------------------------------------------------------------------- training

    def orders(self, lanes: StageLanes, epoch: int) -> np.ndarray:
        """Every seed's batch order of ``epoch`` on the host, ``(seeds, steps, batch)``: the
        rows a source is read in (the same permutations the arrays path draws on device).
        Kept for the epoch in progress and the next: a call needs at most two."""
        key = (lanes.seed, lanes.seeds, epoch)
        if key not in self._epoch_orders:
            for old in [k for k in self._epoch_orders if k[:2] != key[:2] or k[2] < epoch - 1]:
                del self._epoch_orders[old]
            data_keys = self.seed_start(lanes.seed, lanes.seeds).data_keys
            self._epoch_orders[key] = np.asarray(self._orders(data_keys, np.int32(epoch)))
        return self._epoch_orders[key]

    def _read_call(self, lanes: StageLanes, start: int, steps: int):
        """The batches of one call, read from the source on the host: ``(x, y)`` shaped
        ``(seeds, chunk, batch, ...)``; rows past ``steps`` repeat the first (never trained)."""
        per_epoch = self.budget.steps_per_epoch
        rows = [
            self.orders(lanes, step // per_epoch)[:, step % per_epoch]
            for step in range(start, start + steps)
        ]
        rows += rows[:1] * (self.budget.chunk - steps)
        indices = np.stack(rows, axis=1)  # (seeds, chunk, batch)
        x, y = read_batch(self.source, indices.reshape(-1))
        return jax.tree.map(lambda a: a.reshape(*indices.shape, *a.shape[1:]), (x, y))

    def _calls(self, segments: range) -> list[tuple[int, int, int, bool]]:
        """``(segment, first step, steps, ends the segment?)`` of every call of ``segments``."""
        calls = []
        for segment in segments:
            parts = self.budget.calls(segment)
            calls += [(segment, *part, i == len(parts) - 1) for i, part in enumerate(parts)]
        return calls

    def _training_data(self, lanes: StageLanes, calls):
        """What each call trains on: the placed arrays, or a source's batches, read on a worker
        thread while the devices train the calls before."""
        if self.source is None:
            return itertools.repeat((self.data.x_train, self.data.y_train))
        batches = prefetch(lambda call: self._read_call(lanes, call[1], call[2]), calls)
        return (_sharding.place_replicated(b, self.mesh) for b in batches)

    def train(
        self, lanes: StageLanes, state: LaneState, first: int = 0, stop=None, on_steps=None
    ) -> Iterator[tuple[int, LaneState, EpochMetrics]]:
        """Trains validation segments ``first`` to ``stop`` (default: the last) of every lane:
        yields ``(segment, state, metrics)`` after each, the metrics on the host (the state
        as the strategy holds it: :meth:`stacked` gives the stacked lane state).

        One call is always in flight ahead of the host: a call is dispatched before the
        previous one's statistics are fetched, and before a finished segment is handed to the
        caller (who updates the progress bar and saves checkpoints meanwhile), so the devices
        never wait for the host. ``on_steps(n)`` is told after each call's ``n`` steps.
        """
        lane_call, packing = self._compiled[_call_key(lanes.layout)]
        lane_input = lanes.inputs.data_keys if self.source is None else lanes.inputs.seed_index
        calls = self._calls(range(first, self.budget.validations if stop is None else stop))
        before, stats, pending = _lanes.params_of(state), [], None
        # arrays: the same data repeated without end, so zip stops with the calls
        for call, train in zip(calls, self._training_data(lanes, calls), strict=False):
            segment, start, steps, ends = call
            shared = self._shared(start, steps, ends, train)
            state, output = lane_call.run(state, before, lane_input, *shared)
            if ends:  # the next segment's update ratios are measured from here
                before = _lanes.params_of(state)
            if pending is not None:
                finished = self._receive(lanes, packing, pending, stats, on_steps)
                if finished is not None:
                    yield finished
            pending = (call, state, output)
        if pending is not None:
            yield self._receive(lanes, packing, pending, stats, on_steps)

    @staticmethod
    def _receive(lanes: StageLanes, packing, pending, stats: list, on_steps):
        """Fetches a dispatched call's statistics; at the end of a segment, its metrics."""
        (segment, _, steps, ends), state, output = pending
        host = packing.unpack(lanes.layout.gather(output))  # one fetch per call
        stats.append(host.stats)
        if on_steps is not None:
            on_steps(steps)
        if not ends:
            return None
        metrics = segment_metrics(list(stats), host.evaluation)
        stats.clear()
        return segment, state, metrics

    def stacked(self, lanes: StageLanes, state):
        """The stacked lane state (leading lane axis) of a state :meth:`train` yielded."""
        return self._compiled[_call_key(lanes.layout)][0].stacked(state)

    def memory(self, lanes: StageLanes, device) -> tuple[int, str]:
        """Peak device memory when the backend reports it, else the compiled estimate."""
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device_peak"
        estimate = compiled_memory(self.compiled_call(lanes))
        if not estimate:
            return 0, "unavailable"
        return estimate["total"], "compiled_estimate"

    def compiled_call(self, lanes: StageLanes):
        """The main compiled program of this stage's training call (after :meth:`compile`):
        for ``separate``, the one-lane program."""
        return self._compiled[_call_key(lanes.layout)][0].compiled


def _call_key(layout: LaneLayout) -> tuple[int, int]:
    """A compiled call serves one (real, padded) lane count: ``separate`` skips the padding."""
    return layout.lanes, layout.padded


def _placed_shapes(tree, sharding):
    """Shapes of ``tree`` with ``sharding`` (None: each array's own), for lowering ahead."""

    def shape(a):
        own = getattr(a, "sharding", None)  # host scalars have none: placed when called
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding or own)

    return jax.tree.map(shape, tree)
