"""Batch orders of large epochs (``jaxsweep._shuffle``): a keyed bijection evaluated batch by
batch, the same for arrays and sources, and a partition of the data in every epoch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, TinyMLP, comparable, make_classification

import jaxsweep
from jaxsweep import _data, _shuffle

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_the_keyed_order_is_a_permutation(n):
    order = np.asarray(_shuffle.shuffled(jax.random.key(3), n, jnp.arange(n)))
    assert sorted(order.tolist()) == list(range(n))


def test_orders_differ_between_keys_and_epochs_and_look_shuffled():
    n = 10_000
    positions = jnp.arange(n)
    a = np.asarray(_shuffle.shuffled(jax.random.key(0), n, positions))
    b = np.asarray(_shuffle.shuffled(jax.random.key(1), n, positions))
    assert np.mean(a == b) < 0.01
    # no trace of the identity or of each other: rank correlations near zero
    assert abs(np.corrcoef(a, positions)[0, 1]) < 0.05
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    # consecutive positions land far apart (a batch is spread over the data)
    assert np.median(np.abs(np.diff(a))) > n / 10
    rows = np.asarray(_shuffle.batch_rows(jax.random.key(0), 1, jnp.arange(3), n, 16))
    other = np.asarray(_shuffle.batch_rows(jax.random.key(0), 2, jnp.arange(3), n, 16))
    assert rows.shape == (3, 16) and not np.array_equal(rows, other)


def test_a_row_alone_is_the_same_row_of_the_whole_epoch():
    key, n, batch = jax.random.key(5), 5000, 32
    whole = np.asarray(_shuffle.batch_rows(key, 4, jnp.arange(n // batch), n, batch))
    assert np.array_equal(
        np.asarray(_shuffle.batch_rows(key, 4, jnp.array([7]), n, batch))[0], whole[7]
    )
    flat = whole.reshape(-1)
    assert len(set(flat.tolist())) == len(flat)  # no example twice in an epoch


def test_large_epochs_use_the_keyed_order_and_small_ones_the_permutation(monkeypatch):
    key = jax.random.key(0)
    small = np.asarray(_data.epoch_batches(key, 0, 100, 10))
    expected = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 100)).reshape(10, 10)
    assert np.array_equal(small, expected)  # the README's recipe, unchanged
    monkeypatch.setattr(_shuffle, "PERMUTATION_MAX", 50)
    large = np.asarray(_data.epoch_batches(key, 0, 100, 10))
    assert np.array_equal(large, np.asarray(_shuffle.batch_rows(key, 0, jnp.arange(10), 100, 10)))


class _Pairs:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.mark.parametrize(
    "budget",
    [dict(epochs=2), dict(epochs=None, steps=15, eval_every=5)],  # calls across epochs
)
def test_arrays_and_a_source_train_alike_with_the_keyed_order(budget, monkeypatch):
    """Above the threshold (lowered here) both paths read the same rows of the keyed order:
    the same results, and they differ from the permutation's."""
    x, y = make_classification(240)
    data = {"train": (x[:192], y[:192]), "val": (x[192:], y[192:])}
    options = {**SMALL, "batch_size": 32, "stages": 1, "seeds": 2, **budget}
    permuted = jaxsweep.run(lambda: TinyMLP(), data, **options)
    monkeypatch.setattr(_shuffle, "PERMUTATION_MAX", 100)
    arrays = jaxsweep.run(lambda: TinyMLP(), data, **options)
    source = jaxsweep.run(
        lambda: TinyMLP(), {"train": _Pairs(x[:192], y[:192]), "val": data["val"]}, **options
    )
    assert comparable(arrays.to_dict())["stages"] == comparable(source.to_dict())["stages"]
    assert [e.seed_val_loss for e in arrays.evaluations] == [
        e.seed_val_loss for e in source.evaluations
    ]
    assert [e.seed_val_loss for e in arrays.evaluations] != [
        e.seed_val_loss for e in permuted.evaluations
    ]
