"""Random-access data sources: anything with ``len`` and ``[i] -> (x, y)``, read batch by batch.

A *source* is a grain ``MapDataset`` or data source, a PyTorch-style map dataset, or a user's
class with ``__len__`` and ``__getitem__``. The engine owns the index order (the same
permutations as for arrays), asks the source for exactly the examples of each batch, stacks
them on the host and hands them to the devices while the previous batches train: a source is
never read whole, so memory stays bounded however many examples it holds.

Datasets whose items are dicts (``{"image": ..., "label": ...}``) name their columns with
:func:`columns`; a dict of equal-length arrays becomes ordinary arrays, the fast path.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

# Batches read ahead of the one training: enough to hide a slow read behind a step, few
# enough that a source of any size holds only a handful of batches in host memory.
PREFETCH = 2


class Columns:
    """A dataset whose items are dicts, seen as ``(item[x], item[y])`` pairs."""

    def __init__(self, dataset, x: str, y: str):
        self.dataset, self.x, self.y = dataset, x, y

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(
                f"data: columns({self.x!r}, {self.y!r}) expects items that are dicts, item "
                f"{index} is a {type(item).__name__}"
            )
        missing = [c for c in (self.x, self.y) if c not in item]
        if missing:
            raise KeyError(
                f"data: item {index} has no column {missing[0]!r} (it has {sorted(item)})"
            )
        return item[self.x], item[self.y]

    def __repr__(self) -> str:
        return f"columns({type(self.dataset).__name__}, x={self.x!r}, y={self.y!r})"


def columns(dataset, x: str = "x", y: str = "y"):
    """Inputs and targets of a dict-of-columns dataset, by column name.

    Args:
      dataset: a dict of equal-length arrays (``{"image": (n, 28, 28), "label": (n,)}``), or
        a random-access dataset whose items are such dicts (a Hugging Face ``Dataset``, a grain
        ``MapDataset`` of dicts, ...).
      x, y: the column names of the inputs and the targets.

    Returns:
      ``(x, y)`` arrays for a dict of arrays (the device-resident fast path), else a source
      whose item ``i`` is ``(dataset[i][x], dataset[i][y])``.

    Example::

      jaxsweep.run(model_fn, jaxsweep.columns(hf_dataset, x="image", y="label"), steps=1000)
    """
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, str):
            raise TypeError(f"columns: {name} must be a column name, got {value!r}")
    if isinstance(dataset, Mapping):
        missing = [c for c in (x, y) if c not in dataset]
        if missing:
            raise KeyError(f"columns: no column {missing[0]!r} (the data has {sorted(dataset)})")
        return np.asarray(dataset[x]), np.asarray(dataset[y])
    if not is_source(dataset):
        raise TypeError(
            "columns: expected a dict of arrays or a dataset with len() and [i], got "
            f"{type(dataset).__name__}"
        )
    return Columns(dataset, x, y)


def is_source(value) -> bool:
    """True for a random-access dataset (``len`` and ``[i]``), false for arrays and pairs.

    Raises:
      TypeError: ``value`` is a dataset jaxsweep cannot train on as it is: an iterator
        without random access (grain's ``IterDataset``), or a dataset of batches (grain's
        ``.batch(...)``), with what to pass instead.
    """
    if isinstance(value, (tuple, list, dict, str, bytes, np.ndarray)) or hasattr(value, "shape"):
        return False
    random_access = hasattr(value, "__len__") and hasattr(value, "__getitem__")
    if not random_access and hasattr(value, "__iter__"):
        raise TypeError(
            f"data: a {type(value).__name__} is read in order only; jaxsweep needs random "
            "access (len and [i]) to give every lane the same batches in the order it draws. "
            "Pass the grain MapDataset before .to_iter_dataset() (or any dataset with len and "
            "[i], or arrays)"
        )
    grain_batches = type(value).__module__.startswith("grain") and "Batch" in type(value).__name__
    if random_access and grain_batches:
        raise TypeError(
            f"data: a {type(value).__name__} yields batches, and jaxsweep batches the examples "
            "itself (batch_size=); pass the dataset before .batch(...), one example per item"
        )
    return random_access


class Subset:
    """The examples of ``source`` at ``indices``, in that order (a split of a source)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[int(self.indices[index])]

    def __getitems__(self, indices: Sequence[int]):
        return read_items(self.source, self.indices[np.asarray(indices, dtype=np.int64)])


def read_items(source, indices: Sequence[int]) -> list:
    """The items at ``indices``; one ``__getitems__`` call where the source offers it."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return list(getitems([int(i) for i in indices]))
    return [source[int(i)] for i in indices]


def _pair(item, index: int, part: str) -> tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = (
            "a dict: name its columns with jaxsweep.columns(...)"
            if isinstance(item, Mapping)
            else f"a {type(item).__name__}"
        )
        raise TypeError(f"data: {part} item {index} must be a pair (x, y), got {kind}")
    return item


def read_batch(source, indices: Sequence[int], part: str = "train") -> tuple[Any, Any]:
    """The examples at ``indices`` stacked into ``(x, y)`` numpy arrays (pytrees allowed)."""
    items = [
        _pair(item, i, part) for item, i in zip(read_items(source, indices), indices, strict=True)
    ]
    try:
        return jax.tree.map(lambda *leaves: np.stack(leaves), *[tuple(it) for it in items])
    except ValueError as error:
        raise ValueError(
            f"data: the {part} examples at {list(indices)[:4]}... differ in shape or structure "
            f"({error})" + _batches_hint(items)
        ) from None


def _batches_hint(items) -> str:
    """A hint when the items look like batches: leading axes alike but for a shorter one."""
    sizes = [
        leaf.shape[0]
        for item in items
        for leaf in jax.tree.leaves(item[1])[:1]
        if getattr(leaf, "ndim", 0) >= 1
    ]
    if len(sizes) < 2 or len(set(sizes)) < 2 or max(sizes) < 2:
        return ""
    return (
        f"; the items look like batches (targets with {max(sizes)} rows, some fewer): "
        "jaxsweep batches the examples itself, so give it one example per item"
    )


def read_all(source, part: str, batch: int = 1024) -> tuple[Any, Any]:
    """Every example of ``source`` as arrays (for a validation part, evaluated many times)."""
    chunks = [
        read_batch(source, range(start, min(start + batch, len(source))), part)
        for start in range(0, len(source), batch)
    ]
    return jax.tree.map(lambda *parts: np.concatenate(parts), *chunks)


def prefetch(produce: Callable[[Any], Any], jobs: Iterable, depth: int = PREFETCH) -> Iterator:
    """``produce(job)`` for every job, in order, computed ``depth`` ahead on a worker thread.

    The worker stops when the consumer stops (the generator is closed); an exception in
    ``produce`` is raised in the consumer at the job that failed.
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for job in jobs:
                if stop.is_set():
                    return
                results.put((True, produce(job)))
        except BaseException as error:  # handed over, raised where the batch is wanted
            results.put((False, error))
            return
        results.put((True, done))

    worker = threading.Thread(target=work, name="jaxsweep-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                results.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.01)


# ----------------------------------------------------------------------------- training part


class SourceColumn:
    """One side (inputs or targets) of a training source, seen as far as the set-up needs an
    array: its length, the shape and dtype of its examples, and leading slices, read on
    demand. The training loop never reads it whole: it asks :func:`read_batch` per call."""

    def __init__(self, source, column: int, sample):
        self.source, self.column = source, column
        self._sample = sample  # the first examples, read once, as an array
        self.shape = (len(source), *np.shape(sample)[1:])
        self.dtype = np.asarray(sample).dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def sample(self) -> np.ndarray:
        """The first examples, read at set-up (the checks look at these)."""
        return self._sample

    def __getitem__(self, index):
        if isinstance(index, slice) and index.start in (None, 0) and index.step in (None, 1):
            stop = len(self) if index.stop is None else min(index.stop, len(self))
            if stop <= len(self._sample):
                return self._sample[:stop]
            return read_batch(self.source, range(stop))[self.column]
        raise TypeError("a training source is read batch by batch, not indexed as an array")

    def digest(self) -> bytes:
        """What a checkpoint fingerprint hashes: the type, the length, the first examples."""
        head = np.ascontiguousarray(self._sample).reshape(-1).view(np.uint8)
        return f"{type(self.source).__name__}{self.shape}{self.dtype}".encode() + head.tobytes()


SAMPLE = 256  # examples read at set-up to check shapes, the model and the loss


def training_columns(source, part: str = "train") -> tuple[SourceColumn, SourceColumn]:
    """``(x, y)`` stand-ins for a training source; reads its first examples to check them."""
    if len(source) == 0:
        raise ValueError(f"data: {part} is empty (0 examples)")
    x, y = read_batch(source, range(min(SAMPLE, len(source))), part)
    for name, column in (("x", x), ("y", y)):
        if not isinstance(column, np.ndarray):  # a tuple or dict of inputs per example
            raise TypeError(
                f"data: the {part} source's {name} must be one array per example, got a "
                f"{type(column).__name__}; tuple and dict inputs are supported as arrays "
                f"(data=((x1, x2), y)), not yet from a source"
            )
        if np.issubdtype(column.dtype, np.complexfloating):  # as _data refuses for arrays
            raise ValueError(
                f"data: the {part} source's {name} is complex (dtype {column.dtype}); training "
                "takes real arrays, so its imaginary part would be lost. Return the real and "
                "imaginary parts as real features instead"
            )
    return SourceColumn(source, 0, x), SourceColumn(source, 1, y)


def is_source_column(value) -> bool:
    return isinstance(value, SourceColumn)
