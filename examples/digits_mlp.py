"""Digits MLP (Linen): the best Adam learning rate for a small perceptron on 8x8 digits.

The smallest complete use of jaxsweep: a Linen model factory, an ``(x, y)`` pair of arrays
(a validation part is split off), and the result's stage table.

  python examples/digits_mlp.py                  # 5 stages of 5 rates, 3 epochs each
  python examples/digits_mlp.py --out runs/mlp   # also save result.json, figures, report
  python examples/digits_mlp.py --quick          # tiny: seconds, mostly compiling
"""

from __future__ import annotations

import argparse
import os

import flax.linen as nn
import optax

import jaxsweep
from jaxsweep.datasets import load_digits


class MLP(nn.Module):
    """ReLU hidden layers, then one logit per class."""

    hidden: tuple[int, ...] = (128, 128)
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.classes)(x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sweep the Adam learning rate of a digits MLP.")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (smoke test)")
    parser.add_argument("--out", help="folder for result.json, figures and report (optional)")
    args = parser.parse_args(argv)
    # before any JAX computation: on a CPU one device per core, so the lanes train in
    # parallel (on a GPU or TPU nothing changes)
    jaxsweep.use_cpu_cores()

    x, y = load_digits()  # (1797, 64) pixels in [0, 1], integer labels 0..9
    if args.quick:
        x, y, hidden = x[:500], y[:500], (32,)
        settings = dict(stages=2, points_per_stage=3, epochs=1, batch_size=64)
    else:
        hidden = (128, 128)
        settings = dict(stages=5, points_per_stage=5, epochs=3, batch_size=128)

    result = jaxsweep.run(
        lambda: MLP(hidden=hidden),  # a factory: the sweep builds one model per lane
        (x, y),
        optimizer=optax.adam,
        lr_range=(1e-4, 1e-1),
        min_improvement=0.0,  # no stop on small gains (3 seeds still stop on resolution)
        progress=not args.quick,
        **settings,
    )

    for stage in result.stages:
        rates = ", ".join(f"{lr:.3g}" for lr in stage.lrs)
        print(f"stage {stage.index}: rates [{rates}] -> best so far {stage.best_lr:.4g}")
    print(f"validation loss at the best rate: {result.best_score:.4f}")
    if args.out:
        result.save(os.path.join(args.out, "result.json"))
        jaxsweep.plot(result, args.out)  # figures/*.png and *.pdf
        jaxsweep.report(result, args.out)  # report.md and methods.tex
        print(f"saved result.json, figures/, report.md and methods.tex in {args.out}")
    print(f"best learning rate: {result.best_lr:.6g}")


if __name__ == "__main__":
    main()
