"""``run``: checks the input, then drives the stages of a sweep (the only impure loop)."""

from __future__ import annotations

import functools
import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _checkpoint, _selector, _sharding
from ._config import LOSS_NAMES, SweepConfig, make_config
from ._data import Split, prepare, target_kind
from ._environment import describe
from ._model import ModelFunctions, adapt, count_parameters, module_names
from ._progress import BarProgress, SilentProgress
from ._result import Evaluation, Stage, SweepResult
from ._train import BUILTIN_LOSSES, EpochMetrics, Programs, make_programs, split_loss

DEFAULT_LR_RANGE = (1e-5, 1e-2)


class SearchRangeWarning(UserWarning):
    """The best value sits on the edge of the searched range; the optimum may lie beyond."""


# ----------------------------------------------------------------------------- input checks


def resolve_loss(loss, y_train: np.ndarray) -> tuple[Callable, str]:
    """The loss function to optimise and its name for the record."""
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__)
    if not isinstance(loss, str):
        raise TypeError(f"loss: expected a name or a callable, got {type(loss).__name__}")
    if loss not in LOSS_NAMES:
        raise ValueError(f"loss: unknown name {loss!r}; expected one of {LOSS_NAMES} or a callable")
    if loss == "auto":
        loss = "cross_entropy" if target_kind(y_train) == "classes" else "mse"
    if loss == "cross_entropy" and target_kind(y_train) != "classes":
        raise ValueError(f"loss: cross_entropy needs integer labels, y has dtype {y_train.dtype}")
    return BUILTIN_LOSSES[loss], loss


def describe_optimizer(optimizer) -> str:
    """A readable name: ``adam`` or ``sgd(momentum=0.9)`` for a partial."""
    if isinstance(optimizer, functools.partial):
        arguments = [repr(a) for a in optimizer.args]
        arguments += [f"{k}={v!r}" for k, v in sorted(optimizer.keywords.items())]
        return f"{describe_optimizer(optimizer.func)}({', '.join(arguments)})"
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def resolve_optimizer(optimizer, hyperparam: str) -> optax.GradientTransformation:
    """Wraps an optax factory so that ``hyperparam`` is array data in the optimizer state."""
    if isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer: pass the factory (e.g. optax.adam or functools.partial(optax.sgd, "
            "momentum=0.9)), not a built transformation: the sweep sets the learning rate"
        )
    if not callable(optimizer):
        raise TypeError(f"optimizer: expected an optax factory, got {type(optimizer).__name__}")
    try:
        signature = inspect.signature(optimizer)
    except ValueError:  # no signature available; the abstract init below will tell
        signature = None
    if signature is not None:
        name = describe_optimizer(optimizer)
        try:
            signature.bind_partial(**{hyperparam: 1.0})
        except TypeError:
            raise TypeError(f"optimizer: {name} does not accept {hyperparam!r}") from None
        missing = [
            p.name
            for p in signature.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and p.name != hyperparam
        ]
        if missing:
            # only the swept value is set by the sweep: the rest must come with the factory
            example = "1e-3" if missing[0] == "learning_rate" else "..."
            raise TypeError(
                f"optimizer: {name} needs {', '.join(missing)} when sweeping {hyperparam!r}; "
                f"fix it in the factory, e.g. functools.partial({name}, {missing[0]}={example})"
            )
        current = signature.parameters[hyperparam].default
        if isinstance(current, bool) or not (
            current is None or current is inspect.Parameter.empty or isinstance(current, Real)
        ):
            raise TypeError(
                f"optimizer: {hyperparam!r} of {name} is not a numeric hyperparameter "
                f"(its value is {current!r}); sweep a number such as a rate or a decay"
            )
    return optax.inject_hyperparams(optimizer)(**{hyperparam: 1.0})


def _probe(model: ModelFunctions, loss_fn, optimizer, hyperparam: str, split: Split, batch: int):
    """Traces one step abstractly (no compilation) to check model, loss and optimizer fit."""
    x, y = split.x_train[:batch], split.y_train[:batch]

    def loss_terms(key):
        params, constants = model.init(key)
        return split_loss(loss_fn(model.apply(params, constants, x), y))

    try:
        loss_value, aux = jax.eval_shape(loss_terms, jax.random.key(0))
    except KeyError as error:
        raise TypeError(f"loss: a dict return value needs a 'loss' entry ({error})") from None
    except Exception as error:
        raise ValueError(
            f"model_fn/loss: the model and loss could not be applied to a batch of data "
            f"with x shape {x.shape} and y shape {y.shape}: {error}"
        ) from error
    if loss_value.shape != ():
        raise ValueError(f"loss: must return a scalar, got shape {loss_value.shape}")
    for name, value in aux.items():
        if getattr(value, "shape", None) != ():
            raise ValueError(f"loss: auxiliary entry {name!r} must be a scalar")

    params = jax.eval_shape(lambda k: model.init(k)[0], jax.random.key(0))
    try:
        opt_state = jax.eval_shape(optimizer.init, params)
    except Exception as error:
        raise TypeError(
            f"optimizer: could not be initialised with {hyperparam!r} held as an array "
            f"(is it a number for this optimizer?): {error}"
        ) from error
    swept = opt_state.hyperparams.get(hyperparam)
    if swept is None or getattr(swept, "shape", None) != ():
        raise TypeError(
            f"optimizer: {hyperparam!r} is not a numeric hyperparameter of this optimizer "
            f"(it has {sorted(opt_state.hyperparams)})"
        )
    return params


def _resolve_devices(devices) -> list:
    """Every device JAX sees when ``devices`` is None, else the given list (checked)."""
    return _sharding.resolve_devices(devices)


def _resolve_range(hyperparam: str, hyperparam_range, lr_range) -> tuple[Any, str]:
    """The stage-0 range of the swept value and the argument name that gave it."""
    lr_range_given = tuple(lr_range) != DEFAULT_LR_RANGE if _is_pair(lr_range) else True
    if hyperparam == "learning_rate":
        if hyperparam_range is None:
            return lr_range, "lr_range"
        if lr_range_given:
            raise ValueError(
                "hyperparam_range: give the learning-rate range once, as lr_range or as "
                "hyperparam_range, not both"
            )
        return hyperparam_range, "hyperparam_range"
    if lr_range_given:
        raise ValueError(
            f"lr_range: the sweep is over {hyperparam!r}, so the learning rate is fixed; set it "
            "in the optimizer factory (e.g. functools.partial(optax.adamw, learning_rate=1e-3)) "
            "and give the searched span as hyperparam_range"
        )
    if hyperparam_range is None:
        raise ValueError(
            f"hyperparam_range: required when sweeping {hyperparam!r} (e.g. (1e-5, 1e-1) with "
            'scale="log", or (0.0, 0.99) with scale="linear")'
        )
    return hyperparam_range, "hyperparam_range"


def _is_pair(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2


# ----------------------------------------------------------------------------- results


def _per_epoch(epochs: list[EpochMetrics], getter) -> np.ndarray:
    """Stacks one metric over epochs: shape ``(lanes, epochs)``."""
    return np.stack([np.asarray(getter(m), dtype=np.float64) for m in epochs], axis=1)


def _series(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def collect_evaluations(
    stage: int, values: Sequence[float], seeds: int, epochs: list[EpochMetrics]
) -> list[Evaluation]:
    """Turns a stage's per-lane, per-epoch metrics into one :class:`Evaluation` per value.

    Lanes are ordered value-major: lane ``i * seeds + s`` is value ``i`` and seed ``s``.
    """

    def by_value(getter) -> np.ndarray:  # (values, seeds, epochs)
        return _per_epoch(epochs, getter).reshape(len(values), seeds, -1)

    train, val = by_value(lambda m: m.train_loss), by_value(lambda m: m.val_loss)
    first = by_value(lambda m: m.first_step_loss)[:, :, 0]
    diverged = by_value(lambda m: m.diverged).any(axis=(1, 2))
    grad, grad_max = by_value(lambda m: m.grad_norm_mean), by_value(lambda m: m.grad_norm_max)
    stability = by_value(lambda m: m.stability)

    def mapping(field: str) -> dict[str, np.ndarray]:
        names = getattr(epochs[0], field).keys()
        return {n: by_value(lambda m, n=n: getattr(m, field)[n]).mean(axis=1) for n in names}

    module_grad, update_ratio = mapping("module_grad_norm"), mapping("update_ratio")
    train_aux, val_aux = mapping("train_aux"), mapping("val_aux")

    evaluations = []
    for i, value in enumerate(values):
        mean_train = train[i].mean(axis=0)
        previous = np.concatenate([[first[i].mean()], mean_train[:-1]])
        with np.errstate(divide="ignore", invalid="ignore"):
            reduction = 1.0 - mean_train / previous
        seed_scores = val[i, :, -1]
        score = float(seed_scores.mean())
        is_diverged = bool(diverged[i]) or not math.isfinite(score)
        evaluations.append(
            Evaluation(
                lr=float(value),
                stage=stage,
                score=math.inf if is_diverged else score,
                diverged=is_diverged,
                seed_scores=_series(seed_scores),
                train_loss=_series(mean_train),
                val_loss=_series(val[i].mean(axis=0)),
                seed_val_loss=tuple(_series(row) for row in val[i]),
                grad_norm=_series(grad[i].mean(axis=0)),
                grad_norm_max=_series(grad_max[i].max(axis=0)),
                loss_reduction_rate=_series(reduction),
                stability=_series(stability[i].mean(axis=0)),
                module_grad_norm={k: _series(v[i]) for k, v in module_grad.items()},
                update_ratio={k: _series(v[i]) for k, v in update_ratio.items()},
                train_aux={k: _series(v[i]) for k, v in train_aux.items()},
                val_aux={k: _series(v[i]) for k, v in val_aux.items()},
            )
        )
    return evaluations


def _memory(compiled, device) -> tuple[int, str]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device_peak"
    analysis = compiled.memory_analysis()
    if analysis is None:
        return 0, "unavailable"
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return int(total), "compiled_estimate"


# ----------------------------------------------------------------------------- the sweep


class _Lanes(NamedTuple):
    """Per-lane inputs of a stage, value-major (lane ``i * seeds + s``)."""

    values: jax.Array  # (lanes,) swept values
    init_keys: jax.Array  # (lanes,) parameter-initialisation keys (one per seed)
    data_keys: jax.Array  # (lanes,) batch-order keys (one per seed)
    seed_index: np.ndarray  # (lanes,) int32: which seed each lane trains


def _lanes(values: Sequence[float], seed_init_keys, seed_data_keys, seeds: int) -> _Lanes:
    seed_of_lane = np.tile(np.arange(seeds, dtype=np.int32), len(values))
    return _Lanes(
        values=jnp.asarray(np.repeat(np.asarray(values, np.float64), seeds), jnp.float32),
        init_keys=seed_init_keys[seed_of_lane],
        data_keys=seed_data_keys[seed_of_lane],
        seed_index=seed_of_lane,
    )


def _seed_keys(seed: int, seeds: int):
    """Keys derived from (seed, seed index) only: every stage and every rerun sees the same."""
    base = jax.random.key(seed)
    per_seed = [jax.random.fold_in(base, s) for s in range(seeds)]
    init = jnp.stack([jax.random.fold_in(k, 0) for k in per_seed])
    data = jnp.stack([jax.random.fold_in(k, 1) for k in per_seed])
    return init, data


def run(
    model_fn: Callable,
    data,
    *,
    loss: str | Callable = "auto",
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam,
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE,
    hyperparam: str = "learning_rate",
    hyperparam_range: tuple[float, float] | None = None,
    scale: str = "log",
    points_per_stage: int = 5,
    stages: int = 5,
    top_k: int = 2,
    epochs: int = 3,
    batch_size: int = 128,
    seeds: int = 1,
    seed: int = 0,
    min_improvement: float = 0.01,
    validation_fraction: float = 0.2,
    expand: bool = True,
    checkpoint_dir=None,
    resume: str = "auto",
    checkpoint_every_seconds: float = 30.0,
    devices=None,
    progress: bool = True,
) -> SweepResult:
    """Finds the best learning rate of a Flax model with a coarse-to-fine sweep.

    Stage 0 trains ``points_per_stage`` log-spaced rates over ``lr_range``; each later stage
    keeps the ``top_k`` best intervals between evaluated rates and trains as many new rates
    inside them. All rates (and seeds) of a stage train at once in one vmapped, compiled
    program, reused by every stage.

    Args:
      model_fn: ``() -> flax.linen.Module`` or ``(rngs: nnx.Rngs) -> nnx.Module``.
      data: ``(x, y)`` (a ``validation_fraction`` is split off) or
        ``{"train": (x, y), "val": (x, y)}``; numpy or jax arrays.
      loss: ``"auto"`` (integer labels: cross-entropy, float targets: MSE),
        ``"cross_entropy"``, ``"mse"``, or ``f(outputs, targets)`` returning a scalar or a dict
        whose ``"loss"`` is optimised and whose other entries are recorded.
      optimizer: an optax factory taking ``learning_rate`` (``optax.sgd``,
        ``functools.partial(optax.sgd, momentum=0.9)``, ...).
      lr_range: stage-0 span of learning rates; the search follows an optimum beyond it.
      hyperparam: the optimizer argument to sweep: ``"learning_rate"``, or any other scalar
        that ``optax.inject_hyperparams`` exposes for this optimizer (``"weight_decay"``,
        ``"momentum"``, ``"b1"``, ...); the learning rate is then fixed by the factory, e.g.
        ``functools.partial(optax.adamw, learning_rate=1e-3)``.
      hyperparam_range: stage-0 span of ``hyperparam``; required unless the learning rate is
        swept (where ``lr_range`` says the same and only one of them may be given).
      scale: ``"log"`` (points spaced by ratios) or ``"linear"`` (by differences, e.g. for
        momentum); a linear sweep that starts at or above zero never goes below it.
      points_per_stage: rates trained together in each stage.
      stages: the most stages to run.
      top_k: intervals refined in each later stage.
      epochs: epochs each rate is trained for.
      batch_size: examples per step.
      seeds: initialisations (and batch orders) per rate; the score is their mean.
      seed: the root of every random choice (split, init, batch order).
      min_improvement: stop when a stage improves the best score by less than this fraction.
      validation_fraction: share of ``(x, y)`` held out for scoring.
      expand: search beyond the range when the best value sits on its edge.
      checkpoint_dir: a directory for Orbax checkpoints (None: none). A sweep killed at any
        moment and rerun with the same call resumes from its latest complete checkpoint and
        returns exactly what an uninterrupted run returns; a finished sweep's directory
        returns its stored result without training.
      resume: with ``checkpoint_dir``: ``"auto"`` resumes this sweep's checkpoints (or starts)
        and refuses a directory holding a different sweep; ``"require"`` also refuses to
        start without a checkpoint; ``"overwrite"`` replaces a different sweep's checkpoints.
      checkpoint_every_seconds: least time between two saves inside a stage (a save costs
        a copy of the stage's lanes to the host; the end of every stage is always saved).
      devices: None for every device JAX sees (all hosts' devices under
        ``jax.distributed``), or a list of devices; a stage's lanes (values x seeds) are
        split over them (padded to a multiple of their count), the data is copied to each.
        The results equal a one-device run within float tolerance.
      progress: show a progress bar on stderr.

    Returns:
      A :class:`SweepResult`; ``result.best_lr`` is the value (a rate unless
      ``result.config["hyperparam"]`` names another) with the lowest final validation loss
      (mean over seeds); ``result.environment["device_count"]`` says how many devices ran it.

    Example::

      result = jaxsweep.run(lambda: MLP(), (x, y), epochs=3)
      print(result.best_lr)
      decay = jaxsweep.run(
          lambda: MLP(), (x, y), optimizer=functools.partial(optax.adamw, learning_rate=1e-3),
          hyperparam="weight_decay", hyperparam_range=(1e-5, 1e-1),
      )
    """
    if not isinstance(hyperparam, str) or not hyperparam:
        raise TypeError(f"hyperparam: expected a non-empty name, got {hyperparam!r}")
    value_range, range_name = _resolve_range(hyperparam, hyperparam_range, lr_range)
    config = make_config(
        hyperparam=hyperparam,
        value_range=value_range,
        range_name=range_name,
        scale=scale,
        points_per_stage=points_per_stage,
        stages=stages,
        top_k=top_k,
        epochs=epochs,
        batch_size=batch_size,
        seeds=seeds,
        seed=seed,
        min_improvement=min_improvement,
        validation_fraction=validation_fraction,
        expand=expand,
    )
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected True or False, got {progress!r}")
    checkpoint_dir, resume, checkpoint_every_seconds = _checkpoint.check_arguments(
        checkpoint_dir, resume, checkpoint_every_seconds
    )
    devices = _resolve_devices(devices)
    split = prepare(data, config.validation_fraction, config.seed)
    n_train = len(split.x_train)
    if config.batch_size > n_train:
        raise ValueError(
            f"batch_size: {config.batch_size} is larger than the {n_train} training examples"
        )
    loss_fn, loss_name = resolve_loss(loss, split.y_train)
    tx = resolve_optimizer(optimizer, config.hyperparam)
    model = adapt(model_fn, split.x_train[:1])
    abstract_params = _probe(model, loss_fn, tx, config.hyperparam, split, config.batch_size)

    record = {
        **config.to_json(),
        # the learning rate's span keeps its own name; another hyperparameter's is generic
        "lr_range" if config.hyperparam == "learning_rate" else "hyperparam_range": list(
            config.value_range
        ),
        "loss": loss_name,
        "optimizer": describe_optimizer(optimizer),
        "model": model.name,
        "model_api": model.kind,
        "n_train": n_train,
        "n_val": len(split.x_val),
        "x_shape": list(split.x_train.shape[1:]),
        "y_shape": list(split.y_train.shape[1:]),
        "modules": list(module_names(abstract_params)),
    }
    checkpoints = None
    if checkpoint_dir is not None:  # read before compiling: a mismatch fails in seconds
        checkpoints = _checkpoint.SweepCheckpoints(
            checkpoint_dir,
            _checkpoint.fingerprint(record, split, abstract_params),
            resume,
            checkpoint_every_seconds,
            config.epochs,
        )
        if checkpoints.finished is not None:
            checkpoints.close()
            stored = checkpoints.stored_result()
            for note in stored.warnings:  # the same call warns the same, trained or stored
                warnings.warn(note, SearchRangeWarning, stacklevel=2)
            return stored
        checkpoints.check_resumable()
    programs = make_programs(model, loss_fn, tx, config.hyperparam, config.batch_size, n_train)
    # one bar per sweep: under jax.distributed only the writing process shows it
    show = progress and _sharding.is_writer()
    reporter = BarProgress(config.stages, config.epochs) if show else SilentProgress()
    try:
        with reporter:
            return _sweep(
                config,
                record,
                programs,
                split,  # host arrays: placed on the devices once, in _sweep
                devices,
                reporter,
                count_parameters(abstract_params),
                checkpoints,
            )
    finally:
        if checkpoints is not None:  # a pending save completes even when the sweep fails
            checkpoints.close()


# Initialisation runs once per sweep, for milliseconds, but its random-number code is long:
# on CPU, skipping LLVM's optimisation passes compiles it ~3x faster (~2 s less per sweep).
_INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def _sweep(
    config: SweepConfig,
    record: dict[str, Any],
    programs: Programs,
    data: Split,
    devices: list,
    reporter,
    param_count: int,
    checkpoints: _checkpoint.SweepCheckpoints | None = None,
) -> SweepResult:
    seed_init_keys, seed_data_keys = _seed_keys(config.seed, config.seeds)
    # lanes split over a one-axis mesh, data copied to every device: jit partitions the
    # vmapped programs (SPMD), and every output keeps the lane axis split the same way
    mesh = _sharding.lane_mesh(devices)
    data = _sharding.place_replicated(data, mesh)
    start_lanes = jax.jit(programs.start_lanes, out_shardings=_sharding.lane_sharding(mesh))
    run_epoch = jax.jit(programs.run_epoch, out_shardings=_sharding.lane_sharding(mesh))
    compiled = None
    # Parameters depend on the seed alone: initialise each seed once per sweep, on every
    # device, and let each stage only gather them into its lanes and start fresh optimizers.
    placed_init_keys = _sharding.place_replicated(seed_init_keys, mesh)
    seed_params, seed_constants = (
        jax.jit(programs.init_seeds, out_shardings=_sharding.replicated(mesh))
        .lower(placed_init_keys)
        .compile(compiler_options=_INIT_COMPILER_OPTIONS.get(jax.default_backend()))(
            placed_init_keys
        )
    )
    points: list[float] = []
    scores: list[float] = []
    evaluations: list[Evaluation] = []
    stage_records: list[Stage] = []
    notes: list[str] = []
    stop_reason = "completed"
    best_score = math.inf

    def stage_lanes(values):
        """A stage's per-lane inputs and its freshly initialised lanes, padded and placed."""
        real_lanes = len(values) * config.seeds
        lanes = _lanes(values, seed_init_keys, seed_data_keys, config.seeds)
        lanes = _sharding.pad_lanes(lanes, _sharding.pad_count(real_lanes, len(devices)))
        lanes = _sharding.place_lanes(lanes, mesh)
        state = start_lanes(seed_params, seed_constants, lanes.seed_index, lanes.values)
        return lanes, state

    # a rerun continues where the latest complete checkpoint stopped; every key and batch
    # order derives from (seed, epoch), so the rest trains exactly as it would have
    first_stage, epochs_trained = 0, 0
    resumed = None
    if checkpoints is not None:
        resumed = checkpoints.resume_point(stage_lanes, lambda values: len(values) * config.seeds)
    if resumed is not None:
        evaluations = list(resumed.history.evaluations)
        stage_records = list(resumed.history.stages)
        notes = list(resumed.history.warnings)
        points = [e.lr for e in evaluations]
        scores = [e.score for e in evaluations]
        if evaluations:
            best_score = _selector.best_point(points, scores)[1]
        first_stage = resumed.stage
        for note in notes:  # the same call warns the same, interrupted or not
            warnings.warn(note, SearchRangeWarning, stacklevel=3)
        reporter.message(
            f"resumed from {checkpoints.directory}: stage {resumed.stage + 1}, "
            f"{resumed.epoch} of {config.epochs} epochs done"
        )
        for _ in range(resumed.stage * config.epochs + resumed.epoch):  # the bar counts them
            reporter.epoch_done(best_score)

    for stage in range(first_stage, config.stages):
        plan = plan_stage(stage, points, scores, config)
        if plan.expansion is not None:
            notes.append(_expansion_note(stage, plan, config))
            warnings.warn(notes[-1], SearchRangeWarning, stacklevel=3)

        started = time.perf_counter()
        reporter.start_stage(stage, config.stages, plan.points, config.epochs)
        real_lanes = len(plan.points) * config.seeds
        lanes, state = stage_lanes(plan.points)
        compile_seconds = 0.0
        if compiled is None:
            compile_started = time.perf_counter()
            compiled = run_epoch.lower(state, lanes.data_keys, np.int32(0), *data).compile()
            compile_seconds = time.perf_counter() - compile_started
        epoch_metrics: list[EpochMetrics] = []
        epoch_seconds: list[float] = []
        first_epoch = 0
        if resumed is not None and resumed.running is not None and stage == resumed.stage:
            if tuple(plan.points) != resumed.running.values:  # the selector is pure: never
                raise RuntimeError(f"stage {stage}: the checkpoint's values differ from the plan")
            state, first_epoch = resumed.lanes, resumed.epoch
            epoch_metrics = list(resumed.running.epoch_metrics)
            epoch_seconds = list(resumed.running.seconds_per_epoch)
            started -= resumed.running.seconds
            compile_seconds += resumed.running.compile_seconds
        for epoch in range(first_epoch, config.epochs):
            epoch_started = time.perf_counter()
            state, metrics = compiled(state, lanes.data_keys, np.int32(epoch), *data)
            epoch_metrics.append(_sharding.to_host(metrics, real_lanes))  # padding dropped
            epoch_seconds.append(time.perf_counter() - epoch_started)
            epochs_trained += 1
            if checkpoints is not None:
                running = _checkpoint.Running(
                    tuple(plan.points),
                    epoch_metrics,
                    tuple(epoch_seconds),
                    time.perf_counter() - started,
                    compile_seconds,
                )
                checkpoints.epoch_done(stage, epoch + 1, state, lanes, real_lanes, running)
            reporter.epoch_done(_running_best(epoch_metrics[-1], best_score))

        stage_evaluations = collect_evaluations(stage, plan.points, config.seeds, epoch_metrics)
        evaluations.extend(stage_evaluations)
        points.extend(e.lr for e in stage_evaluations)
        scores.extend(e.score for e in stage_evaluations)
        previous_best = best_score
        best_value, best_score = _selector.best_point(points, scores)
        memory, memory_source = _memory(compiled, _sharding.first_local(devices))
        stage_records.append(
            Stage(
                index=stage,
                lrs=tuple(plan.points),
                intervals=tuple(plan.intervals),
                expansion=plan.expansion,
                best_lr=best_value,
                best_score=best_score,
                seconds=time.perf_counter() - started,
                seconds_per_epoch=tuple(epoch_seconds),
                compile_seconds=compile_seconds,
                memory_bytes=memory,
                memory_source=memory_source,
            )
        )
        reporter.stage_done(stage, best_value, best_score, config.hyperparam)
        if stage > 0 and _selector.should_stop(previous_best, best_score, config.min_improvement):
            stop_reason = "min_improvement"
            reporter.finish_early()
            break
        if checkpoints is not None and stage + 1 < config.stages:
            history = _checkpoint.history_record(evaluations, stage_records, notes, record)
            checkpoints.stage_done(stage, history)

    best_value, best_score = _selector.best_point(points, scores)
    final_note = _final_note(points, scores, config.hyperparam)
    if final_note is not None:
        notes.append(final_note)
        warnings.warn(final_note, SearchRangeWarning, stacklevel=3)
    environment = describe(devices)
    if checkpoints is not None:
        environment["checkpoint"] = checkpoints.describe(epochs_trained)
    result = SweepResult(
        best_lr=best_value,
        best_score=best_score,
        evaluations=tuple(evaluations),
        stages=tuple(stage_records),
        config=record,
        environment=environment,
        param_count=param_count,
        stop_reason=stop_reason,
        warnings=tuple(notes),
    )
    if checkpoints is not None:  # a rerun of a finished sweep returns this without training
        history = _checkpoint.history_record(evaluations, stage_records, notes, record)
        checkpoints.finish(stage, result, history)
    return result


def plan_stage(
    stage: int, points: Sequence[float], scores: Sequence[float], config: SweepConfig
) -> _selector.StagePlan:
    """Stage 0 is the grid over the range; later stages come from the scores so far (pure)."""
    if stage == 0:
        grid = _selector.initial_points(config.value_range, config.points_per_stage, config.scale)
        return _selector.StagePlan(grid, (), None)
    return _selector.next_stage(
        points,
        scores,
        count=config.points_per_stage,
        top_k=config.top_k,
        initial_step=config.initial_step,
        scale=config.scale,
        expand=config.expand,
    )


def _expansion_note(stage: int, plan: _selector.StagePlan, config: SweepConfig) -> str:
    """Says that (and where) a stage searches beyond what was evaluated."""
    (low, high), (range_low, range_high) = plan.intervals[0], config.value_range
    edge = "largest" if plan.expansion == "up" else "smallest"
    outside = low < range_low or high > range_high
    return (
        f"stage {stage}: the best {config.hyperparam} was the {edge} evaluated, so this stage "
        f"searches beyond it ({low:.3g} to {high:.3g})"
        + (", outside the given range" if outside else "")
    )


def _final_note(points: Sequence[float], scores: Sequence[float], name: str) -> str | None:
    """A warning for a sweep whose answer is not bracketed by what it evaluated, else None."""
    best_value, best_score = _selector.best_point(points, scores)
    if math.isinf(best_score):
        return "every evaluation diverged: try a lower range or a different optimizer"
    if _selector.edge_of_best(points, scores) is not None:
        return (
            f"the best {name} {best_value:.3g} is at the edge of what was evaluated: the "
            "optimum may lie beyond it (run more stages or widen the range)"
        )
    return None


def _running_best(metrics: EpochMetrics, best_score: float) -> float:
    """The best score known after an epoch, for the progress bar (diverged lanes ignored)."""
    scores = np.where(np.asarray(metrics.diverged), np.inf, np.asarray(metrics.val_loss))
    return float(min(best_score, np.nanmin(scores, initial=np.inf)))
