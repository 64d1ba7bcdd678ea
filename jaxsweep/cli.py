"""The ``jaxsweep`` command: ``jaxsweep demo`` sweeps an MLP on the bundled digits data."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from ._result import SweepResult


def stage_table(result: SweepResult):
    """A rich table with one row per stage: values tried, kept intervals, best so far."""
    from rich.table import Table

    name = result.config.get("hyperparam", "learning_rate")
    table = Table(title=f"jaxsweep: {len(result.evaluations)} evaluations")
    table.add_column("stage", justify="right")
    table.add_column(f"{name} values")
    table.add_column("kept intervals")
    table.add_column(f"best {name}", justify="right")
    table.add_column("best score", justify="right")
    table.add_column("seconds", justify="right")
    for stage in result.stages:
        intervals = ", ".join(f"[{a:.3g}, {b:.3g}]" for a, b in stage.intervals) or "-"
        if stage.expansion:
            intervals += f" (beyond, {stage.expansion})"
        table.add_row(
            str(stage.index),
            ", ".join(f"{v:.3g}" for v in stage.lrs),
            intervals,
            f"{stage.best_lr:.4g}",
            "diverged" if math.isinf(stage.best_score) else f"{stage.best_score:.4f}",
            f"{stage.seconds:.2f}",
        )
    return table


def _demo(args) -> int:
    from rich.console import Console

    import jaxsweep
    from jaxsweep.datasets import load_digits
    from jaxsweep.models import MLP

    console = Console()
    x, y = load_digits()
    console.print(f"digits: {len(x)} images of 8x8 pixels, 10 classes")
    started = time.perf_counter()
    result = jaxsweep.run(
        lambda: MLP(hidden=(128, 128)),
        (x, y),
        epochs=args.epochs,
        stages=args.stages,
        min_improvement=args.min_improvement,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "result.json")
    result.save(path)
    console.print(stage_table(result))
    console.print(
        f"best learning rate: [bold]{result.best_lr:.4g}[/bold] "
        f"(validation loss {result.best_score:.4f}), {len(result.evaluations)} evaluations "
        f"in {seconds:.1f} s on {result.environment['device_kind']}"
    )
    console.print(f"saved {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsweep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="sweep an MLP on scikit-learn's digits")
    demo.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--stages", type=int, default=5)
    demo.add_argument(
        "--min-improvement",
        type=float,
        default=0.0,
        help="stop early below this relative gain (0: run every stage)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"jaxsweep {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
