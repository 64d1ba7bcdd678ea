"""What a sweep returns: frozen records with a lossless JSON round trip (never pickle).

The records name the swept value neutrally (``value``, ``values``, ``best_value``): it is a
learning rate unless ``config["hyperparam"]`` names another hyperparameter. The older
``lr`` names stay as read-only aliases. Files are standard JSON written through the package's
one codec (:mod:`jaxsweep._json`); :func:`load` reads every format version written so far.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import _confidence, _selector
from ._json import decode_float, encode, read_file

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
        """Writes JSON atomically (a temporary file renamed over the target).

        Raises:
          OSError: the file could not be written (disk full, read-only folder): the message
            names ``path`` and says whether a file already there was kept, unchanged, or
            nothing was written; no temporary file is left behind.
        """
        path = os.fspath(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)  # before touching disk
        temporary = f"{path}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(temporary, "w") as handle:
                handle.write(text)
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            kept = (
                "the file already there was kept, unchanged"
                if os.path.lexists(path)
                else "nothing was written"
            )
            reason = error.strerror or str(error) or type(error).__name__
            message = f"{path}: could not save the result ({reason}); {kept}"
            raise (OSError(error.errno, message) if error.errno else OSError(message)) from None

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


# ----------------------------------------------------------------------------- reading a record
#
# Every field is checked as it is read: a file is data from outside, and a wrong value would
# otherwise reach the report and the methods paragraph as it is, or fail far from its cause.
# Each error names the field as a short dotted path (``config.seeds``, ``evaluations[2].score``).

STOP_REASONS = ("completed", "min_improvement", "resolution", "precision", "budget")
_MISSING = object()


class MalformedResult(ValueError):
    """A result record with a field missing or holding a value no sweep writes."""


def _bad(where: str, expected: str, value) -> MalformedResult:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return MalformedResult(f"{where}: expected {expected}, got {type(value).__name__} {shown}")


def _field(record: dict, key: str, where: str, default=_MISSING):
    if key in record:
        return record[key]
    if default is _MISSING:
        raise MalformedResult(f"{where}.{key}: missing" if where else f"{key}: missing")
    return default


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise _bad(where, "a list", value)
    return value


def _number(value, where: str, *, finite: bool = False) -> float:
    """A float as :func:`encode_float` wrote it: a number, or "nan", "inf", "-inf"."""
    expected = "a finite number" if finite else 'a number or "nan", "inf", "-inf"'
    known = isinstance(value, (int, float)) or value in ("nan", "inf", "-inf")
    if isinstance(value, bool) or not known:
        raise _bad(where, expected, value)
    try:
        number = decode_float(value)
    except OverflowError:  # an integer beyond any float
        raise _bad(where, expected, value) from None
    if finite and not math.isfinite(number):
        raise _bad(where, expected, value)
    return number


def _numbers(value, where: str, *, finite: bool = False) -> tuple[float, ...]:
    return tuple(
        _number(v, f"{where}[{i}]", finite=finite) for i, v in enumerate(_list(value, where))
    )


def _integer(value, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(where, f"an integer >= {minimum}", value)
    return value


def _flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, "true or false", value)
    return value


def _text(value, where: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or (choices and value not in choices):
        raise _bad(where, " or ".join(repr(c) for c in choices) if choices else "a string", value)
    return value


def _series(mapping, where: str) -> dict[str, tuple[float, ...]]:
    return {k: _numbers(v, f"{where}.{k}") for k, v in _mapping(mapping, where).items()}


def _evaluation(d, where: str) -> Evaluation:
    d = _mapping(d, where)

    def get(key, default=_MISSING):
        return _field(d, key, where, default)

    def read(key, reader, **options):  # the field, checked, its path named once
        return reader(get(key), f"{where}.{key}", **options)

    seed_scores = _numbers(get("seed_scores"), f"{where}.seed_scores")
    seed_diverged = tuple(  # absent before it was recorded
        _flag(v, f"{where}.seed_diverged[{i}]")
        for i, v in enumerate(_list(get("seed_diverged", []), f"{where}.seed_diverged"))
    )
    if seed_diverged and len(seed_diverged) != len(seed_scores):
        raise MalformedResult(
            f"{where}.seed_diverged: {len(seed_diverged)} entries for {len(seed_scores)} "
            "seed_scores"
        )
    seed_val_loss = _list(get("seed_val_loss"), f"{where}.seed_val_loss")
    return Evaluation(
        value=read("value", _number, finite=True),
        stage=read("stage", _integer),
        score=read("score", _number),
        diverged=read("diverged", _flag),
        seed_scores=seed_scores,
        train_loss=read("train_loss", _numbers),
        val_loss=read("val_loss", _numbers),
        seed_val_loss=tuple(
            _numbers(s, f"{where}.seed_val_loss[{i}]") for i, s in enumerate(seed_val_loss)
        ),
        grad_norm=read("grad_norm", _numbers),
        grad_norm_max=read("grad_norm_max", _numbers),
        loss_reduction_rate=read("loss_reduction_rate", _numbers),
        stability=read("stability", _numbers),
        module_grad_norm=read("module_grad_norm", _series),
        update_ratio=read("update_ratio", _series),
        train_aux=read("train_aux", _series),
        val_aux=read("val_aux", _series),
        steps=tuple(  # absent before steps were recorded
            _integer(v, f"{where}.steps[{i}]")
            for i, v in enumerate(_list(get("steps", []), f"{where}.steps"))
        ),
        seed_diverged=seed_diverged,
    )


def _stage(d, where: str) -> Stage:
    d = _mapping(d, where)

    def get(key):
        return _field(d, key, where)

    def read(key, reader, **options):  # the field, checked, its path named once
        return reader(get(key), f"{where}.{key}", **options)

    intervals = []
    for i, pair in enumerate(_list(get("intervals"), f"{where}.intervals")):
        if not isinstance(pair, list) or len(pair) != 2:
            raise _bad(f"{where}.intervals[{i}]", "a pair [low, high]", pair)
        intervals.append(tuple(_numbers(pair, f"{where}.intervals[{i}]", finite=True)))
    expansion = get("expansion")
    if expansion is not None:
        expansion = _text(expansion, f"{where}.expansion", ("up", "down"))
    return Stage(
        index=read("index", _integer),
        values=read("values", _numbers, finite=True),
        intervals=tuple(intervals),
        expansion=expansion,
        best_value=read("best_value", _number),
        best_score=read("best_score", _number),
        seconds=read("seconds", _number),
        seconds_per_epoch=read("seconds_per_epoch", _numbers),
        compile_seconds=read("compile_seconds", _number),
        memory_bytes=read("memory_bytes", _integer),
        memory_source=read("memory_source", _text),
    )


def _optional_integer(minimum: int):
    return lambda value, where: None if value is None else _integer(value, where, minimum)


def _fraction(value, where: str) -> float:
    number = _number(value, where, finite=True)
    if not 0 < number < 1:
        raise _bad(where, "a number between 0 and 1", value)
    return number


def _non_negative(value, where: str) -> float:
    number = _number(value, where, finite=True)
    if number < 0:
        raise _bad(where, "a number >= 0", value)
    return number


def _precision(value, where: str):
    if value is None:
        return None
    number = _number(value, where, finite=True)
    if number <= 0:
        raise _bad(where, "null or a number > 0", value)
    return number


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(where, "a non-empty string", value)
    return value


def _names(value, where: str) -> list[str]:
    return [_text(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]


def _optional_text(value, where: str):
    return None if value is None or value is False else _text(value, where)


def _shape(value, where: str):
    """A per-example shape: a list of sizes, or lists / objects of them for several inputs."""
    if isinstance(value, dict):
        return {k: _shape(v, f"{where}.{k}") for k, v in value.items()}
    items = _list(value, where)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return [_integer(v, f"{where}[{i}]") for i, v in enumerate(items)]
    return [_shape(v, f"{where}[{i}]") for i, v in enumerate(items)]


# the config fields a sweep writes whose values are known; others are kept as written
_CONFIG_FIELDS = {
    "hyperparam": _name,
    "scale": lambda v, where: _text(v, where, ("log", "linear")),
    "mode": lambda v, where: _text(v, where, ("min", "max")),
    "metric": _name,
    "points_per_stage": lambda v, where: _integer(v, where, 2),
    "stages": lambda v, where: _integer(v, where, 1),
    "top_k": lambda v, where: _integer(v, where, 1),
    "batch_size": lambda v, where: _integer(v, where, 1),
    "seeds": lambda v, where: _integer(v, where, 1),
    "seed": lambda v, where: _integer(v, where, 0),
    "epochs": _optional_integer(1),
    "steps": _optional_integer(1),
    "eval_every": _optional_integer(1),
    "eval_batch_size": _optional_integer(1),
    "max_lanes": _optional_integer(1),
    "target_steps": _optional_integer(1),
    "target_epochs": _optional_integer(1),
    "min_improvement": _non_negative,
    "validation_fraction": _fraction,
    "precision": _precision,
    "expand": _flag,
    "diagnostics": _flag,
    "n_train": lambda v, where: _integer(v, where, 1),
    "n_val": lambda v, where: _integer(v, where, 1),
    "loss": _text,
    "optimizer": _text,
    "model": _text,
    "model_api": _text,
    "targets": _text,
    "init": _text,
    "schedule": _optional_text,
    "model_mode_flag": _optional_text,
    "model_state": _names,
    "rng_streams": _names,
    "modules": _names,
    "x_shape": _shape,
    "y_shape": _shape,
}
_RANGE_FIELDS = ("value_range", "lr_range", "hyperparam_range")


def _config(value, where: str = "config") -> dict[str, Any]:
    """The ``config`` record, its known fields checked; kept as written (plain JSON values)."""
    config = dict(_mapping(value, where))
    for key, check in _CONFIG_FIELDS.items():
        if key in config:
            check(config[key], f"{where}.{key}")
    log = config.get("scale", "log") == "log"
    for key in _RANGE_FIELDS:
        if key in config:
            pair = config[key]
            if not isinstance(pair, list) or len(pair) != 2:
                raise _bad(f"{where}.{key}", "a pair [low, high]", pair)
            low, high = _numbers(pair, f"{where}.{key}", finite=True)
            if not low < high or (log and low <= 0):
                expected = "positive [low, high], low < high (a log scale)" if log else "low < high"
                raise _bad(f"{where}.{key}", expected, pair)
    return config


def _records(d: dict, key: str, read, rename=dict, default=_MISSING) -> tuple:
    items = _list(_field(d, key, "", default), key)
    return tuple(
        read(rename(_mapping(e, f"{key}[{i}]")), f"{key}[{i}]") for i, e in enumerate(items)
    )


def from_dict(d: dict[str, Any]) -> SweepResult:
    """Rebuilds a :class:`SweepResult` from :meth:`SweepResult.to_dict` output (any version).

    Raises:
      MalformedResult: (a ValueError) a field is missing or holds a value no sweep writes; the
        message names it (``config.seeds``, ``evaluations[2].score``).
      ValueError: the record was written in a newer format.
    """
    d = _mapping(d, "result")
    version = d.get("format_version")
    if isinstance(version, bool) or version not in (1, FORMAT_VERSION):
        raise ValueError(
            f"result: unsupported format_version {version!r} (this jaxsweep reads 1 to "
            f"{FORMAT_VERSION}; a newer jaxsweep wrote it)"
        )
    rename = _renamed if version == 1 else dict
    d = rename(d)
    warnings = _list(d.get("warnings", []), "warnings")
    return SweepResult(
        best_value=_number(_field(d, "best_value", ""), "best_value"),
        best_score=_number(_field(d, "best_score", ""), "best_score"),
        evaluations=_records(d, "evaluations", _evaluation, rename),
        stages=_records(d, "stages", _stage, rename),
        config=_config(_field(d, "config", "")),
        environment=dict(_mapping(_field(d, "environment", ""), "environment")),
        param_count=_integer(d.get("param_count", 0), "param_count"),
        stop_reason=_text(d.get("stop_reason", "completed"), "stop_reason", STOP_REASONS),
        warnings=tuple(_text(w, f"warnings[{i}]") for i, w in enumerate(warnings)),
        setup_seconds=_non_negative(d.get("setup_seconds", 0.0), "setup_seconds"),
        horizon_evaluations=_records(d, "horizon_evaluations", _evaluation, default=[]),
        horizon_stages=_records(d, "horizon_stages", _stage, default=[]),
    )


def load(path: str | os.PathLike) -> SweepResult:
    """Reads a result written by :meth:`SweepResult.save`, by this or an earlier version.

    Every field is checked: a file that is not JSON, nests too deep, or holds a field that is
    missing or of a kind no sweep writes is refused with one error naming the file and the
    field.

    Raises:
      FileNotFoundError: no file at ``path`` (OSError where it cannot be read).
      ValueError: the file is not a jaxsweep result, or is damaged (the message names the
        file, and the field where there is one).
    """
    path = os.fspath(path)
    data = read_file(path)  # names the file when it is not JSON or nests too deep
    if not isinstance(data, dict) or "evaluations" not in data:
        raise ValueError(f"{path}: not a jaxsweep result (no 'evaluations')")
    try:
        return from_dict(data)
    except MalformedResult as error:
        raise ValueError(f"{path}: malformed result: {error}") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
