"""What a sweep returns: frozen records with a lossless JSON round trip (never pickle).

Non-finite floats are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` so the file
stays standard JSON that any tool can read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import _confidence

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Evaluation:
    """One value of the swept hyperparameter, trained for every seed, in one stage.

    Per-epoch sequences have one entry per validation (once per epoch unless ``eval_every``
    says otherwise; ``steps`` holds the step of each), averaged over seeds unless named
    per-seed.
    """

    lr: float  # the evaluated value (a learning rate unless ``config["hyperparam"]`` says else)
    stage: int
    # the final validation metric (``config["metric"]``, the loss by default), mean over seeds;
    # the worst possible when diverged: +inf when lower is better, -inf when higher is
    score: float
    diverged: bool  # NaN/inf appeared in any seed
    seed_scores: tuple[float, ...]  # final validation metric per seed
    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    seed_val_loss: tuple[tuple[float, ...], ...]  # [seed][epoch]
    grad_norm: tuple[float, ...]  # global gradient norm, mean over steps
    grad_norm_max: tuple[float, ...]  # global gradient norm, max over steps
    loss_reduction_rate: tuple[float, ...]  # 1 - train_loss[e] / train_loss[e-1]
    stability: tuple[float, ...]  # std / |mean| of the step losses of each epoch
    module_grad_norm: dict[str, tuple[float, ...]] = field(default_factory=dict)
    update_ratio: dict[str, tuple[float, ...]] = field(default_factory=dict)  # |Δθ|/|θ|
    train_aux: dict[str, tuple[float, ...]] = field(default_factory=dict)
    val_aux: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # training steps done at each validation (per-validation sequences have one entry each)
    steps: tuple[int, ...] = ()

    @property
    def value(self) -> float:
        """The evaluated hyperparameter value (same as ``lr``)."""
        return self.lr

    def series(self, metric: str) -> tuple[float, ...]:
        """A recorded metric by name, one entry per validation (mean over seeds).

        ``"val_loss"`` and ``"train_loss"``, or ``"val_<name>"`` / ``"train_<name>"`` for an
        auxiliary entry ``name`` of the loss's dict.
        """
        part, _, name = metric.partition("_")
        if name == "loss" and part in ("val", "train"):
            return getattr(self, metric)
        aux = {"val": self.val_aux, "train": self.train_aux}.get(part, {})
        if name not in aux:
            known = ["val_loss", "train_loss", *(f"val_{k}" for k in self.val_aux)]
            known += [f"train_{k}" for k in self.train_aux]
            raise KeyError(f"metric: {metric!r} was not recorded; recorded: {known}")
        return aux[name]

    def validation_metrics(self) -> tuple[str, ...]:
        """The names of every validation metric recorded: the loss, then auxiliary entries."""
        return ("val_loss", *(f"val_{k}" for k in self.val_aux))


@dataclass(frozen=True)
class Stage:
    """One stage of the search: the values it trained together and what it cost."""

    index: int
    lrs: tuple[float, ...]  # the values evaluated in this stage, sorted
    intervals: tuple[tuple[float, float], ...]  # kept intervals that produced them (stage>0)
    expansion: str | None  # "up"/"down" when this stage searched beyond the evaluated range
    best_lr: float  # best value after this stage (over all stages so far)
    best_score: float
    seconds: float  # wall time of the stage, compilation included
    seconds_per_epoch: tuple[float, ...]
    compile_seconds: float  # 0 when the compiled program was reused
    memory_bytes: int  # device peak if the backend reports it, else the program's estimate
    memory_source: str  # "device_peak" or "compiled_estimate"


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Everything a sweep found, in a form that plots, reports and the CLI read alone."""

    best_lr: float
    best_score: float
    evaluations: tuple[Evaluation, ...]
    stages: tuple[Stage, ...]
    config: dict[str, Any]
    environment: dict[str, Any]
    param_count: int = 0
    stop_reason: str = "completed"  # "completed" | "min_improvement"
    warnings: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        """The validation metric that ranked the values (``"val_loss"``, ``"val_accuracy"``)."""
        return self.config.get("metric", "val_loss")

    @property
    def mode(self) -> str:
        """``"min"`` when a lower metric is better, ``"max"`` when a higher one is."""
        return self.config.get("mode", "min")

    def objective(self, score: float) -> float:
        """``score`` signed so that lower is better (what the search minimised)."""
        return -score if self.mode == "max" else score

    @property
    def best(self) -> Evaluation:
        """The best evaluation."""
        return min(self.evaluations, key=lambda e: (self.objective(e.score), e.lr))

    @functools.cached_property
    def confidence(self) -> _confidence.Confidence:
        """How precisely the optimum is located (computed from the evaluations, not stored).

        ``confidence.best`` is the interval shown for the best rate (a bootstrap over seeds
        when ``seeds >= 2``, else the local quadratic fit); ``confidence.refined`` is the fit.
        Each says which method produced it (``method``) and why (``note``).
        """
        # the estimates minimise: a metric to maximise enters with its sign flipped
        return _confidence.estimate(
            [e.lr for e in self.evaluations],
            [self.objective(e.score) for e in self.evaluations],
            [tuple(self.objective(s) for s in e.seed_scores) for e in self.evaluations],
            scale=self.config.get("scale", "log"),
        )

    @property
    def refined_lr(self) -> float:
        """The vertex of a parabola fitted to score against log rate around the best rate
        (the best evaluated rate itself when no reliable fit exists)."""
        return self.confidence.refined.lr

    @property
    def lr_interval(self) -> tuple[float, float]:
        """The 95% interval of the best rate; ``confidence.best.method`` says how it was made."""
        return self.confidence.best.interval

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **_encode(dataclasses.asdict(self))}

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON atomically (a temporary file renamed over the target)."""
        path = os.fspath(path)
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "w") as handle:
            json.dump(self.to_dict(), handle, indent=1, allow_nan=False)
        os.replace(temporary, path)

    def __eq__(self, other) -> bool:
        if not isinstance(other, SweepResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()  # NaN-safe: compares encoded text


def encode_float(value: float) -> float | str:
    """A float as JSON allows it: non-finite values become "nan", "inf" or "-inf"."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_non_finite(value):
    """Undoes :func:`encode_float`'s markers; every other value passes through."""
    return _NON_FINITE[value] if isinstance(value, str) else value


def _encode(value):
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _float(value) -> float:
    return float(decode_non_finite(value))


def _floats(values) -> tuple[float, ...]:
    return tuple(_float(v) for v in values)


def _series(mapping) -> dict[str, tuple[float, ...]]:
    return {k: _floats(v) for k, v in mapping.items()}


def _evaluation(d) -> Evaluation:
    return Evaluation(
        lr=_float(d["lr"]),
        stage=int(d["stage"]),
        score=_float(d["score"]),
        diverged=bool(d["diverged"]),
        seed_scores=_floats(d["seed_scores"]),
        train_loss=_floats(d["train_loss"]),
        val_loss=_floats(d["val_loss"]),
        seed_val_loss=tuple(_floats(s) for s in d["seed_val_loss"]),
        grad_norm=_floats(d["grad_norm"]),
        grad_norm_max=_floats(d["grad_norm_max"]),
        loss_reduction_rate=_floats(d["loss_reduction_rate"]),
        stability=_floats(d["stability"]),
        module_grad_norm=_series(d["module_grad_norm"]),
        update_ratio=_series(d["update_ratio"]),
        train_aux=_series(d["train_aux"]),
        val_aux=_series(d["val_aux"]),
        steps=tuple(int(v) for v in d.get("steps", ())),  # absent before steps were recorded
    )


def _stage(d) -> Stage:
    return Stage(
        index=int(d["index"]),
        lrs=_floats(d["lrs"]),
        intervals=tuple((_float(a), _float(b)) for a, b in d["intervals"]),
        expansion=d["expansion"],
        best_lr=_float(d["best_lr"]),
        best_score=_float(d["best_score"]),
        seconds=_float(d["seconds"]),
        seconds_per_epoch=_floats(d["seconds_per_epoch"]),
        compile_seconds=_float(d["compile_seconds"]),
        memory_bytes=int(d["memory_bytes"]),
        memory_source=str(d["memory_source"]),
    )


def from_dict(d: dict[str, Any]) -> SweepResult:
    """Rebuilds a :class:`SweepResult` from :meth:`SweepResult.to_dict` output."""
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"result: unsupported format_version {version!r} (expected 1)")
    return SweepResult(
        best_lr=_float(d["best_lr"]),
        best_score=_float(d["best_score"]),
        evaluations=tuple(_evaluation(e) for e in d["evaluations"]),
        stages=tuple(_stage(s) for s in d["stages"]),
        config=dict(d["config"]),  # plain JSON values, kept as written
        environment=dict(d["environment"]),
        param_count=int(d.get("param_count", 0)),
        stop_reason=str(d.get("stop_reason", "completed")),
        warnings=tuple(d.get("warnings", ())),
    )


def load(path: str | os.PathLike) -> SweepResult:
    """Reads a result written by :meth:`SweepResult.save`.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not a jaxsweep result.
    """
    with open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(path)}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or "evaluations" not in data:
        raise ValueError(f"{os.fspath(path)}: not a jaxsweep result (no 'evaluations')")
    try:
        return from_dict(data)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{os.fspath(path)}: malformed result ({error!r})") from None
