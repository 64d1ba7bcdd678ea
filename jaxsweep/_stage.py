"""A sweep's stage programs, compiled over a lane mesh: what the driver runs for every stage.

This is the one place that turns the pure programs of :mod:`jaxsweep._train` into running
code: lanes are laid out value-major over a one-axis device mesh, each seed's parameters are
initialised once per sweep, and the training and validation programs are compiled once per
lane count (a sweep has one). A validation segment (an epoch by default) is trained by calls
of ``budget.chunk`` steps, each dispatched before the previous one's metrics are fetched, then
validated. The benchmarks build their "jaxsweep stage" here too, so they time exactly what a
sweep runs::

    stage = StagePrograms(make_programs(...), split, jax.devices()[:1], budget)
    lanes = stage.start([1e-3, 1e-2], seed=0, seeds=1)
    stage.compile(lanes)
    state = lanes.state
    for segment in range(budget.validations):
        state, host_metrics = stage.run_segment(lanes, state, segment)

Randomness depends on (seed, seed index, epoch) only (:func:`seed_keys`): every stage and
every rerun of a sweep sees the same initial parameters and batch orders.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _sharding
from ._budget import Budget
from ._data import Split
from ._sharding import LaneLayout
from ._sources import SourceColumn, prefetch, read_batch
from ._train import LaneState, Programs, segment_metrics

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
    seeds: int  # seeds per value: ``inputs.seed_index`` counts them


@functools.lru_cache(maxsize=16)
def seed_keys(seed: int, seeds: int) -> tuple[jax.Array, jax.Array]:
    """``(seeds,)`` init keys and data keys, derived from (seed, seed index) alone.

    >>> init, data = seed_keys(0, 2)
    >>> init.shape, data.shape
    ((2,), (2,))
    """
    base = jax.random.key(seed)
    per_seed = [jax.random.fold_in(base, s) for s in range(seeds)]
    init = jnp.stack([jax.random.fold_in(k, 0) for k in per_seed])
    data = jnp.stack([jax.random.fold_in(k, 1) for k in per_seed])
    return init, data


def lane_inputs(values: Sequence[float], seed: int, seeds: int) -> LaneInputs:
    """The per-lane inputs of a stage training ``values`` for ``seeds`` seeds (host side).

    >>> lane_inputs([0.1, 0.2], seed=0, seeds=2).seed_index.tolist()
    [0, 1, 0, 1]
    """
    seed_init_keys, seed_data_keys = seed_keys(seed, seeds)
    seed_of_lane = np.tile(np.arange(seeds, dtype=np.int32), len(values))
    return LaneInputs(
        values=jnp.asarray(np.repeat(np.asarray(values, np.float64), seeds), jnp.float32),
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
    """

    def __init__(self, programs: Programs, data: Split, devices: Sequence, budget: Budget):
        # lanes split over a one-axis mesh, data copied to every device: jit partitions the
        # vmapped programs (SPMD), and every output keeps the lane axis split the same way
        self.mesh = _sharding.lane_mesh(devices)
        # a training source stays on the host and is read per call; arrays go to the devices
        self.source = data.x_train.source if isinstance(data.x_train, SourceColumn) else None
        if self.source is None:
            self.data = _sharding.place_replicated(data, self.mesh)
        else:
            placed = _sharding.place_replicated((data.x_val, data.y_val), self.mesh)
            self.data = data._replace(x_val=placed[0], y_val=placed[1])
        self.budget = budget
        lanes = _sharding.lane_sharding(self.mesh)
        replicated = _sharding.replicated(self.mesh)
        self._programs = programs
        self._init = jax.jit(programs.init_seeds, out_shardings=replicated)
        self._start = jax.jit(programs.start_lanes, out_shardings=lanes)
        train = programs.train_chunk if self.source is None else programs.train_batches
        self._chunk = jax.jit(train, out_shardings=lanes)
        self._validate = jax.jit(programs.validate, out_shardings=lanes)
        self._orders = jax.jit(programs.epoch_orders, out_shardings=replicated)
        self._compiled_init = None
        self._seed_starts: dict[tuple[int, int], Any] = {}
        # padded lane count -> (compiled chunk program, compiled validation program)
        self._compiled: dict[int, tuple[Any, Any]] = {}
        self._epoch_orders: dict[tuple[int, int, int], Any] = {}  # (seed, seeds, epoch) ->

    def seed_start(self, seed: int, seeds: int):
        """Each seed's initial ``(params, constants)``, leading axis ``(seeds,)``, replicated.

        Parameters depend on the seed alone: each seed is initialised once per sweep, and
        every stage only gathers them into its lanes and starts fresh optimizers.
        """
        if (seed, seeds) not in self._seed_starts:
            keys = _sharding.place_replicated(seed_keys(seed, seeds)[0], self.mesh)
            if self._compiled_init is None:
                options = INIT_COMPILER_OPTIONS.get(jax.default_backend())
                self._compiled_init = self._init.lower(keys).compile(compiler_options=options)
            self._seed_starts[seed, seeds] = self._compiled_init(keys)
        return self._seed_starts[seed, seeds]

    def layout(self, lanes: int) -> LaneLayout:
        return LaneLayout.over(self.mesh, lanes)

    def start(self, values: Sequence[float], seed: int, seeds: int) -> StageLanes:
        """Lays out a stage training ``values`` and starts its lanes, placed over the mesh."""
        inputs = lane_inputs(values, seed, seeds)
        layout = self.layout(len(inputs.seed_index))
        placed = layout.place(inputs)
        params, constants = self.seed_start(seed, seeds)
        state = self._start(params, constants, placed.seed_index, placed.values)
        return StageLanes(placed, layout, state, seed, seeds)

    def abstract_state(self, lanes: int, seed: int, seeds: int):
        """The lane state of ``lanes`` real lanes as shapes (traced, never run or compiled)."""
        params, constants = self.seed_start(seed, seeds)
        seed_index = np.zeros(lanes, np.int32)
        values = np.zeros(lanes, np.float32)
        return jax.eval_shape(self._programs.start_lanes, params, constants, seed_index, values)

    def orders(self, lanes: StageLanes, epoch: int):
        """Every seed's batch order of ``epoch``, ``(seeds, steps_per_epoch, batch)``, replicated.

        Kept for the epoch in progress and the next one only: a call needs at most two.
        """
        seed, seeds = lanes.seed, lanes.seeds
        key = (seed, seeds, epoch)
        if key not in self._epoch_orders:
            for old in [k for k in self._epoch_orders if k[:2] != key[:2] or k[2] < epoch - 1]:
                del self._epoch_orders[old]
            data_keys = _sharding.place_replicated(seed_keys(seed, seeds)[1], self.mesh)
            self._epoch_orders[key] = self._orders(data_keys, np.int32(epoch))
        return self._epoch_orders[key]

    def _chunk_arguments(self, lanes: StageLanes, start: int, steps: int) -> tuple:
        """The arguments of the call that trains ``steps`` steps from step ``start``."""
        if self.source is not None:
            return self._place_batches(lanes, self._read_call(lanes, start, steps), steps)
        epoch, offset = divmod(start, self.budget.steps_per_epoch)
        orders = self.orders(lanes, epoch)
        crosses = offset + steps > self.budget.steps_per_epoch
        after = self.orders(lanes, epoch + 1) if crosses else orders
        x_train, y_train = self.data.x_train, self.data.y_train
        return (
            lanes.inputs.seed_index,
            orders,
            after,
            np.int32(offset),
            np.int32(steps),
            x_train,
            y_train,
        )

    def _read_call(self, lanes: StageLanes, start: int, steps: int):
        """The batches of one call read from the source on the host: ``(x, y)`` shaped
        ``(seeds, chunk, batch, ...)``; steps past ``steps`` repeat the first (never trained)."""
        per_epoch = self.budget.steps_per_epoch
        rows, host = [], {}  # each epoch's orders fetched to the host once per call
        for step in range(start, start + steps):
            epoch, row = divmod(step, per_epoch)
            if epoch not in host:
                host[epoch] = np.asarray(self.orders(lanes, epoch))
            rows.append(host[epoch][:, row])  # (seeds, batch)
        rows += rows[:1] * (self.budget.chunk - steps)
        indices = np.stack(rows, axis=1)  # (seeds, chunk, batch)
        x, y = read_batch(self.source, indices.reshape(-1))
        shape = indices.shape
        return jax.tree.map(lambda a: a.reshape(*shape, *a.shape[1:]), (x, y))

    def _place_batches(self, lanes: StageLanes, batches, steps: int) -> tuple:
        x, y = _sharding.place_replicated(batches, self.mesh)
        return (lanes.inputs.seed_index, x, y, np.int32(steps))

    def compile(self, lanes: StageLanes) -> float:
        """Compiles the training and validation programs for this stage's lane count;
        seconds spent (0: reused)."""
        if lanes.layout.padded in self._compiled:
            return 0.0
        started = time.perf_counter()
        arguments = self._chunk_arguments(lanes, 0, self.budget.chunk)
        chunk = self._chunk.lower(lanes.state, *arguments).compile()
        validate = self._validate.lower(lanes.state, self.data.x_val, self.data.y_val).compile()
        self._compiled[lanes.layout.padded] = (chunk, validate)
        return time.perf_counter() - started

    def train_segment(self, lanes: StageLanes, state: LaneState, segment: int):
        """Trains validation segment ``segment``: yields ``(state, host stats, steps)`` per call.

        The next call is dispatched before the previous one's stats are fetched, so the
        devices never wait for the host; the last state yielded is the segment's.
        """
        chunk, _ = self._compiled[lanes.layout.padded]
        calls = self.budget.calls(segment)
        if self.source is None:
            arguments = (self._chunk_arguments(lanes, *call) for call in calls)
        else:  # the next call's batches are read on a worker thread while this one trains
            batches = prefetch(lambda call: self._read_call(lanes, *call), calls)
            arguments = (
                self._place_batches(lanes, b, steps)
                for b, (_, steps) in zip(batches, calls, strict=True)
            )
        pending = None
        for (_, steps), args in zip(calls, arguments, strict=True):
            state, stats = chunk(state, *args)
            if pending is not None:
                yield pending[0], lanes.layout.gather(pending[1]), pending[2]
            pending = (state, stats, steps)
        yield pending[0], lanes.layout.gather(pending[1]), pending[2]

    def validate(self, lanes: StageLanes, state: LaneState):
        """Every lane's validation loss and auxiliary entries, on the host (padding dropped)."""
        _, validate = self._compiled[lanes.layout.padded]
        return lanes.layout.gather(validate(state, self.data.x_val, self.data.y_val))

    def run_segment(self, lanes: StageLanes, state: LaneState, segment: int, on_steps=None):
        """Trains and validates one segment: ``(state, EpochMetrics)`` with host metrics.

        ``on_steps(n)`` is called after each call's ``n`` steps (the progress bar).
        """
        stats = []
        for latest, chunk_stats, steps in self.train_segment(lanes, state, segment):
            state = latest
            stats.append(chunk_stats)
            if on_steps is not None:
                on_steps(steps)
        return state, segment_metrics(stats, *self.validate(lanes, state))

    def run_epoch(self, lanes: StageLanes, state: LaneState, epoch: int):
        """One validation segment (an epoch when validating once per epoch)."""
        return self.run_segment(lanes, state, epoch)

    def memory(self, lanes: StageLanes, device) -> tuple[int, str]:
        """Peak device memory when the backend reports it, else the compiled estimate."""
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device_peak"
        estimates = [compiled_memory(p) for p in self._compiled[lanes.layout.padded]]
        if not all(estimates):
            return 0, "unavailable"
        # training and validation run one after the other: the larger of the two
        return max(e["total"] for e in estimates), "compiled_estimate"

    def compiled_epoch(self, lanes: StageLanes):
        """The compiled training program of this stage's lane count (after :meth:`compile`)."""
        return self._compiled[lanes.layout.padded][0]

    def compiled_validation(self, lanes: StageLanes):
        """The compiled validation program of this stage's lane count (after :meth:`compile`)."""
        return self._compiled[lanes.layout.padded][1]
