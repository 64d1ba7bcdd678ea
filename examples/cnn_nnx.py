"""A small CNN (NNX) on the digits seen as 8x8x1 images: the best SGD-with-momentum rate.

NNX models are passed as factories that take ``rngs``; the sweep builds one model per lane
from its own key, so every rate of a seed starts from the same weights.

  python examples/cnn_nnx.py           # 5 stages of 5 rates, 3 epochs each
  python examples/cnn_nnx.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import functools

import optax
from flax import nnx

import jaxsweep
from jaxsweep.datasets import load_digits


class CNN(nnx.Module):
    """Two 3x3 convolutions with a 2x2 average pool between them, then a linear classifier."""

    def __init__(self, channels: tuple[int, int] = (16, 32), classes: int = 10, *, rngs: nnx.Rngs):
        first, second = channels
        self.conv1 = nnx.Conv(1, first, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(first, second, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * second, classes, rngs=rngs)  # 8x8 pooled to 4x4

    def __call__(self, x):  # x: (batch, 8, 8, 1)
        x = nnx.relu(self.conv1(x))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.conv2(x))
        return self.head(x.reshape(x.shape[0], -1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the SGD learning rate of a digits CNN.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    x, y = load_digits()
    images = x.reshape(-1, 8, 8, 1)  # channels last, as flax convolutions expect
    if args.quick:
        images, y, channels = images[:500], y[:500], (4, 8)
        settings = dict(stages=2, points_per_stage=3, epochs=1, batch_size=64)
    else:
        channels = (16, 32)
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=64)

    result = jaxsweep.run(
        lambda rngs: CNN(channels, rngs=rngs),
        (images, y),
        optimizer=functools.partial(optax.sgd, momentum=0.9),
        lr_range=(1e-3, 1.0),
        min_improvement=0.0,
        progress=not args.quick,
        **settings,
    )

    best = result.best
    print(f"{len(result.evaluations)} evaluations in {len(result.stages)} stages")
    print(
        f"validation loss at the best rate: {best.score:.4f} (train loss {best.train_loss[-1]:.4f})"
    )
    # per module: how far the last epoch moved the parameters, |after - before| / |before|
    for name, ratios in best.update_ratio.items():
        print(f"  {name}: update/param ratio {ratios[-1]:.2e}")
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
