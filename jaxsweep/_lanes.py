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
  single run's. It runs on one device.
* ``"auto"``: :func:`choose` picks by backend and model (see there); ``result.environment``
  records the choice and why.

Every strategy computes the same arithmetic per lane: results agree to float rounding.

:func:`compile_call` builds a stage's training call for a strategy; ``_stage.StagePrograms``
runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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


def check(strategy: Strategy | None, device_count: int) -> None:
    """Refuses a forced strategy the devices cannot run, before anything compiles."""
    if strategy is not None and strategy.kind == "separate" and device_count > 1:
        raise ValueError(
            f"lanes: 'separate' runs one lane per call on one device, but the sweep has "
            f"{device_count} devices; pass lanes='vmap', 'map' or 'chunks:N' (they split the "
            "lanes over the devices) or devices=jax.devices()[:1]"
        )


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
    forced: Strategy | None, backend: str, device_count: int, traits: ModelTraits
) -> tuple[Strategy, str]:
    """The strategy to run and the reason, for ``result.environment["lanes"]``.

    The rule ("auto"), from measurements of the benchmarks (``benchmarks/lane_strategies.py``):
    on accelerators ``vmap`` (one small model leaves most of the chip idle, so lanes run side by
    side); on a CPU with one device, ``separate`` for models with convolutions or more than
    :data:`CPU_VMAP_MAX_PARAMS` parameters, else ``vmap``; with several CPU devices ``map``
    replaces ``separate`` (it splits the lanes over the devices).
    """
    if forced is not None:
        return forced, "forced by lanes="
    if backend != "cpu":
        return Strategy("vmap"), f"{backend}: lanes share each kernel"
    large = traits.convolutions or traits.params > CPU_VMAP_MAX_PARAMS
    if not large:
        return Strategy("vmap"), f"cpu, {traits.params} parameters, no convolution"
    why = "convolutions" if traits.convolutions else f"{traits.params} parameters"
    if device_count > 1:
        return Strategy("map"), f"cpu, {why}, {device_count} devices"
    return Strategy("separate"), f"cpu, {why}"


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


def compile_call(
    lane_fn: Callable, strategy: Strategy, mesh, lane_args: tuple, shared: tuple
) -> LaneCall:
    """Compiles a stage's call of ``lane_fn`` for ``strategy``; nothing runs.

    Args:
      lane_fn: one lane's call (``Programs.lane_call``): ``(*lane_args, *shared) -> outputs``.
      strategy: how the lanes execute.
      mesh: the lane mesh; the lane axis of every ``lane_args`` entry is split over it.
      lane_args, shared: arrays or shapes (``jax.ShapeDtypeStruct`` with shardings).

    Returns:
      A :class:`LaneCall`: ``run(*lane_args, *shared)`` returns the new lane state and the
      metrics stacked over the lanes.
    """
    if strategy.kind == "separate":
        return _separate_call(lane_fn, lane_args, shared)
    fn = _over_devices(
        _batched(lane_fn, strategy, len(lane_args), len(shared)),
        mesh,
        lane_args=len(lane_args),
        shared_args=len(shared),
    )
    sharding = _sharding.lane_sharding(mesh)
    compiled = jax.jit(fn, out_shardings=sharding).lower(*lane_args, *shared).compile()
    return LaneCall(compiled, compiled, lambda state: state)


def _separate_call(lane_fn: Callable, lane_args: tuple, shared: tuple) -> LaneCall:
    """The "separate" strategy: one compiled one-lane program, called once per lane.

    The first call of a stage splits the stacked lane arguments into lanes with one program;
    from then on the state stays apart (:class:`Apart`) from call to call, and only the
    metrics are stacked (one small program, one fetch). Splitting and restacking a wide
    model's state at every call cost 6% of its stage on a 2-core CPU.
    """
    lanes = jax.tree.leaves(lane_args)[0].shape[0]

    def unstack(tree):
        return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(lanes))

    def stack(lane_trees):
        return jax.tree.map(lambda *a: jnp.stack(a), *lane_trees)

    def one_lane(per_lane, *shared):
        return lane_fn(*per_lane, *shared)

    unstack_compiled = jax.jit(unstack).lower(lane_args).compile()
    one = jax.eval_shape(unstack, lane_args)[0]
    one_compiled = jax.jit(one_lane).lower(one, *shared).compile()
    # the metrics where the one-lane program leaves them (the sweep's device, which need
    # not be the default one)
    metrics_shape = jax.tree.map(
        lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        jax.eval_shape(one_lane, one, *shared)[1],
        one_compiled.output_shardings[1],
    )
    stack_metrics = jax.jit(stack).lower((metrics_shape,) * lanes).compile()
    stack_state = jax.jit(stack)  # compiled on first use: only a checkpoint save needs it
    split_inputs: dict = {}  # the stage's (constant) lane inputs, split once

    def run(state, before, lane_input, *shared_now):
        if not isinstance(state, Apart):  # a stage's first call: every lane argument split
            parts = unstack_compiled((state, before, lane_input))
            state, before, inputs = (Apart(column) for column in zip(*parts, strict=True))
            split_inputs["last"] = (lane_input, inputs)
        else:
            given, inputs = split_inputs["last"]
            if given is not lane_input:  # never in a sweep: one stage's inputs per state
                raise ValueError("a state held apart continues with its own stage's inputs")
        results = [
            one_compiled((s, b, i), *shared_now)
            for s, b, i in zip(state, before, inputs, strict=True)
        ]
        return Apart(r[0] for r in results), stack_metrics(tuple(r[1] for r in results))

    def stacked(state):
        return stack_state(tuple(state)) if isinstance(state, Apart) else state

    return LaneCall(run, one_compiled, stacked)
