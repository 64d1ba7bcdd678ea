"""A sweep's stage programs, compiled over a lane mesh: what the driver runs for every stage.

This is the one place that turns the pure programs of :mod:`jaxsweep._train` into running
code: lanes are laid out value-major over a one-axis device mesh, each seed's parameters are
initialised once per sweep, and the training call is compiled once per lane count (a sweep
has one), for the sweep's lane strategy (:mod:`jaxsweep._lanes`).

:class:`StagePrograms` is a facade over four parts, each with one job:

* :class:`LaneStarts` (here): the ``init`` program (every seed's keys, derived from the seed
  inside the program, and parameters), made once per sweep, and the ``start`` program (a
  stage's lanes: each lane's seed gathered, a fresh optimizer state holding its value, its
  keys). Per-lane inputs are made and padded with numpy on the host, so no tiny programs are
  compiled in between.
* the feed (:mod:`jaxsweep._feed`): what each call trains on, the split's arrays placed on
  every device, or a data source read on the host (its epochs' batch orders are a fourth
  program), the next call's batches read on a thread while the devices train.
* the compiled calls (:mod:`jaxsweep._calls`): the training call (``budget.chunk`` steps, and
  the validation where a segment ends) per (real, padded) lane count, compiled in a thread
  from shapes while the other programs compile and run.
* :class:`TrainingStream` (here): a stage's segments as calls; a segment's next call is
  dispatched before the previous one's metrics are fetched.

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
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _lanes, _measured, _sharding
from ._budget import Budget
from ._calls import CompiledCalls, ReadyCall
from ._calls import compiled_memory as compiled_memory  # re-exported for the benchmarks
from ._data import Split
from ._feed import ArrayFeed, EpochOrders, SourceFeed, make_feed, place_split
from ._model import Start
from ._sharding import LaneLayout
from ._shuffle import uses_permutation
from ._train import LaneState, Packing, Programs, SegmentMetrics, segment_metrics

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


class LaneStarts:
    """Every seed's start, made once per sweep, and each stage's lanes started from them.

    Two programs: ``init`` derives every seed's keys inside the program and initialises its
    parameters; ``start`` gathers each lane's seed, casts its value and makes a fresh
    optimizer state holding it. Pretrained values (``given``) are an argument of ``init``,
    never a constant in it.
    """

    def __init__(self, programs: Programs, mesh, given: Start | None):
        self.mesh = mesh
        self._given = _sharding.place_replicated(given, mesh)

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

        self._init_fn, self._start_fn = init, start  # for shapes of any lane count
        self._init = jax.jit(init, static_argnums=1, out_shardings=_sharding.replicated(mesh))
        self._start = jax.jit(start, out_shardings=_sharding.lane_sharding(mesh))
        self._compiled_init: dict[int, Any] = {}  # seeds -> compiled init program
        self._seed_starts: dict[tuple[int, int], SeedStart] = {}

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

    def start(
        self, lane_values: np.ndarray, seed_index: np.ndarray, layout: LaneLayout, seed, seeds
    ) -> StageLanes:
        """The stage of these host lanes (:func:`host_lanes`), padded and placed by
        ``layout``: each lane's inputs and fresh state."""
        seed_start = self.seed_start(seed, seeds)
        placed_index, placed_values = layout.place((seed_index, lane_values))
        state, init_keys, data_keys = self._start(seed_start, placed_index, placed_values)
        inputs = LaneInputs(placed_values, init_keys, data_keys, placed_index)
        return StageLanes(inputs, layout, state, seed, seeds)

    def abstract_start(self, lanes: int, seed: int, seeds: int):
        """``(state, init_keys, data_keys)`` of ``lanes`` lanes as shapes (traced only)."""
        seed_start = jax.eval_shape(
            lambda s, given: self._init_fn(s, seeds, given), seed_argument(seed), self._given
        )
        index = jax.ShapeDtypeStruct((lanes,), np.int32)
        values = jax.ShapeDtypeStruct((lanes,), np.float32)
        return jax.eval_shape(self._start_fn, seed_start, index, values)


class Call(NamedTuple):
    """One training call of a segment: ``steps`` steps from ``start``, and whether the
    segment's validation ends it."""

    segment: int
    start: int
    steps: int
    ends: bool


class TrainingStream:
    """Runs a stage's compiled call over its segments, one call in flight ahead of the host.

    It also gives the call's arguments as shapes (:meth:`call_shapes`), so the call compiles
    for exactly what :meth:`train` hands it.

    Args:
      budget: the steps and calls of every segment.
      feed: what each call trains on (:mod:`jaxsweep._feed`).
      starts: the lanes' starts (for the shapes of a stage's lane state).
      validation: the placed validation set ``(x_val, y_val)``.
    """

    def __init__(
        self, budget: Budget, feed: ArrayFeed | SourceFeed, starts: LaneStarts, validation
    ):
        self.budget, self.feed, self._starts = budget, feed, starts
        self._validation = tuple(validation)
        self._lane_sharding = _sharding.lane_sharding(starts.mesh)

    def call_shapes(self, layout: LaneLayout, seed: int, seeds: int) -> tuple[tuple, tuple]:
        """``(lane_args, shared)`` of a stage's call as placed shapes, for compiling ahead."""
        state, _, data_keys = self._starts.abstract_start(layout.padded, seed, seeds)
        state, data_keys = _placed_shapes((state, data_keys), self._lane_sharding)
        seed_index = jax.ShapeDtypeStruct((layout.padded,), np.int32, sharding=self._lane_sharding)
        lane_args = (state, state.params, self.feed.lane_input(data_keys, seed_index))
        shared = self._shared(0, self.budget.chunk, True, self.feed.train_shapes(seeds))
        return lane_args, _placed_shapes(shared, None)

    def _shared(self, start: int, steps: int, validate: bool, train) -> tuple:
        """The arguments every lane of a call shares: where it starts, how many steps it
        trains, whether it validates, what it trains on and the validation set."""
        epoch, offset = divmod(start, self.budget.steps_per_epoch)
        flags = (np.int32(epoch), np.int32(offset), np.int32(steps), np.bool_(validate))
        return (*flags, *train, *self._validation)

    def calls(self, segments: range) -> list[Call]:
        """Every call of ``segments``, in order."""
        calls = []
        for segment in segments:
            parts = self.budget.calls(segment)
            calls += [Call(segment, *part, i == len(parts) - 1) for i, part in enumerate(parts)]
        return calls

    def train(
        self,
        ready: ReadyCall,
        lanes: StageLanes,
        state: LaneState,
        first=0,
        stop=None,
        on_steps=None,
    ) -> Iterator[tuple[int, LaneState, SegmentMetrics]]:
        """Trains segments ``first`` to ``stop`` (default: the last) with ``ready``'s call:
        yields ``(segment, state, metrics)`` after each (see :meth:`StagePrograms.train`).

        A call is dispatched before the previous one's statistics are fetched, and before a
        finished segment is handed to the caller, so the devices never wait for the host.
        """
        lane_input = self.feed.lane_input(lanes.inputs.data_keys, lanes.inputs.seed_index)
        calls = self.calls(range(first, self.budget.validations if stop is None else stop))
        before, stats, pending = _lanes.params_of(state), [], None
        # arrays: the same data repeated without end, so zip stops with the calls
        for call, train in zip(calls, self.feed.per_call(lanes, calls), strict=False):
            shared = self._shared(call.start, call.steps, call.ends, train)
            state, output = ready.call.run(state, before, lane_input, *shared)
            if call.ends:  # the next segment's update ratios are measured from here
                before = _lanes.params_of(state)
            if pending is not None:
                finished = self._receive(lanes, ready.packing, pending, stats, on_steps)
                if finished is not None:
                    yield finished
            pending = (call, state, output)
        if pending is not None:
            yield self._receive(lanes, ready.packing, pending, stats, on_steps)

    @staticmethod
    def _receive(lanes: StageLanes, packing: Packing, pending, stats: list, on_steps):
        """Fetches a dispatched call's statistics; at the end of a segment, its metrics."""
        call, state, output = pending
        host = packing.unpack(lanes.layout.gather(output))  # one fetch per call
        stats.append(host.stats)
        if on_steps is not None:
            on_steps(call.steps)
        if not call.ends:
            return None
        metrics = segment_metrics(list(stats), host.evaluation)
        stats.clear()
        return call.segment, state, metrics


class StagePrograms:
    """The programs of one sweep, jitted over a lane mesh; compiled on first use.

    A facade over its parts: :class:`LaneStarts` (seed starts, lane starts), the feed
    (:mod:`jaxsweep._feed`), the compiled calls (:mod:`jaxsweep._calls`) and the
    :class:`TrainingStream`.

    Args:
      programs: the pure programs (:func:`jaxsweep._train.make_programs`).
      data: the host arrays of the split: placed whole on every device, once.
      devices: the devices the lanes are split over (:func:`_sharding.resolve_devices`).
      budget: the steps, validations and calls of every stage (:mod:`jaxsweep._budget`).
      lanes: how the lanes execute: a strategy (:mod:`jaxsweep._lanes`; ``vmap`` by
        default), or the candidates of a measured choice (:func:`jaxsweep._measured.plan`).
      start: given (pretrained) values every lane starts from; None: a fresh initialisation.
      memory_limit: bytes a stage's call may use per device (:func:`_lanes.fit_memory`);
        None: every lane at once.
    """

    def __init__(
        self,
        programs: Programs,
        data: Split,
        devices: Sequence,
        budget: Budget,
        lanes: _lanes.Strategy | _measured.Plan = _lanes.VMAP,
        start: Start | None = None,
        memory_limit: int | None = None,
    ):
        # lanes split over a one-axis mesh, data copied to every device; every output keeps
        # the lane axis split the same way. A training source stays on the host, read per call.
        self.mesh = _sharding.lane_mesh(devices)
        self.data = place_split(data, self.mesh)
        self.budget = budget
        if isinstance(lanes, _lanes.Strategy):
            lanes = _measured.Plan(lanes, "given", forced=True)
        self._starts = LaneStarts(programs, self.mesh, start)
        self._orders = EpochOrders(
            programs.epoch_orders,
            lambda seed, seeds: self.seed_start(seed, seeds).data_keys,
            programs.order_rows,
            whole=uses_permutation(len(data.y_train)),  # else a call's rows alone
        )
        feed = make_feed(self.data, self.mesh, budget, self._orders)
        self.source = feed.source if isinstance(feed, SourceFeed) else None
        self._stream = TrainingStream(
            budget, feed, self._starts, (self.data.x_val, self.data.y_val)
        )
        self._calls = CompiledCalls(
            feed.lane_program(programs),
            lanes,
            self.mesh,
            self._stream.call_shapes,
            memory_limit,
        )
        self._setup_started: float | None = None  # when the one-time work began

    def lanes_record(self) -> dict:
        """How the lanes ran, how the strategy was chosen and why: for
        ``result.environment["lanes"]``."""
        return self._calls.describe()

    def decided_strategy(self) -> str | None:
        """The lane strategy decided for the sweep (before chunking for memory), or None."""
        return self._calls.decided()

    def adopt_strategy(self, name: str) -> None:
        """Runs ``name`` (a resumed sweep's strategy) unless ``lanes=`` forced one."""
        self._calls.adopt(name)

    def seed_start(self, seed: int, seeds: int) -> SeedStart:
        """Each seed's keys and initial ``(params, model_state)``, leading axis ``(seeds,)``:
        made once per sweep (:meth:`LaneStarts.seed_start`)."""
        return self._starts.seed_start(seed, seeds)

    def layout(self, lanes: int) -> LaneLayout:
        return self._starts.layout(lanes)

    def start(self, values: Sequence[float], seed: int, seeds: int) -> StageLanes:
        """Lays out a stage training ``values`` and starts its lanes, placed over the mesh.

        The first start of a lane count also starts compiling its training call, in a
        thread, before the seeds initialise: the two overlap.
        """
        if self._setup_started is None:
            self._setup_started = time.perf_counter()
        lane_values, seed_index = host_lanes(values, seeds)
        layout = self.layout(len(seed_index))
        self._calls.start_compiling(layout, seed, seeds)
        return self._starts.start(lane_values, seed_index, layout, seed, seeds)

    def abstract_state(self, lanes: int, seed: int, seeds: int):
        """The lane state of ``lanes`` real lanes as shapes (traced, never run or compiled)."""
        return self._starts.abstract_start(lanes, seed, seeds)[0]

    def compile(self, lanes: StageLanes) -> float:
        """Compiles the training call for this stage's lane count; seconds spent (0: reused).

        The first compilation reports the wall time from the sweep's first start to a ready
        program: initialisation, lane start and compiling, its one-time set-up.
        """
        if self._calls.is_ready(lanes.layout):
            return 0.0
        started = time.perf_counter()
        self._calls.compile(lanes.layout, lanes.seed, lanes.seeds)
        if self._setup_started is not None:
            started, self._setup_started = min(started, self._setup_started), None
        return time.perf_counter() - started

    def orders(self, lanes: StageLanes, epoch: int) -> np.ndarray:
        """Every seed's batch order of ``epoch`` on the host, ``(seeds, steps, batch)``: the
        rows a source is read in (the same permutations the arrays path draws on device)."""
        return self._orders.of(lanes.seed, lanes.seeds, epoch)

    def train(
        self, lanes: StageLanes, state: LaneState, first: int = 0, stop=None, on_steps=None
    ) -> Iterator[tuple[int, LaneState, SegmentMetrics]]:
        """Trains validation segments ``first`` to ``stop`` (default: the last) of every lane:
        yields ``(segment, state, metrics)`` after each, the metrics on the host (the state
        as the strategy holds it: :meth:`stacked` gives the stacked lane state).

        One call is always in flight ahead of the host: a call is dispatched before the
        previous one's statistics are fetched, and before a finished segment is handed to the
        caller (who updates the progress bar and saves checkpoints meanwhile), so the devices
        never wait for the host. ``on_steps(n)`` is told after each call's ``n`` steps.
        """
        # a generator itself, like the stream's: nothing is looked up until the first segment
        ready = self._calls.get(lanes.layout)
        yield from self._stream.train(ready, lanes, state, first, stop, on_steps)

    def stacked(self, lanes: StageLanes, state):
        """The stacked lane state (leading lane axis) of a state :meth:`train` yielded."""
        return self._calls.get(lanes.layout).call.stacked(state)

    def memory(self, lanes: StageLanes, device) -> tuple[int, str]:
        """Peak device memory when the backend reports it, else the compiled estimate."""
        return self._calls.memory(lanes.layout, device)

    def compiled_call(self, lanes: StageLanes):
        """The main compiled program of this stage's training call (after :meth:`compile`):
        for ``separate``, the one-lane program."""
        return self._calls.get(lanes.layout).call.compiled


def _placed_shapes(tree, sharding):
    """Shapes of ``tree`` with ``sharding`` (None: each array's own), for lowering ahead."""

    def shape(a):
        own = getattr(a, "sharding", None)  # host scalars have none: placed when called
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding or own)

    return jax.tree.map(shape, tree)
