"""A real recipe: the peak of a warmup-cosine schedule, chosen by validation accuracy, from a
grain data source and a step budget.

The training part is a grain ``MapDataset`` (a plain Python class with ``__len__`` and
``__getitem__`` when grain is not installed): the sweep reads it batch by batch on the host,
in its own order, while the previous batches train. The loss returns a dict, so the
validation accuracy is measured beside the loss, and ``metric="accuracy", mode="max"`` ranks
the rates by it. ``schedule="warmup_cosine"`` makes every lane warm up over the first 10% of
its steps to the swept rate and decay it to zero: the swept value is the schedule's peak.

  python examples/schedule_accuracy.py           # 4 stages of 5 peaks, 600 steps each
  python examples/schedule_accuracy.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

import jaxsweep
from jaxsweep.datasets import load_digits


class MLP(nn.Module):
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


def with_accuracy(logits, labels):
    """Cross-entropy to optimise, accuracy to select by (both means over the batch)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


class Digits:
    """Random access to (image, label) pairs: what any map-style dataset offers."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def training_source(x, y):
    """A grain MapDataset over the examples when grain is installed, else the plain class."""
    try:
        import grain
    except ImportError:
        return Digits(x, y), "a Python class with __len__ and __getitem__"
    dataset = grain.MapDataset.source(Digits(x, y)).map(lambda pair: pair)
    return dataset, "a grain MapDataset"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the peak of a warmup-cosine schedule.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    val, train = order[:360], order[360:]
    if args.quick:
        settings = dict(stages=2, points_per_stage=3, steps=40, eval_every=20, batch_size=32)
    else:
        settings = dict(stages=4, points_per_stage=5, steps=600, eval_every=100, batch_size=64)
    source, kind = training_source(x[train], y[train])
    print(f"training data: {len(source)} examples from {kind}")

    result = jaxsweep.run(
        lambda: MLP(hidden=32 if args.quick else 128),
        {"train": source, "val": (x[val], y[val])},
        loss=with_accuracy,
        metric="accuracy",
        mode="max",
        schedule="warmup_cosine",
        lr_range=(1e-4, 1.0),
        min_improvement=0.0,
        progress=not args.quick,
        **settings,
    )

    best = result.best
    print(f"schedule: {result.config['schedule']}")
    print(f"validations after steps {best.steps}")
    print(
        f"validation accuracy at the best peak: {best.score:.4f} "
        f"(validation loss {best.val_loss[-1]:.4f})"
    )
    by_loss = min(result.evaluations, key=lambda e: (e.val_loss[-1], e.lr))
    print(f"the peak the validation loss would pick: {by_loss.lr:.4g}")
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
