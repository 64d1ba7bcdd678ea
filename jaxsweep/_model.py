"""Adapters from a Flax model factory (Linen or NNX) to pure functions over plain pytrees.

Training works on nested dicts of arrays, whatever API defined the model:

  * ``init(key) -> (params, state)``: trainable parameters and the model's other state (Linen
    collections such as ``batch_stats``; NNX batch statistics and RNG streams);
  * ``train_apply(params, state, x, key) -> (outputs, state)``: training mode (``train=True``,
    NNX ``train()``): batch statistics and other state advance, and a Linen module draws its
    random streams (``dropout``, ...) from ``key``, a new key at every step;
  * ``eval_apply(params, state, x) -> outputs``: evaluation mode (``train=False``, NNX
    ``eval()``): reads the state and changes nothing.

A collective over a named batch axis, as in Flax's ImageNet ResNet
(``nn.BatchNorm(..., axis_name="batch")``, written for data-parallel ``pmap``), reduces over the
replicas that share one batch; a lane trains on one batch of its own, so every axis name the
module's collectives use is found by tracing (JAX names an unbound one in its error) and bound
around each lane's call, init, training and evaluation alike (:func:`bind_axes`): a mean over
one replica, the same numbers as the network without the axis name.

An NNX ``__call__`` that takes ``rngs`` (Flax's MNIST CNN: ``def __call__(self, x, rngs)``, a
positional argument or a keyword with a default) gets ``nnx.Rngs(key)`` while training, ``key``
the step's key (a new one at every step, as a Linen stream's), and ``rngs=None`` at validation,
where the module is in ``eval()`` mode (dropout off), as Flax's examples call it.

Everything a model needs that the sweep cannot provide (an argument it does not know, a random
stream at validation, a collection whose shape changes) is found here, abstractly, before
anything compiles.
"""

from __future__ import annotations

import inspect
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import errors as flax_errors
from flax import linen, nnx
from flax.core import unfreeze

# Mode arguments of ``__call__`` and the value each takes while training.
MODE_FLAGS = {"train": True, "training": True, "is_training": True, "deterministic": False}
# Collections the sweep never carries: ``sow`` appends to them at every call.
_DROPPED_COLLECTIONS = ("intermediates",)


class Start(NamedTuple):
    """Given (pretrained) values every lane starts from, checked against the model."""

    params: Any  # the whole parameter tree
    state: Any  # the entries of the model state to replace (NNX RNG streams stay per seed)


class ModelFunctions(NamedTuple):
    """The pure view of a model."""

    init: Callable[[jax.Array], tuple[Any, Any]]  # key -> (params, state)
    train_apply: Callable  # (params, state, x, key) -> (outputs, state)
    eval_apply: Callable  # (params, state, x) -> outputs
    start: Callable[[Any], Start]  # given variables / NNX state or module -> Start
    kind: str  # "linen" or "nnx"
    name: str  # the module's class name, for reports
    mode_flag: str | None  # the __call__ argument that switches train / eval, if any
    rng_streams: tuple[str, ...]  # Linen streams drawn while training (NNX: in the state)
    state_names: tuple[str, ...]  # Linen collections / NNX variable types carried per lane
    axis_names: tuple[str, ...] = ()  # named batch axes bound to each lane's own batch
    # (params, state) of one lane -> what the user holds: a Linen variables dict, an nnx.State
    variables: Callable[[Any, Any], Any] | None = None
    own: Any = None  # a jaxsweep.Training's own steps (``_training.Own``); None for a module
    abstract: Abstract | None = None  # shapes traced while adapting, kept for the checks after


class Abstract(NamedTuple):
    """One lane's shapes, traced once while adapting: what the later checks read."""

    params: Any
    state: Any
    outputs: Any  # evaluation mode, on the example batch adapt was given


# ----------------------------------------------------------------------------- factories


def _wants_rngs(model_fn: Callable) -> bool:
    """NNX factories take ``rngs``; Linen factories take nothing."""
    if inspect.isclass(model_fn):  # a module class passed as its own factory
        return issubclass(model_fn, nnx.Module)
    try:
        signature = inspect.signature(model_fn)
    except (TypeError, ValueError):  # some builtins and C callables
        return False
    if "rngs" in signature.parameters:
        return True
    required = [
        p
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


def _call_nnx(model_fn: Callable, rngs: nnx.Rngs):
    target = model_fn.__init__ if inspect.isclass(model_fn) else model_fn
    if "rngs" in inspect.signature(target).parameters:
        return model_fn(rngs=rngs)
    return model_fn(rngs)


def adapt(model_fn: Callable, x_example) -> ModelFunctions:
    """Builds the pure functions of ``model_fn`` and checks them abstractly (nothing compiles).

    Args:
      model_fn: ``() -> flax.linen.Module`` or ``(rngs: nnx.Rngs) -> nnx.Module``.
      x_example: a small batch of inputs (an array, or a tuple or dict of arrays).

    Raises:
      TypeError: ``model_fn`` is not callable, does not return a Flax module, or its
        ``__call__`` needs an argument the sweep cannot provide.
      ValueError: the module cannot be applied to the data in training or evaluation mode.
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable, got {type(model_fn).__name__}")
    if isinstance(model_fn, (linen.Module, nnx.Module)):
        raise TypeError(
            "model_fn: pass a factory that builds the module (e.g. `lambda: MLP()` or "
            "`lambda rngs: MLP(rngs=rngs)`), not a module instance; to start from trained "
            "weights, pass them as `init=` as well"
        )
    if _wants_rngs(model_fn):
        return _adapt_nnx(model_fn, x_example)
    module = model_fn()
    if isinstance(module, nnx.Module):
        raise TypeError("model_fn: an NNX module factory must take `rngs` (an nnx.Rngs)")
    if not isinstance(module, linen.Module):
        raise TypeError(
            "model_fn: must return a flax.linen.Module or an nnx.Module, "
            f"got {type(module).__name__}"
        )
    return _adapt_linen(module, x_example)


# ----------------------------------------------------------------------------- __call__


def _call_arguments(call: Callable, name: str, extra: tuple[str, ...] = ()) -> str | None:
    """The mode flag ``__call__`` takes (or None); rejects arguments the sweep cannot give.

    The sweep calls ``module(x, <flag>=...)``: ``x`` is the data's inputs in their structure
    (an array, tuple or dict), so every other argument needs a default.
    """
    try:
        parameters = list(inspect.signature(call).parameters.values())
    except (TypeError, ValueError):
        return None
    flags = [p.name for p in parameters if p.name in MODE_FLAGS]
    if len(flags) > 1:
        raise TypeError(
            f"model_fn: {name}.__call__ takes {' and '.join(flags)}; the sweep sets the mode "
            "through one of them: keep one (train=True while training)"
        )
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise TypeError(f"model_fn: {name}.__call__ takes no input argument")
    first = positional[0].name if positional else None
    missing = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in (first, *flags, *extra)
    ]
    if missing:
        raise TypeError(
            f"model_fn: {name}.__call__ needs {', '.join(missing)}, which the sweep cannot "
            "provide: it calls model(x, train=...) with x the data's inputs. Give "
            f"{'them' if len(missing) > 1 else 'it'} a default, or pass x as a tuple or dict "
            "of arrays and unpack it inside __call__"
        )
    return flags[0] if flags else None


def _mode(flag: str | None, training: bool) -> dict[str, bool]:
    if flag is None:
        return {}
    return {flag: training if MODE_FLAGS[flag] else not training}


def _stream_key(key: jax.Array, stream: str) -> jax.Array:
    """One stream's key of a step: independent of which other streams the model draws."""
    return jax.random.fold_in(key, zlib.crc32(stream.encode()) & 0x7FFFFFFF)


def _shape_of(x) -> str:
    shapes = jax.tree.map(lambda a: tuple(np.shape(a)), x)
    return str(shapes)


# ----------------------------------------------------------------------------- Linen


def _adapt_linen(module: linen.Module, x_example) -> ModelFunctions:
    name = type(module).__name__
    flag = _call_arguments(module.__call__, name)

    def unbound_variables_of(key):
        return dict(module.init(key, x_example, **_mode(flag, False)))

    axes, variables = _axes_needed(
        lambda axes: jax.eval_shape(
            lambda: bind_axes(unbound_variables_of, axes)(jax.random.key(0))
        )
    )
    if variables is None:  # traced again for the error it raises, in words
        variables = _abstractly(
            bind_axes(unbound_variables_of, axes), name, x_example, "initialised"
        )
    collections = tuple(sorted(c for c in variables if c not in ("params", *_DROPPED_COLLECTIONS)))

    def unbound_init(key):
        fresh = unbound_variables_of(key)
        return fresh.get("params", {}), {c: fresh[c] for c in collections}

    def apply_training(streams, axes):
        def train_apply(params, state, x, key):
            rngs = {s: _stream_key(key, s) for s in streams}
            bound = {"params": params, **state}
            if not collections:
                return module.apply(bound, x, rngs=rngs, **_mode(flag, True)), state
            outputs, updated = module.apply(
                bound, x, rngs=rngs, mutable=list(collections), **_mode(flag, True)
            )
            return outputs, {c: updated[c] for c in collections}

        return bind_axes(train_apply, axes)

    def unbound_eval_apply(params, state, x):
        return module.apply({"params": params, **state}, x, **_mode(flag, False))

    params, state = variables.get("params", {}), {c: variables[c] for c in collections}
    _check_has_params(params, name)
    streams, axes, trained = _linen_streams(
        apply_training, params, state, x_example, name, flag, axes
    )
    eval_axes, outputs = _axes_needed(
        lambda axes: jax.eval_shape(bind_axes(unbound_eval_apply, axes), params, state, x_example),
        axes,
    )
    if eval_axes != axes:  # validation binds an axis training did not: train with it too
        axes, trained = eval_axes, None
    init = bind_axes(unbound_init, axes)
    train_apply = apply_training(streams, axes)
    eval_apply = bind_axes(unbound_eval_apply, axes)
    if trained is None:
        trained = _training_shapes(train_apply, params, state, x_example)
    _check_state_kept(trained[1], state, name, "collection")
    if outputs is None:  # the trace failed: say why
        _check_evaluation(eval_apply, params, state, x_example, name, flag, collections, axes)

    def start(given) -> Start:
        return _linen_start(given, params, state)

    def as_variables(params, state) -> dict:
        return {"params": params, **state}

    return ModelFunctions(
        init,
        train_apply,
        eval_apply,
        start,
        "linen",
        name,
        flag,
        streams,
        collections,
        axes,
        as_variables,
        abstract=Abstract(params, state, outputs),
    )


def _linen_streams(apply_training, params, state, x, name: str, flag, axes: tuple[str, ...]):
    """The random streams the module draws while training (``dropout``, ...) and the axis
    names its collectives reduce over, both found by asking, and the training call's shapes.

    Flax names the first missing stream in its error, JAX the first unbound axis name; each is
    added until the call succeeds.
    """
    streams: list[str] = []
    axes_now = list(axes)
    while True:
        try:
            shapes = _training_shapes(
                apply_training(tuple(streams), tuple(axes_now)), params, state, x
            )
            return tuple(streams), tuple(axes_now), shapes
        except flax_errors.InvalidRngError as error:
            match = re.search(r'needs PRNG for "([^"]+)"', str(error))
            if match is None or match.group(1) in streams:
                raise _training_error(error, name, x, flag, tuple(axes_now)) from error
            streams.append(match.group(1))
        except Exception as error:
            axis = _unbound_axis(error)
            if axis is None or axis in axes_now:
                raise _training_error(error, name, x, flag, tuple(axes_now)) from error
            axes_now.append(axis)


def _training_error(error: Exception, name: str, x, flag, axes: tuple[str, ...] = ()) -> ValueError:
    mode = f" ({flag}={MODE_FLAGS[flag]})" if flag else ""
    hint = ""
    if isinstance(
        error, (flax_errors.ScopeCollectionNotFound, flax_errors.ModifyScopeVariableError)
    ):
        hint = (
            "; the sweep carries the collections that model.init creates: create every "
            "variable at init (with the same shapes)"
        )
    hint += _axes_hint(error, axes)
    return ValueError(
        f"model_fn: {name} could not be applied in training mode{mode} to x of shape "
        f"{_shape_of(x)}: {_first_line(error)}{hint}"
    )


def _linen_start(given, params, state) -> Start:
    if isinstance(given, (linen.Module, nnx.Module)):
        raise TypeError(
            "init: a Linen model starts from its variables dict ({'params': ..., "
            "'batch_stats': ...}, as model.init or a checkpoint returns it), not a module"
        )
    if not isinstance(given, Mapping):
        raise TypeError(f"init: expected the model's variables dict, got {type(given).__name__}")
    given = {k: v for k, v in unfreeze(given).items() if k not in _DROPPED_COLLECTIONS}
    if "params" not in given:
        raise ValueError(
            "init: expected the variables dict {'params': ..., ...} of the model (as model.init "
            f"returns it), got the keys {sorted(given)}; wrap parameters as {{'params': params}}"
        )
    expected = {"params", *state}
    if set(given) != expected:
        missing, extra = sorted(expected - set(given)), sorted(set(given) - expected)
        raise ValueError(
            f"init: the model's variables hold the collections {sorted(expected)}; the given "
            f"ones lack {missing} and add {extra}"
            + ("; pass every collection (e.g. batch_stats) the model has" if missing else "")
        )
    return Start(
        _matched(given["params"], params, "params"),
        {c: _matched(given[c], state[c], c) for c in state},
    )


# ----------------------------------------------------------------------------- NNX


def _adapt_nnx(model_fn: Callable, x_example) -> ModelFunctions:
    def build(key):
        module = _call_nnx(model_fn, nnx.Rngs(key))
        if not isinstance(module, nnx.Module):
            raise TypeError(
                f"model_fn: must return an nnx.Module when it takes rngs, "
                f"got {type(module).__name__}"
            )
        return module

    try:
        abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    except TypeError as error:
        if str(error).startswith("model_fn:"):
            raise
        raise ValueError(f"model_fn: the NNX module could not be built: {error}") from error
    except Exception as error:
        raise ValueError(f"model_fn: the NNX module could not be built: {error}") from error
    name = type(abstract).__name__
    flag = _call_arguments(abstract.__call__, name, extra=("rngs",))
    rngs_passing = _rngs_passing(abstract.__call__)
    abstract.train()
    train_graph, _, _ = nnx.split(abstract, nnx.Param, ...)
    abstract.eval()
    eval_graph, _, _ = nnx.split(abstract, nnx.Param, ...)
    _, rng_template, _ = nnx.split(abstract, nnx.RngState, ...)
    rng_paths = {path for path, _ in nnx.to_flat_state(rng_template)}
    key_impls: dict[tuple, str] = {}

    def plain(state):  # typed keys travel as raw bits (checkpoints, padding, placement)
        flat = dict(nnx.to_flat_state(state))
        for path, variable in flat.items():
            value = variable.get_value()
            if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                key_impls[path] = jax.random.key_impl(value)
        return jax.tree.map(_key_bits, nnx.to_pure_dict(state))

    def typed(pure):
        flat = nnx.traversals.flatten_mapping(pure)
        for path, impl in key_impls.items():
            flat[path] = jax.random.wrap_key_data(flat[path], impl=impl)
        return nnx.traversals.unflatten_mapping(flat)

    def parts(module):
        _, params, _intermediates, state = nnx.split(module, nnx.Param, nnx.Intermediate, ...)
        return nnx.to_pure_dict(params), plain(state)

    def merge(graph, params, state):
        _, param_template, state_template = nnx.split(abstract, nnx.Param, ...)
        nnx.replace_by_pure_dict(param_template, params)
        nnx.replace_by_pure_dict(state_template, typed(state))
        return nnx.merge(graph, param_template, state_template)

    def init(key):
        return parts(build(key))

    def call(model, x, training: bool, rngs):
        """``model(x)`` in the mode the sweep sets, with ``rngs`` where ``__call__`` takes them."""
        mode = _mode(flag, training)
        if rngs_passing is None:
            return model(x, **mode)
        if rngs_passing == "positional":  # def __call__(self, x, rngs, /)
            return model(x, rngs, **mode)
        return model(x, rngs=rngs, **mode)

    def unbound_train_apply(params, state, x, key):
        model = merge(train_graph, params, state)
        outputs = call(model, x, True, nnx.Rngs(key))
        return outputs, parts(model)[1]

    def unbound_eval_apply(params, state, x):
        # eval() has switched dropout off; Flax's examples call such a model with rngs=None
        return call(merge(eval_graph, params, state), x, False, None)

    params, state = _abstractly(init, name, x_example, "initialised")
    _check_has_params(params, name)
    axes, trained = _axes_needed(
        lambda axes: _training_shapes(
            bind_axes(unbound_train_apply, axes), params, state, x_example
        )
    )
    eval_axes, outputs = _axes_needed(
        lambda axes: jax.eval_shape(bind_axes(unbound_eval_apply, axes), params, state, x_example),
        axes,
    )
    if eval_axes != axes:  # validation binds an axis training did not: train with it too
        axes, trained = eval_axes, None
    train_apply = bind_axes(unbound_train_apply, axes)
    eval_apply = bind_axes(unbound_eval_apply, axes)
    if trained is None:
        try:
            trained = _training_shapes(train_apply, params, state, x_example)
        except Exception as error:
            raise _training_error(error, name, x_example, flag, axes) from error
    _check_state_kept(trained[1], state, name, "variable")
    if outputs is None:  # the trace failed: say why
        _check_evaluation(
            eval_apply, params, state, x_example, name, flag, (), axes, rngs_passing is not None
        )
    carried = nnx.state(abstract, nnx.Not(nnx.Param))
    state_names = tuple(sorted({type(v).__name__ for _, v in nnx.to_flat_state(carried)}))

    def start(given) -> Start:
        return _nnx_start(given, params, state, rng_paths)

    def as_variables(params, state) -> nnx.State:  # the whole model's state, keys typed
        return nnx.state(merge(eval_graph, params, state))

    return ModelFunctions(
        init,
        train_apply,
        eval_apply,
        start,
        "nnx",
        name,
        flag,
        (),
        state_names,
        axes,
        as_variables,
        abstract=Abstract(params, state, outputs),
    )


def _rngs_passing(call: Callable) -> str | None:
    """How an NNX ``__call__`` takes call-time ``rngs``: None (it does not), ``"keyword"``
    (``rngs`` or ``rngs=None``, as Flax's MNIST CNN), or ``"positional"`` (positional-only)."""
    try:
        parameter = inspect.signature(call).parameters.get("rngs")
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        return None
    return "positional" if parameter.kind == parameter.POSITIONAL_ONLY else "keyword"


def _key_bits(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def _nnx_start(given, params, state, rng_paths) -> Start:
    if isinstance(given, nnx.Module):
        given = nnx.state(given)
    if isinstance(given, nnx.State):
        given = nnx.to_pure_dict(given)
    if not isinstance(given, Mapping):
        raise TypeError(
            "init: an NNX model starts from a module, its nnx.state(...) or "
            f"nnx.to_pure_dict(...) of it, got {type(given).__name__}"
        )
    flat = {_int_path(p): v for p, v in nnx.traversals.flatten_mapping(dict(given)).items()}
    param_paths = set(nnx.traversals.flatten_mapping(params))
    state_flat = nnx.traversals.flatten_mapping(state)
    # the RNG streams stay each seed's own: seeds keep drawing different dropout masks
    kept = {p for p in state_flat if p not in rng_paths}
    missing = sorted(map(_path_text, (param_paths | kept) - set(flat)))
    extra = sorted(map(_path_text, set(flat) - param_paths - set(state_flat)))
    if missing or extra:
        raise ValueError(
            "init: the given state does not match the model: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing[:4])}" if missing else "",
                    f"unexpected {', '.join(extra[:4])}" if extra else "",
                )
                if part
            )
        )
    params_given = nnx.traversals.unflatten_mapping({p: flat[p] for p in param_paths})
    state_given = nnx.traversals.unflatten_mapping({p: flat[p] for p in kept})
    state_template = nnx.traversals.unflatten_mapping({p: state_flat[p] for p in kept})
    return Start(
        _matched(params_given, params, "params"), _matched(state_given, state_template, "state")
    )


def _int_path(path: tuple) -> tuple:
    return tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path)


def _path_text(path: tuple) -> str:
    return "/".join(str(k) for k in path)


# ----------------------------------------------------------------------------- named axes

# JAX names the first unbound axis of a collective: "Found an unbound axis name: batch. To fix
# this, please call psum under `jax.shard_map`." or "unbound axis name: batch".
_UNBOUND_AXIS = re.compile(r"unbound axis name: (.+?)(?:\. To fix\b|\s*$)")
_MAX_AXES = 8  # a guard against a trace that keeps naming new axes


def _unbound_axis(error: BaseException) -> str | None:
    """The axis name an unbound-axis ``NameError`` names, or None for any other error."""
    if not isinstance(error, NameError):
        return None
    match = _UNBOUND_AXIS.search(_first_line(error))
    return match.group(1) if match else None


def bind_axes(fn: Callable, axes: tuple[str, ...]) -> Callable:
    """``fn`` with each named axis in ``axes`` bound to a lane's own batch.

    Flax's data-parallel examples average batch statistics over the replicas of one global
    batch (``nn.BatchNorm(axis_name="batch")`` under ``pmap``). A lane is one whole training
    run on its own batch: each axis becomes a ``jax.vmap`` of size one over unbatched
    arguments, so a collective over it reduces over a single replica (``pmean`` of one value:
    itself) and the lane trains exactly as the network without the axis name. Works inside
    every lane strategy (a vmap over lanes, ``lax.map``, one lane per call) and shadows an
    outer axis of the same name.

    >>> mean = lambda x: jax.lax.pmean(x.mean(), "batch")
    >>> float(bind_axes(mean, ("batch",))(np.arange(4.0)))
    1.5
    """
    if not axes:
        return fn

    def bound(*args):
        inner = fn
        for axis in axes:
            inner = jax.vmap(inner, in_axes=None, axis_size=1, axis_name=axis)
        outputs = inner(*args)
        return jax.tree.map(lambda leaf: leaf[(0,) * len(axes)], outputs)

    return bound


def _axes_needed(trace: Callable[[tuple[str, ...]], Any], axes: tuple[str, ...] = ()):
    """``axes`` and every further axis name ``trace(axes)`` finds unbound, found by asking,
    with what the successful trace returned (None where it failed for another reason).

    JAX names the first unbound axis in its error; each is bound (:func:`bind_axes`) until the
    trace succeeds or fails for another reason, which the checks that follow report. The
    shapes it returns are kept: each of the model's functions is traced once where it works.
    """
    axes = tuple(axes)
    while len(axes) <= _MAX_AXES:
        try:
            return axes, trace(axes)
        except Exception as error:
            axis = _unbound_axis(error)
            if axis is None or axis in axes:
                return axes, None
            axes = (*axes, axis)
    return axes, None


def _axes_hint(error: BaseException, axes: tuple[str, ...]) -> str:
    """What to change when a collective over a named axis cannot run inside a lane."""
    axis = _unbound_axis(error)
    if axis is not None:
        return (
            f"; the sweep binds the axis names of a module's collectives to each lane's own "
            f"batch, but could not bind {axis!r}: name the axis with a string "
            "(nn.BatchNorm(axis_name='batch')), or drop the collective"
        )
    if axes:
        names = ", ".join(repr(a) for a in axes)
        return (
            f"; the axis name{'s' if len(axes) > 1 else ''} {names} "
            f"{'are' if len(axes) > 1 else 'is'} bound to each lane's own batch (one replica): "
            "a collective that needs several replicas (axis_index_groups, ppermute between "
            "devices) cannot run in a lane: drop it, or pass axis_name=None"
        )
    return ""


# ----------------------------------------------------------------------------- checks


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _abstractly(init, name: str, x_example, what: str):
    """``init`` traced for shapes only; an error says that the module rejects the data."""
    try:
        return jax.eval_shape(lambda: init(jax.random.key(0)))  # key too: nothing compiles
    except Exception as error:
        if isinstance(error, TypeError) and str(error).startswith("model_fn:"):
            raise  # our own message about what model_fn returned
        raise ValueError(
            f"model_fn: the module could not be applied to x of shape {_shape_of(x_example)}: "
            f"{error}"
        ) from error


def _training_shapes(train_apply, params, state, x):
    """A training call traced for shapes; its key is made inside the trace (nothing compiles)."""
    return jax.eval_shape(lambda p, s: train_apply(p, s, x, jax.random.key(0)), params, state)


def _check_has_params(params, name: str) -> None:
    if not jax.tree_util.tree_leaves(params):
        raise TypeError(f"model_fn: the module {name} has no trainable parameters")


def _check_state_kept(after, state, name: str, what: str) -> None:
    """A training call must return the state in the shapes it took: the lanes carry it."""
    before_flat = dict(jax.tree_util.tree_flatten_with_path(state)[0])
    after_flat = dict(jax.tree_util.tree_flatten_with_path(after)[0])
    for path in before_flat.keys() | after_flat.keys():
        old, new = before_flat.get(path), after_flat.get(path)
        if old is None or new is None or (old.shape, old.dtype) != (new.shape, new.dtype):
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"model_fn: {name} changes the {what} {where} from "
                f"{_spec(old)} to {_spec(new)} in a training call; the sweep carries every "
                f"{what} from step to step, so its shapes and dtypes must stay the same "
                "(create it at init in its final shape)"
            )


def _spec(leaf) -> str:
    return "nothing" if leaf is None else f"{leaf.dtype}{tuple(leaf.shape)}"


def _check_evaluation(
    eval_apply,
    params,
    state,
    x,
    name: str,
    flag,
    collections,
    axes: tuple[str, ...] = (),
    call_takes_rngs: bool = False,
) -> None:
    """Validation reads the state and draws no random numbers: say what to change if not."""
    try:
        jax.eval_shape(eval_apply, params, state, x)
    except flax_errors.InvalidRngError as error:
        raise ValueError(
            f"model_fn: {name} draws random numbers at validation ({_first_line(error)}); "
            + _flag_hint(flag, "deterministic=not train")
        ) from error
    except (flax_errors.ModifyScopeVariableError, flax_errors.ScopeCollectionNotFound) as error:
        raise ValueError(
            f"model_fn: {name} updates its state at validation ({_first_line(error)}); "
            + _flag_hint(flag, "use_running_average=not train")
        ) from error
    except Exception as error:
        rngs_hint = (
            "; at validation the sweep calls the module in eval() mode with rngs=None (as "
            "Flax's examples do): it must draw no random numbers then"
            if call_takes_rngs
            else ""
        )
        raise ValueError(
            f"model_fn: {name} could not be applied in evaluation mode to x of shape "
            f"{_shape_of(x)}: {_first_line(error)}{rngs_hint}{_axes_hint(error, axes)}"
        ) from error


def _flag_hint(flag, layer_argument: str) -> str:
    if flag is None:
        return (
            "give __call__ a `train: bool` argument (the sweep passes train=True while "
            f"training, train=False at validation) and pass {layer_argument} to those layers"
        )
    return f"at validation the sweep passes {_mode(flag, False)}: pass {layer_argument} on"


def _matched(given, template, what: str):
    """``given`` as host arrays in the template's structure, shapes and dtypes (or an error)."""
    given_flat = dict(jax.tree_util.tree_flatten_with_path(given)[0])
    template_flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(given_flat) != len(template_flat) or any(p not in given_flat for p, _ in template_flat):
        missing = [jax.tree_util.keystr(p) for p, _ in template_flat if p not in given_flat]
        extra = [jax.tree_util.keystr(p) for p in given_flat if p not in dict(template_flat)]
        raise ValueError(
            f"init: the given {what} do not match the model's: "
            + (f"missing {', '.join(missing[:4])} " if missing else "")
            + (f"unexpected {', '.join(extra[:4])}" if extra else "")
        )
    leaves = []
    for path, like in template_flat:
        value = np.asarray(jax.device_get(given_flat[path]))
        if value.shape != tuple(like.shape):
            raise ValueError(
                f"init: {what}{jax.tree_util.keystr(path)} has shape {value.shape}, the "
                f"model's has {tuple(like.shape)}"
            )
        leaves.append(value.astype(like.dtype, copy=False))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def output_shape(model: ModelFunctions, x_example):
    """The abstract outputs of the model in evaluation mode on ``x_example`` (the example
    it was adapted with: traced then)."""
    if model.abstract is not None:
        return model.abstract.outputs
    params, state = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    return jax.eval_shape(model.eval_apply, params, state, x_example)


def module_names(params) -> tuple[str, ...]:
    """Top-level module names of a parameter tree, in a stable order."""
    if isinstance(params, dict):
        return tuple(str(k) for k in params)
    return ("params",)


def count_parameters(params) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
