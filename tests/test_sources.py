"""Random-access sources: reading batches, columns, and prefetching on a worker thread."""

import threading
import time

import numpy as np
import pytest
from conftest import SMALL, make_classification, two_rate_sweep

import jaxsweep
from jaxsweep import _sources, _train


class Squares:
    """A user's dataset class: item i is (x, y) computed on demand, nothing held in memory."""

    def __init__(self, n):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.reads += 1
        return np.full(3, i, np.float32), np.int32(i % 2)


class Records:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((2, 2), i, np.float32), "label": i % 3, "id": str(i)}


def test_read_batch_stacks_the_examples_asked_for_in_that_order():
    source = Squares(10)
    x, y = _sources.read_batch(source, [7, 2, 2, 9])
    np.testing.assert_array_equal(x[:, 0], [7, 2, 2, 9])
    np.testing.assert_array_equal(y, [1, 0, 0, 1])
    assert x.shape == (4, 3) and source.reads == 4


def test_columns_of_records_and_of_a_dict_of_arrays():
    pairs = _sources.columns(Records(5), x="image", y="label")
    assert len(pairs) == 5 and _sources.is_source(pairs)
    x, y = _sources.read_batch(pairs, [4, 1])
    assert x.shape == (2, 2, 2) and y.tolist() == [1, 1]
    arrays = _sources.columns({"a": np.arange(4), "b": np.ones(4)}, x="a", y="b")
    assert isinstance(arrays, tuple) and arrays[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="no column 'lbl'"):
        _sources.columns({"a": np.arange(4), "b": np.ones(4)}, x="a", y="lbl")
    with pytest.raises(KeyError, match="no column 'lbl'"):
        _sources.read_batch(_sources.columns(Records(3), x="image", y="lbl"), [0])


def test_dict_items_without_columns_say_how_to_name_them():
    with pytest.raises(TypeError, match=r"jaxsweep.columns"):
        _sources.read_batch(Records(3), [0])


def test_is_source():
    assert _sources.is_source(Squares(3))
    for value in (np.zeros(3), (np.zeros(3), np.zeros(3)), [1, 2], {"train": 1}, "abc"):
        assert not _sources.is_source(value)


def test_subset_and_getitems():
    class Batched(Squares):
        def __getitems__(self, indices):
            self.batched = list(indices)
            return [self[i] for i in indices]

    source = Batched(10)
    subset = _sources.Subset(source, np.array([9, 3, 5]))
    x, _ = _sources.read_batch(subset, [2, 0])
    np.testing.assert_array_equal(x[:, 0], [5, 9])
    assert source.batched == [5, 9]


def test_read_all_covers_every_example():
    x, y = _sources.read_all(Squares(7), "val", batch=3)
    np.testing.assert_array_equal(x[:, 0], np.arange(7))


def test_grain_map_dataset_is_a_source():
    grain = pytest.importorskip("grain")
    dataset = grain.MapDataset.range(12).map(lambda i: (np.full(2, i, np.float32), i % 4))
    assert _sources.is_source(dataset)
    x, y = _sources.read_batch(dataset, [11, 0, 5])
    np.testing.assert_array_equal(x[:, 0], [11, 0, 5])
    np.testing.assert_array_equal(y, [3, 0, 1])


def test_prefetch_keeps_order_reads_ahead_and_stops_with_the_consumer():
    started = []

    def produce(job):
        started.append(job)
        return job * 10

    stream = _sources.prefetch(produce, range(100), depth=2)
    assert next(stream) == 0
    time.sleep(0.05)
    assert len(started) <= 4  # bounded: the consumed one, the queue, one waiting to be put
    assert [next(stream) for _ in range(5)] == [10, 20, 30, 40, 50]
    stream.close()
    time.sleep(0.05)
    assert not any(t.name == "jaxsweep-prefetch" for t in threading.enumerate())
    assert len(started) < 100


def test_prefetch_raises_the_worker_error_where_the_batch_is_wanted():
    def produce(job):
        if job == 3:
            raise IndexError("no item 3")
        return job

    stream = _sources.prefetch(produce, range(10))
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(IndexError, match="no item 3"):
        next(stream)


# ----------------------------------------------------------------------------- in a sweep


class Pairs:
    """A user's map dataset over arrays: item i is (x[i], y[i]), counting its reads."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]


def _sweep(data, **kwargs):
    return two_rate_sweep(data, **{**SMALL, **kwargs})


def _same(a, b):
    for left, right in zip(a.evaluations, b.evaluations, strict=True):
        np.testing.assert_allclose(left.val_loss, right.val_loss, rtol=1e-6)
        np.testing.assert_allclose(left.train_loss, right.train_loss, rtol=1e-6)
        np.testing.assert_allclose(left.grad_norm, right.grad_norm, rtol=1e-6)


def test_a_source_of_the_same_examples_trains_like_the_arrays(split_blobs):
    """The engine owns the order: the same examples in the same order give the same sweep,
    across an epoch boundary inside a call (steps=10 of 6 per epoch, validation every 4)."""
    (x, y), val = split_blobs["train"], split_blobs["val"]
    budget = dict(steps=10, eval_every=4, epochs=None)
    arrays = _sweep(split_blobs, **budget)
    source = Pairs(x, y)
    streamed = _sweep({"train": source, "val": Pairs(*val)}, **budget)
    _same(arrays, streamed)
    assert streamed.evaluations[0].steps == (4, 8, 10)
    assert streamed.config["n_train"] == len(x) and streamed.config["x_shape"] == [6]


def test_a_single_source_is_split_like_arrays(blobs):
    _same(_sweep(blobs), _sweep(Pairs(*blobs)))


def test_a_grain_map_dataset_trains_like_the_arrays(split_blobs):
    grain = pytest.importorskip("grain")
    (x, y) = split_blobs["train"]
    dataset = grain.MapDataset.range(len(x)).map(lambda i: (x[i], y[i]))
    _same(_sweep(split_blobs), _sweep({"train": dataset, "val": split_blobs["val"]}))


def test_dict_columns_by_name(split_blobs):
    (x, y) = split_blobs["train"]

    class Rows:
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"features": x[i], "label": y[i]}

    named = jaxsweep.columns(Rows(), x="features", y="label")
    _same(_sweep(split_blobs), _sweep({"train": named, "val": split_blobs["val"]}))


def test_a_million_generated_examples_train_with_a_step_budget_reading_few():
    """Nothing is materialised: only the set-up sample and the batches trained are read."""

    class Generated:
        def __init__(self, n):
            self.n, self.reads = n, 0

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            self.reads += 1
            rng = np.random.default_rng(i)
            label = i % 3
            return (rng.normal(size=6) + label).astype(np.float32), np.int32(label)

    source = Generated(1_000_000)
    xv, yv = make_classification(n=48, seed=5)
    result = _sweep({"train": source, "val": (xv, yv)}, steps=8, epochs=None, eval_every=4)
    assert result.config["n_train"] == 1_000_000
    # the set-up sample, the compile's first call, and 8 steps of 32 examples
    assert source.reads <= _sources.SAMPLE + 2 * 8 * 32
    assert all(np.isfinite(e.score) for e in result.evaluations)


def test_checkpoints_of_a_source_sweep_are_fingerprinted_without_reading_it(split_blobs, tmp_path):
    (x, y), val = split_blobs["train"], split_blobs["val"]
    source = Pairs(x, y)
    first = _sweep({"train": source, "val": val}, checkpoint_dir=str(tmp_path / "ckpt"))
    reads = source.reads
    again = _sweep({"train": source, "val": val}, checkpoint_dir=str(tmp_path / "ckpt"))
    assert again.environment["checkpoint"]["resumed_from"] == "finished"
    assert again.best_lr == first.best_lr
    assert source.reads - reads <= _sources.SAMPLE  # only the set-up sample, no training
    with pytest.raises(jaxsweep.ConfigurationMismatchError, match="data"):
        _sweep(
            {"train": Pairs(x[:-32], y[:-32]), "val": val}, checkpoint_dir=str(tmp_path / "ckpt")
        )


class TwoInputs:
    """Items ``((a, b), label)``: several inputs per example, read from a source."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return (np.full(4, i, np.float32), np.ones(2, np.float32)), i % 3


def test_several_inputs_from_a_source_are_refused_before_anything_compiles(monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(TypeError, match="train source's x must be one array per example"):
        _sweep({"train": TwoInputs(), "val": TwoInputs()})
