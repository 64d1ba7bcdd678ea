"""Your own training step, as Flax's MNIST example writes it: a ``TrainState``, a ``train_step``
with an L2 penalty on the params and dropout, an ``eval_step`` with its accuracy; the SGD
rate with momentum swept by validation accuracy, every rate of a stage training at once.

The CNN follows ``examples/mnist`` of Flax (two 3x3 convolutions with average pooling, a
dense layer, ten classes), small, on the digits as 8x8x1 images. Nothing in the step knows
about the sweep: ``jaxsweep.Training`` hands it the optimizer to build the state with (the
rate injected in its state) and a new key at every step.

  python examples/own_train_step.py           # 5 stages of 5 rates, 3 epochs each
  python examples/own_train_step.py --quick   # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import jaxsweep
from jaxsweep.datasets import load_digits

WEIGHT_DECAY = 1e-4  # an L2 penalty inside the loss, as the official examples add it


class CNN(nn.Module):
    features: int = 16

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.avg_pool(nn.relu(nn.Conv(self.features, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(2 * self.features, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(10)(x)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_init(model: CNN):
    def init(key, optimizer):
        params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optimizer)

    return init


def train_step(state, batch, key):
    images, labels = batch

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images, train=True, rngs={"dropout": key})
        l2 = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return cross_entropy(logits, labels) + WEIGHT_DECAY * l2, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


def eval_step(state, batch):
    images, labels = batch
    logits = state.apply_fn({"params": state.params}, images)
    return {
        "loss": cross_entropy(logits, labels),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the SGD rate of an own train_step.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    args = parser.parse_args(argv)

    x, y = load_digits()
    images = x.reshape(-1, 8, 8, 1)
    if args.quick:
        images, y, features = images[:600], y[:600], 8
        settings = dict(stages=2, points_per_stage=3, epochs=2, batch_size=32)
    else:
        features = 16
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=64)

    training = jaxsweep.Training(
        make_init(CNN(features)), train_step, eval_step, name="CNN (own train_step)"
    )
    result = jaxsweep.run(
        training,
        (images, y),
        optimizer=functools.partial(optax.sgd, momentum=0.9),  # the MNIST example's optimizer
        lr_range=(1e-3, 1.0),
        metric="accuracy",
        mode="max",
        keep="best",
        progress=not args.quick,
        **settings,
    )

    best = result.best
    print(f"{len(result.evaluations)} evaluations in {len(result.stages)} stages")
    print(f"validation accuracy at the best rate: {best.score:.4f}")
    print(f"validation loss at the best rate: {best.val_loss[-1]:.4f}")
    print(f"training accuracy at the best rate: {best.train_aux['accuracy'][-1]:.4f}")
    state = result.best_variables[0]
    print(f"trained state of seed 0: step {int(state.step)}, {len(state.params)} modules")
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
