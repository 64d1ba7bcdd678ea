"""Flax's ImageNet ResNet, defined as published, on the digits as 8x8x1 images: the best rate
of its SGD with Nesterov momentum.

The definition follows ``examples/imagenet/models.py`` of Flax (ResNet V1.5): a 7x7 stem with
stride 2 and max pooling, stages of residual blocks whose last BatchNorm starts at zero, and
BatchNorm written for data-parallel training, ``nn.BatchNorm(..., axis_name="batch")``: under
``pmap`` it averages the batch statistics over the replicas of one global batch. Nothing is
changed for the sweep. Each lane trains on a batch of its own, so jaxsweep binds the axis
``batch`` around every lane's call (a mean over one replica): the lane trains exactly as the
same network without ``axis_name``, whichever lane strategy runs it. Only the sizes are small:
one block per stage, 8 filters, 10 classes.

  python examples/resnet_official.py           # 5 stages of 5 rates, 3 epochs each
  python examples/resnet_official.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

import jaxsweep
from jaxsweep.datasets import load_digits

ModuleDef = Any


class ResNetBlock(nn.Module):
    """Two 3x3 convolutions, each normalised; a projected shortcut where the shape changes."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)  # the block starts as identity
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet V1.5 as in Flax's ImageNet example: BatchNorm over the named axis ``batch``."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            axis_name="batch",  # as published: statistics shared by a pmap's replicas
        )
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(
                    self.num_filters * 2**i, conv=conv, norm=norm, act=self.act, strides=strides
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


# The published sizes (ResNet18: stages of 2, 2, 2, 2 blocks of 64 to 512 filters) in small.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=ResNetBlock)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the SGD rate of Flax's ImageNet ResNet.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    x, y = load_digits()
    images = x.reshape(-1, 8, 8, 1)  # channels last, as flax convolutions expect
    if args.quick:
        images, y, filters = images[:600], y[:600], 8
        settings = dict(stages=2, points_per_stage=3, epochs=2, batch_size=32)
    else:
        filters = 16
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=64)

    result = jaxsweep.run(
        lambda: ResNetTiny(num_classes=10, num_filters=filters),
        (images, y),
        # the ImageNet example's optimizer; its rate is the swept value
        optimizer=functools.partial(optax.sgd, momentum=0.9, nesterov=True),
        lr_range=(1e-3, 1.0),
        min_improvement=0.0,
        progress=not args.quick,
        **settings,
    )

    config = result.config
    print(f"{len(result.evaluations)} evaluations in {len(result.stages)} stages")
    print(f"called with {config['model_mode_flag']}=True to train, False to validate")
    print(f"state carried per lane: {', '.join(config['model_state'])}")
    print(f"lane strategy: {result.environment['lanes']['strategy']}")
    best = result.best
    print(
        f"validation loss at the best rate: {best.score:.4f} (train loss {best.train_loss[-1]:.4f})"
    )
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
