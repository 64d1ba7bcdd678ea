"""Small reference models used by the demo, the examples and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn


class MLP(nn.Module):
    """A ReLU multilayer perceptron: ``hidden`` widths, then ``outputs`` logits."""

    hidden: Sequence[int] = (128, 128)
    outputs: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.outputs)(x)
