"""What a sweep has evaluated so far, as one immutable value, and metrics turned into records.

The driver threads one :class:`History` from stage to stage (``history = history.with_stage(...)``);
the selector reads its points and scores, the checkpoint stores it, the result is made from it.
A :class:`Running` is the part of the current stage trained so far.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _search, _selector
from ._result import Evaluation, Stage, SweepResult, count_lanes, from_dict
from ._train import SegmentMetrics


@dataclasses.dataclass(frozen=True)
class StageCost:
    """What a finished stage cost: wall time, compile time, memory."""

    seconds: float  # wall time of the stage, compilation included
    seconds_per_epoch: tuple[float, ...]
    compile_seconds: float  # 0 when the compiled program was reused
    memory_bytes: int
    memory_source: str  # "device_peak", "compiled_estimate" or "unavailable"


@dataclasses.dataclass(frozen=True)
class History:
    """Everything evaluated in the finished stages, and the warnings given so far."""

    evaluations: tuple[Evaluation, ...] = ()
    stages: tuple[Stage, ...] = ()
    notes: tuple[str, ...] = ()  # warnings, in the order they were given
    sign: float = 1.0  # +1 when a lower metric is better (mode "min"), -1 when higher is
    # what stages with a budget of their own trained (longer horizons, after the search);
    # kept apart, so that everything about the sweep's answer reads the sweep's stages only
    horizon_evaluations: tuple[Evaluation, ...] = ()
    horizon_stages: tuple[Stage, ...] = ()
    steps: int = 0  # training steps per lane of the sweep's own stages (0: not said)

    @property
    def points(self) -> tuple[float, ...]:
        return tuple(e.value for e in self.evaluations)

    @property
    def scores(self) -> tuple[float, ...]:
        """What the selector ranks, lower is better: the scores times :attr:`sign`."""
        return tuple(self.sign * e.score for e in self.evaluations)

    @property
    def seed_scores(self) -> tuple[tuple[float, ...], ...]:
        """Per evaluation, its score for each seed, times :attr:`sign` like :attr:`scores`; a
        seed that diverged (or blew up) scores +inf, the worst."""
        return tuple(e.objective_seed_scores(self.sign) for e in self.evaluations)

    def best(self) -> tuple[float, float]:
        """The best value and its score (the metric itself); ``(nan, worst)`` before any."""
        if not self.evaluations:
            return math.nan, self.sign * math.inf
        value, objective = _selector.best_point(self.points, self.scores)
        return value, self.sign * objective

    def evaluated(self) -> _search.Evaluated:
        """What a search reads: the history as numbers, lower is better, diverged +inf; each
        longer horizon trained after the search as one more :class:`_search.Evaluated`."""
        horizons = sorted({_total_steps(e) for e in self.horizon_evaluations})
        return _search.Evaluated(
            points=self.points,
            scores=self.scores,
            seed_scores=self.seed_scores,
            stage_bests=tuple(self.sign * stage.best_score for stage in self.stages),
            lanes=count_lanes(self.evaluations),
            steps=self.steps,
            longer=tuple(
                _evaluated(
                    [e for e in self.horizon_evaluations if _total_steps(e) == steps],
                    self.sign,
                    steps,
                )
                for steps in horizons
            ),
        )

    def best_objective(self) -> float:
        """The best score signed so that lower is better (what the stop rule compares)."""
        return self.sign * self.best()[1]

    def noted(self, note: str) -> History:
        return dataclasses.replace(self, notes=(*self.notes, note))

    def with_stage(
        self, plan: _selector.StagePlan, evaluations: Sequence[Evaluation], cost: StageCost
    ) -> History:
        """This history with one more finished stage (a stage with steps of its own goes
        with the horizon stages)."""
        if plan.steps is not None and plan.steps != self.steps:
            return self._with_horizon_stage(plan, evaluations, cost)
        grown = dataclasses.replace(self, evaluations=(*self.evaluations, *evaluations))
        best_value, best_score = grown.best()
        stage = Stage(
            index=len(self.stages) + len(self.horizon_stages),
            values=tuple(plan.points),
            intervals=tuple(plan.intervals),
            expansion=plan.expansion,
            best_value=best_value,
            best_score=best_score,
            **dataclasses.asdict(cost),
        )
        return dataclasses.replace(grown, stages=(*self.stages, stage))

    def _with_horizon_stage(self, plan, evaluations: Sequence[Evaluation], cost) -> History:
        same = [e for e in self.horizon_evaluations if _total_steps(e) == plan.steps]
        best = min([*same, *evaluations], key=lambda e: (self.sign * e.score, e.value))
        stage = Stage(
            index=len(self.stages) + len(self.horizon_stages),
            values=tuple(plan.points),
            intervals=tuple(plan.intervals),
            expansion=plan.expansion,
            best_value=best.value,
            best_score=best.score,
            **dataclasses.asdict(cost),
        )
        return dataclasses.replace(
            self,
            horizon_evaluations=(*self.horizon_evaluations, *evaluations),
            horizon_stages=(*self.horizon_stages, stage),
        )

    def result(self, config: dict[str, Any], **fields) -> SweepResult:
        """A :class:`SweepResult` of this history (``fields``: environment, stop reason, ...)."""
        best_value, best_score = self.best()
        return SweepResult(
            best_value=best_value,
            best_score=best_score,
            evaluations=self.evaluations,
            stages=self.stages,
            config=dict(config),
            warnings=self.notes,
            horizon_evaluations=self.horizon_evaluations,
            horizon_stages=self.horizon_stages,
            **{"environment": {}, **fields},
        )

    def to_record(self, config: dict[str, Any]) -> dict:
        """The history as a partial result's JSON (the checkpoint's format; best unused)."""
        partial = self.result(config)
        return dataclasses.replace(partial, best_value=math.nan, best_score=math.inf).to_dict()

    @classmethod
    def from_record(cls, record: dict | None) -> History:
        """Reads :meth:`to_record`'s output; None (nothing finished yet) is the empty history."""
        if record is None:
            return cls()
        partial = from_dict(record)
        sign = -1.0 if partial.config.get("mode", "min") == "max" else 1.0
        return cls(
            partial.evaluations,
            partial.stages,
            partial.warnings,
            sign,
            partial.horizon_evaluations,
            partial.horizon_stages,
            int(partial.config.get("steps") or 0),
        )


def _total_steps(evaluation: Evaluation) -> int:
    """The steps an evaluation's lanes trained (its last validation's step)."""
    return int(evaluation.steps[-1]) if evaluation.steps else 0


def _evaluated(evaluations: Sequence[Evaluation], sign: float, steps: int) -> _search.Evaluated:
    """One horizon's evaluations as a search reads them; its stages' bests are the best
    score after each of its stages (in the order trained)."""
    stages = sorted({e.stage for e in evaluations})
    bests = tuple(min(sign * e.score for e in evaluations if e.stage <= stage) for stage in stages)
    return _search.Evaluated(
        points=tuple(e.value for e in evaluations),
        scores=tuple(sign * e.score for e in evaluations),
        seed_scores=tuple(e.objective_seed_scores(sign) for e in evaluations),
        stage_bests=bests,
        lanes=count_lanes(evaluations),
        steps=steps,
    )


@dataclasses.dataclass(frozen=True)
class Running:
    """The part of a stage trained so far (real lanes only, on the host)."""

    values: tuple[float, ...]  # the stage's swept values (checked against the plan on resume)
    epoch_metrics: tuple[SegmentMetrics, ...] = ()  # one per finished epoch, host arrays
    seconds_per_epoch: tuple[float, ...] = ()
    seconds: float = 0.0  # wall time spent in the stage so far
    compile_seconds: float = 0.0

    def after_epoch(self, metrics: SegmentMetrics, epoch_seconds: float, seconds: float) -> Running:
        return dataclasses.replace(
            self,
            epoch_metrics=(*self.epoch_metrics, metrics),
            seconds_per_epoch=(*self.seconds_per_epoch, epoch_seconds),
            seconds=seconds,
        )


# ----------------------------------------------------------------------------- metrics -> records


def _per_epoch(epochs: Sequence[SegmentMetrics], getter) -> np.ndarray:
    """Stacks one metric over epochs: shape ``(lanes, epochs)``."""
    return np.stack([np.asarray(getter(m), dtype=np.float64) for m in epochs], axis=1)


def _series(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _lane_series(epochs: Sequence[SegmentMetrics], values: int, seeds: int) -> dict[str, Any]:
    """Every metric as an array ``(values, seeds, epochs)``; mappings averaged over seeds."""

    def by_value(getter) -> np.ndarray:
        return _per_epoch(epochs, getter).reshape(values, seeds, -1)

    def mapping(field: str) -> dict[str, np.ndarray]:
        names = getattr(epochs[0], field).keys()
        return {n: by_value(lambda m, n=n: getattr(m, field)[n]).mean(axis=1) for n in names}

    plain = ("train_loss", "val_loss", "first_step_loss", "diverged", "stability")
    series = {name: by_value(lambda m, name=name: getattr(m, name)) for name in plain}
    series["grad_norm"] = by_value(lambda m: m.grad_norm)
    series["grad_norm_max"] = by_value(lambda m: m.grad_norm_max)
    for field in ("module_grad_norm", "update_ratio", "train_aux", "val_aux"):
        series[field] = mapping(field)
    return series


def _metric_series(epochs: Sequence[SegmentMetrics], metric: str, seeds: int) -> np.ndarray:
    """An auxiliary validation metric (``val_<name>``) per lane: ``(values, seeds, epochs)``."""
    name = metric.removeprefix("val_")
    return _per_epoch(epochs, lambda m: m.val_aux[name]).reshape(-1, seeds, len(epochs))


# A lane whose final validation loss is this many times the loss it started from blew up:
# full-batch descent just past its stable rate ends at 1e25, still finite; a BatchNorm ResNet
# at lr 10 at 1.5e4 from a start near 2.3. No lane that trains ends that far above its start.
BLOWN_UP_FACTOR = 10.0


def blown_up(final_loss: np.ndarray, start_loss: np.ndarray) -> np.ndarray:
    """Per lane, whether its loss ended far above where training started (``(lanes,)``).

    The start is the lane's own first-batch loss, or the median over the stage's lanes when
    that is larger (a lane cannot escape by starting high); a start at or below zero (a loss
    that is not a positive error) tells nothing, and nothing is flagged then.
    """
    final, start = np.asarray(final_loss, np.float64), np.asarray(start_loss, np.float64)
    finite_start = start[np.isfinite(start)]
    typical = float(np.median(finite_start)) if finite_start.size else math.nan
    reference = np.fmax(start, typical)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.isfinite(final) & (reference > 0) & (final > BLOWN_UP_FACTOR * reference)


def collect_evaluations(
    stage: int,
    values: Sequence[float],
    seeds: int,
    epochs: Sequence[SegmentMetrics],
    metric: str = "val_loss",
    sign: float = 1.0,
) -> list[Evaluation]:
    """Turns a stage's per-lane, per-segment metrics (a segment ends at each validation)
    into one :class:`Evaluation` per value.

    Lanes are ordered value-major: lane ``i * seeds + s`` is value ``i`` and seed ``s``. The
    score is ``metric`` after the last segment, mean over seeds; a value that diverged in any
    seed (NaN/inf, or a validation loss :data:`BLOWN_UP_FACTOR` times its start) scores the
    worst possible (``sign * inf``).
    """
    s = _lane_series(epochs, len(values), seeds)
    per_seed = s["val_loss"] if metric == "val_loss" else _metric_series(epochs, metric, seeds)
    # a seed diverged: NaN/inf on the way, or its validation loss blew up (finite or not)
    exploded = blown_up(s["val_loss"][..., -1].ravel(), s["first_step_loss"][..., 0].ravel())
    seed_diverged = s["diverged"].any(axis=2) | exploded.reshape(len(values), seeds)
    diverged = seed_diverged.any(axis=1)
    evaluations = []
    for i, value in enumerate(values):
        mean_train = s["train_loss"][i].mean(axis=0)
        previous = np.concatenate([[s["first_step_loss"][i, :, 0].mean()], mean_train[:-1]])
        with np.errstate(divide="ignore", invalid="ignore"):
            reduction = 1.0 - mean_train / previous
        seed_scores = per_seed[i, :, -1]
        score = float(seed_scores.mean())
        is_diverged = bool(diverged[i]) or not math.isfinite(score)
        evaluations.append(
            Evaluation(
                value=float(value),
                stage=stage,
                score=sign * math.inf if is_diverged else score,
                diverged=is_diverged,
                seed_scores=_series(seed_scores),
                seed_diverged=tuple(bool(d) for d in seed_diverged[i]),
                train_loss=_series(mean_train),
                val_loss=_series(s["val_loss"][i].mean(axis=0)),
                seed_val_loss=tuple(_series(row) for row in s["val_loss"][i]),
                grad_norm=_series(s["grad_norm"][i].mean(axis=0)),
                grad_norm_max=_series(s["grad_norm_max"][i].max(axis=0)),
                loss_reduction_rate=_series(reduction),
                stability=_series(s["stability"][i].mean(axis=0)),
                **{
                    field: {k: _series(v[i]) for k, v in s[field].items()}
                    for field in ("module_grad_norm", "update_ratio", "train_aux", "val_aux")
                },
            )
        )
    return evaluations
