"""grain mistakes get messages that name the cause and the fix, before anything compiles."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TinyMLP

import jaxsweep
from jaxsweep import _data, _train

grain = pytest.importorskip("grain")


def _examples(n: int = 70):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=6).astype(np.float32), np.int32(i % 3)) for i in range(n)]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda ds: ds.to_iter_dataset(), "random access"),
        (lambda ds: ds.batch(32), r"before \.batch"),
        (lambda ds: {"train": ds.batch(32), "val": ds}, r"before \.batch"),
        (lambda ds: {"train": ds, "val": ds.to_iter_dataset()}, "MapDataset before"),
    ],
)
def test_a_grain_dataset_that_cannot_train_as_given_is_refused(make, words):
    with pytest.raises(TypeError, match=words):
        _data.prepare(make(grain.MapDataset.source(_examples())), 0.2, 0)


def test_the_refusal_comes_before_anything_compiles(monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    batched = grain.MapDataset.source(_examples()).batch(16)
    with pytest.raises(TypeError, match="data: a BatchMapDataset yields batches"):
        jaxsweep.run(TinyMLP, batched, epochs=1, progress=False)


class Batches:
    """A dataset of one's own whose items are batches, the last one shorter."""

    def __init__(self, examples, size):
        self.chunks = [examples[i : i + size] for i in range(0, len(examples), size)]

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, index):
        x, y = zip(*self.chunks[index], strict=True)
        return np.stack(x), np.stack(y)


def test_items_that_look_like_batches_say_so():
    with pytest.raises(ValueError, match="look like batches"):
        _data.prepare({"train": Batches(_examples(), 32), "val": Batches(_examples(), 32)}, 0.2, 0)
    # examples of differing shapes that are not batches get no such hint
    ragged = [(np.zeros(6 if i % 2 else 5, np.float32), np.int32(0)) for i in range(8)]
    with pytest.raises(ValueError, match="differ in shape") as info:
        _data.prepare({"train": grain.MapDataset.source(ragged), "val": ragged[:2]}, 0.2, 0)
    assert "batches" not in str(info.value)
