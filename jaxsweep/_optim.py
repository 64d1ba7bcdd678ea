"""The optimizer: an optax factory wrapped so that the swept hyperparameter is array data.

``optax.inject_hyperparams`` moves the factory's numeric arguments into the optimizer state,
so each lane holds its own value and one compiled program serves every value of a sweep.
"""

from __future__ import annotations

import functools
import inspect
from numbers import Real

import jax.numpy as jnp
import optax

from . import _schedules


def describe_optimizer(optimizer) -> str:
    """A readable name: ``adam``, or ``sgd(momentum=0.9)`` for a partial.

    >>> describe_optimizer(functools.partial(optax.sgd, momentum=0.9))
    'sgd(momentum=0.9)'
    """
    if isinstance(optimizer, functools.partial):
        arguments = [repr(a) for a in optimizer.args]
        arguments += [f"{k}={v!r}" for k, v in sorted(optimizer.keywords.items())]
        return f"{describe_optimizer(optimizer.func)}({', '.join(arguments)})"
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def resolve_optimizer(optimizer, hyperparam: str, schedule=None) -> optax.GradientTransformation:
    """Wraps an optax factory so that ``hyperparam`` is array data in the optimizer state.

    With ``schedule`` (a unit schedule, peak 1), every update is also scaled by
    ``schedule(step)``: the rate trained at step ``t`` is the lane's rate times ``schedule(t)``.

    Raises:
      TypeError: ``optimizer`` is a built transformation or not callable, does not accept
        ``hyperparam``, needs other arguments, or holds a non-numeric ``hyperparam``.
    """
    if isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer: pass the factory (e.g. optax.adam or functools.partial(optax.sgd, "
            "momentum=0.9)), not a built transformation: the sweep sets the learning rate"
        )
    if not callable(optimizer):
        raise TypeError(f"optimizer: expected an optax factory, got {type(optimizer).__name__}")
    try:
        signature = inspect.signature(optimizer)
    except ValueError:  # no signature available; the abstract init of the setup will tell
        signature = None
    if signature is not None:
        _check_signature(signature, describe_optimizer(optimizer), hyperparam)
    if schedule is not None:
        optimizer = _schedules.with_schedule(optimizer, schedule)
    # float32 hyperparameters whatever the parameters' dtype: in bfloat16, adam's b2 = 0.999
    # would round to 1.0 and the swept value itself to 3 significant digits
    return optax.inject_hyperparams(optimizer, hyperparam_dtype=jnp.float32)(**{hyperparam: 1.0})


def _check_signature(signature: inspect.Signature, name: str, hyperparam: str) -> None:
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
    parameter = signature.parameters.get(hyperparam)
    current = inspect.Parameter.empty if parameter is None else parameter.default
    if isinstance(current, bool) or not (
        current is None or current is inspect.Parameter.empty or isinstance(current, Real)
    ):
        raise TypeError(
            f"optimizer: {hyperparam!r} of {name} is not a numeric hyperparameter "
            f"(its value is {current!r}); sweep a number such as a rate or a decay"
        )


def set_hyperparam(opt_state, name: str, value):
    """Returns ``opt_state`` with ``hyperparams[name] = value`` (cast to the stored dtype).

    >>> state = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0).init(jnp.zeros(2))
    >>> float(set_hyperparam(state, "learning_rate", 0.5).hyperparams["learning_rate"])
    0.5
    """
    current = opt_state.hyperparams[name]
    hyperparams = {**opt_state.hyperparams, name: jnp.asarray(value, current.dtype)}
    return opt_state._replace(hyperparams=hyperparams)
