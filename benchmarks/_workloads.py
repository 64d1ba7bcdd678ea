"""The models, the data and the three ways of training several rates that the benchmarks compare.

* :class:`EngineStage`: jaxsweep's own stage, every rate a lane of one vmapped, compiled epoch
  program: the sweep's own ``StagePrograms``, built by ``jaxsweep._driver.build_stage_programs``
  from a checked ``Setup``, exactly as ``jaxsweep.run`` builds them.
* :func:`make_train_one`: the best-practice sequential baseline (a): one jitted function with the
  rate as an argument, epochs and steps as ``lax.scan``; compiled once, called once per rate.
* :func:`train_usual`: the usual loop (b): a new ``optax.adam(lr)`` and a new jitted step per
  rate, a Python loop over the steps.

All three start every rate from the same parameters and feed the same batches in the same
order as ``jaxsweep.run`` with the same seed, so they do the same arithmetic and compute the
same losses: the benchmarks compare the cost of the same work.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsweep
from jaxsweep._data import Split, epoch_batches, prepare, to_device
from jaxsweep._driver import build_stage_programs
from jaxsweep._losses import cross_entropy
from jaxsweep._setup import setup
from jaxsweep._stage import compiled_memory, lane_inputs
from jaxsweep.models import MLP

# ----------------------------------------------------------------------------- models and data


class SmallCNN(nn.Module):
    """Two 3x3 convolutions on the 8x8 digit images (the second with stride 2), a read-out."""

    channels: Sequence[int] = (8, 16)
    outputs: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], 8, 8, 1))
        x = nn.relu(nn.Conv(self.channels[0], (3, 3))(x))
        x = nn.relu(nn.Conv(self.channels[1], (3, 3), strides=2)(x))
        return nn.Dense(self.outputs)(x.reshape((x.shape[0], -1)))


class BatchNormCNN(nn.Module):
    """SmallCNN with BatchNorm after each convolution: ``train=True`` normalises with the
    batch's statistics and updates the running averages (``batch_stats``), ``train=False``
    (validation) reads them."""

    channels: Sequence[int] = (8, 16)
    outputs: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        x = x.reshape((x.shape[0], 8, 8, 1))
        # no bias before a normalisation (it would cancel): the usual ResNet layout
        x = nn.relu(norm()(nn.Conv(self.channels[0], (3, 3), use_bias=False)(x)))
        x = nn.relu(norm()(nn.Conv(self.channels[1], (3, 3), strides=2, use_bias=False)(x)))
        return nn.Dense(self.outputs)(x.reshape((x.shape[0], -1)))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "small MLP (64-128-128-10)": lambda: MLP(hidden=(128, 128)),
    "wide MLP (64-512-512-10)": lambda: MLP(hidden=(512, 512)),
    "small CNN (conv8, conv16 stride 2, dense10)": lambda: SmallCNN(),
    "BatchNorm CNN (conv8-BN, conv16/2-BN, dense10)": lambda: BatchNormCNN(),
}


# ``--dry`` runs every benchmark on these, with a few hundred examples: seconds on a CPU
DRY_MODELS: dict[str, Callable[[], nn.Module]] = {
    "tiny MLP (64-8-10)": lambda: MLP(hidden=(8,)),
    "tiny CNN (conv2, conv2 stride 2, dense10)": lambda: SmallCNN(channels=(2, 2)),
}


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from jaxsweep.datasets import load_digits

    return load_digits()


def digits_xy(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The digits images and labels (the first ``limit`` of them), read once per process."""
    x, y = _digits_arrays()
    return (x, y) if limit is None else (x[:limit], y[:limit])


def digits(seed: int = 0, validation_fraction: float = 0.2, limit: int | None = None) -> Split:
    """scikit-learn's digits split exactly as ``jaxsweep.run(..., seed=seed)`` splits it."""
    return prepare(digits_xy(limit), validation_fraction, seed)


class Workload(NamedTuple):
    """One training problem: what every method trains, with the same settings."""

    model_fn: Callable[[], nn.Module]
    split: Split  # host arrays
    epochs: int
    batch_size: int
    seed: int = 0
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam
    loss: Callable = cross_entropy

    @property
    def n_train(self) -> int:
        return len(self.split.x_train)


def lane_keys(workload: Workload, lrs: Sequence[float], seeds: int = 1):
    """Per-lane (rates, init keys, data keys) exactly as ``jaxsweep.run`` derives them: one
    lane per (rate, seed), value-major.

    Made once per set of rates and kept (a few eager JAX calls, milliseconds): no method's
    timing includes them, as a careful user makes them once too.
    """
    return _lane_keys(workload.seed, tuple(float(lr) for lr in lrs), seeds)


@functools.lru_cache(maxsize=256)
def _lane_keys(seed: int, lrs: tuple[float, ...], seeds: int):
    lanes = lane_inputs(lrs, seed, seeds)
    return lanes.values, lanes.init_keys, lanes.data_keys


# ----------------------------------------------------------------------------- jaxsweep's stage


class EngineStage:
    """jaxsweep's stage programs for one workload, on one device, compiled per lane count.

    The programs are the sweep's own (``build_stage_programs`` of a ``Setup`` checked by the
    same code as ``jaxsweep.run``); a stage starts, trains and gathers its metrics through
    them as a sweep does. Built fresh, it holds new closures, so its first ``compile`` pays the
    full compile cost (as a new ``jaxsweep.run`` does); later calls reuse the compiled programs.
    """

    def __init__(
        self,
        workload: Workload,
        lanes: str = "auto",
        diagnostics: bool = True,
        devices: Sequence[jax.Device] | None = None,
    ):
        """``devices``: where the lanes are spread (None: the first device, one)."""
        self.workload = workload
        arguments = run_arguments(
            workload,
            loss=workload.loss,
            epochs=workload.epochs,
            lanes=lanes,
            diagnostics=diagnostics,
        )
        if devices is not None:
            arguments["devices"] = list(devices)
        checked = setup(
            workload.model_fn, {"train": workload.split[:2], "val": workload.split[2:]}, **arguments
        )
        self.stage = build_stage_programs(checked)
        self.data = self.stage.data

    def _start(self, lrs: Sequence[float], seed: int, seeds: int = 1):
        lanes = self.stage.start(lrs, seed=seed, seeds=seeds)
        self.stage.compile(lanes)
        return lanes

    def compile(self, lanes: int):
        """Compiles the lane-start and epoch programs for ``lanes`` lanes; returns the epoch one."""
        return self.stage.compiled_call(self._start([1e-3] * lanes, self.workload.seed))

    def run(self, lrs: Sequence[float], seed: int | None = None, seeds: int = 1) -> np.ndarray:
        """Trains every rate (``seeds`` seeds each) as one stage; the validation loss per
        (lane, epoch), lanes value-major.

        ``seed`` replaces the workload's seed for the init and batch order (same split).
        """
        lanes = self._start(lrs, self.workload.seed if seed is None else seed, seeds)
        # as the sweep trains a stage: every call's metrics fetched, one call in flight
        val_losses = [metrics.val_loss for _, _, metrics in self.stage.train(lanes, lanes.state)]
        return np.stack(val_losses, axis=1)

    def memory_bytes(self, lanes: int) -> dict[str, int]:
        """The compiled epoch program's memory: arguments, outputs, temporaries, total."""
        data = sum(int(np.asarray(a).nbytes) for a in self.data)
        return {**compiled_memory(self.compile(lanes)), "data": data}


def run_arguments(workload, **given) -> dict[str, Any]:
    """``jaxsweep.run``'s keyword arguments, every one (``setup`` takes them all): its
    defaults, the workload's optimizer, batch size and seed (``workload``: any object with
    those three), one device, quiet; ``given`` replaces any."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(jaxsweep.run).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return {
        **defaults,
        "optimizer": workload.optimizer,
        "batch_size": workload.batch_size,
        "seed": workload.seed,
        "devices": jax.local_devices()[:1],
        "progress": False,
        **given,
    }


# ----------------------------------------------------------------------------- hand-written loops


class _LinenSteps(NamedTuple):
    """A Linen model as a hand-written loop uses it: ``train=True`` with its collections
    (``batch_stats``) mutable while training, ``train=False`` to validate (when it has the
    flag and collections; a plain model is just ``apply({"params": ...})``)."""

    init: Callable  # (key, x) -> (params, stats)
    train_loss: Callable  # (params, stats, x, y) -> (loss, stats)
    val_loss: Callable  # (params, stats, x, y) -> loss


def _linen_steps(module: nn.Module, loss_fn: Callable) -> _LinenSteps:
    flag = {"train": True} if "train" in inspect.signature(module.__call__).parameters else {}

    def mode(training: bool) -> dict:
        return {k: training for k in flag}

    def init(key, x):
        variables = dict(module.init(key, x, **mode(False)))
        return variables.pop("params"), variables

    def train_loss(params, stats, x, y):
        if not stats:
            return loss_fn(module.apply({"params": params}, x, **mode(True)), y), stats
        outputs, stats = module.apply(
            {"params": params, **stats}, x, mutable=list(stats), **mode(True)
        )
        return loss_fn(outputs, y), dict(stats)

    def val_loss(params, stats, x, y):
        return loss_fn(module.apply({"params": params, **stats}, x, **mode(False)), y)

    return _LinenSteps(init, train_loss, val_loss)


def _train_step(model: _LinenSteps, tx: optax.GradientTransformation, x_train, y_train):
    """One optimizer step on the training examples at ``indices``, for ``lax.scan``: the
    carry ``(params, stats, opt_state)``, the step's training loss out."""

    def step(carry, indices):
        params, stats, opt_state = carry
        (loss, stats), grads = jax.value_and_grad(model.train_loss, has_aux=True)(
            params, stats, x_train[indices], y_train[indices]
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    return step


# ----------------------------------------------------------------------------- (a) best practice


def make_train_one(workload: Workload) -> Callable:
    """Baseline (a): one rate, one call; the rate is an argument, so one compile serves all.

    Returns ``train(lr, init_key, data_key, x_train, y_train, x_val, y_val)`` returning the
    mean training loss and the validation loss of every epoch. Not jitted: wrap it in
    ``jax.jit`` (sequential) or ``jax.jit(jax.vmap(...))`` (the same function vmapped).
    """
    model = _linen_steps(workload.model_fn(), workload.loss)
    n_train, batch_size, epochs = workload.n_train, workload.batch_size, workload.epochs

    def train(lr, init_key, data_key, x_train, y_train, x_val, y_val):
        tx = workload.optimizer(learning_rate=lr)
        params, stats = model.init(init_key, x_train[:1])
        step = _train_step(model, tx, x_train, y_train)

        def epoch(carry, e):
            order = epoch_batches(data_key, e, n_train, batch_size)
            carry, losses = jax.lax.scan(step, carry, order)
            return carry, (jnp.mean(losses), model.val_loss(carry[0], carry[1], x_val, y_val))

        carry = (params, stats, tx.init(params))
        _, (train_losses, val_losses) = jax.lax.scan(epoch, carry, jnp.arange(epochs))
        return train_losses, val_losses

    return train


class Sequential:
    """Baseline (a) for a list of rates: compile once, then one call per rate."""

    def __init__(self, workload: Workload):
        self.workload = workload
        self._train = jax.jit(make_train_one(workload))
        self.data = to_device(workload.split)

    def run(self, lrs: Sequence[float], seeds: int = 1) -> np.ndarray:
        """One call per (rate, seed), value-major, as the sweep's lanes."""
        values, init_keys, data_keys = lane_keys(self.workload, lrs, seeds)
        results = [
            self._train(values[i], init_keys[i], data_keys[i], *self.data)[1]
            for i in range(len(values))
        ]
        return np.stack(jax.device_get(results))


class VmappedPlain:
    """Baseline (a)'s own function under ``jax.vmap``: the gain of vmap alone, no diagnostics."""

    def __init__(self, workload: Workload):
        self.workload = workload
        train = jax.vmap(make_train_one(workload), in_axes=(0, 0, 0, None, None, None, None))
        self._train = jax.jit(train)
        self.data = to_device(workload.split)

    def run(self, lrs: Sequence[float]) -> np.ndarray:
        values, init_keys, data_keys = lane_keys(self.workload, lrs)
        return np.asarray(self._train(values, init_keys, data_keys, *self.data)[1])


# ----------------------------------------------------------------------------- (b) usual loop


def train_usual(workload: Workload, lrs: Sequence[float]) -> np.ndarray:
    """Baseline (b): the loop most people write, one fresh optimizer and jitted step per rate.

    The rate is a Python float captured by the step, so every rate compiles its own step; the
    batches are sliced from host (numpy) arrays in Python, one dispatch per step. Returns the
    validation loss per (rate, epoch).
    """
    model = _linen_steps(workload.model_fn(), workload.loss)
    split = workload.split
    n_train, batch_size = workload.n_train, workload.batch_size
    _, init_keys, data_keys = lane_keys(workload, lrs)

    evaluate = jax.jit(model.val_loss)  # does not depend on the rate: compiled once
    results = []
    for i, lr in enumerate(lrs):
        tx = workload.optimizer(float(np.float32(lr)))
        params, stats = model.init(init_keys[i], split.x_train[:1])
        opt_state = tx.init(params)

        @jax.jit
        def step(params, stats, opt_state, x, y, tx=tx):
            (loss, stats), grads = jax.value_and_grad(model.train_loss, has_aux=True)(
                params, stats, x, y
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), stats, opt_state, loss

        val_losses = []
        for epoch in range(workload.epochs):
            order = np.asarray(epoch_batches(data_keys[i], epoch, n_train, batch_size))
            for indices in order:
                params, stats, opt_state, _ = step(
                    params, stats, opt_state, split.x_train[indices], split.y_train[indices]
                )
            val_losses.append(float(evaluate(params, stats, split.x_val, split.y_val)))
        results.append(val_losses)
    return np.asarray(results)
