"""Schedules whose peak is the swept value: the rate at step ``t`` is ``value * schedule(t)``.

A sweep trains every lane with one compiled program, its swept value held as array data in the
optimizer state (``optax.inject_hyperparams``). A schedule therefore cannot be built from the
swept value in Python; instead the sweep multiplies each update by a *unit* schedule (peak 1)
chained after the injected optimizer. For every optax optimizer, whose last step scales the
update by the learning rate, this equals training with the scheduled rate
``value * schedule(t)``.

Shapes whose length depends on the run (warmup for 10% of the steps, then a cosine decay to
zero) are :class:`Shape` values, built once the sweep knows its total number of steps.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DECAYS = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class Shape:
    """A unit schedule whose length follows the run: linear warmup, then a decay.

    ``build(total_steps)`` gives an optax schedule that rises linearly from 0 to 1 over the
    first ``round(warmup_fraction * total_steps)`` steps, then follows ``decay`` from 1 down to
    ``final_fraction`` at the last step (``"constant"`` stays at 1).
    """

    decay: str  # "constant", "cosine" or "linear"
    warmup_fraction: float = 0.0  # share of the steps spent warming up from 0
    final_fraction: float = 0.0  # the rate at the end, as a share of the peak

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"schedule: unknown decay {self.decay!r}; expected one of {DECAYS}")
        for name in ("warmup_fraction", "final_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"schedule: {name} must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0 or (name == "warmup_fraction" and value == 1.0):
                upper = "1)" if name == "warmup_fraction" else "1]"
                raise ValueError(f"schedule: {name} must be in [0, {upper}, got {value}")

    def warmup_steps(self, total_steps: int) -> int:
        """Steps of the linear warmup (fewer than ``total_steps``)."""
        return min(int(round(self.warmup_fraction * total_steps)), total_steps - 1)

    def build(self, total_steps: int) -> optax.Schedule:
        """The optax schedule of a run of ``total_steps`` steps (peak exactly 1)."""
        warmup = self.warmup_steps(total_steps)
        if self.decay == "cosine":
            # optax counts the warmup inside decay_steps: the decay ends at the last step
            return optax.warmup_cosine_decay_schedule(
                0.0, 1.0, warmup, total_steps, end_value=self.final_fraction
            )
        rest = total_steps - warmup
        end = 1.0 if self.decay == "constant" else self.final_fraction
        decay = optax.linear_schedule(1.0, end, rest)
        if warmup == 0:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), decay], [warmup])

    def describe(self, total_steps: int | None = None) -> str:
        """What the swept value is the peak of, for the report.

        E.g. ``warmup_cosine (linear warmup over 10% of the steps (60 of 600), cosine decay to 0)``.
        """
        name = f"warmup_{self.decay}" if self.warmup_fraction > 0 else self.decay
        parts = []
        if self.warmup_fraction > 0:
            warmup = f"linear warmup over {100 * self.warmup_fraction:.3g}% of the steps"
            if total_steps is not None:
                warmup += f" ({self.warmup_steps(total_steps)} of {total_steps})"
            parts.append(warmup)
        if self.decay != "constant":
            end = f"{100 * self.final_fraction:.3g}% of the peak" if self.final_fraction else "0"
            parts.append(f"{self.decay} decay to {end}")
        elif total_steps is not None:
            parts.append(f"constant for the rest of the {total_steps} steps")
        return f"{name} ({', '.join(parts)})" if parts else name


def constant(warmup_fraction: float = 0.0) -> Shape:
    """The swept value throughout, after an optional linear warmup."""
    return Shape("constant", warmup_fraction)


def cosine(warmup_fraction: float = 0.0, final_fraction: float = 0.0) -> Shape:
    """Cosine decay from the swept value to ``final_fraction`` of it at the last step."""
    return Shape("cosine", warmup_fraction, final_fraction)


def linear(warmup_fraction: float = 0.0, final_fraction: float = 0.0) -> Shape:
    """Linear decay from the swept value to ``final_fraction`` of it at the last step."""
    return Shape("linear", warmup_fraction, final_fraction)


def warmup_cosine(warmup_fraction: float = 0.1, final_fraction: float = 0.0) -> Shape:
    """Linear warmup over ``warmup_fraction`` of the steps to the swept value, then cosine decay.

    Example::

      jaxsweep.run(model_fn, data, steps=2000, schedule=jaxsweep.schedules.warmup_cosine(0.05))
    """
    return Shape("cosine", warmup_fraction, final_fraction)


def warmup_linear(warmup_fraction: float = 0.1, final_fraction: float = 0.0) -> Shape:
    """Linear warmup over ``warmup_fraction`` of the steps to the swept value, then linear decay."""
    return Shape("linear", warmup_fraction, final_fraction)


NAMED = {
    "constant": constant(),
    "cosine": cosine(),
    "linear": linear(),
    "warmup_cosine": warmup_cosine(),
    "warmup_linear": warmup_linear(),
}


class Resolved(NamedTuple):
    """A sweep's schedule, ready to chain after the optimizer."""

    fn: Callable  # step count -> multiplier of the swept value (peak 1)
    description: str  # what the report says the swept value is the peak of


def resolve(schedule, total_steps: int) -> Resolved | None:
    """Checks ``schedule`` and builds it for a run of ``total_steps`` steps per lane.

    Args:
      schedule: None (the swept value throughout), a name in :data:`NAMED`, a :class:`Shape`,
        or a callable of the step count with peak 1 (e.g.
        ``optax.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000)``).
      total_steps: training steps of one lane.

    Returns:
      None without a schedule, else the :class:`Resolved` schedule.

    Raises:
      ValueError, TypeError: an unknown name, a non-callable, or a callable whose peak over the
        run's steps is not 1 (then the swept value would not be the peak).
    """
    if schedule is None:
        return None
    if isinstance(schedule, str):
        if schedule not in NAMED:
            raise ValueError(
                f"schedule: unknown name {schedule!r}; expected one of {sorted(NAMED)}, a "
                "jaxsweep.schedules shape or an optax schedule with peak 1.0"
            )
        schedule = NAMED[schedule]
    if isinstance(schedule, Shape):
        return Resolved(schedule.build(total_steps), schedule.describe(total_steps))
    if isinstance(schedule, optax.GradientTransformation) or not callable(schedule):
        raise TypeError(
            "schedule: expected a name such as 'warmup_cosine', a jaxsweep.schedules shape, or "
            f"a function of the step count (an optax schedule), got {type(schedule).__name__}"
        )
    peak = _peak(schedule, total_steps)
    if not math.isclose(peak, 1.0, rel_tol=1e-3):
        raise ValueError(
            f"schedule: its largest value over the {total_steps} steps is {peak:.4g}, not 1: "
            "the swept value is the peak, so give the schedule with peak 1.0 (e.g. "
            f"optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, {total_steps}))"
        )
    name = getattr(schedule, "__name__", type(schedule).__name__)
    return Resolved(schedule, f"a custom schedule ({name}, over {total_steps} steps)")


def stretches(schedule) -> bool:
    """Whether ``schedule`` can be built for any length (None, a name or a :class:`Shape`):
    a custom callable is fixed in its steps."""
    return schedule is None or isinstance(schedule, (str, Shape))


def _peak(schedule: Callable, total_steps: int) -> float:
    """The largest value of ``schedule`` over the steps ``0 .. total_steps - 1``."""
    try:
        values = jax.jit(jax.vmap(schedule))(jnp.arange(total_steps, dtype=jnp.int32))
    except Exception as error:
        raise TypeError(
            "schedule: must be a function of the step count returning a number (an optax "
            f"schedule); calling it failed: {error}"
        ) from error
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (total_steps,):
        raise TypeError(f"schedule: must return a scalar per step, got shape {values.shape[1:]}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("schedule: its values must be finite and non-negative")
    return float(values.max())


def with_schedule(optimizer: Callable, schedule_fn: Callable) -> Callable:
    """An optimizer factory like ``optimizer`` whose updates are scaled by ``schedule_fn(t)``.

    The wrapper keeps the factory's signature, so ``optax.inject_hyperparams`` sees the same
    hyperparameters; the schedule's step counter lives in the optimizer's own state.
    """

    @functools.wraps(optimizer)
    def scheduled(*args, **kwargs):
        return optax.chain(optimizer(*args, **kwargs), optax.scale_by_schedule(schedule_fn))

    return scheduled
