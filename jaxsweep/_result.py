"""What a sweep returns: frozen records with a lossless JSON round trip (never pickle).

The records name the swept value neutrally (``value``, ``values``, ``best_value``): it is a
learning rate unless ``config["hyperparam"]`` names another hyperparameter. The older
``lr`` names stay as read-only aliases. Files are standard JSON written through the package's
one codec (:mod:`jaxsweep._json`); :func:`load` reads every format version written so far.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import _confidence, _selector
from ._json import decode_float, decode_floats, encode

# 2: neutral names (``value``, ``values``, ``best_value``) and ``setup_seconds``;
# 1: the same records with ``lr``, ``lrs`` and ``best_lr``.
FORMAT_VERSION = 2
_LEGACY_KEYS = {"lr": "value", "lrs": "values", "best_lr": "best_value"}  # version 1 -> 2


@dataclass(frozen=True)
class Evaluation:
    """One value of the swept hyperparameter, trained for every seed, in one stage.

    Per-epoch sequences have one entry per validation (once per epoch unless ``eval_every``
    says otherwise; ``steps`` holds the step of each), averaged over seeds unless named
    per-seed.
    """

    value: float  # the evaluated value (a learning rate unless ``config["hyperparam"]`` says else)
    stage: int
    # the final validation metric (``config["metric"]``, the loss by default), mean over seeds;
    # the worst possible when diverged: +inf when lower is better, -inf when higher is
    score: float
    diverged: bool  # in any seed: NaN/inf appeared, or the validation loss blew up
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
    # per seed: NaN/inf appeared, or its validation loss ended 10x above its start (a finite
    # blow-up); empty in results written before it was recorded
    seed_diverged: tuple[bool, ...] = ()

    def objective_seed_scores(self, sign: float = 1.0) -> tuple[float, ...]:
        """Per seed, ``sign * score`` (lower is better), +inf where that seed diverged: what
        the search and the intervals compare."""
        flags = self.seed_diverged or (False,) * len(self.seed_scores)
        return tuple(
            math.inf if bad or not math.isfinite(s) else sign * s
            for s, bad in zip(self.seed_scores, flags, strict=True)
        )

    @property
    def lr(self) -> float:
        """The evaluated value under its older name (same as ``value``)."""
        return self.value

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
    values: tuple[float, ...]  # the values evaluated in this stage, sorted
    intervals: tuple[tuple[float, float], ...]  # kept intervals that produced them (stage>0)
    expansion: str | None  # "up"/"down" when this stage searched beyond the evaluated range
    best_value: float  # best value after this stage (over all stages so far)
    best_score: float
    seconds: float  # wall time of the stage, compilation included
    seconds_per_epoch: tuple[float, ...]
    compile_seconds: float  # 0 when the compiled program was reused
    memory_bytes: int  # device peak if the backend reports it, else the program's estimate
    memory_source: str  # "device_peak" or "compiled_estimate"

    @property
    def lrs(self) -> tuple[float, ...]:
        """The stage's values under their older name (same as ``values``)."""
        return self.values

    @property
    def best_lr(self) -> float:
        """The best value after this stage under its older name (same as ``best_value``)."""
        return self.best_value


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Everything a sweep found, in a form that plots, reports and the CLI read alone."""

    best_value: float  # the evaluated value with the lowest score
    best_score: float
    evaluations: tuple[Evaluation, ...]
    stages: tuple[Stage, ...]
    config: dict[str, Any]
    environment: dict[str, Any]
    param_count: int = 0
    # "completed" | "min_improvement" | "resolution" | "precision" | "budget"
    stop_reason: str = "completed"
    warnings: tuple[str, ...] = ()
    setup_seconds: float = 0.0  # wall time of ``run`` before its first stage (0: not recorded)
    # the horizon check (``run(target_steps=...)``): what the longer horizons trained after
    # the search, apart from the sweep's own evaluations and stages
    horizon_evaluations: tuple[Evaluation, ...] = ()
    horizon_stages: tuple[Stage, ...] = ()
    # ``run(keep="best")``: the best value's final variables, one per seed; never saved in
    # the JSON (``jaxsweep.save_variables`` writes them), so a loaded result has None
    best_variables: tuple | None = field(default=None, compare=False, repr=False)

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
        return min(self.evaluations, key=lambda e: (self.objective(e.score), e.value))

    @property
    def hyperparam(self) -> str:
        """The swept optimizer argument, as passed to ``run`` (``"learning_rate"`` by default)."""
        return str(self.config.get("hyperparam", "learning_rate"))

    @property
    def value_name(self) -> str:
        """The swept hyperparameter in words: ``"learning rate"``, ``"weight decay"``, ..."""
        return self.hyperparam.replace("_", " ")

    @property
    def scale(self) -> str:
        """The scale the values were spaced on: ``"log"`` or ``"linear"``."""
        return "linear" if self.config.get("scale", "log") == "linear" else "log"

    @property
    def seconds(self) -> float:
        """The sweep's wall time: ``run``'s set-up before the first stage (input checks,
        tracing, placing the data) plus every stage, initialisation and compilation included.

        This is the time ``run`` takes apart from waiting for the last checkpoint write; for
        a resumed sweep it adds the stages trained before the interruption to the rerun's
        set-up. Report, methods paragraph, efficiency and CLI all state this number.
        """
        return self.search_seconds + sum(stage.seconds for stage in self.horizon_stages)

    @property
    def search_seconds(self) -> float:
        """:attr:`seconds` without the horizon stages (what a grid search is compared to)."""
        return self.setup_seconds + sum(stage.seconds for stage in self.stages)

    @functools.cached_property
    def horizon(self):
        """The optimum for the run the user will do (``run(target_steps=...)``): a
        :class:`jaxsweep._horizon.Horizon` with ``value`` and ``interval`` at the target, the
        ``exponent`` of the power law through every horizon's optimum, the ``horizons``
        trained and ``note`` in words; None for a sweep without a target."""
        if self.config.get("target_steps") is None or not self.evaluations:
            return None
        from . import _history, _horizon  # the result module stays free of the search
        from ._config import SweepConfig

        history = _history.History.from_record(self.to_dict())
        return _horizon.estimate(history.evaluated(), SweepConfig.from_record(self.config))

    @functools.cached_property
    def confidence(self) -> _confidence.Confidence:
        """How precisely the optimum is located (computed from the evaluations, not stored).

        ``confidence.best`` is the interval shown for the optimum: with ``seeds >= 2`` it
        covers the value that optimises the expected score over seeds (``seed_curve``, or
        ``not_worse`` without a reliable fit); with one seed it is a local quadratic fit to
        that seed's curve, blind to seed-to-seed variation. ``confidence.refined`` holds the
        refined value (the fitted curve's minimum). Each says which method produced it
        (``method``) and why (``note``).
        """
        # the estimates minimise: a metric to maximise enters with its sign flipped
        sign = -1.0 if self.mode == "max" else 1.0
        return _confidence.sweep_confidence(
            [e.value for e in self.evaluations],
            [self.objective(e.score) for e in self.evaluations],
            [e.objective_seed_scores(sign) for e in self.evaluations],
            [e.stage for e in self.evaluations],
            scale=self.scale,
            plateaus=self.plateaus,
            stable=self.config.get("precision") is not None,
        )

    @functools.cached_property
    def plateaus(self) -> tuple:
        """The flat ends the search found (``_selector.Plateau``: ``direction`` "down" means
        values at or below ``bound`` score alike with the best, evaluated out to ``edge``);
        empty when the optimum is bracketed or only one seed was trained."""
        config = self.config
        needed = ("value_range", "points_per_stage", "top_k")
        if not config.get("expand", True) or any(k not in config for k in needed):
            return ()
        value_range = tuple(float(v) for v in config["value_range"])
        width = _selector.expansion_width(
            value_range, int(config["points_per_stage"]), int(config["top_k"]), self.scale
        )
        sign = -1.0 if self.mode == "max" else 1.0
        return _selector.plateaus(
            [e.value for e in self.evaluations],
            [e.objective_seed_scores(sign) for e in self.evaluations],
            value_range=value_range,
            width=width,
            scale=self.scale,
            stages=[e.stage for e in self.evaluations],
        )

    @property
    def lanes(self) -> int:
        """Lanes (value x seed pairs) the sweep trained."""
        return count_lanes(self.evaluations)

    @property
    def precision(self) -> float:
        """How precisely the optimum is located: the reported interval's relative half-width
        (``0.5``: it lies within ``value / 1.5`` to ``value * 1.5`` on a log scale, within
        ``0.5 |value|`` on a linear one); ``inf`` when the interval is open (a plateau, an
        optimum beyond what was evaluated) or there is none."""
        return _confidence.relative_half_width(self.confidence.best, self.scale)

    @property
    def refined_value(self) -> float:
        """The optimum of the curve fitted around the best value (over the seeds when there
        are several); the best evaluated value itself when no reliable fit exists."""
        return self.confidence.refined.lr

    @property
    def value_interval(self) -> tuple[float, float]:
        """The interval for the optimum (95% with ``seeds >= 2``); ``confidence.best`` says how."""
        return self.confidence.best.interval

    @property
    def best_lr(self) -> float:
        """The best value under its older name (same as ``best_value``)."""
        return self.best_value

    @property
    def refined_lr(self) -> float:
        """Same as ``refined_value`` (its older name)."""
        return self.refined_value

    @property
    def lr_interval(self) -> tuple[float, float]:
        """Same as ``value_interval`` (its older name)."""
        return self.value_interval

    @property
    def best_params(self) -> dict[str, float]:
        """The best evaluated value by the swept hyperparameter's name, ready to pass on:
        ``{"learning_rate": 0.021}`` (``best_value`` under its optimizer argument's name)."""
        return {self.hyperparam: self.best_value}

    def to_dataframe(self):
        """One row per trained lane (a value with one seed), as a pandas DataFrame.

        Columns: ``value`` (the swept hyperparameter's), ``seed`` (its index, from 0),
        ``stage``, the final validation metric of that seed (named as ``metric``:
        ``val_loss``, ``val_accuracy``, ...; with ``val_loss`` too when the metric is another),
        ``train_loss`` (the value's final training loss, mean over seeds: the result keeps
        no per-seed training loss), ``diverged`` (that seed) and ``score`` (the value's score:
        the metric's mean over seeds, the worst possible where any seed diverged). So
        ``df.groupby("value")[result.metric].mean()`` gives back every score that did not
        diverge. Needs pandas (``pip install 'jaxsweep[dataframe]'``).
        """
        try:
            import pandas
        except ImportError as error:
            raise ImportError(
                "SweepResult.to_dataframe needs pandas: pip install 'jaxsweep[dataframe]'"
            ) from error
        metric, rows = self.metric, []
        for e in self.evaluations:
            flags = e.seed_diverged or (e.diverged,) * len(e.seed_scores)
            for seed, final in enumerate(e.seed_scores):
                row = {"value": e.value, "seed": seed, "stage": e.stage, metric: final}
                if metric != "val_loss":
                    row["val_loss"] = e.seed_val_loss[seed][-1] if e.seed_val_loss else math.nan
                row["train_loss"] = e.train_loss[-1] if e.train_loss else math.nan
                row.update(diverged=bool(flags[seed]), score=e.score)
                rows.append(row)
        columns = ["value", "seed", "stage", metric]
        columns += [*(["val_loss"] if metric != "val_loss" else []), "train_loss"]
        return pandas.DataFrame(rows, columns=[*columns, "diverged", "score"])

    def __repr__(self) -> str:
        """One line: the best value and score, the interval and precision, why it stopped,
        the lanes trained and the time (``print(result)``, a notebook cell)."""
        score = "diverged" if math.isinf(self.best_score) else f"{self.best_score:.4g}"
        parts = [
            f"best_value={self.best_value:.4g} ({self.hyperparam})",
            f"best_score={score} ({self.metric})",
        ]
        try:  # a record too small to fit still shows the rest
            low, high = self.value_interval
            parts.append(f"interval=[{low:.3g}, {high:.3g}]")
            parts.append(f"precision={self.precision:.3g}")
        except Exception:
            pass
        horizon = self.horizon
        if horizon is not None:
            parts.append(f"at_target={horizon.value:.4g} ({horizon.target_steps} steps)")
        parts += [
            f"stop_reason={self.stop_reason!r}",
            f"lanes={self.lanes}",
            f"stages={len(self.stages)}",
            f"seconds={self.seconds:.3g}",
        ]
        return f"SweepResult({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(dataclasses.replace(self, best_variables=None))
        del record["best_variables"]  # arrays: saved apart, never as JSON
        return {"format_version": FORMAT_VERSION, **encode(record)}

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


def count_lanes(evaluations) -> int:
    """Lanes (value x seed pairs) behind ``evaluations``: one per seed score."""
    return sum(len(e.seed_scores) for e in evaluations)


def _renamed(record: dict) -> dict:
    """A version-1 record with its keys renamed to version 2's."""
    return {_LEGACY_KEYS.get(key, key): value for key, value in record.items()}


def _series(mapping) -> dict[str, tuple[float, ...]]:
    return {k: decode_floats(v) for k, v in mapping.items()}


def _evaluation(d) -> Evaluation:
    return Evaluation(
        value=decode_float(d["value"]),
        stage=int(d["stage"]),
        score=decode_float(d["score"]),
        diverged=bool(d["diverged"]),
        seed_scores=decode_floats(d["seed_scores"]),
        train_loss=decode_floats(d["train_loss"]),
        val_loss=decode_floats(d["val_loss"]),
        seed_val_loss=tuple(decode_floats(s) for s in d["seed_val_loss"]),
        grad_norm=decode_floats(d["grad_norm"]),
        grad_norm_max=decode_floats(d["grad_norm_max"]),
        loss_reduction_rate=decode_floats(d["loss_reduction_rate"]),
        stability=decode_floats(d["stability"]),
        module_grad_norm=_series(d["module_grad_norm"]),
        update_ratio=_series(d["update_ratio"]),
        train_aux=_series(d["train_aux"]),
        val_aux=_series(d["val_aux"]),
        steps=tuple(int(v) for v in d.get("steps", ())),  # absent before steps were recorded
        seed_diverged=tuple(bool(v) for v in d.get("seed_diverged", ())),
    )


def _stage(d) -> Stage:
    return Stage(
        index=int(d["index"]),
        values=decode_floats(d["values"]),
        intervals=tuple((decode_float(a), decode_float(b)) for a, b in d["intervals"]),
        expansion=d["expansion"],
        best_value=decode_float(d["best_value"]),
        best_score=decode_float(d["best_score"]),
        seconds=decode_float(d["seconds"]),
        seconds_per_epoch=decode_floats(d["seconds_per_epoch"]),
        compile_seconds=decode_float(d["compile_seconds"]),
        memory_bytes=int(d["memory_bytes"]),
        memory_source=str(d["memory_source"]),
    )


def from_dict(d: dict[str, Any]) -> SweepResult:
    """Rebuilds a :class:`SweepResult` from :meth:`SweepResult.to_dict` output (any version)."""
    version = d.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(
            f"result: unsupported format_version {version!r} (this jaxsweep reads 1 to "
            f"{FORMAT_VERSION}; a newer jaxsweep wrote it)"
        )
    rename = _renamed if version == 1 else dict
    d = rename(d)
    return SweepResult(
        best_value=decode_float(d["best_value"]),
        best_score=decode_float(d["best_score"]),
        evaluations=tuple(_evaluation(rename(e)) for e in d["evaluations"]),
        stages=tuple(_stage(rename(s)) for s in d["stages"]),
        config=dict(d["config"]),  # plain JSON values, kept as written
        environment=dict(d["environment"]),
        param_count=int(d.get("param_count", 0)),
        stop_reason=str(d.get("stop_reason", "completed")),
        warnings=tuple(d.get("warnings", ())),
        setup_seconds=decode_float(d.get("setup_seconds", 0.0)),
        horizon_evaluations=tuple(_evaluation(e) for e in d.get("horizon_evaluations", ())),
        horizon_stages=tuple(_stage(s) for s in d.get("horizon_stages", ())),
    )


def load(path: str | os.PathLike) -> SweepResult:
    """Reads a result written by :meth:`SweepResult.save`, by this or an earlier version.

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
