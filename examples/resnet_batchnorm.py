"""A small ResNet (Linen) with BatchNorm and Dropout on the digits as 8x8x1 images: the best
AdamW rate.

The model follows Flax's convention: ``__call__`` takes ``train``. The sweep calls it with
``train=True`` while training, so BatchNorm normalises with the batch's statistics and updates
its running averages (the ``batch_stats`` collection, carried per lane) and Dropout draws a
new mask at every step; validation calls it with ``train=False``: running averages, no
dropout, nothing changed. ``result.config`` records what was carried and drawn.

  python examples/resnet_batchnorm.py           # 5 stages of 5 rates, 3 epochs each
  python examples/resnet_batchnorm.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import optax

import jaxsweep
from jaxsweep.datasets import load_digits


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, plus a (projected) shortcut."""

    channels: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        y = nn.Conv(self.channels, (3, 3), self.strides, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.channels, (3, 3), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)  # each block starts as the identity
        if x.shape != y.shape:
            x = norm()(nn.Conv(self.channels, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A convolution stem, one residual block per width, global pooling, dropout, read-out."""

    widths: Sequence[int] = (16, 32)
    classes: int = 10
    dropout: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool = False):  # x: (batch, 8, 8, 1)
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for i, width in enumerate(self.widths):
            x = ResidualBlock(width, strides=1 if i == 0 else 2)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.classes)(x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the AdamW rate of a small ResNet.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    x, y = load_digits()
    images = x.reshape(-1, 8, 8, 1)  # channels last, as flax convolutions expect
    if args.quick:
        images, y, widths = images[:600], y[:600], (8, 16)
        settings = dict(stages=2, points_per_stage=3, epochs=2, batch_size=32)
    else:
        widths = (16, 32)
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=64)

    result = jaxsweep.run(
        lambda: ResNet(widths),
        (images, y),
        optimizer=optax.adamw,
        lr_range=(1e-3, 1.0),
        min_improvement=0.0,
        progress=not args.quick,
        **settings,
    )

    config = result.config
    print(f"{len(result.evaluations)} evaluations in {len(result.stages)} stages")
    print(f"called with {config['model_mode_flag']}=True to train, False to validate")
    print(f"state carried per lane: {', '.join(config['model_state'])}")
    print(f"random streams drawn every step: {', '.join(config['rng_streams'])}")
    best = result.best
    print(
        f"validation loss at the best rate: {best.score:.4f} (train loss {best.train_loss[-1]:.4f})"
    )
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
