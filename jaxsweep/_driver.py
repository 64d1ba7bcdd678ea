"""The driver: the only impure loop of a sweep, one stage at a time.

``drive(setup)`` opens the checkpoints (a mismatch fails before anything compiles), builds the
stage programs, and runs :func:`sweep`, whose loop reads as the search itself: plan a stage
from the history (pure), train its lanes, turn their metrics into records, apply the stop
rule. The progress bar and the checkpoints are hooks the loop calls at fixed points; they
never decide anything.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np

from . import _cache, _lanes, _search, _selector, _sharding, _train
from ._budget import Budget
from ._checkpoint import LaneTemplate, ResumePoint, SweepCheckpoints
from ._config import SweepConfig
from ._data import take
from ._environment import describe
from ._history import History, Running, StageCost, collect_evaluations
from ._progress import BarProgress, SilentProgress
from ._result import SweepResult
from ._setup import Setup
from ._stage import StageLanes, StagePrograms, lane_inputs
from ._train import EpochMetrics
from ._warnings import SearchRangeWarning, warn


def drive(setup: Setup) -> SweepResult:
    """Runs a checked sweep: a finished checkpointed sweep returns its stored result."""
    checkpoints = _open_checkpoints(setup)
    if checkpoints is not None and checkpoints.finished is not None:
        checkpoints.close()
        stored = checkpoints.stored_result()
        for note in stored.warnings:  # the same call warns the same, trained or stored
            warn(note, SearchRangeWarning)
        return stored
    try:
        if checkpoints is not None:
            checkpoints.check_resumable()
        engine = build_stage_programs(setup)
        # one bar per sweep: under jax.distributed only the writing process shows it
        show = setup.progress and setup.hosts.writer
        config = setup.config
        reporter = SilentProgress()
        if show:
            reporter = BarProgress(
                config.stages, setup.budget.total, config.hyperparam, config.scale
            )
        with reporter, _cache.compilation_cache(setup.compilation_cache) as cache:
            with _cache.CompileLog() as compiles:
                hooks = _Hooks(reporter, checkpoints, config, setup.budget)
                hooks.programs = lambda: {
                    "lanes": {"strategy": str(engine.strategy), "reason": engine.reason},
                    "compilation_cache": {**cache.describe(), **compiles.describe()},
                }
                return sweep(setup, engine, hooks)
    finally:
        if checkpoints is not None:  # a pending save completes even when the sweep fails
            checkpoints.close()


def build_stage_programs(setup: Setup) -> StagePrograms:
    """The programs a sweep runs for every stage, over its devices (nothing compiled yet)."""
    config, split = setup.config, setup.split
    programs = _train.make_programs(
        setup.model,
        setup.loss_fn,
        setup.optimizer,
        config.hyperparam,
        config.batch_size,
        len(split.y_train),
        len(split.y_val),
        config.eval_batch_size,
        setup.budget,
        diagnostics=config.diagnostics,
    )
    strategy, reason = _lanes.choose(
        setup.lanes,
        jax.default_backend(),
        len(setup.devices),
        _model_traits(setup),
        processes=_lanes.process_count(setup.devices),
    )
    # host arrays, placed once
    return StagePrograms(
        programs, split, setup.devices, setup.budget, strategy, reason, setup.start
    )


def _model_traits(setup: Setup) -> _lanes.ModelTraits:
    """What the lane-strategy rule looks at: parameters, and any convolution (traced only)."""
    if setup.lanes is not None:  # forced: nothing to look at
        return _lanes.ModelTraits(setup.param_count, False)
    model, x = setup.model, take(setup.split.x_train, slice(0, 1))
    return _lanes.model_traits(
        setup.param_count, lambda: model.eval_apply(*model.init(jax.random.key(0)), x)
    )


def sweep(
    setup: Setup, engine: StagePrograms, hooks: _Hooks, search: _search.Search | None = None
) -> SweepResult:
    """The stage loop: plan, train, record, stop; progress and checkpoints are hooks. Where
    to look and when to stop is the search's alone (``search``: the hierarchical one)."""
    config = setup.config
    search = search or _search.hierarchical()
    resumed = hooks.resume(engine)
    # the sweep's clock started with run's checks: all before the first stage is set-up
    setup_seconds = time.perf_counter() - setup.started
    history = History() if resumed is None else resumed.history
    history = dataclasses.replace(history, sign=config.sign)  # the metric's direction
    stage = 0 if resumed is None else resumed.stage
    while True:
        plan = search.plan(history.evaluated(), config)
        _check_plan(plan, engine.budget)
        if plan.expansion is not None:  # said before the stage it concerns starts
            history = _warned(history, _expansion_note(stage, plan, config))
        hooks.start_stage(stage, plan.points)
        part = resumed if resumed is not None and resumed.stage == stage else None
        lanes, running = _train_stage(engine, stage, plan, config, hooks, part, history)
        memory = engine.memory(lanes, _sharding.first_local(setup.devices))
        history = _with_stage(history, stage, plan, config, running, memory, engine.budget)
        hooks.stage_done(stage, history)
        stop_reason = search.stop(history.evaluated(), config)
        if stop_reason is not None:
            break
        hooks.save_stage(stage, history)
        stage += 1
    if stop_reason != "completed":
        hooks.stop_early()
    summary = search.summary(history.evaluated(), config)
    for note in summary.notes:
        history = _warned(history, note)
    result = history.result(
        setup.record,
        environment=hooks.environment(setup.devices),
        param_count=setup.param_count,
        stop_reason=stop_reason,
        setup_seconds=setup_seconds,
    )
    hooks.finish(stage, result, history)
    return result


def _check_plan(plan: _selector.StagePlan, budget: Budget) -> None:
    """A stage trains with the sweep's compiled programs: a plan asking for another training
    budget needs programs this engine does not build (yet), so it is refused, not ignored."""
    if plan.budget is not None and plan.budget != budget:
        raise NotImplementedError(
            "the search planned a stage with its own training budget; this engine trains every "
            "stage with the sweep's budget"
        )


def _train_stage(
    engine: StagePrograms,
    stage: int,
    plan: _selector.StagePlan,
    config: SweepConfig,
    hooks: _Hooks,
    resumed: ResumePoint | None,
    history: History,
) -> tuple[StageLanes, Running]:
    """Trains a stage's lanes segment by segment (a validation after each), continuing a
    resumed part of it."""
    started = time.perf_counter()
    lanes = engine.start(plan.points, config.seed, config.seeds)
    running = Running(tuple(plan.points), compile_seconds=engine.compile(lanes))
    state = lanes.state
    if resumed is not None and resumed.running is not None:
        if running.values != resumed.running.values:  # the selector is pure: never
            raise RuntimeError(f"stage {stage}: the checkpoint's values differ from the plan")
        state, started = resumed.lanes, started - resumed.running.seconds
        running = dataclasses.replace(
            resumed.running,
            compile_seconds=resumed.running.compile_seconds + running.compile_seconds,
        )
    first = len(running.epoch_metrics)
    segment_started = time.perf_counter()
    for segment, trained, metrics in engine.train(lanes, state, first, on_steps=hooks.steps_done):
        now = time.perf_counter()
        running = running.after_epoch(metrics, now - segment_started, now - started)
        # the stacked lane state is made only for a checkpoint save
        stacked = functools.partial(engine.stacked, lanes, trained)
        hooks.epoch_done(stage, segment + 1, stacked, lanes, running, history)
        segment_started = time.perf_counter()  # the next segment trained meanwhile
    return lanes, running


def _with_stage(history, stage, plan, config, running: Running, memory, budget) -> History:
    """The history with this stage's records: an evaluation per value (with the step of each
    validation), the stage's cost."""
    evaluations = collect_evaluations(
        stage, plan.points, config.seeds, running.epoch_metrics, config.metric, config.sign
    )
    steps = budget.validation_steps()
    evaluations = [dataclasses.replace(e, steps=steps) for e in evaluations]
    seconds = (running.seconds, running.seconds_per_epoch, running.compile_seconds)
    return history.with_stage(plan, evaluations, StageCost(*seconds, *memory))


def _warned(history: History, note: str) -> History:
    """Gives a search-range warning, and keeps it with the history (and the result)."""
    warn(note, SearchRangeWarning)
    return history.noted(note)


def _lane_template(engine: StagePrograms, config: SweepConfig) -> LaneTemplate:
    """Every stage's lanes as data: what a checkpoint restores a running stage into."""
    values = range(config.points_per_stage)  # keys and shapes do not depend on the values
    inputs = lane_inputs(values, config.seed, config.seeds)
    lanes = len(inputs.seed_index)
    return LaneTemplate(
        state=engine.abstract_state(lanes, config.seed, config.seeds),
        init_keys=np.asarray(jax.random.key_data(inputs.init_keys)),
        data_keys=np.asarray(jax.random.key_data(inputs.data_keys)),
        layout=engine.layout(lanes),
    )


class _Hooks:
    """The edges the loop reports to: the progress bar, and the checkpoints when there are."""

    def __init__(self, reporter, checkpoints: SweepCheckpoints | None, config, budget: Budget):
        self.reporter, self.checkpoints, self.config = reporter, checkpoints, config
        self.budget = budget
        self.epochs_trained = 0  # validation segments trained in this process
        self.programs = dict  # () -> how the programs ran: lane strategy, compilations

    def resume(self, engine: StagePrograms) -> ResumePoint | None:
        """Where the checkpoints say to continue; every key and batch order derives from
        (seed, epoch), so the rest trains exactly as it would have."""
        if self.checkpoints is None:
            return None
        point = self.checkpoints.resume_point(_lane_template(engine, self.config))
        if point is None:
            return None
        for note in point.history.notes:  # the same call warns the same, interrupted or not
            warn(note, SearchRangeWarning)
        budget = self.budget
        self.reporter.message(
            f"resumed from {self.checkpoints.directory}: stage {point.stage}, "
            f"{point.epoch} of {budget.validations} validations done"
        )
        done = budget.validation_steps()[point.epoch - 1] if point.epoch else 0
        self.reporter.steps_done(point.stage * budget.total + done)  # the bar counts them
        self.reporter.epoch_done(point.history.best()[1])
        return point

    def start_stage(self, stage: int, values) -> None:
        self.reporter.start_stage(stage, self.config.stages, values, self.budget.total)

    def steps_done(self, steps: int) -> None:
        self.reporter.steps_done(steps)

    def epoch_done(self, stage, epoch, lane_state, lanes: StageLanes, running, history) -> None:
        """``lane_state()`` gives the stacked lane state (made only when a save is due)."""
        self.epochs_trained += 1
        if self.checkpoints is not None:
            self.checkpoints.epoch_done(stage, epoch, lane_state, lanes.inputs, running)
        self.reporter.epoch_done(
            _running_best(running.epoch_metrics[-1], history.best()[1], self.config)
        )

    def stage_done(self, stage: int, history: History) -> None:
        self.reporter.stage_done(stage, *history.best())

    def stop_early(self) -> None:
        self.reporter.finish_early()

    def save_stage(self, stage: int, history: History) -> None:
        if self.checkpoints is not None:
            self.checkpoints.stage_done(stage, history)

    def environment(self, devices) -> dict:
        environment = {**describe(devices), **self.programs()}
        if self.checkpoints is not None:
            environment["checkpoint"] = self.checkpoints.describe(self.epochs_trained)
        return environment

    def finish(self, stage: int, result: SweepResult, history: History) -> None:
        if self.checkpoints is not None:  # a rerun of a finished sweep returns this as is
            self.checkpoints.finish(stage, result, history)


def _open_checkpoints(setup: Setup) -> SweepCheckpoints | None:
    """The sweep's checkpoints, read before compiling: a mismatch fails in seconds."""
    args = setup.checkpoint
    if args.directory is None:
        return None
    return SweepCheckpoints(
        args.directory,
        setup.fingerprint,
        args.resume,
        args.every_seconds,
        setup.budget.validations,
        setup.record,
        setup.hosts,
    )


def _expansion_note(stage: int, plan: _selector.StagePlan, config: SweepConfig) -> str:
    """Says that (and where) a stage searches beyond what was evaluated."""
    (low, high), (range_low, range_high) = plan.intervals[0], config.value_range
    edge = "largest" if plan.expansion == "up" else "smallest"
    outside = low < range_low or high > range_high
    return (
        f"stage {stage}: the best {_in_words(config.hyperparam)} was the {edge} evaluated, so "
        f"this stage searches beyond it ({low:.3g} to {high:.3g})"
        + (", outside the given range" if outside else "")
    )


def _in_words(hyperparam: str) -> str:
    return hyperparam.replace("_", " ")


def _running_best(metrics: EpochMetrics, best_score: float, config: SweepConfig) -> float:
    """The best score known after an epoch, for the progress bar (diverged lanes ignored)."""
    name = config.metric.removeprefix("val_")
    values = metrics.val_loss if config.metric == "val_loss" else metrics.val_aux[name]
    signed = config.sign * np.asarray(values, np.float64)
    signed = np.where(np.asarray(metrics.diverged), np.inf, signed)
    return config.sign * float(min(config.sign * best_score, np.nanmin(signed, initial=np.inf)))
