"""Regression with a custom multi-part loss (NNX): the best SGD-with-momentum rate.

A loss may return a dict: its ``"loss"`` entry is optimised and scored, and every other entry
is recorded per epoch (``evaluation.train_aux`` and ``evaluation.val_aux``). Here the model
returns its prediction together with its hidden activations, and the loss adds an L1 activity
penalty on those activations to the mean squared error.

  python examples/regression_multiloss.py           # 5 stages of 5 rates, 5 epochs each
  python examples/regression_multiloss.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import functools

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxsweep

L1_WEIGHT = 1e-3


def synthetic_regression(n: int, features: int = 8, noise: float = 0.1, seed: int = 0):
    """A smooth nonlinear target of a few of the features, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] - 0.3 * x[:, 3] ** 2
    y = y + noise * rng.normal(size=n)
    return x, y.astype(np.float32)


class Regressor(nnx.Module):
    """A one-hidden-layer network that also returns its hidden activations."""

    def __init__(self, features: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x):
        h = nnx.tanh(self.hidden(x))
        return self.out(h)[:, 0], h


def penalised_mse(outputs, targets):
    """Mean squared error plus an L1 penalty on the hidden activations.

    Returns a dict: ``loss`` (what is optimised) is the sum of the other two entries.
    """
    prediction, hidden = outputs
    mse = jnp.mean((prediction - targets) ** 2)
    l1_penalty = L1_WEIGHT * jnp.mean(jnp.abs(hidden))
    return {"loss": mse + l1_penalty, "mse": mse, "l1_penalty": l1_penalty}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep a regression with a multi-part loss.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    if args.quick:
        n, hidden = 400, 16
        settings = dict(stages=2, points_per_stage=3, epochs=1, batch_size=32)
    else:
        n, hidden = 4000, 64
        settings = dict(stages=5, points_per_stage=5, epochs=5, batch_size=64)
    x, y = synthetic_regression(n)

    result = jaxsweep.run(
        lambda rngs: Regressor(x.shape[1], hidden, rngs=rngs),
        (x, y),
        loss=penalised_mse,
        optimizer=functools.partial(optax.sgd, momentum=0.9),
        lr_range=(1e-4, 1.0),
        min_improvement=0.0,
        progress=not args.quick,
        **settings,
    )

    best = result.best
    print(f"validation loss at the best rate: {best.score:.4f}, made of:")
    for name, per_epoch in best.val_aux.items():
        print(f"  {name}: {per_epoch[-1]:.4g}")
    print(f"target variance (a constant guess's mse): {float(np.var(y)):.4f}")
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
