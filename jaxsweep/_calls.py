"""A sweep's compiled training calls: one per (real, padded) lane count, compiled in a thread.

A stage's training call is compiled from the shapes of its arguments alone, so compiling can
start as soon as a stage's lane count is known and run on a thread while the caller
initialises the seeds and starts the lanes: XLA compiles without holding Python's lock. A
:class:`CompiledCalls` table keeps each call once compiled, hands a failed compilation's error
to the thread that waits for it, and reports a compiled call's memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _lanes, _measured
from ._sharding import LaneLayout
from ._train import Packing, packed_call

# (layout, seed, seeds) -> (lane_args, shared): the shapes a stage's training call is given
CallShapes = Callable[[LaneLayout, int, int], tuple[tuple, tuple]]


class ReadyCall(NamedTuple):
    """A compiled training call and how the metrics it returns are packed."""

    call: _lanes.LaneCall | _measured.MeasuredCall
    packing: Packing


def call_key(layout: LaneLayout) -> tuple[int, int]:
    """A compiled call serves one (real, padded) lane count: ``separate`` skips the padding."""
    return layout.lanes, layout.padded


# a compiled program's memory estimate: arguments, outputs, temporaries and their total
compiled_memory = _lanes.memory_estimate


class _Compiling(NamedTuple):
    """A compilation under way: its thread, and (once it ends) its ReadyCall or its error."""

    thread: threading.Thread
    outcome: list


class CompiledCalls:
    """Compiles a stage's lane call per lane count, for the sweep's lane strategy.

    The strategy is decided once per sweep (:mod:`jaxsweep._measured`): forced, the rule's,
    or measured on the first stage's first call; later lane counts compile the decided one.

    Args:
      lane_program: one lane's call (``Programs.lane_call`` or ``lane_call_batches``).
      plan: the strategy's candidates (:func:`jaxsweep._measured.plan`).
      mesh: the lane mesh.
      call_shapes: the shapes of a stage's call arguments, ``(lane_args, shared)``.
      memory_limit: bytes a call may use per device; None: no limit (every lane at once).
    """

    def __init__(
        self,
        lane_program: Callable,
        plan: _measured.Plan,
        mesh,
        call_shapes,
        memory_limit: int | None = None,
    ):
        self._lane_program = lane_program
        self._plan, self._mesh = plan, mesh
        self._memory_limit = memory_limit
        self._call_shapes: CallShapes = call_shapes
        self._ready: dict[tuple[int, int], ReadyCall] = {}
        self._compiling: dict[tuple[int, int], _Compiling] = {}
        self.choice: _measured.Choice | None = plan.decided()
        self._latest: ReadyCall | None = None  # the call a stage ran last

    def describe(self) -> dict[str, Any]:
        """``result.environment["lanes"]``: what ran, how it was chosen and why, and the fit
        to a memory limit where one was set."""
        choice = self.choice or _measured.Choice(self._plan.first, "rule", self._plan.reason)
        record = choice.describe()
        call = None if self._latest is None else self._latest.call
        if call is not None and call.strategy != choice.strategy:
            record["strategy"] = str(call.strategy)  # what ran: chunks that fit in memory
            record["chosen"] = str(choice.strategy)
        if call is not None and call.memory is not None:
            record["memory"] = call.memory
        return record

    def _decide(self, choice: _measured.Choice) -> None:
        self.choice = choice

    def decided(self) -> str | None:
        """The strategy decided (forced, the rule's or measured), or None before a trial."""
        return None if self.choice is None else str(self.choice.strategy)

    def adopt(self, name: str) -> None:
        """Runs ``name`` from now on, as chosen by the run a checkpoint continues; a forced
        strategy stays. Only before the first call compiles: the calls keep what they are."""
        if self._plan.forced:
            return
        why = "the strategy of the checkpointed sweep this run resumes (the same numbers)"
        self.choice = _measured.Choice(_lanes.parse(name), "resumed", why)

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
                outcome.append(self._compile(lane_args, shared, layout))
            except BaseException as error:  # handed to the waiting thread in compile()
                outcome.append(error)

        thread = threading.Thread(target=compile_call, name="jaxsweep-compile", daemon=True)
        self._compiling[key] = _Compiling(thread, outcome)
        thread.start()

    def _compile(self, lane_args, shared, layout: LaneLayout) -> ReadyCall:
        """The call of the decided strategy, or (not yet decided) the rule's, measured
        against the others on its first run; and how its metrics come back."""
        lane_fn, packing = packed_call(self._lane_program, lane_args, shared)

        def compile_for(strategy: _lanes.Strategy) -> _lanes.LaneCall:
            return _lanes.compile_call(
                lane_fn, strategy, self._mesh, lane_args, shared, layout.lanes, self._memory_limit
            )

        if self.choice is not None:
            return ReadyCall(compile_for(self.choice.strategy), packing)
        started = time.perf_counter()
        first = compile_for(self._plan.first)
        devices = list(self._mesh.devices.flat)
        call = _measured.MeasuredCall(
            first,
            self._plan,
            time.perf_counter() - started,
            compile_for,
            key=lambda: _measured.fingerprint(first.lowered, devices, call_key(layout)),
            decided=self._decide,
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
        self._latest = self._ready[call_key(layout)]
        return self._latest

    def memory(self, layout: LaneLayout, device) -> tuple[int, str]:
        """Peak device memory when the backend reports it, else the compiled estimate."""
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device_peak"
        estimate = compiled_memory(self.get(layout).call.compiled)
        if not estimate:
            return 0, "unavailable"
        return estimate["total"], "compiled_estimate"
