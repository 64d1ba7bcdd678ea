"""The lane strategy chosen by measurement: candidates timed on a stage's first call.

The rule in :func:`jaxsweep._lanes.choose` guesses from the backend and the model; how fast a
strategy really is depends on the machine, the model's shapes and XLA's version. So when the
sweep's training is long enough for the choice to matter, a stage's first call is run with
every candidate strategy from the same inputs, each timed, and the fastest is kept:

* the rule's strategy runs the call first, timed. Where the whole sweep's calls would cost
  less than :data:`MEASURE_FACTOR` times what compiling that call took, nothing a faster
  strategy could save would pay for compiling one more: the rule stands ("rule").
* else the other candidates compile, each runs the same call from the same inputs
  (:data:`REPEATS` times, the fastest run counts, so no first-run cost decides), and the
  fastest wins unless it beats the rule's by less than :data:`NOISE` ("measured"). The
  winner's output continues the stage: every number of the sweep is that strategy's, exactly
  what a sweep forced to it (``lanes=``) computes, and the losers' runs are discarded.
* the choice is remembered under a fingerprint of the compiled call, the devices and JAX's
  version, in this process and in ``lanes.json`` beside the compilation cache, so a rerun of
  the same sweep skips the trial ("remembered").

``result.environment["lanes"]`` records the strategy, how it was chosen, why, and the
measured seconds per call. Sweeps over several processes keep the rule: every process must
run the same program, and their clocks would not agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from . import _lanes

# Measure only where the sweep's calls cost this many times compiling one more strategy: a
# strategy that wins saves tens of percent (0.6x to 0.8x on a CPU), the trial costs a compile
# and a few calls, so below this the trial would cost more than it could return.
MEASURE_FACTOR = 10.0
NOISE = 0.05  # another strategy replaces the rule's only when this much faster
REPEATS = 2  # timed runs of the call per candidate; the fastest counts
MEMO_FILE = "lanes.json"


class Choice(NamedTuple):
    """The strategy a sweep's stages run, how it was chosen and why."""

    strategy: _lanes.Strategy  # the candidate chosen (a memory limit may run it in chunks)
    how: str  # "forced" | "rule" | "measured" | "remembered"
    reason: str
    seconds: dict[str, float] = {}  # each candidate's fastest call, where measured

    def describe(self) -> dict[str, Any]:
        """The JSON-ready record kept in ``result.environment["lanes"]``."""
        record: dict[str, Any] = {
            "strategy": str(self.strategy),
            "chosen_by": self.how,
            "reason": self.reason,
        }
        if self.seconds:
            record["seconds_per_call"] = dict(self.seconds)
        return record


class Plan(NamedTuple):
    """What is known of the choice before anything compiles."""

    first: _lanes.Strategy  # the rule's strategy (or the forced one): compiled first
    reason: str  # the rule's reason
    alternatives: tuple[_lanes.Strategy, ...] = ()  # measured against it; () measures nothing
    calls: int = 0  # training calls the sweep makes at most (calls per stage x stages)
    memo_directory: str | None = None  # where choices persist across processes
    forced: bool = False

    def decided(self) -> Choice | None:
        """The choice, where nothing is left to measure."""
        if self.forced:
            return Choice(self.first, "forced", self.reason)
        if not self.alternatives:
            return Choice(self.first, "rule", self.reason)
        return None


def plan(
    forced: _lanes.Strategy | None,
    rule: tuple[_lanes.Strategy, str],
    processes: int,
    calls: int,
    memo_directory: str | None,
) -> Plan:
    """The candidates of a sweep: the rule's strategy first, then the other of ``vmap`` and
    ``separate`` (one process; several run the rule's: see the module's docstring)."""
    strategy, reason = rule
    if forced is not None:
        return Plan(forced, reason, forced=True)
    if processes > 1:
        return Plan(strategy, f"{reason}; not measured over {processes} processes")
    other = _lanes.Strategy("separate" if strategy.kind == "vmap" else "vmap")
    return Plan(strategy, reason, (other,), calls, memo_directory)


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()``'s output, computed to the end, and the seconds it took."""
    started = time.perf_counter()
    output = jax.block_until_ready(run())
    return output, time.perf_counter() - started


def worth_measuring(call_seconds: float, calls: int, compile_seconds: float) -> bool:
    """Whether the sweep's calls cost enough that a faster strategy could pay for a trial."""
    return call_seconds * calls >= MEASURE_FACTOR * compile_seconds


def fastest(seconds: dict[str, float], first: str) -> str:
    """The fastest candidate; ``first`` (the rule's) unless another beats it by :data:`NOISE`."""
    best = min(seconds, key=seconds.get)
    return best if seconds[best] < (1 - NOISE) * seconds[first] else first


def fingerprint(lowered, devices, lanes: tuple[int, int]) -> str:
    """A key for the same call on the same kind of devices: the program's text before
    compiling (without source locations, which a cached executable's text does not keep
    alike), the lane counts, the devices and JAX's version."""
    kinds = sorted({f"{d.platform}:{d.device_kind}" for d in devices})
    parts = [lowered.as_text(), repr(lanes), repr(kinds), str(len(devices)), jax.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class Memo:
    """Remembered choices: in this process, and in ``lanes.json`` in ``directory`` (None:
    this process only). A file that cannot be read or written is ignored: it only saves a
    trial."""

    _process: dict[str, dict] = {}
    _lock = threading.Lock()

    def __init__(self, directory: str | None):
        self.path = None if directory is None else os.path.join(directory, MEMO_FILE)

    def get(self, key: str) -> dict | None:
        with self._lock:
            if key in self._process:
                return self._process[key]
        return self._read().get(key)

    def put(self, key: str, record: dict) -> None:
        with self._lock:
            self._process[key] = record
        if self.path is None:
            return
        try:
            stored = {**self._read(), key: record}
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(handle, "w") as file:
                json.dump(stored, file)
            os.replace(temporary, self.path)  # whole or not at all, whoever reads it
        except OSError:
            pass

    def _read(self) -> dict:
        if self.path is None:
            return {}
        try:
            with open(self.path) as file:
                stored = json.load(file)
        except (OSError, ValueError):
            return {}
        return stored if isinstance(stored, dict) else {}


class MeasuredCall:
    """A stage's call that picks its strategy on its first run (see the module docstring),
    then runs the winner's; shaped like :class:`jaxsweep._lanes.LaneCall`.

    Args:
      first: the rule's strategy's compiled call.
      plan: the candidates and the sweep's calls.
      compile_seconds: what compiling ``first`` took.
      compile_other: compiles another candidate's call.
      key: the fingerprint of this call (:func:`fingerprint`), asked only when measuring.
      decided: told the :class:`Choice` once made.
    """

    def __init__(
        self,
        first: _lanes.LaneCall,
        plan: Plan,
        compile_seconds: float,
        compile_other: Callable[[_lanes.Strategy], _lanes.LaneCall],
        key: Callable[[], str],
        decided: Callable[[Choice], None],
    ):
        self._first, self._plan = first, plan
        self._compile_seconds = compile_seconds
        self._compile_other, self._key, self._decided = compile_other, key, decided
        self._chosen: _lanes.LaneCall | None = None

    @property
    def _current(self) -> _lanes.LaneCall:
        return self._first if self._chosen is None else self._chosen

    @property
    def compiled(self):
        return self._current.compiled

    @property
    def strategy(self) -> _lanes.Strategy:
        return self._current.strategy

    @property
    def memory(self):
        return self._current.memory

    def stacked(self, state):
        return self._current.stacked(state)

    def run(self, *args):
        if self._chosen is not None:
            return self._chosen.run(*args)
        output, seconds = timed(lambda: self._first.run(*args))
        if not worth_measuring(seconds, self._plan.calls, self._compile_seconds):
            why = (
                f"{self._plan.reason}; not measured: the sweep's calls (about "
                f"{seconds * self._plan.calls:.3g} s) cost less than {MEASURE_FACTOR:g}x "
                f"compiling another strategy (about {self._compile_seconds:.3g} s)"
            )
            return self._settle(self._first, Choice(self._plan.first, "rule", why), output)
        memo, key = Memo(self._plan.memo_directory), self._key()
        remembered = memo.get(key)
        if remembered is not None and remembered.get("strategy") in self._names():
            return self._remembered(remembered, output, args)
        return self._measured(seconds, output, args, memo, key)

    def _names(self) -> list[str]:
        return [str(s) for s in (self._plan.first, *self._plan.alternatives)]

    def _remembered(self, record: dict, output, args):
        name, seconds = record["strategy"], record.get("seconds", {})
        call = self._first
        if name != str(self._plan.first):
            call = self._compile_other(_lanes.parse(name))
            output = call.run(*args)
        why = f"remembered from an earlier sweep of the same call: {_seconds_words(seconds)}"
        choice = Choice(_lanes.parse(name), "remembered", why, seconds)
        return self._settle(call, choice, output)

    def _measured(self, seconds: float, output, args, memo: Memo, key: str):
        first = str(self._plan.first)
        calls, times, outputs = {first: self._first}, {first: seconds}, {first: output}
        for strategy in self._plan.alternatives:
            calls[str(strategy)] = self._compile_other(strategy)
        for name, call in calls.items():
            for _ in range(REPEATS - 1 if name == first else REPEATS):
                result, took = timed(lambda call=call: call.run(*args))
                times[name] = min(times.get(name, took), took)
                outputs[name] = result  # the same numbers every run: the inputs are kept
        winner = fastest(times, first)
        memo.put(key, {"strategy": winner, "seconds": times})
        why = f"measured on a stage's first call: {_seconds_words(times)}"
        choice = Choice(_lanes.parse(winner), "measured", why, times)
        return self._settle(calls[winner], choice, outputs[winner])

    def _settle(self, call: _lanes.LaneCall, choice: Choice, output):
        self._chosen = call
        self._decided(choice)
        return output


def _seconds_words(seconds: dict[str, float]) -> str:
    if not seconds:
        return "no times kept"
    times = ", ".join(f"{name} {value * 1e3:.3g} ms" for name, value in seconds.items())
    return f"{times} per call"
