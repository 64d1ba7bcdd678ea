"""The processes of one sweep: what they agree on, and what only the writer decides.

Under ``jax.distributed`` every process runs the whole sweep (the same stages in the same
order, each holding the lanes of its own devices). Outside the compiled programs they meet at
a few points: at the start, to check that every process was given the same sweep; when a
checkpoint directory is opened and a step is chosen to resume from; when a damaged step is set
aside; and, with ``checkpoint_every_seconds``, to follow the writer's clock on when to save.

Meetings go through the coordination service that ``jax.distributed.initialize`` starts (its
key-value store), not through collectives: nothing compiles, every wait has a timeout, and
a process that died or never came is named in the error instead of hanging the others.
Process 0 is the writer: it decides and acts (files, renames, warnings, the progress bar),
the others wait for its word. In a one-process run every meeting returns at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable

import jax

TIMEOUT_SECONDS = 600  # the longest a process waits for another at a meeting
_sweeps = itertools.count()  # every process runs the same sweeps in the same order


class ProcessMismatchError(ValueError):
    """The processes of one multi-process sweep were given different sweeps."""


class ProcessLostError(RuntimeError):
    """Another process of a multi-process sweep stopped answering (killed, preempted, failed)."""


_RESTART = (
    "This process stops too: restart every process with the same call (with a checkpoint_dir "
    "the sweep resumes from its latest complete checkpoint)."
)


def lost(what: str, error: BaseException, process: int | None = None) -> ProcessLostError:
    """The error for a meeting or collective that failed because a process is gone."""
    who = "another process" if process is None else f"process {process}"
    return ProcessLostError(
        f"{what}: {who} of this sweep did not answer ({type(error).__name__}: "
        f"{_first_line(error)}). It has probably stopped (killed, preempted, out of memory, "
        f"or an error of its own: see its log). {_RESTART}"
    )


@dataclasses.dataclass(frozen=True)
class Hosts:
    """This process's place among the processes of one sweep, and their meetings.

    >>> hosts = Hosts(index=0, count=1, namespace="jaxsweep/0")
    >>> hosts.writer, hosts.exchange("setup", "mine"), hosts.writer_says("step", lambda: "3")
    (True, ['mine'], '3')
    """

    index: int  # this process (jax.process_index())
    count: int  # processes in the sweep
    namespace: str  # prefix of this sweep's keys: one sweep's meetings never meet another's

    @classmethod
    def join(cls) -> Hosts:
        """This process's view of a new sweep (every process calls it once per sweep)."""
        return cls(jax.process_index(), jax.process_count(), f"jaxsweep/{next(_sweeps)}")

    @property
    def writer(self) -> bool:
        """True in the one process that writes (process 0)."""
        return self.index == 0

    def exchange(self, name: str, value: str) -> list[str]:
        """Every process's ``value`` for the meeting ``name``, in process order.

        Also a barrier: it returns once every process has given its value.
        """
        if self.count == 1:
            return [value]
        client = _client()
        client.key_value_set(f"{self.namespace}/{name}/{self.index}", value)
        return [
            value if i == self.index else self._get(client, f"{name}/{i}", name, i)
            for i in range(self.count)
        ]

    def writer_says(self, name: str, decide: Callable[[], str]) -> str:
        """The writer's ``decide()`` (run in the writer only), as every process sees it.

        The others wait until the writer has decided, so whatever ``decide`` did on disk is
        done when this returns. A failure in the writer reaches the others as an error.
        """
        if self.count == 1:
            return decide()
        client = _client()
        if not self.writer:
            answer = json.loads(self._get(client, f"{name}/said", name, 0))
            if "failed" in answer:
                raise RuntimeError(f"{name}: process 0 failed: {answer['failed']}. {_RESTART}")
            return answer["value"]
        try:
            value = decide()
        except BaseException as error:
            answer = {"failed": f"{type(error).__name__}: {_first_line(error)}"}
            client.key_value_set(f"{self.namespace}/{name}/said", json.dumps(answer))
            raise
        client.key_value_set(f"{self.namespace}/{name}/said", json.dumps({"value": value}))
        return value

    def _get(self, client, key: str, name: str, process: int) -> str:
        try:
            return client.blocking_key_value_get(f"{self.namespace}/{key}", TIMEOUT_SECONDS * 1000)
        except Exception as error:  # the deadline passed, or the service saw the process die
            raise lost(f"{name} (waited up to {TIMEOUT_SECONDS} s)", error, process) from error


def agree_on_sweep(hosts: Hosts, fields: dict) -> None:
    """Raises :class:`ProcessMismatchError` unless every process has the same ``fields``.

    Args:
      hosts: this process among the sweep's processes.
      fields: a flat, JSON-ready mapping of everything that must be the same everywhere
        (settings, the data's digest, the model's shapes, devices, library versions).
    """
    if hosts.count == 1:
        return
    given = [json.loads(v) for v in hosts.exchange("setup", json.dumps(fields, sort_keys=True))]
    lines = []
    for index, other in enumerate(given[1:], start=1):
        changed = differences(given[0], other)
        if changed:
            lines.append(f"process {index} differs from process 0 in: " + "; ".join(changed))
    if lines:
        raise ProcessMismatchError(
            f"the {hosts.count} processes of this sweep were not given the same sweep "
            "(process 0's value -> the other's):\n  "
            + "\n  ".join(lines)
            + "\nEvery process must call run with the same arguments, the same data and the "
            "same library versions. Nothing was compiled or written."
        )


def differences(first: dict, second: dict) -> list[str]:
    """The fields that differ, each as ``name: first -> second``."""
    lines = []
    for name in sorted(set(first) | set(second)):
        old, new = first.get(name, "(absent)"), second.get(name, "(absent)")
        if old != new:
            lines.append(f"{name}: {_short(old)} -> {_short(new)}")
    return lines


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _client():
    """The coordination service's client of ``jax.distributed``."""
    from jax._src import distributed  # the one public-enough handle; Orbax uses it too

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError(
            f"{jax.process_count()} processes but no jax.distributed client: a multi-process "
            "sweep needs jax.distributed.initialize() in every process"
        )
    return client


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""
