"""The optimizer: an optax factory wrapped so that the swept hyperparameter is array data.

``optax.inject_hyperparams`` moves the factory's numeric arguments into the optimizer state,
so each lane holds its own value and one compiled program serves every value of a sweep.
"""

from __future__ import annotations

import functools
import inspect
from numbers import Real

import jax
import jax.extend.core as jex
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


def swept_value_reaches_updates(optimizer, abstract_params, hyperparam: str) -> bool:
    """Whether the updates of ``optimizer`` depend on its ``hyperparam`` at all, decided by
    tracing one update (nothing compiles, nothing runs).

    A factory that ignores its argument (``lambda learning_rate: optax.adam(1e-3)``, or one
    that chains a fixed ``optax.scale``) holds the swept value in its state but never uses it:
    every lane of a sweep would train the same. The update is traced as a function of the
    value, the parameters and the gradients, and the value's uses are followed through the
    program (into its inner programs: jit, custom derivatives, cond, scan, while).

    Args:
      optimizer: a transformation made by :func:`resolve_optimizer` (the value injected).
      abstract_params: the parameters, as arrays or ``jax.ShapeDtypeStruct``s.
      hyperparam: the swept entry of ``opt_state.hyperparams``.

    Returns:
      False only where no update depends on the value; True where any may, and where one
      update cannot be traced at all (undecided: the setup's other checks report that).

    >>> tx = resolve_optimizer(optax.sgd, "learning_rate")
    >>> swept_value_reaches_updates(tx, {"w": jnp.zeros(3)}, "learning_rate")
    True
    >>> fixed = resolve_optimizer(lambda learning_rate: optax.sgd(1e-3), "learning_rate")
    >>> swept_value_reaches_updates(fixed, {"w": jnp.zeros(3)}, "learning_rate")
    False
    """
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), abstract_params)

    def updates(value, params, grads):
        state = set_hyperparam(optimizer.init(params), hyperparam, value)
        return optimizer.update(grads, state, params)[0]

    value = jax.ShapeDtypeStruct((), jnp.float32)
    try:
        closed = jax.make_jaxpr(updates)(value, shapes, shapes)
    except Exception:  # undecided: tracing the optimizer fails, which its own checks report
        return True
    inputs = [True] + [False] * (len(closed.jaxpr.invars) - 1)  # the value is the first
    return any(_dependent_outputs(closed.jaxpr, inputs))


def _dependent_outputs(jaxpr, dependent: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs marked in ``dependent``."""
    reached = {var for var, flag in zip(jaxpr.invars, dependent, strict=True) if flag}

    def depends(var) -> bool:
        return not isinstance(var, jex.Literal) and var in reached

    for equation in jaxpr.eqns:
        flags = [depends(var) for var in equation.invars]
        if any(flags):
            outputs = _equation_outputs(equation, flags)
            reached.update(v for v, flag in zip(equation.outvars, outputs, strict=True) if flag)
    return [depends(var) for var in jaxpr.outvars]


def _open(jaxpr):
    return jaxpr.jaxpr if isinstance(jaxpr, jex.ClosedJaxpr) else jaxpr


def _equation_outputs(equation, flags: list[bool]) -> list[bool]:
    """Which outputs of one equation depend on its inputs marked in ``flags``: followed into
    the programs it holds where their inputs are known, else all of them (the safe answer)."""
    name, params, every = equation.primitive.name, equation.params, [True] * len(equation.outvars)
    if name == "cond":  # (index, *operands); every branch takes the operands
        if flags[0]:
            return every
        outputs = [_dependent_outputs(_open(b), flags[1:]) for b in params["branches"]]
        return [any(column) for column in zip(*outputs, strict=True)]
    if name == "scan":  # (consts, carry, xs) -> (carry, ys): the carry until nothing changes
        consts, carry = params["num_consts"], params["num_carry"]
        body, state = _open(params["jaxpr"]), flags[consts : consts + carry]
        while True:
            outputs = _dependent_outputs(body, [*flags[:consts], *state, *flags[consts + carry :]])
            grown = [a or b for a, b in zip(state, outputs[:carry], strict=True)]
            if grown == state:
                return [*state, *outputs[carry:]]
            state = grown
    if name == "while":  # (cond consts, body consts, carry) -> carry
        cond_consts, body_consts = params["cond_nconsts"], params["body_nconsts"]
        cond, body = _open(params["cond_jaxpr"]), _open(params["body_jaxpr"])
        consts, state = (
            flags[cond_consts : cond_consts + body_consts],
            flags[cond_consts + body_consts :],
        )
        while True:
            if any(_dependent_outputs(cond, [*flags[:cond_consts], *state])):
                return every  # how often the body runs depends on the value
            outputs = _dependent_outputs(body, [*consts, *state])
            grown = [a or b for a, b in zip(state, outputs, strict=True)]
            if grown == state:
                return grown
            state = grown
    inner = [
        _open(v)
        for v in params.values()
        if isinstance(v, (jex.Jaxpr, jex.ClosedJaxpr))
        and len(_open(v).invars) == len(flags)
        and len(_open(v).outvars) == len(every)
    ]
    if len(inner) == 1:  # jit, closed_call, remat, custom derivatives
        return _dependent_outputs(inner[0], flags)
    return every
