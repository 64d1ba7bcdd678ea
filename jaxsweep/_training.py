"""The user's own training: ``jaxsweep.Training(init, train_step, eval_step)``.

Most Flax code is a ``TrainState`` (or an ``nnx.Optimizer``) and a ``train_step`` that does
more than a loss of ``(outputs, targets)``: an L2 penalty on the params, a sown auxiliary loss,
mixup, its own metrics. A :class:`Training` hands the engine those functions as written:

  * ``init(key, optimizer) -> state``: the state of one lane, built with the optimizer jaxsweep
    made (``optax.inject_hyperparams``): ``TrainState.create(..., tx=optimizer)``, or NNX
    objects such as ``(model, nnx.Optimizer(model, optimizer, wrt=nnx.Param))``;
  * ``train_step(state, batch, key) -> (state, metrics)``: one update; ``batch`` is
    ``(inputs, targets)`` with a leading batch axis, ``key`` a new key at every step;
    ``metrics["loss"]`` is the training loss, other scalar entries are recorded beside it;
  * ``eval_step(state, batch) -> metrics``: means over the batch, ``metrics["loss"]`` the
    validation loss; other entries (``"accuracy"``) can rank the values (``metric=``).

The engine carries each lane's state as a flat dict of arrays (one entry per leaf, typed
PRNG keys as their raw bits), so lanes stack, pad, shard and checkpoint like any other; the
swept value is set in every ``hyperparams[name]`` the state holds (an injected optimizer's
state, wherever it sits), and a state that holds none is refused. Everything is traced
abstractly before anything compiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ._model import ModelFunctions, Start


@dataclasses.dataclass(frozen=True)
class Training:
    """Your own training step, swept like a model: pass it where ``model_fn`` goes.

    >>> import optax
    >>> t = Training(init=lambda key, tx: {"w": jnp.zeros(3), "opt": tx.init(jnp.zeros(3))},
    ...              train_step=lambda s, batch, key: (s, {"loss": jnp.zeros(())}),
    ...              eval_step=lambda s, batch: {"loss": jnp.zeros(())})
    >>> t.name
    'Training'
    """

    init: Callable  # (key, optimizer) -> state
    train_step: Callable  # (state, (x, y), key) -> (state, {"loss": scalar, ...})
    eval_step: Callable  # (state, (x, y)) -> {"loss": scalar, ...}, means over the batch
    name: str = "Training"  # what the report calls the model

    def __post_init__(self):
        for field in ("init", "train_step", "eval_step"):
            given = getattr(self, field)
            if not callable(given):
                raise TypeError(
                    f"Training.{field}: expected a callable, got {type(given).__name__}"
                )
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Training.name: expected a non-empty string, got {self.name!r}")


class Layout(NamedTuple):
    """How one lane's state becomes the flat dict the engine carries, and back."""

    treedef: Any  # of the state's leaves (NNX: of the nnx.State after split)
    graphdef: Any  # NNX: the objects' graph; None for a pytree state
    key_impls: dict  # leaf index -> PRNG implementation of a typed key leaf
    swept: tuple[int, ...]  # leaves that are ``hyperparams[name]``
    modules: dict  # top-level module -> its parameter leaves (update ratios, the record)


class Own(NamedTuple):
    """What a Training brings that a Flax module does not (``ModelFunctions.own``)."""

    steps: Steps  # the user's functions over the flat state
    val_metric_names: tuple[str, ...]  # eval_step's entries besides "loss"
    abstract_params: Any  # {module: [parameter leaves]} as shapes (empty: none found)
    rebind: Callable  # optimizer -> ModelFunctions built with it (a longer horizon's schedule)


class Steps(NamedTuple):
    """The user's functions over the flat state (what :mod:`jaxsweep._train` calls)."""

    init: Callable  # (key, optimizer) -> flat state
    train: Callable  # (flat, x, y, key) -> (flat, loss, aux)
    evaluate: Callable  # (flat, x, y) -> (loss, aux), means over the batch
    set_value: Callable  # (flat, value) -> flat
    params: Callable  # flat -> {module: [parameter leaves]}


def _name(index: int) -> str:
    return f"leaf_{index:05d}"  # sorted like the leaves: a dict keeps their order


def _plain_leaf(leaf):
    """An array the engine can stack and save: typed keys as raw bits, numbers as arrays
    (``TrainState.create`` starts ``step`` at a Python 0)."""
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return jnp.asarray(leaf)


def _split(made):
    """NNX objects (a module, an nnx.Optimizer, a tuple of them) -> (graphdef, nnx.State);
    a pytree state -> (None, itself)."""
    if any(isinstance(node, nnx.Object) for node in _top_nodes(made)):
        return nnx.split(made)
    return None, made


def _top_nodes(made):
    if isinstance(made, (tuple, list)):
        return made
    if isinstance(made, dict):
        return made.values()
    return (made,)


def _key_text(key) -> Any:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return str(key)


def _swept_leaves(paths, hyperparam: str) -> tuple[int, ...]:
    """Leaves at ``...hyperparams[hyperparam]``: an injected optimizer's state, wherever."""
    found = []
    for index, path in enumerate(paths):
        names = [_key_text(k) for k in path]
        for k in range(len(names) - 1):
            if names[k] == "hyperparams" and names[k + 1] == hyperparam:
                found.append(index)
                break
    return tuple(found)


def _module_leaves(paths, state, graphdef) -> dict:
    """Top-level module -> its parameter leaves: a TrainState's ``params``, an NNX state's
    ``nnx.Param`` variables; ``{}`` where neither is found (ratios not measured)."""
    modules: dict[str, list[int]] = {}
    if graphdef is not None:
        params = {tuple(path) for path, v in nnx.to_flat_state(state) if isinstance(v, nnx.Param)}
        for index, path in enumerate(paths):
            names = tuple(_key_text(k) for k in path)
            if names[:-1] in params:  # the leaf is the variable's value
                words = [n for n in names[:-1] if isinstance(n, str)]
                modules.setdefault(words[0] if len(words) > 1 else "params", []).append(index)
        return {k: tuple(v) for k, v in modules.items()}
    for index, path in enumerate(paths):
        names = [_key_text(k) for k in path]
        if names and names[0] == "params":
            module = str(names[1]) if len(names) > 2 else "params"
            modules.setdefault(module, []).append(index)
    return {k: tuple(v) for k, v in modules.items()}


def _layout(training: Training, optimizer, hyperparam: str) -> tuple[Layout, dict]:
    """The state's layout, traced once (nothing compiles), and the flat state's shapes."""
    graphs, impls = [], {}

    def build(key):
        graphdef, state = _split(training.init(key, optimizer))
        graphs.append(graphdef)
        for i, leaf in enumerate(jax.tree.leaves(state)):
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
                impls[i] = jax.random.key_impl(leaf)  # typed keys travel as raw bits
        return state

    try:
        abstract = jax.eval_shape(build, jax.random.key(0))
    except Exception as error:
        raise ValueError(
            f"Training.init: could not build a state from a key and jaxsweep's optimizer "
            f"(init(key, optimizer)): {type(error).__name__}: {error}"
        ) from error
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    paths = [path for path, _ in with_paths]
    leaves = [leaf for _, leaf in with_paths]
    swept = _swept_leaves(paths, hyperparam)
    if not swept:
        raise ValueError(
            f"Training.init: the state it returns holds no optimizer state with "
            f"hyperparams[{hyperparam!r}], so every lane would train the same; build it with "
            "the optimizer jaxsweep passes as init's second argument, e.g. "
            "TrainState.create(apply_fn=..., params=..., tx=optimizer) or "
            "nnx.Optimizer(model, optimizer, wrt=nnx.Param)"
        )
    layout = Layout(treedef, graphs[0], impls, swept, _module_leaves(paths, abstract, graphs[0]))
    flat = {_name(i): jax.eval_shape(_plain_leaf, leaf) for i, leaf in enumerate(leaves)}
    return layout, flat


def _flat(layout: Layout, made) -> dict:
    graphdef, state = _split(made)
    leaves = jax.tree.leaves(state)
    return {_name(i): _plain_leaf(leaf) for i, leaf in enumerate(leaves)}


def _user_state(layout: Layout, flat: dict, merged: bool = True):
    """The flat dict back as the user's state (NNX objects merged where ``merged``)."""
    leaves = [flat[_name(i)] for i in range(len(flat))]
    for i, impl in layout.key_impls.items():
        leaves[i] = jax.random.wrap_key_data(leaves[i], impl=impl)
    state = jax.tree.unflatten(layout.treedef, leaves)
    if layout.graphdef is None or not merged:
        return state
    return nnx.merge(layout.graphdef, state)


def _metrics(metrics, who: str) -> tuple[Any, dict]:
    if not isinstance(metrics, dict) or "loss" not in metrics:
        raise TypeError(
            f"Training.{who}: must return its metrics as a dict with a 'loss' entry, got "
            f"{type(metrics).__name__}"
        )
    loss = jnp.asarray(metrics["loss"], jnp.float32)
    aux = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items() if k != "loss"}
    return loss, aux


def steps(training: Training, layout: Layout) -> Steps:
    def init(key, optimizer):
        return _flat(layout, training.init(key, optimizer))

    def train(flat, x, y, key):
        out = training.train_step(_user_state(layout, flat), (x, y), key)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(
                f"Training.train_step: must return (state, metrics), got {type(out).__name__}"
            )
        state, metrics = out
        loss, aux = _metrics(metrics, "train_step")
        return _flat(layout, state), loss, aux

    def evaluate(flat, x, y):
        return _metrics(training.eval_step(_user_state(layout, flat), (x, y)), "eval_step")

    def set_value(flat, value):
        flat = dict(flat)
        for i in layout.swept:
            current = flat[_name(i)]
            flat[_name(i)] = jnp.broadcast_to(jnp.asarray(value, current.dtype), current.shape)
        return flat

    def params(flat):
        return {m: [flat[_name(i)] for i in leaves] for m, leaves in layout.modules.items()}

    return Steps(init, train, evaluate, set_value, params)


def _shapes_match(before: dict, after: dict) -> bool:
    if before.keys() != after.keys():
        return False
    return all(
        (before[k].shape, before[k].dtype) == (after[k].shape, after[k].dtype) for k in before
    )


def adapt(training: Training, x_example, y_example, optimizer, hyperparam: str) -> ModelFunctions:
    """A Training as the engine's model functions (``own_steps`` set), checked abstractly.

    Raises:
      ValueError: ``init`` fails or its state holds no ``hyperparams[hyperparam]``; a step
        fails on a batch of the data or changes the state's structure.
      TypeError: a step returns something other than the documented shapes.
    """
    layout, flat = _layout(training, optimizer, hyperparam)
    own = steps(training, layout)
    key = jax.random.key(0)
    try:
        after, loss, aux = jax.eval_shape(lambda f: own.train(f, x_example, y_example, key), flat)
        val_loss, val_aux = jax.eval_shape(lambda f: own.evaluate(f, x_example, y_example), flat)
    except TypeError as error:
        if str(error).startswith("Training."):
            raise
        raise ValueError(
            f"Training: a step could not run on a batch of the data: {error}"
        ) from error
    except Exception as error:
        raise ValueError(
            f"Training: a step could not run on a batch of the data: {error}"
        ) from error
    if not _shapes_match(flat, after):
        raise ValueError(
            "Training.train_step: the state it returns differs in structure, shapes or dtypes "
            "from the one it was given; return the updated state of the same kind"
        )
    for who, terms in (("train_step", (loss, aux)), ("eval_step", (val_loss, val_aux))):
        for name, value in {"loss": terms[0], **terms[1]}.items():
            if value.shape != ():
                raise ValueError(
                    f"Training.{who}: metric {name!r} must be a scalar, got shape {value.shape}"
                )

    def start(given) -> Start:
        raise ValueError(
            "init: a Training builds every lane's start itself; load pretrained weights "
            "inside Training.init instead"
        )

    def variables(params, _state):
        """One lane's state as the user holds it (NNX: the nnx.State of its objects)."""
        return _user_state(layout, params, merged=False)

    own = Own(
        steps=own,
        val_metric_names=tuple(val_aux),
        abstract_params=jax.eval_shape(own.params, flat),
        rebind=lambda tx: adapt(training, x_example, y_example, tx, hyperparam),
    )
    return ModelFunctions(
        init=lambda key: (own.steps.init(key, optimizer), {}),
        train_apply=None,
        eval_apply=None,
        start=start,
        kind="training",
        name=training.name,
        mode_flag=None,
        rng_streams=(),
        state_names=(),
        axis_names=(),
        variables=variables,
        own=own,
    )
