"""The trained weights of the best value: ``run(..., keep="best")`` -> ``result.best_variables``.

A stage's lanes end on the devices; when a stage brings a new best value, the final variables
of its seeds are copied to the host (one value's seeds, not the stage's), so the weights come
back without training anything again. A sweep resumed after the stage that found its best has
lost them with the process: the best value is then retrained alone, every seed from the same
keys and batches (the same numbers, to float rounding of another lane count).

Files: :func:`save_variables` writes them with Orbax beside ``result.json``;
:func:`load_variables` reads them back (numpy arrays, the same nesting).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

KEEPS = (None, "best")


def check(keep) -> str | None:
    """``run``'s ``keep`` argument, checked."""
    if keep not in KEEPS:
        raise ValueError(
            f"keep: expected None or 'best' (the final variables of every seed of the best "
            f"value, as result.best_variables), got {keep!r}"
        )
    return keep


def _host(leaf) -> np.ndarray:
    """A lane array on this host, whole (gathered from every process where it is split)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.asarray(leaf)


def seed_lanes(stacked, index: int, seeds: int) -> tuple[tuple[Any, Any], ...]:
    """``(params, model state)`` of each seed of the ``index``-th value of a stage, on the
    host (lanes are value-major: lane ``index * seeds + s`` is seed ``s``)."""
    params, state = jax.tree.map(_host, (stacked.params, stacked.model_state))
    first = index * seeds
    return tuple(
        jax.tree.map(lambda a, lane=first + s: a[lane], (params, state)) for s in range(seeds)
    )


def save_variables(variables, directory: str | os.PathLike) -> str:
    """Writes ``result.best_variables`` (one pytree per seed) to ``directory`` with Orbax;
    returns its absolute path. An existing directory is refused, never replaced."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path):
        raise FileExistsError(f"{path}: exists; variables are never written over")
    tree = {str(seed): _plain(v) for seed, v in enumerate(variables)}
    ocp.PyTreeCheckpointer().save(path, tree)  # synchronous: complete when it returns
    return path


def load_variables(directory: str | os.PathLike) -> tuple:
    """Reads what :func:`save_variables` wrote: one pytree of numpy arrays per seed, in seed
    order (Linen: the variables dict; NNX: the state as a pure dict, for
    ``nnx.replace_by_pure_dict``; a Training's ``TrainState``: its state dict, for
    ``flax.serialization.from_state_dict(state, saved)``)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no saved variables here")
    tree = ocp.PyTreeCheckpointer().restore(path)
    return tuple(jax.tree.map(np.asarray, tree[str(s)]) for s in range(len(tree)))


def _array(leaf) -> np.ndarray:
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)  # a random stream's key, as its raw bits
    return np.asarray(leaf)


def _plain(variables):
    """Nested dicts of arrays (an NNX state as its pure dict), as Orbax stores them."""
    from flax import nnx

    if isinstance(variables, nnx.State):
        variables = nnx.to_pure_dict(variables)
    elif not isinstance(variables, dict):  # a Training's state, e.g. a TrainState
        from flax import serialization

        variables = serialization.to_state_dict(variables)
    return jax.tree.map(_array, variables)
