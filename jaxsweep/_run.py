"""``run``, the public entry point: check every argument, then drive the stages."""

from __future__ import annotations

from collections.abc import Callable

import optax

from ._driver import drive
from ._result import SweepResult
from ._setup import setup
from ._warnings import SearchRangeWarning as SearchRangeWarning


def run(
    model_fn: Callable,
    data,
    *,
    loss: str | Callable = "auto",
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam,
    lr_range: tuple[float, float] | None = None,
    hyperparam: str = "learning_rate",
    hyperparam_range: tuple[float, float] | None = None,
    scale: str = "log",
    points_per_stage: int = 5,
    stages: int | None = None,
    top_k: int = 2,
    epochs: int | None = None,
    steps: int | None = None,
    eval_every: int | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    schedule=None,
    metric: str = "val_loss",
    mode: str = "min",
    seeds: int | None = None,
    seed: int = 0,
    min_improvement: float | None = None,
    validation_fraction: float = 0.2,
    expand: bool = True,
    checkpoint_dir=None,
    resume: str = "auto",
    checkpoint_every_seconds: float = 30.0,
    devices=None,
    progress: bool = True,
    lanes: str = "auto",
    device_memory: int | None = None,
    compilation_cache=None,
    init=None,
    diagnostics: bool = True,
    precision: float | None = None,
    max_lanes: int | None = None,
    target_steps: int | None = None,
    target_epochs: int | None = None,
    keep: str | None = None,
    callbacks=None,
) -> SweepResult:
    """Finds the best learning rate of a Flax model with a coarse-to-fine sweep.

    Stage 0 trains ``points_per_stage`` log-spaced rates over ``lr_range``; each later stage
    keeps the ``top_k`` best intervals between evaluated rates and trains as many new rates
    inside them. All rates (and seeds) of a stage train at once in one vmapped, compiled
    program, reused by every stage.

    Args:
      model_fn: ``() -> flax.linen.Module`` or ``(rngs: nnx.Rngs) -> nnx.Module``. A Linen
        ``__call__`` taking ``train`` (or ``training``, or ``deterministic``) gets
        ``train=True`` while training, with every collection besides ``params`` (e.g.
        ``batch_stats``) carried per lane and a new key per step for each random stream
        (``dropout``, ...), and ``train=False`` at validation; NNX models are switched
        with ``train()`` / ``eval()``. Or a :class:`jaxsweep.Training`: your own
        ``init(key, optimizer)``, ``train_step(state, batch, key)`` and
        ``eval_step(state, batch)`` (a ``TrainState``, an ``nnx.Optimizer``), the swept
        value set in the optimizer state the state holds; ``loss`` is then its metrics'
        ``"loss"``.
      data: ``(x, y)`` (a ``validation_fraction`` is split off) or
        ``{"train": (x, y), "val": (x, y)}``; numpy or jax arrays (bfloat16 and float16
        too). ``x`` may be a tuple or dict of arrays: the model receives that structure.
      loss: ``"auto"`` (class labels, of shape ``(n,)`` or ``(n, 1)``, and one-hot /
        probability targets as wide as the outputs: cross-entropy; other float targets: MSE;
        the choice is in ``result.config["loss"]`` and ``["targets"]``),
        ``"cross_entropy"``, ``"mse"``, or ``f(outputs, targets)`` returning a scalar or a dict
        whose ``"loss"`` is optimised and whose other entries are recorded.
      optimizer: an optax factory taking ``learning_rate`` (``optax.sgd``,
        ``functools.partial(optax.sgd, momentum=0.9)``, ...).
      lr_range: stage-0 span of learning rates (None: ``(1e-5, 1e-2)``); the search follows an
        optimum beyond it.
      hyperparam: the optimizer argument to sweep: ``"learning_rate"``, or any other scalar
        that ``optax.inject_hyperparams`` exposes for this optimizer (``"weight_decay"``,
        ``"momentum"``, ``"b1"``, ...); the learning rate is then fixed by the factory, e.g.
        ``functools.partial(optax.adamw, learning_rate=1e-3)``.
      hyperparam_range: stage-0 span of ``hyperparam``; required unless the learning rate is
        swept (where ``lr_range`` says the same and only one of them may be given).
      scale: ``"log"`` (points spaced by ratios) or ``"linear"`` (by differences, e.g. for
        momentum); a linear sweep that starts at or above zero never goes below it.
      points_per_stage: rates trained together in each stage.
      stages: the most stages to run (None: 5, or 20 with ``precision``).
      top_k: intervals refined in each later stage.
      epochs: passes over the training data each value is trained for (3 when neither
        ``epochs`` nor ``steps`` is given). Batches are full: the remainder of an epoch's
        permutation is dropped.
      steps: training steps per value instead of epochs; step ``s`` takes its batch from the
        permutation of epoch ``s // steps_per_epoch``, exactly as an epoch budget does.
      eval_every: steps between validations (None: once per epoch); the last validation
        comes after the last step. Per-epoch records become per-validation records, and
        ``Evaluation.steps`` holds the step of each.
      batch_size: examples per step.
      eval_batch_size: validation examples per batch through the model (None: the larger of
        ``batch_size`` and 512, at most the validation set). Validation memory depends on it,
        not on the size of the validation set; the validation loss is the exact mean over
        every example (a ragged last batch is padded and masked), for losses that are means
        over their batch.
      schedule: how the rate changes over the steps, the swept value being its peak: None
        (constant), a name (``"warmup_cosine"``: linear warmup over 10% of the steps, then
        cosine decay to 0; ``"cosine"``, ``"linear"``, ``"warmup_linear"``, ``"constant"``),
        a shape from :mod:`jaxsweep.schedules` (``warmup_cosine(warmup_fraction=0.05)``), or
        any optax schedule with peak 1.0. The rate at step ``t`` is the swept value times
        ``schedule(t)``; shapes stretch to the run's total steps.
      metric: what ranks the values (Ray Tune's name): ``"val_loss"``, the optimised loss on
        the validation set, or ``"val_<name>"`` (or ``"<name>"``) for an auxiliary entry of a
        loss returning a dict, e.g. ``"val_accuracy"`` (the built-in cross-entropy on
        integer class labels records it: ``metric="accuracy", mode="max"`` needs no loss of
        your own). The score, the best value, the intervals, the early stop, the figures and
        the report all follow it.
      mode: ``"min"`` (lower is better) or ``"max"`` (e.g. accuracy).
      seeds: initialisations (and batch orders) per rate; the score is their mean. With two
        or more the search measures the seed-to-seed noise as it goes, refines only
        differences it can resolve, stops when nothing is left to resolve
        (``stop_reason == "resolution"``), and the interval covers the optimum of the
        expected score. One seed is cheaper but cannot show seed-to-seed variation. None:
        3, or with ``precision`` as many as an honest interval of that width needs (10 at
        0.5, four times as many for half the width, at most 64).
      seed: the root of every random choice (split, init, batch order).
      min_improvement: stop when a stage improves the best score by less than this fraction
        (None: 0.01 with one seed, off with several, where the resolution rule stops).
      validation_fraction: share of ``(x, y)`` held out for scoring.
      expand: search beyond the range when the best value sits on its edge.
      checkpoint_dir: a directory for Orbax checkpoints (None: none). A sweep killed at any
        moment and rerun with the same call resumes from its latest complete checkpoint and
        returns exactly what an uninterrupted run returns; a finished sweep's directory
        returns its stored result without training. Under ``jax.distributed`` every process
        passes the same path (one that all of them see): each writes its own lanes, process 0
        the rest, and a rerun may use another number of processes or devices.
      resume: with ``checkpoint_dir``: ``"auto"`` resumes this sweep's checkpoints (or starts)
        and refuses a directory holding a different sweep; ``"require"`` also refuses to
        start without a checkpoint; ``"overwrite"`` replaces a different sweep's checkpoints.
      checkpoint_every_seconds: least time between two saves inside a stage (a save costs
        a copy of the stage's lanes to the host; the end of every stage is always saved).
      devices: None for every device JAX sees (all hosts' devices under
        ``jax.distributed``), or a list of devices; a stage's lanes (values x seeds) are
        split over them (padded to a multiple of their count), the data is copied to each.
        The results equal a one-device run within float tolerance. Several processes must
        make the same call: one given other arguments or data fails before anything compiles
        (``ProcessMismatchError``), and one that dies stops the others with a
        ``ProcessLostError``.
      progress: show a progress bar on stderr.
      lanes: how a stage's lanes execute: ``"vmap"`` (one batched program), ``"map"``
        (``lax.map``: one lane after another in one program), ``"chunks:N"`` (``lax.map`` over
        groups of N vmapped lanes), ``"separate"`` (one compiled one-lane program called per
        lane) or ``"auto"``: the rule's strategy for the backend and model, measured against
        the other of ``vmap`` and ``separate`` on the first stage's first call where the
        sweep's training is long enough to repay the trial, the fastest kept and remembered
        beside the compilation cache (``result.environment["lanes"]`` records the strategy,
        how it was chosen and the measured times). Every number of a sweep is its strategy's
        (a measured sweep equals one forced to the winner); strategies agree to float rounding.
      device_memory: bytes a stage's call may use on each device; None: the limit the device
        reports (GPUs, TPUs), none on a CPU. A batched call whose compiled estimate exceeds
        it trains its lanes in smaller vmapped groups (``chunks:N``, the same numbers),
        recorded in ``result.environment["lanes"]["memory"]``; ``MemoryError`` where not even
        one lane at a time fits.
      compilation_cache: where compiled programs persist across processes: None (the
        ``JAXSWEEP_CACHE_DIR`` environment variable, else a cache configured for JAX, else
        ``~/.cache/jaxsweep/xla``), a folder, or ``False``/``"off"``. A rerun of the same
        sweep loads its programs instead of compiling them.

      init: start every lane from these values instead of a fresh initialisation (to find
        a fine-tuning rate): a Linen model's variables dict (``{"params": ..., "batch_stats":
        ...}``, every collection the model has), or an NNX model, its ``nnx.state`` or
        ``nnx.to_pure_dict``; shapes must match the model's, dtypes become the model's. NNX
        random streams stay each seed's own, so seeds still draw different dropout masks.
      diagnostics: measure the global and per-module gradient norms at every step and the
        per-module update ratios of every segment (``Evaluation.grad_norm``,
        ``module_grad_norm``, ``update_ratio``). ``False`` trains the same lanes without them
        (the norms read NaN, the per-module records are empty, and
        ``result.config["diagnostics"]`` says so): for tiny models, where the extra
        reductions are a noticeable share of a step.
      precision: keep adding stages (values inside the tied run, where the fitted curve needs
        them; one compiled program for all) until the 95% interval lies within
        ``best / (1 + precision)`` to ``best * (1 + precision)`` (on a linear scale: within
        ``precision * |best|`` of it), then stop with ``stop_reason == "precision"``. None:
        stop by resolution as usual. Every result reports the precision it reached
        (``result.precision``). The interval of such a sweep spans every fit window that
        closes and the last 3 stages' intervals, so that a chance narrow one does not stop it.
      max_lanes: the most lanes (values x seeds) the sweep may train; a stage that would pass
        it is not started (``stop_reason == "budget"``, the reached precision reported).
      target_steps: the length of the run the sweep is for, when it is longer (or shorter)
        than the sweep's own (``target_epochs``: the same in epochs). After the search, the
        values around its optimum are retrained, every seed, at 2x and 4x the sweep's steps
        (the target itself where it is within 4x), each horizon placed where the ones before
        predict the optimum and refined by the sweep's own rules, schedules stretched to each
        horizon as a full run of that length has them; ``result.horizon`` holds the optimum
        and interval at each, the power law ``optimum ~ steps**exponent`` through them, and
        the value and 95% interval at the target (extrapolated beyond 4x, with the fit's
        uncertainty). The horizon stages cost at most 3x the search's lane-steps; log scale
        only; custom schedule callables cannot stretch and are refused.
      keep: ``"best"`` gives back the trained weights of the best value: its final variables
        for every seed, in seed order, as ``result.best_variables`` (a Linen variables dict
        of numpy arrays, or an ``nnx.State`` for ``nnx.update(model, state)``), copied from
        the stage that found it; a sweep resumed after that stage (or a finished one rerun)
        retrains the best value alone for them. They stay out of ``result.json``:
        :func:`jaxsweep.save_variables` / :func:`jaxsweep.load_variables` keep them (the
        command's ``--keep-best`` writes ``best_variables/`` beside ``result.json``).
      callbacks: objects told as the sweep goes (:mod:`jaxsweep.callbacks`: the sweep's and
        each stage's start and end, every validation of every lane), on the host and in the
        writing process only unless one says ``all_processes = True``;
        ``jaxsweep.callbacks.TensorBoard(logdir)`` writes TensorBoard event files. A
        callback's exception stops the sweep and propagates.

    Returns:
      A :class:`SweepResult`; ``result.best_value`` is the value (a rate unless
      ``result.config["hyperparam"]`` names another) with the best final ``metric`` (mean
      over seeds); ``result.environment["device_count"]`` says how many devices ran it.

    Example::

      result = jaxsweep.run(lambda: MLP(), (x, y), epochs=3)
      print(result.best_value)
      decay = jaxsweep.run(
          lambda: MLP(), (x, y), optimizer=functools.partial(optax.adamw, learning_rate=1e-3),
          hyperparam="weight_decay", hyperparam_range=(1e-5, 1e-1),
      )
    """
    return drive(
        setup(
            model_fn=model_fn,
            data=data,
            loss=loss,
            optimizer=optimizer,
            lr_range=lr_range,
            hyperparam=hyperparam,
            hyperparam_range=hyperparam_range,
            scale=scale,
            points_per_stage=points_per_stage,
            stages=stages,
            top_k=top_k,
            epochs=epochs,
            steps=steps,
            eval_every=eval_every,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            schedule=schedule,
            metric=metric,
            mode=mode,
            seeds=seeds,
            seed=seed,
            min_improvement=min_improvement,
            validation_fraction=validation_fraction,
            expand=expand,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            checkpoint_every_seconds=checkpoint_every_seconds,
            devices=devices,
            progress=progress,
            lanes=lanes,
            device_memory=device_memory,
            compilation_cache=compilation_cache,
            init=init,
            diagnostics=diagnostics,
            precision=precision,
            max_lanes=max_lanes,
            target_steps=target_steps,
            target_epochs=target_epochs,
            keep=keep,
            callbacks=callbacks,
        )
    )
