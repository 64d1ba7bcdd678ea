"""Training budgets: epochs or steps, when to validate, and the calls that train the steps.

Every lane trains ``total`` steps. Step ``s`` is step ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``: its batch comes from that epoch's permutation, so a budget in steps
sees the same batches in the same order as one in epochs, whatever the chunking. Validation
happens after every ``eval_every`` steps and after the last one; the steps in between are
trained by calls of at most ``chunk`` steps, so the progress bar moves within an epoch.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

# At most this many steps per compiled call: a call long enough that dispatch costs nothing,
# short enough that the progress bar moves several times a second on a large epoch.
MAX_CHUNK = 64


class Budget(NamedTuple):
    """How many steps each lane trains, and when it is validated."""

    total: int  # training steps per lane
    eval_every: int  # steps between validations (the last one comes after step ``total``)
    steps_per_epoch: int  # full batches in one pass over the training examples
    chunk: int  # steps per compiled call (<= eval_every and <= steps_per_epoch)
    batch_size: int = 1  # examples per step

    @property
    def validations(self) -> int:
        """How many validations a lane gets (the last after its final step)."""
        return math.ceil(self.total / self.eval_every)

    def validation_steps(self) -> tuple[int, ...]:
        """The step count after which each validation happens (the last is ``total``)."""
        return tuple(min((i + 1) * self.eval_every, self.total) for i in range(self.validations))

    def calls(self, segment: int) -> tuple[tuple[int, int], ...]:
        """``(first step, steps)`` of each call that trains validation segment ``segment``.

        A call never crosses an epoch boundary more than once (``chunk <= steps_per_epoch``),
        so it needs the batch orders of at most two epochs.
        """
        start = segment * self.eval_every
        end = min(start + self.eval_every, self.total)
        return tuple((s, min(self.chunk, end - s)) for s in range(start, end, self.chunk))

    @property
    def full_calls(self) -> bool:
        """Every call trains exactly ``chunk`` steps (no call ends a segment early)."""
        return self.eval_every % self.chunk == 0 and self.total % self.chunk == 0

    @property
    def one_call_per_segment(self) -> bool:
        """Every segment is trained by one call (which therefore always validates)."""
        return self.chunk >= self.eval_every

    @property
    def crosses_epochs(self) -> bool:
        """Some call runs from the end of one epoch into the next (needs both orders)."""
        return any(
            start % self.steps_per_epoch + steps > self.steps_per_epoch
            for segment in range(self.validations)
            for start, steps in self.calls(segment)
        )


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")
    return int(value)


def make_budget(
    epochs, steps, eval_every, n_train: int, batch_size: int, max_chunk: int = MAX_CHUNK
) -> Budget:
    """Checks ``epochs``/``steps``/``eval_every`` and returns the :class:`Budget`.

    Args:
      epochs: passes over the training examples, or None when ``steps`` is given.
      steps: training steps per lane, or None for ``epochs`` (3 when both are None).
      eval_every: steps between validations; None validates once per epoch (and after the
        last step).
      n_train: training examples; ``batch_size``: examples per step.

    >>> make_budget(None, 100, 30, n_train=640, batch_size=32).validation_steps()
    (30, 60, 90, 100)
    """
    if epochs is not None and steps is not None:
        raise ValueError("steps: give the budget once, as epochs or as steps, not both")
    steps_per_epoch = n_train // batch_size
    if steps is None:
        total = _count("epochs", 3 if epochs is None else epochs) * steps_per_epoch
    else:
        total = _count("steps", steps)
    every = min(steps_per_epoch, total) if eval_every is None else _count("eval_every", eval_every)
    if every > total:
        raise ValueError(f"eval_every: {every} is more than the {total} training steps")
    # calls of equal length: 100 steps train as 50 + 50, not 64 + 36
    chunk = math.ceil(every / math.ceil(every / max_chunk))
    return Budget(total, every, steps_per_epoch, min(chunk, steps_per_epoch), batch_size)
