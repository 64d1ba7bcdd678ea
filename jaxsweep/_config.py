"""The sweep's scalar configuration: validated once, early, with messages that name the argument."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from . import _scale

MODES = ("min", "max")
PRECISION_STAGES = 20  # the stage bound when a precision is asked for and stages is not given
SEEDS = 3  # seeds per value when none are given and no precision is asked for
# Seeds per value when a precision is asked for and seeds are not given: 10 at 0.5, growing as
# 1 / precision**2 (the interval's half-width shrinks as 1 / sqrt(seeds)), within 3 to 64.
# On the digits MLP at precision=0.5 (benchmarks/precision_study.py, 20 sweeps), three seeds
# reached it in 4 of 20 sweeps and covered the optimum in 2 of those (an interval narrow by
# chance: two degrees of freedom for the seeds' spread), six in 11 covering 10, ten in 19
# covering 18.
PRECISION_SEEDS, PRECISION_SEEDS_AT = 10, 0.5
MAX_PRECISION_SEEDS = 64


def default_seeds(precision: float | None) -> int:
    """The seeds a sweep trains per value when ``seeds`` is not given.

    >>> default_seeds(None), default_seeds(0.5), default_seeds(0.25), default_seeds(2.0)
    (3, 10, 40, 3)
    """
    if precision is None:
        return SEEDS
    wanted = math.ceil(PRECISION_SEEDS * (PRECISION_SEEDS_AT / precision) ** 2 - 1e-9)
    return min(max(wanted, SEEDS), MAX_PRECISION_SEEDS)


@dataclass(frozen=True)
class SweepConfig:
    """Validated search and training settings (plain Python values only)."""

    hyperparam: str  # the swept entry of the optimizer's hyperparameters
    value_range: tuple[float, float]  # stage-0 span of the swept value
    scale: str  # "log" or "linear" spacing
    points_per_stage: int
    stages: int
    top_k: int
    epochs: int | None  # passes over the training data (None when ``steps`` is given)
    batch_size: int
    seeds: int
    seed: int
    min_improvement: float
    validation_fraction: float
    expand: bool
    metric: str = "val_loss"  # what ranks the values: the validation loss or an aux entry
    mode: str = "min"  # "min" or "max": whether a lower or a higher metric is better
    eval_batch_size: int | None = None  # validation examples per batch (set by the setup)
    steps: int | None = None  # training steps per lane, instead of epochs
    eval_every: int | None = None  # steps between validations (None: once per epoch)
    diagnostics: bool = True  # per-step gradient norms and per-segment update ratios
    # stop once the interval lies within best / (1 + precision) .. best * (1 + precision)
    precision: float | None = None
    max_lanes: int | None = None  # the most lanes (values x seeds) the whole sweep may train
    # the horizon check: the steps of the run the user will do (None: no check); given as
    # epochs, ``target_epochs`` keeps them and the setup turns them into steps
    target_steps: int | None = None
    target_epochs: int | None = None

    @property
    def lanes_per_stage(self) -> int:
        """Lanes one stage trains: every value with every seed."""
        return self.points_per_stage * self.seeds

    @property
    def sign(self) -> float:
        """+1 when lower is better, -1 when higher is: ``sign * metric`` is minimised."""
        return 1.0 if self.mode == "min" else -1.0

    @property
    def initial_step(self) -> float:
        """The spacing of stage 0 on the sweep's scale (a log-ratio on a log scale)."""
        return _scale.distance(*self.value_range, self.scale) / (self.points_per_stage - 1)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["value_range"] = list(self.value_range)
        return data

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SweepConfig:
        """The settings back from a result's ``config`` record (:meth:`to_json`'s fields)."""
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in record.items() if k in names}
        data["value_range"] = tuple(float(v) for v in data["value_range"])
        return cls(**data)


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def _optional(name: str, value) -> int | None:
    return None if value is None else _integer(name, value, 1)


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return float(value)


# hyperparameters of optax's optimizers whose valid values are known: [low, high)
KNOWN_RANGES = {
    "b1": (0.0, 1.0),
    "b2": (0.0, 1.0),
    "momentum": (0.0, 1.0),
    "decay": (0.0, 1.0),
    "weight_decay": (0.0, math.inf),
    "eps": (0.0, math.inf),
}
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: injected values are float32
FLOAT32_MAX = 3.4028234663852886e38


def _range(name: str, value, scale: str, hyperparam: str = "learning_rate") -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: expected a pair (low, high), got {value!r}")
    low, high = (_real(name, v) for v in value)
    if scale == "log" and (low <= 0 or high <= 0):
        raise ValueError(f"{name}: both ends must be positive on a log scale, got {value!r}")
    if low >= high:
        raise ValueError(f"{name}: low must be below high, got ({low}, {high})")
    # the optimizer holds the swept value in float32: a value that rounds to 0 (or overflows)
    # there would train as a different value than the one reported
    for end in (low, high):
        if end != 0 and not FLOAT32_TINY <= abs(end) <= FLOAT32_MAX:
            raise ValueError(
                f"{name}: {end:g} is not a normal float32 number (the optimizer holds the value "
                f"in float32, where it would be {'0' if abs(end) < 1 else 'inf'}); choose values "
                f"between {FLOAT32_TINY:.3g} and {FLOAT32_MAX:.3g} in size"
            )
    if hyperparam == "learning_rate" and low <= 0:
        raise ValueError(
            f"{name}: a learning rate must be positive, got {low:g} (a linear sweep of rates "
            "starts above zero)"
        )
    if hyperparam in KNOWN_RANGES:
        valid_low, valid_high = KNOWN_RANGES[hyperparam]
        if low < valid_low or high >= valid_high:
            raise ValueError(
                f"{name}: {hyperparam} must lie in [{valid_low:g}, {valid_high:g}), got "
                f"({low:g}, {high:g})"
            )
    return low, high


def _precision(precision) -> float | None:
    if precision is None:
        return None
    precision = _real("precision", precision)
    if precision <= 0:
        raise ValueError(
            f"precision: the interval's relative half-width to reach, > 0 (0.5: within "
            f"best/1.5 .. best*1.5), got {precision}"
        )
    return precision


def make_config(
    *,
    hyperparam: str,
    value_range,
    range_name: str,
    scale: str,
    points_per_stage,
    stages,
    top_k,
    epochs,
    batch_size,
    seeds,
    seed,
    min_improvement,
    validation_fraction,
    expand,
    metric="val_loss",
    mode="min",
    eval_batch_size=None,
    steps=None,
    eval_every=None,
    diagnostics=True,
    precision=None,
    max_lanes=None,
    target_steps=None,
    target_epochs=None,
) -> SweepConfig:
    """Checks every scalar argument of ``run`` and returns them as a :class:`SweepConfig`.

    ``range_name`` is the argument name used in messages (``lr_range`` by default).
    """
    if not isinstance(hyperparam, str) or not hyperparam:
        raise TypeError(f"hyperparam: expected a non-empty name, got {hyperparam!r}")
    _scale.check(scale)
    fraction = _real("validation_fraction", validation_fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction: must be in (0, 1), got {fraction}")
    precision = _precision(precision)
    count = default_seeds(precision) if seeds is None else _integer("seeds", seeds, 1)
    if min_improvement is None:  # several seeds stop by resolution, not by noisy improvements
        min_improvement = 0.01 if count == 1 else 0.0
    improvement = _real("min_improvement", min_improvement)
    if improvement < 0:
        raise ValueError(f"min_improvement: must be >= 0, got {improvement}")
    if not isinstance(expand, bool):
        raise TypeError(f"expand: expected True or False, got {expand!r}")
    if not isinstance(diagnostics, bool):
        raise TypeError(f"diagnostics: expected True or False, got {diagnostics!r}")
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric: expected a name such as 'val_loss', got {metric!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
    if epochs is not None and steps is not None:
        raise ValueError("steps: give the budget once, as epochs or as steps, not both")
    if epochs is None and steps is None:
        epochs = 3
    if stages is None:  # a sweep asked for a precision stops on it, or on max_lanes
        stages = PRECISION_STAGES if precision is not None else 5
    points = _integer("points_per_stage", points_per_stage, 2)
    lanes = points * count
    if max_lanes is not None:
        max_lanes = _integer("max_lanes", max_lanes, 1)
        if max_lanes < lanes:
            chosen = (
                f" (seeds={count}: what precision={precision:g} needs; give seeds= for fewer)"
                if seeds is None and precision is not None
                else ""
            )
            raise ValueError(
                f"max_lanes: a stage trains points_per_stage x seeds = {lanes} lanes{chosen}, so "
                f"at least {lanes} are needed, got {max_lanes}"
            )
    target_steps, target_epochs = (
        _optional("target_steps", target_steps),
        _optional("target_epochs", target_epochs),
    )
    if target_steps is not None and target_epochs is not None:
        raise ValueError(
            "target_steps: give the target run's length once, as target_steps or as "
            "target_epochs, not both"
        )
    if (target_steps or target_epochs) and scale != "log":
        raise ValueError(
            "target_steps: the horizon check fits a power law of the optimum in the steps, "
            'which needs scale="log" (a linear sweep has no such law); leave the target out'
        )
    return SweepConfig(
        hyperparam=hyperparam,
        value_range=_range(range_name, value_range, scale, hyperparam),
        scale=scale,
        points_per_stage=points,
        stages=_integer("stages", stages, 1),
        top_k=_integer("top_k", top_k, 1),
        epochs=_optional("epochs", epochs),
        batch_size=_integer("batch_size", batch_size, 1),
        seeds=count,
        seed=_integer("seed", seed, 0),
        min_improvement=improvement,
        validation_fraction=fraction,
        expand=expand,
        diagnostics=diagnostics,
        metric=metric,
        mode=mode,
        eval_batch_size=_optional("eval_batch_size", eval_batch_size),
        steps=_optional("steps", steps),
        eval_every=_optional("eval_every", eval_every),
        precision=precision,
        max_lanes=max_lanes,
        target_steps=target_steps,
        target_epochs=target_epochs,
    )
