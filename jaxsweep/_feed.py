"""What a stage's training calls train on: the split's arrays, or a data source read on the host.

A split of arrays is placed whole on every device once; every call is handed the same arrays
and each lane draws its batch order on the device from its data key (:class:`ArrayFeed`). A
training source (:mod:`jaxsweep._sources`) stays on the host (:class:`SourceFeed`): every
seed's batch order of an epoch comes from the same permutation program
(:class:`EpochOrders`), a call's rows are read on a worker thread while the devices train the
calls before, and are placed on every device; each lane is told its seed, whose batches it
trains. Both feeds answer the same questions, so the training stream never asks which one it
holds. The validation set is always placed on every device.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np

from . import _sharding
from ._budget import Budget
from ._data import Split
from ._sources import SourceColumn, prefetch, read_batch


def place_split(data: Split, mesh) -> Split:
    """``data`` with its arrays on every device of ``mesh``: the whole split, or (a training
    source, read call by call) the validation set alone."""
    if not isinstance(data.x_train, SourceColumn):
        return _sharding.place_replicated(data, mesh)
    x_val, y_val = _sharding.place_replicated((data.x_val, data.y_val), mesh)
    return data._replace(x_val=x_val, y_val=y_val)


class EpochOrders:
    """Every seed's batch order of an epoch on the host, ``(seeds, steps, batch)``: the same
    permutations the arrays path draws on the device. An epoch too large for one permutation
    (:mod:`jaxsweep._shuffle`) is never held whole: :meth:`rows` computes a call's rows.

    Args:
      epoch_orders: the pure program ``(data_keys, epoch) -> orders``
        (``Programs.epoch_orders``), jitted here.
      data_keys: ``(seed, seeds) -> (seeds,)`` batch-order keys.
      order_rows: ``(data_keys, epoch, rows) -> (seeds, rows, batch)``
        (``Programs.order_rows``), jitted here; None: every epoch is held whole.
      whole: whether an epoch's order is held whole (one permutation) or read row by row.
    """

    def __init__(
        self,
        epoch_orders: Callable,
        data_keys: Callable[[int, int], jax.Array],
        order_rows: Callable | None = None,
        whole: bool = True,
    ):
        self._program = jax.jit(epoch_orders)
        self._rows = None if order_rows is None else jax.jit(order_rows)
        self._data_keys = data_keys
        self._whole = whole or order_rows is None
        self._kept: dict[tuple[int, int, int], np.ndarray] = {}

    def rows(self, seed: int, seeds: int, epoch: int, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of every seed's order of ``epoch``: ``(seeds, len(rows), batch)``."""
        if self._whole:
            return self.of(seed, seeds, epoch)[:, rows]
        data_keys = self._data_keys(seed, seeds)
        return np.asarray(self._rows(data_keys, np.int32(epoch), np.asarray(rows, np.int32)))

    def of(self, seed: int, seeds: int, epoch: int) -> np.ndarray:
        """Kept for the epoch in progress and the next: a call needs at most two."""
        key = (seed, seeds, epoch)
        if key not in self._kept:
            for old in [k for k in self._kept if k[:2] != key[:2] or k[2] < epoch - 1]:
                del self._kept[old]
            data_keys = self._data_keys(seed, seeds)
            self._kept[key] = np.asarray(self._program(data_keys, np.int32(epoch)))
        return self._kept[key]


class ArrayFeed:
    """Training arrays placed on every device: each call is handed all of them, and each lane
    draws its batches on the device from its data key."""

    def __init__(self, placed: Split):
        self._train = (placed.x_train, placed.y_train)

    @staticmethod
    def lane_program(programs) -> Callable:
        return programs.lane_call

    @staticmethod
    def lane_input(data_keys, seed_index):
        """What tells a lane its batches: its data key (the order is drawn on the device)."""
        return data_keys

    def train_shapes(self, seeds: int):
        """What a call trains from, for lowering: the placed arrays themselves."""
        return self._train

    def per_call(self, lanes, calls: list) -> Iterator:
        """What each call trains on: the same arrays, without end (the caller's zip stops)."""
        return itertools.repeat(self._train)


class SourceFeed:
    """A training source read on the host, call by call: batches ``(seeds, chunk, batch, ...)``
    placed on every device, each lane training its seed's.

    Args:
      placed: the split, its training columns still the source's (:func:`place_split`).
      mesh: the lane mesh the batches are placed on.
      budget: the steps per epoch, steps per call and batch size.
      orders: every seed's batch order of an epoch.
    """

    def __init__(self, placed: Split, mesh, budget: Budget, orders: EpochOrders):
        self.source = placed.x_train.source
        self._columns = (placed.x_train, placed.y_train)
        self._mesh, self._budget, self._orders = mesh, budget, orders

    @staticmethod
    def lane_program(programs) -> Callable:
        return programs.lane_call_batches

    @staticmethod
    def lane_input(data_keys, seed_index):
        """What tells a lane its batches: its seed index (its seed's rows of the batches)."""
        return seed_index

    def train_shapes(self, seeds: int):
        """The shapes of a call's batches ``(seeds, chunk, batch, ...)`` (replicated)."""
        replicated = _sharding.replicated(self._mesh)
        lead = (seeds, self._budget.chunk, self._budget.batch_size)

        def batch(column: SourceColumn):
            return jax.ShapeDtypeStruct(lead + column.shape[1:], column.dtype, sharding=replicated)

        return tuple(batch(column) for column in self._columns)

    def read_call(self, lanes, start: int, steps: int):
        """The batches of one call, read from the source on the host: ``(x, y)`` shaped
        ``(seeds, chunk, batch, ...)``; rows past ``steps`` repeat the first (never trained)."""
        per_epoch = self._budget.steps_per_epoch
        parts = []  # the call's steps, epoch by epoch (a call may run into the next one)
        for epoch, in_epoch in itertools.groupby(
            range(start, start + steps), lambda s: s // per_epoch
        ):
            rows = np.array([step % per_epoch for step in in_epoch])
            parts.append(self._orders.rows(lanes.seed, lanes.seeds, epoch, rows))
        indices = np.concatenate(parts, axis=1)  # (seeds, steps, batch)
        filler = np.repeat(indices[:, :1], self._budget.chunk - steps, axis=1)
        indices = np.concatenate([indices, filler], axis=1)  # (seeds, chunk, batch)
        x, y = read_batch(self.source, indices.reshape(-1))
        return jax.tree.map(lambda a: a.reshape(*indices.shape, *a.shape[1:]), (x, y))

    def per_call(self, lanes, calls: Iterable) -> Iterator:
        """Each call's batches (``call.start``, ``call.steps``), read on a worker thread while
        the devices train the calls before, then placed on every device."""
        batches = prefetch(lambda call: self.read_call(lanes, call.start, call.steps), calls)
        return (_sharding.place_replicated(b, self._mesh) for b in batches)


def make_feed(placed: Split, mesh, budget: Budget, orders: EpochOrders) -> ArrayFeed | SourceFeed:
    """The feed of a split placed by :func:`place_split`."""
    if isinstance(placed.x_train, SourceColumn):
        return SourceFeed(placed, mesh, budget, orders)
    return ArrayFeed(placed)
