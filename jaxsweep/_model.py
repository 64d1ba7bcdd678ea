"""Adapters from a Flax model factory (Linen or NNX) to a pair of pure functions.

Training works on plain nested dicts of arrays, whatever API defined the model:

  * ``init(key) -> (params, constants)``: trainable parameters and the model's other state
    (NNX RNG streams, Linen non-``params`` collections), both pytrees of arrays;
  * ``apply(params, constants, x) -> outputs``.

``constants`` are carried unchanged: dropout masks and batch statistics do not advance during
a sweep (a sweep compares learning rates with the model in one fixed mode).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import linen, nnx


class ModelFunctions(NamedTuple):
    """The pure view of a model."""

    init: Callable[[jax.Array], tuple[Any, Any]]  # key -> (params, constants)
    apply: Callable[[Any, Any, jax.Array], Any]  # (params, constants, x) -> outputs
    kind: str  # "linen" or "nnx"
    name: str  # the module's class name, for reports


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


def adapt(model_fn: Callable, x_example: np.ndarray) -> ModelFunctions:
    """Builds the pure (init, apply) pair for ``model_fn``; shapes only, nothing compiles.

    Args:
      model_fn: ``() -> flax.linen.Module`` or ``(rngs: nnx.Rngs) -> nnx.Module``.
      x_example: one batch of inputs, used to check that the model accepts them.

    Raises:
      TypeError: ``model_fn`` is not callable, or does not return a Flax module.
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable, got {type(model_fn).__name__}")
    if isinstance(model_fn, (linen.Module, nnx.Module)):
        raise TypeError(
            "model_fn: pass a factory that builds the module (e.g. `lambda: MLP()` or "
            "`lambda rngs: MLP(rngs=rngs)`), not a module instance"
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


def _adapt_linen(module: linen.Module, x_example: np.ndarray) -> ModelFunctions:
    def init(key):
        variables = dict(module.init(key, x_example))
        params = variables.pop("params", {})
        return params, variables

    def apply(params, constants, x):
        return module.apply({"params": params, **constants}, x)

    _abstract_params(init, type(module).__name__, x_example)
    return ModelFunctions(init, apply, "linen", type(module).__name__)


def _adapt_nnx(model_fn: Callable, x_example: np.ndarray) -> ModelFunctions:
    def build(key):
        module = _call_nnx(model_fn, nnx.Rngs(key))
        if not isinstance(module, nnx.Module):
            raise TypeError(
                f"model_fn: must return an nnx.Module when it takes rngs, "
                f"got {type(module).__name__}"
            )
        return module

    abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)

    def init(key):
        _, params, rest = nnx.split(build(key), nnx.Param, ...)
        return params.to_pure_dict(), rest.to_pure_dict()

    def apply(params, constants, x):
        _, param_template, rest_template = nnx.split(abstract, nnx.Param, ...)
        nnx.replace_by_pure_dict(param_template, params)
        nnx.replace_by_pure_dict(rest_template, constants)
        return nnx.merge(graphdef, param_template, rest_template)(x)

    _abstract_params(init, type(abstract).__name__, x_example)
    return ModelFunctions(init, apply, "nnx", type(abstract).__name__)


def _abstract_params(init, name: str, x_example: np.ndarray):
    """Initialises abstractly (shapes only) and reports a module that rejects the data."""
    try:
        params = jax.eval_shape(lambda: init(jax.random.key(0)))[0]  # key too: nothing compiles
    except Exception as error:
        if isinstance(error, TypeError) and str(error).startswith("model_fn:"):
            raise  # our own message about what model_fn returned
        raise ValueError(
            f"model_fn: the module could not be applied to x of shape {x_example.shape}: {error}"
        ) from error
    _check_has_params(params, name)


def _check_has_params(params, name: str) -> None:
    if not jax.tree_util.tree_leaves(params):
        raise TypeError(f"model_fn: the module {name} has no trainable parameters")


def module_names(params) -> tuple[str, ...]:
    """Top-level module names of a parameter tree, in a stable order."""
    if isinstance(params, dict):
        return tuple(str(k) for k in params)
    return ("params",)


def count_parameters(params) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
