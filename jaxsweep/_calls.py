"""A sweep's compiled training calls: one per (real, padded) lane count, compiled in a thread.

A stage's training call is compiled from the shapes of its arguments alone, so compiling can
start as soon as a stage's lane count is known and run on a thread while the caller
initialises the seeds and starts the lanes: XLA compiles without holding Python's lock. A
:class:`CompiledCalls` table keeps each call once compiled, hands a failed compilation's error
to the thread that waits for it, and reports a compiled call's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from . import _lanes
from ._sharding import LaneLayout
from ._train import Packing, packed_call

# (layout, seed, seeds) -> (lane_args, shared): the shapes a stage's training call is given
CallShapes = Callable[[LaneLayout, int, int], tuple[tuple, tuple]]


class ReadyCall(NamedTuple):
    """A compiled training call and how the metrics it returns are packed."""

    call: _lanes.LaneCall
    packing: Packing


def call_key(layout: LaneLayout) -> tuple[int, int]:
    """A compiled call serves one (real, padded) lane count: ``separate`` skips the padding."""
    return layout.lanes, layout.padded


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


class _Compiling(NamedTuple):
    """A compilation under way: its thread, and (once it ends) its ReadyCall or its error."""

    thread: threading.Thread
    outcome: list


class CompiledCalls:
    """Compiles a stage's lane call per lane count, for the sweep's lane strategy.

    Args:
      lane_program: one lane's call (``Programs.lane_call`` or ``lane_call_batches``).
      strategy: how the lanes execute (:mod:`jaxsweep._lanes`).
      mesh: the lane mesh.
      call_shapes: the shapes of a stage's call arguments, ``(lane_args, shared)``.
    """

    def __init__(self, lane_program: Callable, strategy: _lanes.Strategy, mesh, call_shapes):
        self._lane_program = lane_program
        self._strategy, self._mesh = strategy, mesh
        self._call_shapes: CallShapes = call_shapes
        self._ready: dict[tuple[int, int], ReadyCall] = {}
        self._compiling: dict[tuple[int, int], _Compiling] = {}

    def is_ready(self, layout: LaneLayout) -> bool:
        return call_key(layout) in self._ready

    def start_compiling(self, layout: LaneLayout, seed: int, seeds: int) -> None:
        """Starts compiling the call of ``layout`` in a thread, unless done or under way.

        The shapes are traced here, in the caller's thread; only XLA's compilation runs in
        the thread, while the caller's init and start programs compile and run (on a GPU or
        a many-core CPU, side by side).
        """
        key = call_key(layout)
        if key in self._ready or key in self._compiling:
            return
        lane_args, shared = self._call_shapes(layout, seed, seeds)
        outcome: list = []

        def compile_call():
            try:
                outcome.append(self._compile(lane_args, shared, layout.lanes))
            except BaseException as error:  # handed to the waiting thread in compile()
                outcome.append(error)

        thread = threading.Thread(target=compile_call, name="jaxsweep-compile", daemon=True)
        self._compiling[key] = _Compiling(thread, outcome)
        thread.start()

    def _compile(self, lane_args, shared, real_lanes: int) -> ReadyCall:
        """The call for the sweep's lane strategy (``real_lanes`` of its lanes are not
        padding), and how its metrics come back."""
        lane_fn, packing = packed_call(self._lane_program, lane_args, shared)
        call = _lanes.compile_call(
            lane_fn, self._strategy, self._mesh, lane_args, shared, real_lanes
        )
        return ReadyCall(call, packing)

    def compile(self, layout: LaneLayout, seed: int, seeds: int) -> None:
        """Waits for the call of ``layout`` (compiling it now if nothing started it).

        A failed compilation raises here, and is forgotten: a later call compiles again.
        """
        key = call_key(layout)
        if key in self._ready:
            return
        self.start_compiling(layout, seed, seeds)
        thread, outcome = self._compiling.pop(key)
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        self._ready[key] = outcome[0]

    def get(self, layout: LaneLayout) -> ReadyCall:
        """The compiled call of ``layout`` (after :meth:`compile`)."""
        return self._ready[call_key(layout)]

    def memory(self, layout: LaneLayout, device) -> tuple[int, str]:
        """Peak device memory when the backend reports it, else the compiled estimate."""
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device_peak"
        estimate = compiled_memory(self.get(layout).call.compiled)
        if not estimate:
            return 0, "unavailable"
        return estimate["total"], "compiled_estimate"
