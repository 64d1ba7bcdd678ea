"""Watching a sweep: one protocol for everything that follows a sweep as it trains.

A callback is any object with some of these methods; ``jaxsweep.run(..., callbacks=[...])``
calls them on the host, where the loop already is, while the devices train the next call
(so a callback that takes a while delays the host, never a dispatched program)::

    on_sweep_start(info: SweepInfo)            # once, before the first stage trains
    on_stage_start(stage: int, values)         # the stage's values, sorted
    on_validation(event: Validation)           # after every validation segment of a stage
    on_stage_end(stage: int, end: StageEnd)    # the stage's evaluations, the best so far
    on_sweep_end(result: SweepResult)          # once, with the result ``run`` returns
    close()                                    # always last, also when the sweep fails

Subclass :class:`Callback` (its methods do nothing) or write any class with the methods you
need. Callbacks run only in the process that writes (process 0 of a multi-process sweep)
unless the callback has ``all_processes = True``. An exception raised by a callback stops the
sweep and reaches the caller of ``run``; checkpoints written so far stay resumable.

The progress bar and the checkpoint saver are callbacks of this kind inside the engine; a
:class:`TensorBoard` writer comes with the package::

    result = jaxsweep.run(model_fn, data, callbacks=[jaxsweep.callbacks.TensorBoard("tb")])
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ._result import Evaluation, SweepResult

__all__ = [
    "Callback",
    "Lane",
    "Resumed",
    "StageEnd",
    "SweepInfo",
    "TensorBoard",
    "Validation",
]


class Lane(NamedTuple):
    """One trained lane: a value of the swept hyperparameter with one seed (an index from 0)."""

    value: float
    seed: int


class Resumed(NamedTuple):
    """Where a sweep continued from its checkpoints (what came before was not reported)."""

    directory: str
    stage: int  # the stage it continues (or starts)
    segment: int  # validation segments of that stage already trained
    steps: int  # training steps of that stage already trained (per lane)
    best_value: float  # the best value of the finished stages (nan before any)
    best_score: float


class SweepInfo(NamedTuple):
    """What a sweep is about to do, given to ``on_sweep_start``."""

    hyperparam: str  # the swept optimizer argument ("learning_rate", "weight_decay", ...)
    scale: str  # "log" or "linear"
    value_range: tuple[float, float]  # stage 0's span
    metric: str  # the validation metric that ranks the values ("val_loss", "val_accuracy")
    mode: str  # "min" or "max"
    stages: int  # the most stages the sweep may train
    seeds: int  # seeds trained for every value
    steps: int  # training steps of one lane in one stage
    validation_steps: tuple[int, ...]  # the step of each validation within a stage
    config: Mapping[str, Any]  # the settings recorded as ``result.config``
    checkpoint_dir: str | None
    resumed: Resumed | None = None  # set when the sweep continues from its checkpoints
    # True when the checkpoint directory held the finished sweep: its stored result is
    # returned (``on_sweep_end``) and nothing trains
    finished: bool = False


class Validation(NamedTuple):
    """One validation of every lane of a stage, given to ``on_validation``.

    Arrays are host numpy arrays with one entry per lane, in the order of ``lanes`` (value
    by value, each with every seed); padding added for the devices is never included.
    """

    stage: int
    segment: int  # which validation of the stage, from 0
    step: int  # training steps each lane had taken at this validation (within the stage)
    lanes: tuple[Lane, ...]
    train_loss: np.ndarray  # mean of the segment's step losses
    val_loss: np.ndarray  # loss on the whole validation set
    val_aux: dict[str, np.ndarray]  # the loss's other entries on the validation set
    diverged: np.ndarray  # bool: NaN/inf in this segment or on validation

    @property
    def values(self) -> np.ndarray:
        """The swept value of each lane."""
        return np.array([lane.value for lane in self.lanes], np.float64)

    @property
    def seeds(self) -> np.ndarray:
        """The seed index of each lane."""
        return np.array([lane.seed for lane in self.lanes], np.int64)

    def metric(self, name: str) -> np.ndarray:
        """A validation metric by name: ``"val_loss"`` or ``"val_<aux>"``."""
        if name == "val_loss":
            return self.val_loss
        key = name.removeprefix("val_")
        if key not in self.val_aux:
            known = ["val_loss", *(f"val_{k}" for k in self.val_aux)]
            raise KeyError(f"metric: {name!r} was not validated; validated: {known}")
        return self.val_aux[key]


class StageEnd(NamedTuple):
    """A finished stage, given to ``on_stage_end``."""

    stage: int
    values: tuple[float, ...]
    evaluations: tuple[Evaluation, ...]  # this stage's, one per value (as in the result)
    best_value: float  # the best over every stage so far
    best_score: float
    seconds: float  # the stage's wall time, compilation included


class Callback:
    """A base class whose methods do nothing: override the ones you need.

    Set ``all_processes = True`` on a subclass to be called in every process of a
    multi-process sweep, not only in the one that writes.
    """

    all_processes = False

    def on_sweep_start(self, info: SweepInfo) -> None:
        pass

    def on_stage_start(self, stage: int, values: tuple[float, ...]) -> None:
        pass

    def on_validation(self, event: Validation) -> None:
        pass

    def on_stage_end(self, stage: int, end: StageEnd) -> None:
        pass

    def on_sweep_end(self, result: SweepResult) -> None:
        pass

    def close(self) -> None:
        pass


METHODS = ("on_sweep_start", "on_stage_start", "on_validation", "on_stage_end", "on_sweep_end")


def check(callbacks) -> tuple:
    """``run``'s ``callbacks`` argument as a tuple; TypeError for anything else."""
    if callbacks is None:
        return ()
    if (
        _is_callback(callbacks)
        or isinstance(callbacks, (str, bytes, Mapping))
        or not isinstance(callbacks, Iterable)
    ):
        raise TypeError(f"callbacks: expected a list of callbacks, got {callbacks!r}")
    checked = tuple(callbacks)
    for callback in checked:
        if isinstance(callback, type):
            name = callback.__name__
            raise TypeError(f"callbacks: {name} is a class; pass an instance ({name}(...))")
        if not _is_callback(callback):
            raise TypeError(f"callbacks: {callback!r} has none of the methods {', '.join(METHODS)}")
    return checked


def _is_callback(candidate) -> bool:
    return any(callable(getattr(candidate, name, None)) for name in METHODS)


# ------------------------------------------------------------------------------- TensorBoard


class TensorBoard(Callback):
    """Writes TensorBoard event files: one run per lane, the swept value as an hparam.

    Each lane is a run ``LOGDIR/<hyperparam>=<value>/seed=<seed>`` (``learning_rate=1.00e-03
    /seed=0``) with the scalars ``train/loss``, ``val/loss`` and ``val/<name>`` for every
    auxiliary entry of the loss, against the lane's training step. When its stage ends, each
    lane is recorded with TensorBoard's HParams plugin: the swept value and the stage as
    hparams, the final validation metric as ``hparam/<metric>``, and the seeds of one value
    in one session group, so the HParams view compares the values (over their seeds). Needs
    ``tensorboardX`` (``pip install 'jaxsweep[tensorboard]'``).

    Args:
      logdir: the folder to write into (created); ``tensorboard --logdir LOGDIR`` shows it.
      flush_seconds: how often the writers flush to disk at most (they always flush when a
        stage ends).
    """

    def __init__(self, logdir: str | os.PathLike, flush_seconds: float = 30.0):
        self._writer_class = _summary_writer()  # a missing library fails here, before a sweep
        self.logdir = os.fspath(logdir)
        self.flush_seconds = flush_seconds
        self._writers: dict[Lane, Any] = {}
        self._names: dict[float, str] = {}  # value -> its text in run names
        self._hyperparam = "learning_rate"
        self._metric = "val_loss"
        self._last: dict[Lane, float] = {}

    def on_sweep_start(self, info: SweepInfo) -> None:
        self._hyperparam, self._metric = info.hyperparam, info.metric
        os.makedirs(self.logdir, exist_ok=True)

    def run_name(self, lane: Lane) -> str:
        """The run (sub-folder of ``logdir``) a lane writes into."""
        return f"{self._hyperparam}={self._value_text(lane.value)}/seed={lane.seed}"

    def on_stage_start(self, stage: int, values) -> None:
        self._close_writers()

    def on_validation(self, event: Validation) -> None:
        for i, lane in enumerate(event.lanes):
            writer = self._writer(lane)
            writer.add_scalar("train/loss", float(event.train_loss[i]), event.step)
            writer.add_scalar("val/loss", float(event.val_loss[i]), event.step)
            for name, values in event.val_aux.items():
                writer.add_scalar(f"val/{name}", float(values[i]), event.step)
            self._last[lane] = event.step

    def on_stage_end(self, stage: int, end: StageEnd) -> None:
        from tensorboardX.summary import hparams

        metric_tag = f"hparam/{self._metric}"
        for evaluation in end.evaluations:
            for seed, score in enumerate(evaluation.seed_scores):
                lane = Lane(evaluation.value, seed)
                writer = self._writer(lane)
                step = self._last.get(lane, evaluation.steps[-1] if evaluation.steps else 0)
                values = {self._hyperparam: evaluation.value, "stage": stage}
                diverged = _seed_diverged(evaluation, seed)
                final = math.nan if diverged else float(score)
                experiment, start, end = hparams(values, {metric_tag: final})
                group = self.run_name(lane).rpartition("/")[0]  # the value's seeds together
                for summary in (experiment, _in_group(start, group), end):
                    writer.file_writer.add_summary(summary)
                writer.add_scalar(metric_tag, final, step)
        self._close_writers()

    def close(self) -> None:
        self._close_writers()

    def _writer(self, lane: Lane):
        if lane not in self._writers:
            path = os.path.join(self.logdir, *self.run_name(lane).split("/"))
            self._writers[lane] = self._writer_class(path, flush_secs=self.flush_seconds)
        return self._writers[lane]

    def _close_writers(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()

    def _value_text(self, value: float) -> str:
        """``1.00e-03``; more digits when another value of the sweep would read the same."""
        if value in self._names:
            return self._names[value]
        taken = {text for v, text in self._names.items() if v != value}
        for digits in range(2, 17):
            text = f"{value:.{digits}e}"
            if text not in taken:
                break
        self._names[value] = text
        return text


def _in_group(session_start, group: str):
    """A session-start summary put in the HParams view's group ``group`` (the lanes of one
    value, one session per seed)."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    plugin_data = session_start.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    content.session_start_info.group_name = group
    plugin_data.content = content.SerializeToString()
    return session_start


def _seed_diverged(evaluation: Evaluation, seed: int) -> bool:
    flags = evaluation.seed_diverged
    return bool(flags[seed]) if flags else bool(evaluation.diverged)


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "jaxsweep.callbacks.TensorBoard needs tensorboardX: pip install 'jaxsweep[tensorboard]'"
        ) from error
    return SummaryWriter
