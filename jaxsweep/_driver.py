"""The driver: the only impure loop of a sweep, one stage at a time.

``drive(setup)`` opens the checkpoints (a mismatch fails before anything compiles), builds the
stage programs, and runs :func:`sweep`, whose loop reads as the search itself: plan a stage
from the history (pure), train its lanes, turn their metrics into records, apply the stop
rule. Everything that watches the sweep is a callback (:mod:`jaxsweep.callbacks`), called
through one list at fixed points: the checkpoint saver, the progress bar, then the user's own.
They never decide anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time

import jax
import numpy as np

from . import (
    _cache,
    _horizon,
    _keep,
    _lanes,
    _measured,
    _search,
    _selector,
    _setup,
    _sharding,
    _train,
)
from ._budget import Budget
from ._checkpoint import LaneTemplate, ResumePoint, SweepCheckpoints
from ._config import SweepConfig
from ._data import take
from ._environment import describe
from ._history import History, Running, StageCost, collect_evaluations
from ._progress import BarProgress, ProgressBar
from ._result import SweepResult
from ._setup import Setup
from ._stage import StagePrograms, lane_inputs
from ._train import SegmentMetrics
from ._warnings import SearchRangeWarning, warn
from .callbacks import Callback, Lane, Resumed, StageEnd, SweepInfo, Validation


def drive(setup: Setup) -> SweepResult:
    """Runs a checked sweep: a finished checkpointed sweep returns its stored result."""
    checkpoints = _open_checkpoints(setup)
    if checkpoints is not None and checkpoints.finished is not None:
        checkpoints.close()
        stored = checkpoints.stored_result()
        for note in stored.warnings:  # the same call warns the same, trained or stored
            warn(note, SearchRangeWarning)
        with _Callbacks(setup, None, None) as callbacks:  # told, though nothing trains
            callbacks.stored(stored)
        if setup.keep is not None:  # the weights never go into checkpoints: trained again
            stored = with_best_variables(setup, build_stage_programs(setup), stored)
        return stored
    try:
        if checkpoints is not None:
            checkpoints.check_resumable()
        engine = build_stage_programs(setup)
        # one bar per sweep: under jax.distributed only the writing process shows it
        config, reporter = setup.config, None
        if setup.progress and setup.hosts.writer:
            reporter = BarProgress(
                config.stages, setup.budget.total, config.hyperparam, config.scale
            )
        with _Callbacks(setup, checkpoints, reporter) as callbacks:
            with _cache.compilation_cache(setup.compilation_cache) as cache:
                with _cache.CompileLog() as compiles:
                    callbacks.programs = lambda: {
                        "lanes": engine.lanes_record(),
                        "compilation_cache": {**cache.describe(), **compiles.describe()},
                    }
                    return sweep(setup, engine, callbacks)
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
    processes = _lanes.process_count(setup.devices)
    rule = _lanes.choose(
        setup.lanes,
        jax.default_backend(),
        len(setup.devices),
        _model_traits(setup),
        processes=processes,
    )
    calls = sum(len(setup.budget.calls(s)) for s in range(setup.budget.validations))
    lanes = _measured.plan(
        setup.lanes,
        rule,
        processes,
        calls=calls * config.stages,
        memo_directory=_cache.resolve(
            setup.compilation_cache, jax_directory=jax.config.jax_compilation_cache_dir
        ).directory,
    )
    # host arrays, placed once
    return StagePrograms(
        programs,
        split,
        setup.devices,
        setup.budget,
        lanes,
        setup.start,
        memory_limit=_lanes.memory_limit(setup.device_memory, setup.devices),
    )


def _model_traits(setup: Setup) -> _lanes.ModelTraits:
    """What the lane-strategy rule looks at: parameters, and any convolution (traced only)."""
    if setup.lanes is not None:  # forced: nothing to look at
        return _lanes.ModelTraits(setup.param_count, False)
    model, x = setup.model, take(setup.split.x_train, slice(0, 1))
    if model.own is not None:  # the user's eval_step on its state
        y = setup.split.y_train[:1]
        evaluate = model.own.steps.evaluate
        return _lanes.model_traits(
            setup.param_count, lambda: evaluate(model.init(jax.random.key(0))[0], x, y)
        )
    if model.abstract is not None and x is not None:  # the shapes adapt traced
        abstract = model.abstract
        return _lanes.model_traits(
            setup.param_count, model.eval_apply, abstract.params, abstract.state, x
        )
    return _lanes.model_traits(
        setup.param_count, lambda: model.eval_apply(*model.init(jax.random.key(0)), x)
    )


def sweep(
    setup: Setup,
    engine: StagePrograms,
    callbacks: _Callbacks,
    search: _search.Search | None = None,
) -> SweepResult:
    """The stage loop: plan, train, record, stop; progress and checkpoints are callbacks.
    Where to look and when to stop is the search's alone (``search``: the hierarchical one)."""
    config = setup.config
    search = search or _search.hierarchical()
    if config.target_steps is not None:  # the horizon check follows the search
        search = _horizon.with_horizon(search)
    engines = _Engines(setup, engine)
    resumed = callbacks.sweep_start(engine)
    # the sweep's clock started with run's checks: all before the first stage is set-up
    setup_seconds = time.perf_counter() - setup.started
    history = History() if resumed is None else resumed.history
    # the metric's direction, and the steps of the sweep's own stages
    history = dataclasses.replace(history, sign=config.sign, steps=engine.budget.total)
    stage = 0 if resumed is None else resumed.stage
    kept = None  # keep="best": (value, every seed's (params, model state)) of the best so far
    while True:
        plan = search.plan(history.evaluated(), config)
        trainer = engines.at(plan.steps)
        if plan.expansion is not None and trainer is engine:  # said before the stage starts
            history = _warned(history, _expansion_note(stage, plan, config, history))
        callbacks.stage_start(stage, plan.points, trainer.budget)
        part = resumed if resumed is not None and resumed.stage == stage else None
        lanes, running, trained = _train_stage(
            trainer, stage, plan, config, callbacks, part, history
        )
        memory = trainer.memory(lanes, _sharding.first_local(setup.devices))
        history = _with_stage(history, stage, plan, config, running, memory, trainer.budget)
        if setup.keep is not None and trainer is engine:
            kept = _kept_if_best(kept, history, plan, engine, lanes, trained, config.seeds)
        callbacks.stage_end(stage, history)
        stop_reason = search.stop(history.evaluated(), config)
        if stop_reason is not None:
            break
        callbacks.stage_kept(stage, history)
        stage += 1
    summary = search.summary(history.evaluated(), config)
    for note in summary.notes:
        history = _warned(history, note)
    result = history.result(
        setup.record,
        environment=callbacks.environment(setup.devices),
        param_count=setup.param_count,
        stop_reason=stop_reason,
        setup_seconds=setup_seconds,
    )
    callbacks.sweep_end(stage, result, history)
    if setup.keep is not None:
        result = with_best_variables(setup, engine, result, kept)
    return result


def _kept_if_best(kept, history: History, plan, engine, lanes, trained, seeds: int):
    """The best value's lanes, copied to the host when this stage brought it (else ``kept``)."""
    best = history.best()[0]
    if best not in plan.points:
        return kept
    stacked = engine.stacked(lanes, trained)
    return best, _keep.seed_lanes(stacked, plan.points.index(best), seeds)


def with_best_variables(setup: Setup, engine, result: SweepResult, kept=None) -> SweepResult:
    """``result`` with ``best_variables``: the kept lanes of its best value, or (a resumed or
    stored sweep, whose process did not train that stage) the best value retrained alone."""
    config, best = setup.config, result.best_value
    if not np.isfinite(result.best_score):  # every value diverged: no weights worth keeping
        return dataclasses.replace(result, best_variables=())
    if kept is None or kept[0] != best:
        lanes = engine.start((best,), config.seed, config.seeds)
        engine.compile(lanes)
        trained = lanes.state
        for _, state, _ in engine.train(lanes, lanes.state):
            trained = state
        kept = best, _keep.seed_lanes(engine.stacked(lanes, trained), 0, config.seeds)
    variables = tuple(setup.model.variables(params, state) for params, state in kept[1])
    return dataclasses.replace(result, best_variables=variables)


class _Engines:
    """The stage programs for each training length a search plans: the sweep's own, and one
    more per longer horizon (built, and compiled, when first planned)."""

    def __init__(self, setup: Setup, engine: StagePrograms):
        self.setup, self.engine = setup, engine
        self._longer: dict[int, StagePrograms] = {}

    def at(self, steps: int | None) -> StagePrograms:
        if steps is None or steps == self.engine.budget.total:
            return self.engine
        if steps not in self._longer:
            longer = build_stage_programs(_setup.at_steps(self.setup, steps))
            if longer.budget.validations != self.engine.budget.validations:
                raise RuntimeError(f"{steps} steps: the validations differ from the sweep's")
            self._longer[steps] = longer
        return self._longer[steps]


def _train_stage(
    engine: StagePrograms,
    stage: int,
    plan: _selector.StagePlan,
    config: SweepConfig,
    callbacks: _Callbacks,
    resumed: ResumePoint | None,
    history: History,
):
    """Trains a stage's lanes segment by segment (a validation after each), continuing a
    resumed part of it: the stage's lanes, its records and the lanes' final state."""
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
    on_steps = callbacks.steps_done
    for segment, trained, metrics in engine.train(lanes, state, first, on_steps=on_steps):
        now = time.perf_counter()
        running = running.after_epoch(metrics, now - segment_started, now - started)
        # the stacked lane state is made only for a checkpoint save
        stacked = functools.partial(engine.stacked, lanes, trained)
        callbacks.validation(stage, segment, metrics, stacked, lanes, running)
        segment_started = time.perf_counter()  # the next segment trained meanwhile
        state = trained
    return lanes, running, state


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


class _Callbacks:
    """The one list the loop reports to, in order: the checkpoint saver (when there are
    checkpoints), the progress bar (when shown), then the user's callbacks.

    Each callback runs in the writing process only unless it says ``all_processes = True``
    (the saver does: every process writes its own shards). The loop's points become the
    records of :mod:`jaxsweep.callbacks`; the engine's own callbacks (``_engine = True``)
    are also handed what they need of the loop (keywords), and the engine's own events
    (``_on_steps``, ``_on_stage_steps``, ``_on_stage_kept``) go to those that have them.
    Exceptions propagate; :meth:`close` closes every callback, also when the sweep fails.
    """

    def __init__(self, setup: Setup, checkpoints: SweepCheckpoints | None, reporter):
        self.setup, self.config, self.budget = setup, setup.config, setup.budget
        self.saver = None if checkpoints is None else _CheckpointSaver(checkpoints)
        own = [c for c in (self.saver, reporter and ProgressBar(reporter)) if c is not None]
        writer = setup.hosts.writer
        self.items = tuple(
            c for c in (*own, *setup.callbacks) if writer or getattr(c, "all_processes", False)
        )
        self.programs = dict  # () -> how the programs ran: lane strategy, compilations
        self._lanes: tuple[Lane, ...] = ()
        self._steps = self.budget.validation_steps()

    def __enter__(self) -> _Callbacks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, name: str, *args, **engine) -> None:
        for callback in self.items:
            method = getattr(callback, name, None)
            if method is None:
                continue
            if getattr(callback, "_engine", False):
                method(*args, **engine)
            else:
                method(*args)

    def close(self) -> None:
        """Closes every callback (each one, even when another's ``close`` raises)."""
        with contextlib.ExitStack() as stack:
            for callback in reversed(self.items):  # the stack closes the first one first
                close = getattr(callback, "close", None)
                if close is not None:
                    stack.callback(close)

    def info(self, resumed: Resumed | None = None, finished: bool = False) -> SweepInfo:
        config, checkpoint = self.config, self.setup.checkpoint
        return SweepInfo(
            hyperparam=config.hyperparam,
            scale=config.scale,
            value_range=tuple(config.value_range),
            metric=config.metric,
            mode=config.mode,
            stages=config.stages,
            seeds=config.seeds,
            steps=self.budget.total,
            validation_steps=tuple(int(s) for s in self._steps),
            config=self.setup.record,
            checkpoint_dir=checkpoint.directory,
            resumed=resumed,
            finished=finished,
        )

    def stored(self, result: SweepResult) -> None:
        """A finished sweep's stored result, returned without training."""
        self._call("on_sweep_start", self.info(finished=True))
        self._call("on_sweep_end", result)

    def sweep_start(self, engine: StagePrograms) -> ResumePoint | None:
        """Where the checkpoints say to continue (every key and batch order derives from
        (seed, epoch), so the rest trains exactly as it would have); then the sweep starts."""
        point = None if self.saver is None else self.saver.resume(engine, self.config)
        resumed = None
        if point is not None:
            for note in point.history.notes:  # the same call warns the same, interrupted or not
                warn(note, SearchRangeWarning)
            done = int(self._steps[point.epoch - 1]) if point.epoch else 0
            resumed = Resumed(
                self.saver.checkpoints.directory,
                point.stage,
                point.epoch,
                done,
                *point.history.best(),
            )
        self._call("on_sweep_start", self.info(resumed))
        return point

    def stage_start(self, stage: int, values, budget: Budget) -> None:
        """A stage starts (``budget``: its steps and validations: a horizon stage's own)."""
        seeds = self.config.seeds
        self._lanes = tuple(Lane(float(v), s) for v in values for s in range(seeds))
        self._steps = budget.validation_steps()
        self._call("_on_stage_steps", budget.total)
        self._call("on_stage_start", stage, tuple(float(v) for v in values))

    def steps_done(self, steps: int) -> None:
        self._call("_on_steps", steps)

    def validation(self, stage, segment, metrics: SegmentMetrics, lane_state, lanes, running):
        """``lane_state()`` gives the stacked lane state (made only when a save is due)."""
        event = Validation(
            stage=stage,
            segment=segment,
            step=int(self._steps[segment]),
            lanes=self._lanes,
            train_loss=np.asarray(metrics.train_loss),
            val_loss=np.asarray(metrics.val_loss),
            val_aux={name: np.asarray(v) for name, v in metrics.val_aux.items()},
            diverged=np.asarray(metrics.diverged, bool),
        )
        self._call(
            "on_validation", event, lane_state=lane_state, inputs=lanes.inputs, running=running
        )

    def stage_end(self, stage: int, history: History) -> None:
        record = history.stages[-1]
        end = StageEnd(
            stage=stage,
            values=tuple(record.values),
            evaluations=tuple(e for e in history.evaluations if e.stage == stage),
            best_value=record.best_value,
            best_score=record.best_score,
            seconds=record.seconds,
        )
        self._call("on_stage_end", stage, end)

    def stage_kept(self, stage: int, history: History) -> None:
        """The sweep goes on after ``stage``: its boundary is saved."""
        self._call("_on_stage_kept", stage, history)

    def environment(self, devices) -> dict:
        environment = {**describe(devices), **self.programs()}
        if self.saver is not None:
            environment["checkpoint"] = self.saver.describe()
        return environment

    def sweep_end(self, stage: int, result: SweepResult, history: History) -> None:
        self._call("on_sweep_end", result, stage=stage, history=history)


class _CheckpointSaver(Callback):
    """The sweep's checkpoints as a callback: a save after validations (when due), at every
    stage boundary the sweep goes on from, and the finished result."""

    all_processes = True  # every process writes the shards of its own devices
    _engine = True  # handed the lane state and the history

    def __init__(self, checkpoints: SweepCheckpoints):
        self.checkpoints = checkpoints
        self.trained = 0  # validation segments trained in this process

    def resume(self, engine: StagePrograms, config: SweepConfig) -> ResumePoint | None:
        """The point to resume from; a resumed sweep runs the lane strategy it ran before
        (a new trial could pick another, whose rounding differs), and every save says it."""
        self.checkpoints.lane_strategy = engine.decided_strategy
        point = self.checkpoints.resume_point(_lane_template(engine, config))
        if point is not None and point.lane_strategy is not None:
            engine.adopt_strategy(point.lane_strategy)
        return point

    def on_validation(self, event: Validation, *, lane_state, inputs, running) -> None:
        self.trained += 1
        self.checkpoints.epoch_done(event.stage, event.segment + 1, lane_state, inputs, running)

    def _on_stage_kept(self, stage: int, history: History) -> None:
        self.checkpoints.stage_done(stage, history)

    def on_sweep_end(self, result: SweepResult, *, stage: int, history: History) -> None:
        # a rerun of a finished sweep returns this as is
        self.checkpoints.finish(stage, result, history)

    def describe(self) -> dict:
        return self.checkpoints.describe(self.trained)


def _open_checkpoints(setup: Setup) -> SweepCheckpoints | None:
    """The sweep's checkpoints, read before compiling: a mismatch fails in seconds."""
    args = setup.checkpoint
    if args.directory is None:
        return None
    return SweepCheckpoints(
        args,
        setup.fingerprint,
        setup.budget.validations,
        setup.record,
        setup.hosts,
    )


def _expansion_note(
    stage: int, plan: _selector.StagePlan, config: SweepConfig, history: History
) -> str:
    """Says that (and where) a stage searches beyond what was evaluated, and why: the best
    value is at the edge, or (several seeds) values not significantly worse than it reach it."""
    (low, high), (range_low, range_high) = plan.intervals[0], config.value_range
    edge = "largest" if plan.expansion == "up" else "smallest"
    outside = low < range_low or high > range_high
    name = _in_words(config.hyperparam)
    best = _selector.edge_of_best(history.points, history.scores) == plan.expansion
    why = (
        f"the best {name} was the {edge} evaluated"
        if best
        else f"values not significantly worse than the best {name} reach the {edge} evaluated"
    )
    return f"stage {stage}: {why}, so this stage searches beyond it ({low:.3g} to {high:.3g})" + (
        ", outside the given range" if outside else ""
    )


def _in_words(hyperparam: str) -> str:
    return hyperparam.replace("_", " ")
