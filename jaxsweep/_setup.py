"""Every input check of ``run``, in one place, before anything compiles: one typed ``Setup``.

Checks run on the host in milliseconds (shapes are traced abstractly, nothing is compiled),
so bad input fails with a ``TypeError``/``ValueError`` that names the argument.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from . import _cache, _checkpoint, _hosts, _keep, _lanes, _schedules, _sharding, _training
from . import callbacks as _callbacks
from ._budget import Budget, make_budget
from ._checkpoint import CheckpointArgs
from ._config import SweepConfig, make_config
from ._data import Split, prepare, shapes, take
from ._environment import versions
from ._losses import TARGET_NAMES, check_mode, resolve_loss, resolve_metric, split_loss
from ._model import ModelFunctions, Start, adapt, count_parameters, module_names, output_shape
from ._optim import describe_optimizer, resolve_optimizer, swept_value_reaches_updates
from ._sources import is_source_column
from ._training import Training
from ._validation import default_eval_batch_size

DEFAULT_LR_RANGE = (1e-5, 1e-2)


@dataclasses.dataclass(frozen=True)
class Setup:
    """A checked sweep: everything the driver needs, nothing left to validate."""

    config: SweepConfig  # the scalar settings
    split: Split  # host arrays after the train/validation split (inputs may be pytrees)
    loss_fn: Callable | None  # (outputs, targets) -> scalar | {...}; None: a Training's own
    loss_name: str
    optimizer: optax.GradientTransformation  # inject_hyperparams: the swept value is data
    model: ModelFunctions  # pure init / train-apply / eval-apply
    abstract_params: Any  # one lane's parameters as shapes
    devices: tuple  # the lanes are split over these
    checkpoint: CheckpointArgs
    progress: bool
    record: dict[str, Any]  # the result's ``config``: every argument that shapes the sweep
    hosts: _hosts.Hosts  # this process among the sweep's processes (one in most runs)
    fingerprint: dict | None  # what a checkpoint must match; None without checkpoints
    budget: Budget  # steps per lane, validation points, steps per call
    started: float  # time.perf_counter() when the checks began: the sweep's clock starts here
    start: Start | None = None  # given (pretrained) values every lane starts from; None: fresh
    lanes: _lanes.Strategy | None = None  # a forced lane strategy; None: chosen by the rule
    compilation_cache: Any = None  # run's argument, checked (see ``_cache.resolve``)
    callbacks: tuple = ()  # the user's callbacks (``jaxsweep.callbacks``), in call order
    # run's optimizer factory and schedule as given: a longer horizon builds its own from them
    optimizer_factory: Callable | None = None
    schedule: Any = None
    keep: str | None = None  # "best": the best value's final variables come back
    device_memory: int | None = None  # bytes a stage's call may use per device; None: reported

    @property
    def param_count(self) -> int:
        return count_parameters(self.abstract_params)


def setup(
    model_fn: Callable,
    data,
    *,
    loss,
    optimizer,
    lr_range,
    hyperparam,
    hyperparam_range,
    checkpoint_dir,
    resume,
    checkpoint_every_seconds,
    devices,
    progress,
    schedule,
    lanes,
    compilation_cache,
    init,
    callbacks,
    keep,
    device_memory=None,
    **settings,
) -> Setup:
    """Checks every argument of :func:`jaxsweep.run` (same names, no defaults): a Setup.

    ``settings`` are ``run``'s scalar search and training settings (``scale``, ``stages``,
    ``epochs``, ...), checked by :func:`jaxsweep._config.make_config`. The order of the checks
    is the order of their costs: scalars, then the data, then the loss, optimizer and model
    (traced abstractly; nothing compiles).
    """
    started = time.perf_counter()
    if not isinstance(hyperparam, str) or not hyperparam:
        raise TypeError(f"hyperparam: expected a non-empty name, got {hyperparam!r}")
    value_range, range_name = resolve_range(hyperparam, hyperparam_range, lr_range)
    config = make_config(
        hyperparam=hyperparam, value_range=value_range, range_name=range_name, **settings
    )
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected True or False, got {progress!r}")
    watchers = _callbacks.check(callbacks)
    keep = _keep.check(keep)
    checkpoint = _checkpoint.check_arguments(checkpoint_dir, resume, checkpoint_every_seconds)
    devices = tuple(_sharding.resolve_devices(devices))
    strategy = _lanes.parse(lanes)
    _lanes.check(strategy, devices)
    _lanes.check_device_memory(device_memory)
    _cache.resolve(compilation_cache)  # a bad value fails here, before anything runs
    checked = _with_data(
        config,
        model_fn=model_fn,
        data=data,
        loss=loss,
        optimizer=optimizer,
        schedule=schedule,
        init=init,
        devices=devices,
        checkpoint=checkpoint,
    )
    return Setup(
        **checked._asdict(),
        devices=devices,
        checkpoint=checkpoint,
        progress=progress,
        started=started,
        lanes=strategy,
        device_memory=device_memory,
        compilation_cache=compilation_cache,
        callbacks=watchers,
        keep=keep,
        optimizer_factory=optimizer,
        schedule=schedule,
    )


class _DataChecked(NamedTuple):
    """What the checks that need the data give a :class:`Setup`."""

    config: SweepConfig  # with the metric, validation batch and steps resolved
    split: Split
    loss_fn: Callable | None  # None: a Training computes its own loss
    loss_name: str
    optimizer: optax.GradientTransformation
    model: ModelFunctions
    start: Start | None
    abstract_params: Any
    record: dict[str, Any]
    hosts: _hosts.Hosts
    fingerprint: dict | None
    budget: Budget


def _with_data(
    config: SweepConfig,
    *,
    model_fn,
    data,
    loss,
    optimizer,
    schedule,
    init,
    devices,
    checkpoint: CheckpointArgs,
) -> _DataChecked:
    """The checks that need the data: split, batch size, model, loss, optimizer, start."""
    split = prepare(data, config.validation_fraction, config.seed)
    n_train = len(split.y_train)
    if config.batch_size > n_train:
        raise ValueError(
            f"batch_size: {config.batch_size} is larger than the {n_train} training examples"
        )
    budget = make_budget(config.epochs, config.steps, config.eval_every, n_train, config.batch_size)
    config = _with_target(config, budget, schedule)
    scheduled = _schedules.resolve(schedule, budget.total)
    tx = resolve_optimizer(optimizer, config.hyperparam, scheduled and scheduled.fn)
    if isinstance(model_fn, Training):  # the user's own steps: they hold loss and optimizer
        model, loss_fn, loss_name, targets, abstract_params, aux_names = _own_training(
            model_fn, loss, tx, config.hyperparam, split, config.batch_size
        )
    else:
        example = take(split.x_train, slice(0, min(2, n_train)))  # 2: batch statistics need it
        model = adapt(model_fn, example)
        outputs = output_shape(model, example)
        loss_fn, loss_name, targets = resolve_loss(
            loss, _targets_at_hand(split), getattr(outputs, "shape", None) and tuple(outputs.shape)
        )
        abstract_params, aux_names = _probe(
            model, loss_fn, tx, config.hyperparam, split, config.batch_size
        )
    start = None if init is None else model.start(init)
    n_val = len(split.y_val)
    eval_batch = config.eval_batch_size or default_eval_batch_size(n_val, config.batch_size)
    metric = resolve_metric(config.metric, aux_names)
    check_mode(metric, config.mode)
    config = dataclasses.replace(
        config,
        metric=metric,
        eval_batch_size=min(eval_batch, n_val),  # never more than the examples there are
        steps=budget.total,
        eval_every=budget.eval_every,
    )
    record = {
        **_record(config, split, model, abstract_params, loss_name, optimizer),
        "targets": TARGET_NAMES[targets],
        "init": "fresh" if start is None else f"given ({_checkpoint.content_digest(start)})",
        "schedule": scheduled and scheduled.description,
    }
    hosts = _hosts.Hosts.join()
    fingerprint = None
    if checkpoint.directory is not None or hosts.count > 1:
        fingerprint = _checkpoint.fingerprint(record, split, abstract_params)
    if hosts.count > 1:  # the last check, the one that waits for the other processes
        _hosts.agree_on_sweep(hosts, _shared_fields(fingerprint, devices, checkpoint))
    return _DataChecked(
        config=config,
        split=split,
        loss_fn=loss_fn,
        loss_name=loss_name,
        optimizer=tx,
        model=model,
        start=start,
        abstract_params=abstract_params,
        record=record,
        hosts=hosts,
        fingerprint=fingerprint,
        budget=budget,
    )


def _own_training(training: Training, loss, optimizer, hyperparam: str, split: Split, batch: int):
    """A Training's model functions, traced on a batch of the data (nothing compiles); its
    loss is its steps' ``metrics["loss"]``, its metrics eval_step's other entries."""
    if not (isinstance(loss, str) and loss == "auto"):
        raise ValueError(
            "loss: a Training's train_step and eval_step compute the loss (metrics['loss']); "
            "leave loss unset"
        )
    x, y = take(split.x_train, slice(0, batch)), split.y_train[:batch]
    model = _training.adapt(training, x, y, optimizer, hyperparam)
    own = model.own
    return model, None, "train_step", "custom", own.abstract_params, own.val_metric_names


def _with_target(config: SweepConfig, budget: Budget, schedule) -> SweepConfig:
    """The target run's steps (``target_epochs`` become steps), checked against what the
    horizon stages need: a schedule they can stretch."""
    if config.target_epochs is not None:
        config = dataclasses.replace(
            config, target_steps=config.target_epochs * budget.steps_per_epoch
        )
    if config.target_steps is not None and not _schedules.stretches(schedule):
        raise ValueError(
            "schedule: a custom optax schedule is fixed in its steps, so the longer horizons "
            "of target_steps cannot stretch it as a longer run would; give its shape instead "
            "(a name such as 'warmup_cosine', or jaxsweep.schedules.warmup_cosine(...))"
        )
    return config


def at_steps(setup: Setup, steps: int) -> Setup:
    """The sweep trained for ``steps`` steps per lane instead (a longer horizon): the
    validations as many as the sweep's, at proportionally later steps, and the schedule
    stretched to the new length, as a full run of that length would have it."""
    budget, config = setup.budget, setup.config
    factor = steps / budget.total
    every = max(1, min(steps, round(budget.eval_every * factor)))
    longer = make_budget(None, steps, every, len(setup.split.y_train), config.batch_size)
    scheduled = _schedules.resolve(setup.schedule, steps)
    tx = resolve_optimizer(setup.optimizer_factory, config.hyperparam, scheduled and scheduled.fn)
    # a Training's state holds its optimizer: built again around the stretched one
    model = setup.model if setup.model.own is None else setup.model.own.rebind(tx)
    return dataclasses.replace(setup, budget=longer, optimizer=tx, model=model)


def _shared_fields(fingerprint, devices, checkpoint: CheckpointArgs) -> dict[str, Any]:
    """What every process of a multi-process sweep must have the same (flat, JSON-ready)."""
    fields = {
        **fingerprint,
        "run.devices": [d.id for d in devices],
        **{f"run.checkpoint.{k}": v for k, v in dataclasses.asdict(checkpoint).items()},
    }
    # another library version can trace another program; python itself is left free
    fields.update({f"versions.{k}": v for k, v in versions().items() if k != "python"})
    return fields


def resolve_range(hyperparam: str, hyperparam_range, lr_range) -> tuple[Any, str]:
    """The stage-0 range of the swept value and the argument name that gave it.

    ``lr_range`` and ``hyperparam_range`` default to None: a range given twice is refused,
    whatever its value (the default, ``DEFAULT_LR_RANGE``, applies to the learning rate only).

    >>> resolve_range("learning_rate", None, None)
    ((1e-05, 0.01), 'lr_range')
    >>> resolve_range("momentum", (0.0, 0.9), None)
    ((0.0, 0.9), 'hyperparam_range')
    """
    if hyperparam == "learning_rate":
        if hyperparam_range is None:
            return (DEFAULT_LR_RANGE if lr_range is None else lr_range), "lr_range"
        if lr_range is not None:
            raise ValueError(
                "hyperparam_range: give the learning-rate range once, as lr_range or as "
                "hyperparam_range, not both"
            )
        return hyperparam_range, "hyperparam_range"
    if lr_range is not None:
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


def _targets_at_hand(split: Split) -> np.ndarray:
    """The targets the loss checks read: all of them for arrays; for a training source (never
    read whole) its first examples and the whole validation part."""
    if not is_source_column(split.y_train):
        return split.y_train
    return np.concatenate([split.y_train.sample, np.asarray(split.y_val)])


def _probe(model: ModelFunctions, loss_fn, optimizer, hyperparam: str, split: Split, batch: int):
    """Traces one step abstractly (no compilation) to check model, loss and optimizer fit.

    Returns one lane's parameters as shapes, and the names of the loss's auxiliary entries.
    """
    x, y = take(split.x_train, slice(0, batch)), split.y_train[:batch]
    params, state = model.abstract.params, model.abstract.state  # traced once, by adapt

    def loss_terms(params, state):
        # the key is made inside the trace: nothing compiles
        outputs = model.train_apply(params, state, x, jax.random.key(0))[0]
        return split_loss(loss_fn(outputs, y))

    try:
        loss_value, aux = jax.eval_shape(loss_terms, params, state)
    except KeyError as error:
        raise TypeError(f"loss: a dict return value needs a 'loss' entry ({error})") from None
    except Exception as error:
        raise ValueError(
            f"model_fn/loss: the model and loss could not be applied to a batch of data "
            f"with x shape {shapes(x)} and y shape {y.shape}: {error}"
        ) from error
    if loss_value.shape != ():
        raise ValueError(f"loss: must return a scalar, got shape {loss_value.shape}")
    for name, value in aux.items():
        if getattr(value, "shape", None) != ():
            raise ValueError(f"loss: auxiliary entry {name!r} must be a scalar")
    _probe_optimizer(optimizer, params, hyperparam)
    return params, tuple(aux)


def _probe_optimizer(optimizer, params, hyperparam: str) -> None:
    """The optimizer initialises with the swept value held as an array, holds it, and uses
    it (traced, nothing compiles)."""
    try:
        opt_state = jax.eval_shape(optimizer.init, params)
    except jax.errors.ConcretizationTypeError as error:
        # e.g. optax.warmup_cosine_decay_schedule(0.0, learning_rate, ...) compares the
        # swept value in Python, but the sweep holds it as an array: the shape goes to schedule=
        raise TypeError(
            f"optimizer: could not be initialised with {hyperparam!r} held as an array: the "
            f"factory uses it as a Python number ({type(error).__name__}). If it builds a "
            "schedule from it, give the schedule's shape as schedule= instead, e.g. "
            "schedule='warmup_cosine' or schedule=optax.warmup_cosine_decay_schedule(0.0, 1.0, "
            "warmup, total_steps): the swept value becomes its peak"
        ) from None
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
    if not swept_value_reaches_updates(optimizer, params, hyperparam):
        raise TypeError(
            f"optimizer: its updates never use {hyperparam!r}: they are the same for every "
            "swept value, so every lane would train alike (a factory such as "
            "lambda learning_rate: optax.adam(1e-3) ignores its argument); pass the value on, "
            "e.g. lambda learning_rate: optax.adam(learning_rate)"
        )


def _record(config, split, model, abstract_params, loss_name, optimizer) -> dict[str, Any]:
    """The result's ``config`` record: every setting, and what the data and model were."""
    # the learning rate's span keeps its own name; another hyperparameter's is generic
    range_key = "lr_range" if config.hyperparam == "learning_rate" else "hyperparam_range"
    return {
        **config.to_json(),
        range_key: list(config.value_range),
        "loss": loss_name,
        "optimizer": describe_optimizer(optimizer),
        "model": model.name,
        "model_api": model.kind,
        "model_mode_flag": model.mode_flag,
        "model_state": list(model.state_names),
        "rng_streams": list(model.rng_streams),
        "n_train": len(split.y_train),
        "n_val": len(split.y_val),
        "x_shape": shapes(split.x_train),
        "y_shape": list(split.y_train.shape[1:]),
        "modules": list(module_names(abstract_params)),
    }
