"""How a stage's lanes execute: one batched program, a loop inside one program, or one call each.

A lane is one (value, seed) pair; every lane runs the same one-lane call
(``Programs.lane_call``: some training steps, and a validation where a segment ends). A
*strategy* decides how the lanes of a stage share the hardware:

* ``"vmap"``: one program over every lane at once (``jax.vmap``). Best where one lane leaves
  the device idle (a GPU, a TPU, a tiny model on a CPU): the lanes share each kernel call.
* ``"map"``: one program that runs the lanes one after another (``jax.lax.map``): each lane's
  arithmetic keeps the shapes of a single run, with one call per stage.
* ``"chunks:N"``: ``lax.map`` over groups of ``N`` vmapped lanes, between the two.
* ``"separate"``: one compiled one-lane program, called once per lane. Batched weights turn
  convolutions into grouped convolutions and matrix products into batched ones, which XLA's
  CPU backend runs slower than the separate ones; this keeps every lane's program exactly a
  single run's. On several devices of one process each device calls its own copy for the
  lanes it holds, side by side with the others, and skips the padding.
* ``"auto"``: :func:`choose` picks by backend and model (see there); ``result.environment``
  records the choice and why.

Every strategy computes the same arithmetic per lane: results agree to float rounding.

:func:`compile_call` builds a stage's training call for a strategy; ``_stage.StagePrograms``
runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from jax.sharding import SingleDeviceSharding

from . import _sharding

STRATEGY_NAMES = ("auto", "vmap", "map", "chunks:N", "separate")
_CHUNKS = re.compile(r"^chunks:(\d+)$")
# On a CPU, batched (vmapped) weights pay off only while per-call costs dominate: measured on
# a 2-core Xeon with 5 lanes of digits, vmap is as fast as separate calls for an MLP of 26k
# parameters, 0.6x to 0.8x of them at 300k parameters or with any convolution.
CPU_VMAP_MAX_PARAMS = 100_000


class Strategy(NamedTuple):
    """How lanes execute; ``str(strategy)`` is the name ``run(lanes=...)`` takes."""

    kind: str  # "vmap" | "map" | "chunks" | "separate"
    chunk: int = 0  # lanes per vmapped group, for "chunks"

    def __str__(self) -> str:
        return f"chunks:{self.chunk}" if self.kind == "chunks" else self.kind


VMAP = Strategy("vmap")


def parse(lanes) -> Strategy | None:
    """The strategy ``run(lanes=...)`` names; None for ``"auto"``.

    Raises:
      TypeError: ``lanes`` is not a string.
      ValueError: it names no strategy.
    """
    if not isinstance(lanes, str):
        raise TypeError(
            f"lanes: expected one of {STRATEGY_NAMES} (a string), got {type(lanes).__name__}"
        )
    if lanes == "auto":
        return None
    if lanes in ("vmap", "map", "separate"):
        return Strategy(lanes)
    match = _CHUNKS.match(lanes)
    if match and int(match.group(1)) >= 1:
        return Strategy("chunks", int(match.group(1)))
    raise ValueError(
        f"lanes: unknown strategy {lanes!r}; expected one of {STRATEGY_NAMES} "
        "(chunks:N with N >= 1 lanes per vmapped group, e.g. 'chunks:2')"
    )


def check(strategy: Strategy | None, devices) -> None:
    """Refuses a forced strategy the devices cannot run, before anything compiles."""
    if strategy is not None and strategy.kind == "separate" and process_count(devices) > 1:
        raise ValueError(
            "lanes: 'separate' calls a one-lane program on each of this process's devices, "
            "but the sweep's devices belong to several processes; pass lanes='vmap', 'map' or "
            "'chunks:N' (they run one program over every process's devices)"
        )


def process_count(devices) -> int:
    """How many processes the devices belong to."""
    return len({device.process_index for device in devices})


class ModelTraits(NamedTuple):
    """What the strategy rule looks at (from a trace of one training step; nothing compiles)."""

    params: int  # trainable parameters of one lane
    convolutions: bool  # the step contains a convolution


def model_traits(params: int, apply: Callable, *abstract_args) -> ModelTraits:
    """Traces ``apply`` (one lane's forward pass, shapes only) and notes any convolution."""
    closed = jax.make_jaxpr(apply)(*abstract_args)
    return ModelTraits(params=params, convolutions=_has_convolution(closed.jaxpr))


def _has_convolution(jaxpr) -> bool:
    for equation in jaxpr.eqns:
        if equation.primitive.name == "conv_general_dilated":
            return True
        if any(_has_convolution(sub) for sub in _inner_jaxprs(equation.params)):
            return True
    return False


def _inner_jaxprs(params: dict):
    """The jaxprs nested in an equation's parameters (scan, cond, custom derivatives, ...)."""
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def choose(
    forced: Strategy | None,
    backend: str,
    device_count: int,
    traits: ModelTraits,
    processes: int = 1,
) -> tuple[Strategy, str]:
    """The strategy to run and the reason, for ``result.environment["lanes"]``.

    The rule ("auto"), from measurements of the benchmarks (``benchmarks/engine_costs.py``):
    on accelerators ``vmap`` (one small model leaves most of the chip idle, so lanes run side by
    side); on a CPU, ``separate`` for models with convolutions or more than
    :data:`CPU_VMAP_MAX_PARAMS` parameters, else ``vmap``. With several CPU devices
    ``separate`` trains each device's lanes with its own calls, and a device without lanes
    left lends its core to the others (5 lanes on 2 devices: 3 + 2); ``map`` replaces it when
    the devices belong to several ``processes`` (``separate`` calls this process's devices).
    """
    if forced is not None:
        return forced, "forced by lanes="
    if backend != "cpu":
        return Strategy("vmap"), f"{backend}: lanes share each kernel"
    large = traits.convolutions or traits.params > CPU_VMAP_MAX_PARAMS
    if not large:
        return Strategy("vmap"), f"cpu, {traits.params} parameters, no convolution"
    why = "convolutions" if traits.convolutions else f"{traits.params} parameters"
    if processes > 1:
        return Strategy("map"), f"cpu, {why}, {processes} processes"
    devices = f", {device_count} devices" if device_count > 1 else ""
    return Strategy("separate"), f"cpu, {why}{devices}"


# ----------------------------------------------------------------------------- lane calls


def _batched(lane_fn: Callable, strategy: Strategy, lane_args: int, shared_args: int):
    """``lane_fn`` over a leading lane axis of its first ``lane_args`` arguments (the other
    ``shared_args`` are the same for every lane: one copy), the way ``strategy`` says."""
    if strategy.kind == "vmap":
        return jax.vmap(lane_fn, in_axes=(0,) * lane_args + (None,) * shared_args)
    if strategy.kind not in ("map", "chunks"):
        raise ValueError(f"{strategy} is not a batched strategy")
    chunk = strategy.chunk if strategy.kind == "chunks" else None

    def mapped(*args):
        per_lane, shared = args[:lane_args], args[lane_args:]
        return jax.lax.map(lambda lane: lane_fn(*lane, *shared), per_lane, batch_size=chunk)

    return mapped


def _over_devices(fn: Callable, mesh, lane_args: int, shared_args: int) -> Callable:
    """``fn`` on each device's own lanes (``shard_map``): lane arguments split, others whole."""
    if mesh.size == 1:
        return fn
    specs = (P(_sharding.LANE_AXIS),) * lane_args + (P(),) * shared_args
    # every output is split by lane; the running sums of a call start from constants inside a
    # scan whose carry becomes per-lane, which the varying-axes check would refuse
    return jax.shard_map(
        fn, mesh=mesh, in_specs=specs, out_specs=P(_sharding.LANE_AXIS), check_vma=False
    )


class Apart(tuple):
    """A stage's lane state held as one tree per lane (the "separate" strategy): split from
    the stacked state once per stage, stacked again only when asked for (a checkpoint)."""


def params_of(state):
    """The parameters of a lane state, stacked or held apart."""
    if isinstance(state, Apart):
        return Apart(lane.params for lane in state)
    return state.params


class LaneCall(NamedTuple):
    """A stage's compiled call for one strategy."""

    run: Callable  # (*lane_args, *shared) -> (state, stacked metrics); state maybe Apart
    compiled: Any  # the main XLA program (its memory account; one lane's for "separate")
    stacked: Callable  # state -> the stacked lane state (a copy only for Apart)
    strategy: Strategy = VMAP  # what runs: a vmap too large for memory runs in chunks
    memory: dict | None = None  # the fit to a memory limit (:func:`fit_memory`), if one was set
    lowered: Any = None  # the main program before compiling (its text names the call)


def compile_call(
    lane_fn: Callable,
    strategy: Strategy,
    mesh,
    lane_args: tuple,
    shared: tuple,
    real_lanes: int | None = None,
    memory_limit: int | None = None,
) -> LaneCall:
    """Compiles a stage's call of ``lane_fn`` for ``strategy``; nothing runs.

    Args:
      lane_fn: one lane's call (``Programs.lane_call``): ``(*lane_args, *shared) -> outputs``.
      strategy: how the lanes execute.
      mesh: the lane mesh; the lane axis of every ``lane_args`` entry is split over it.
      lane_args, shared: arrays or shapes (``jax.ShapeDtypeStruct`` with shardings).
      real_lanes: how many of the lanes are real (the rest pad them to a multiple of the
        device count): ``separate`` does not train the padding; None: every lane is real.
      memory_limit: bytes one device may give the call; a batched call whose compiled
        estimate exceeds it runs its lanes in smaller vmapped groups (:func:`fit_memory`).

    Returns:
      A :class:`LaneCall`: ``run(*lane_args, *shared)`` returns the new lane state and the
      metrics stacked over the lanes.

    Raises:
      StageMemoryError: not even one lane at a time fits in ``memory_limit``.
    """
    if strategy.kind == "separate":
        call = _separate_call(lane_fn, mesh, lane_args, shared, real_lanes)
    else:
        call = _batched_call(lane_fn, strategy, mesh, lane_args, shared)
    if memory_limit is None:
        return call
    return fit_memory(
        call,
        memory_limit,
        lanes_per_device(lane_args, mesh),
        lambda smaller: _batched_call(lane_fn, smaller, mesh, lane_args, shared),
    )


def _batched_call(lane_fn: Callable, strategy: Strategy, mesh, lane_args, shared) -> LaneCall:
    """One program over every lane (``vmap``, ``map`` or ``chunks``), compiled."""
    fn = _over_devices(
        _batched(lane_fn, strategy, len(lane_args), len(shared)),
        mesh,
        lane_args=len(lane_args),
        shared_args=len(shared),
    )
    sharding = _sharding.lane_sharding(mesh)
    lowered = jax.jit(fn, out_shardings=sharding).lower(*lane_args, *shared)
    compiled = lowered.compile()
    return LaneCall(compiled, compiled, lambda state: state, strategy, lowered=lowered)


def lanes_per_device(lane_args, mesh) -> int:
    """The lanes each device of ``mesh`` holds (padded lanes over devices)."""
    return jax.tree.leaves(lane_args)[0].shape[0] // mesh.size


# ----------------------------------------------------------------------------- memory


def check_device_memory(device_memory) -> None:
    """Refuses a ``device_memory=`` that is not a positive number of bytes."""
    if device_memory is None:
        return
    if isinstance(device_memory, bool) or not isinstance(device_memory, (int, np.integer)):
        raise TypeError(
            "device_memory: expected a number of bytes per device (an int) or None, got "
            f"{type(device_memory).__name__}"
        )
    if device_memory <= 0:
        raise ValueError(f"device_memory: expected a positive number of bytes, got {device_memory}")


def memory_limit(device_memory: int | None, devices) -> int | None:
    """The bytes a stage's call may use per device: ``device_memory`` when given, else the
    limit the first device reports (GPUs, TPUs); None where it reports none (a CPU)."""
    if device_memory is not None:
        return int(device_memory)
    device = _sharding.first_local(devices)
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


class StageMemoryError(MemoryError):
    """A stage's lanes do not fit in device memory, not even one lane at a time."""


def memory_estimate(compiled) -> dict[str, int]:
    """A compiled program's memory estimate per device: arguments, outputs, temporaries and
    their total (buffers it aliases counted once); ``{}`` where XLA reports none."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    parts = {
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes),
        "temporaries": int(analysis.temp_size_in_bytes),
    }
    return {**parts, "total": sum(parts.values()) - int(analysis.alias_size_in_bytes)}


def _group(strategy: Strategy, per_device: int) -> int:
    """Lanes a device computes at once under ``strategy``."""
    if strategy.kind == "vmap":
        return per_device
    if strategy.kind == "chunks":
        return min(strategy.chunk, per_device)
    return 1  # map, separate: one lane at a time


def _smaller_group(group: int, estimate: dict[str, int], limit: int) -> int:
    """The next group size to try: the temporaries scaled down to what the limit leaves
    beside the arguments and outputs, or half the group where nothing is left for them."""
    room = limit - (estimate["total"] - estimate["temporaries"])
    proposed = int(group * room / max(estimate["temporaries"], 1)) if room > 0 else group // 2
    return min(group - 1, max(1, proposed))


def fit_memory(
    call: LaneCall, limit: int, per_device: int, compile_batched: Callable[[Strategy], LaneCall]
) -> LaneCall:
    """``call``, or the same lanes in vmapped groups small enough for ``limit`` bytes.

    A vmapped call holds every lane's activations at once; its temporaries grow with the
    lanes a device computes together, while its arguments and outputs (every lane's state,
    the data) do not. When XLA's estimate of the compiled call exceeds ``limit``, the group
    is shrunk in proportion to the temporaries that must go and compiled again (halving
    while it still does not fit), down to one lane at a time (``chunks:1``). Every group
    size trains the same numbers per lane; ``memory`` records the estimates and the choice.

    Raises:
      StageMemoryError: one lane at a time still does not fit (the lanes' state, the data
        or one lane's activations alone exceed ``limit``).
    """
    estimate = memory_estimate(call.compiled)
    tried = [{"strategy": str(call.strategy), "bytes": estimate.get("total")}]
    record = {"limit_bytes": int(limit), "estimates": tried}
    if not estimate or estimate["total"] <= limit:
        return call._replace(memory={**record, "chunked": False})
    group = _group(call.strategy, per_device)
    while True:
        if group <= 1:
            raise StageMemoryError(
                f"a stage's call needs about {tried[-1]['bytes']:,} bytes per device even with "
                f"one lane at a time, over the limit of {limit:,} bytes: train fewer lanes per "
                "stage (points_per_stage, seeds), a smaller batch_size or eval_batch_size, or "
                "more devices; device_memory= sets the limit where the device reports none"
            )
        group = _smaller_group(group, estimate, limit)
        call = compile_batched(Strategy("chunks", group))
        estimate = memory_estimate(call.compiled)
        tried.append({"strategy": str(call.strategy), "bytes": estimate.get("total")})
        if not estimate or estimate["total"] <= limit:
            return call._replace(memory={**record, "chunked": True})


def _on(array, device):
    """``array``'s copy on ``device`` (a host value as it is: placed when called)."""
    if not isinstance(array, jax.Array):
        return array
    return next(shard.data for shard in array.addressable_shards if shard.device == device)


def _one_device_shape(shape, device):
    """A lowering shape of one lane's (or a shared) argument, placed on ``device``."""
    if getattr(shape, "sharding", None) is None:  # a host scalar
        return shape
    return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=SingleDeviceSharding(device))


def _separate_call(
    lane_fn: Callable, mesh, lane_args: tuple, shared: tuple, real_lanes: int | None
) -> LaneCall:
    """The "separate" strategy: a compiled one-lane program per device, called once per lane.

    Each device trains the lanes it holds, one call after another, while the other devices
    train theirs; copies that only pad the lanes to a multiple of the device count are not
    trained, so a device left without work lends its core to the others' operations (5 lanes
    on 2 CPU devices: 3 + 2 calls, the last one alone on both cores). The first call of a
    stage splits the stacked lane arguments into lanes on their devices; from then on the
    state stays apart (:class:`Apart`) from call to call, and only the metrics are stacked
    (one small program per device, one fetch). Splitting and restacking a wide model's state
    at every call cost 6% of its stage on a 2-core CPU.
    """
    devices = list(mesh.devices.flat)
    padded = jax.tree.leaves(lane_args)[0].shape[0]
    per_device = padded // len(devices)
    real = padded if real_lanes is None else real_lanes
    sharding = _sharding.lane_sharding(mesh)

    def unstack(tree):
        return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(per_device))

    def stack(lane_trees):
        return jax.tree.map(lambda *a: jnp.stack(a), *lane_trees)

    def one_lane(per_lane, *shared):
        return lane_fn(*per_lane, *shared)

    split, restack = jax.jit(unstack), jax.jit(stack)  # compiled once per device, when used
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), lane_args)
    _, metrics_shape = jax.eval_shape(one_lane, one, *shared)
    padding = np.zeros(metrics_shape.shape, metrics_shape.dtype)  # an untrained lane's
    no_metrics = {d: jax.device_put(padding, d) for d in devices}

    def lower_for(device):
        placed = SingleDeviceSharding(device)
        lane = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placed), one)
        common = jax.tree.map(lambda a: _one_device_shape(a, device), shared)
        return jax.jit(one_lane).lower(lane, *common)

    with ThreadPoolExecutor(len(devices)) as pool:  # XLA compiles without Python's lock
        lowered = list(pool.map(lower_for, devices))
        programs = list(pool.map(lambda program: program.compile(), lowered))
    split_inputs: dict = {}  # the stage's (constant) lane inputs, split once

    def lanes_of(position: int) -> range:
        return range(position * per_device, (position + 1) * per_device)

    def apart(stacked_args):
        """The stacked lane arguments as one tree per lane, each on its device."""
        lanes = []
        for device in devices:
            lanes += split(jax.tree.map(lambda a, d=device: _on(a, d), stacked_args))
        return tuple(Apart(column) for column in zip(*lanes, strict=True))

    def together(per_lane):
        """Per-lane trees (lane ``i`` on its device) -> one array per leaf over the mesh."""
        parts = [restack(tuple(per_lane[i] for i in lanes_of(p))) for p in range(len(devices))]
        return jax.tree.map(
            lambda *shards: jax.make_array_from_single_device_arrays(
                (padded, *shards[0].shape[1:]), sharding, list(shards)
            ),
            *parts,
        )

    def run(state, before, lane_input, *shared_now):
        if not isinstance(state, Apart):  # a stage's first call: every lane argument split
            state, before, inputs = apart((state, before, lane_input))
            split_inputs["last"] = (lane_input, inputs)
        else:
            given, inputs = split_inputs["last"]
            if given is not lane_input:  # never in a sweep: one stage's inputs per state
                raise ValueError("a state held apart continues with its own stage's inputs")
        shared_on = [tuple(_on(a, d) for a in shared_now) for d in devices]
        results: list = [None] * padded
        for step in range(per_device):  # every device gets its next lane before any waits
            for position, program in enumerate(programs):
                i = position * per_device + step
                if i < real:
                    results[i] = program((state[i], before[i], inputs[i]), *shared_on[position])
        new_state = Apart(state[i] if r is None else r[0] for i, r in enumerate(results))
        metrics = [
            no_metrics[devices[i // per_device]] if r is None else r[1]
            for i, r in enumerate(results)
        ]
        return new_state, together(metrics)

    def stacked(state):
        return together(tuple(state)) if isinstance(state, Apart) else state

    return LaneCall(run, programs[0], stacked, Strategy("separate"), lowered=lowered[0])
