"""The ``jaxsweep`` command.

``jaxsweep demo`` sweeps an MLP on the bundled digits data and writes result, report and
figures; ``jaxsweep run FILE.py:FACTORY --data FILE.npz`` does the same for your own model
and data; ``jaxsweep report DIR`` rebuilds report and figures from ``DIR/result.json`` alone;
``jaxsweep show DIR`` prints the per-stage table and the best value (both also take the
``result.json`` path itself). Warnings print as one line each (``warning: ...``), without
Python's source location, and Ctrl-C ends a sweep with one line saying how to go on (no
traceback). On a CPU, ``demo`` and
``run`` train a stage's lanes in parallel, one JAX device per core
(``jaxsweep.use_cpu_cores``; ``JAX_NUM_CPU_DEVICES=1`` keeps one device).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import warnings

from ._result import SweepResult
from .report import TIME_COVERS, metric_name, precision_sentence


def _console():
    """A rich console; piped or captured output gets room for the stage table's columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def stage_table(result: SweepResult):
    """A rich table with one row per stage: values tried, kept intervals, best so far."""
    from rich.table import Table

    name = result.value_name
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
            ", ".join(f"{v:.3g}" for v in stage.values),
            intervals,
            f"{stage.best_value:.4g}",
            "diverged" if math.isinf(stage.best_score) else f"{stage.best_score:.4f}",
            f"{stage.seconds:.2f}",
        )
    return table


def _demo(args) -> int:
    import jaxsweep
    from jaxsweep.datasets import load_digits
    from jaxsweep.models import MLP

    console = _console()
    _check_writable(args.out, args.overwrite)  # fail before the sweep, not after it
    _check_keep(args)
    x, y = load_digits()
    console.print(f"digits: {len(x)} images of 8x8 pixels, 10 classes")
    return _sweep_and_write(
        console,
        args,
        lambda: jaxsweep.run(
            lambda: MLP(hidden=(128, 128)),
            (x, y),
            epochs=args.epochs,
            stages=args.stages,
            seeds=args.seeds,
            min_improvement=args.min_improvement,
            precision=args.precision,
            max_lanes=args.max_lanes,
            target_steps=args.target_steps,
            target_epochs=args.target_epochs,
            keep="best" if args.keep_best else None,
            progress=not args.quiet,
            checkpoint_dir=args.checkpoint_dir,
        ),
    )


def _run(args) -> int:
    import jaxsweep

    from ._userfiles import load_factory, load_npz, parse_optimizer

    console = _console()
    # every input is read and checked before the sweep starts compiling
    model_fn = load_factory(args.model)
    data = load_npz(args.data)
    optimizer = parse_optimizer(args.optimizer)
    _check_writable(args.out, args.overwrite)
    _check_keep(args)
    options = {"lr_range": tuple(args.lr_range)} if args.lr_range else {}
    return _sweep_and_write(
        console,
        args,
        lambda: jaxsweep.run(
            model_fn,
            data,
            optimizer=optimizer,
            loss=args.loss,
            schedule=args.schedule,
            metric=args.metric,
            mode=args.mode,
            epochs=args.epochs,
            steps=args.steps,
            eval_every=args.eval_every,
            batch_size=args.batch_size,
            stages=args.stages,
            seeds=args.seeds,
            seed=args.seed,
            min_improvement=args.min_improvement,
            precision=args.precision,
            max_lanes=args.max_lanes,
            target_steps=args.target_steps,
            target_epochs=args.target_epochs,
            keep="best" if args.keep_best else None,
            progress=not args.quiet,
            checkpoint_dir=args.checkpoint_dir,
            **options,
        ),
    )


def _sweep_and_write(console, args, sweep) -> int:
    """Runs ``sweep()``, then saves result.json, the report and the figures in ``args.out``."""
    result = sweep()
    if args.checkpoint_dir is not None:
        console.print(_resume_line(result.environment["checkpoint"]))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "result.json")
    result.save(path)
    console.print(stage_table(result))
    console.print(_best_lines(result, with_best=True))
    written = _write_outputs(result, args.out)
    if result.best_variables:  # --keep-best: the weights beside the result
        from ._keep import save_variables

        target = os.path.join(args.out, BEST_VARIABLES)
        if os.path.isdir(target):  # checked before training: --overwrite was given
            shutil.rmtree(target)
        written.append(f"{save_variables(result.best_variables, target)} (one per seed)")
    console.print(f"saved {path}, {', '.join(written)}")
    return 0


BEST_VARIABLES = "best_variables"  # the folder --keep-best writes beside result.json


def _check_keep(args) -> None:
    """--keep-best never replaces weights of an earlier run without --overwrite."""
    target = os.path.join(args.out, BEST_VARIABLES)
    if getattr(args, "keep_best", False) and os.path.exists(target) and not args.overwrite:
        raise FileExistsError(
            f"{target}: exists (weights of an earlier run); pass --overwrite to replace them, "
            "or another --out"
        )


def _resume_line(record: dict) -> str:
    """What the checkpoint directory contributed to this run, in one line."""
    origin = record["resumed_from"]
    if origin == "finished":
        return f"the sweep in {record['directory']} was finished: its stored result, no training"
    if origin is None:
        return f"checkpoints in {record['directory']}: started afresh"
    return (
        f"resumed from {record['directory']} at stage {origin['stage']} after "
        f"{origin['epoch']} epochs; {record['epochs_trained']} epochs trained in this run"
    )


def _check_writable(folder: str, overwrite: bool, keep: tuple[str, ...] = ()) -> None:
    """Creates ``folder`` if needed; OSError with the folder's name when it cannot be written,
    FileExistsError when it holds files of the outputs' names that jaxsweep did not write
    (unless ``overwrite``)."""
    from ._outputs import check_outputs

    check_outputs(folder, overwrite, keep)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OSError(f"{folder}: cannot create the output folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder}: the output folder is not writable")


def _write_outputs(result: SweepResult, folder: str) -> list[str]:
    """Figures, then the report that links them; returns the written paths."""
    from .plots import plot
    from .report import report

    figures = plot(result, folder)
    texts = report(result, folder)
    return [
        texts["report"],
        texts["methods"],
        f"{len(figures)} figures (PNG and PDF) in {os.path.join(folder, 'figures')}",
    ]


def _result_path(given: str) -> tuple[str, str]:
    """``(folder, result.json)`` from a folder holding result.json or the file itself."""
    if os.path.isfile(given):
        return os.path.dirname(given) or ".", given
    if not os.path.isdir(given):
        raise FileNotFoundError(f"{given}: no such folder or file")
    path = os.path.join(given, "result.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (jaxsweep demo --out {given} writes one)")
    return given, path


def _load_dir(given: str) -> tuple[str, SweepResult]:
    """The folder and the result of ``jaxsweep report/show DIR`` (or ``DIR/result.json``)."""
    from ._result import load

    folder, path = _result_path(given)
    return folder, load(path)


def _best_lines(result: SweepResult, with_best: bool = False) -> str:
    """The best value's interval and the refined value, with the methods that produced them;
    with ``with_best``, first the best value, the evaluations and the sweep's time."""
    best, refined = result.confidence.best, result.confidence.refined
    lines = [
        f"{best.label} for the optimum: [{best.low:.4g}, {best.high:.4g}] "
        f"({best.method.replace('_', ' ')})",
        f"refined {result.value_name} (optimum of the fitted curve): {refined.lr:.4g} "
        f"({refined.method.replace('_', ' ')}, {result.config.get('seeds', 1)} seeds)",
        precision_sentence(result),
    ]
    if result.horizon is not None:
        lines.append(f"for the target run: {result.horizon.note}")
    if with_best:
        score = "diverged" if math.isinf(result.best_score) else f"{result.best_score:.4f}"
        kind, count = (
            result.environment.get("device_kind", "?"),
            result.environment.get("device_count", 1),
        )
        device = kind if count == 1 else f"{count} {kind} devices"
        lines[:0] = [
            f"best {result.value_name}: [bold]{result.best_value:.4g}[/bold] "
            f"({metric_name(result.metric)} {score}), stop reason: {result.stop_reason}",
            f"{len(result.evaluations)} evaluations in {result.seconds:.2f} s on {device} "
            f"({TIME_COVERS})",
        ]
    return "\n".join(lines)


def _report(args) -> int:
    from .report import markdown, methods_tex

    folder, result = _load_dir(args.dir)
    _check_writable(folder, args.overwrite, keep=("result.json",))
    markdown(result), methods_tex(result)  # a result that cannot be reported fails here,
    written = _write_outputs(result, folder)  # before any file is replaced
    _console().print(f"rebuilt from {_result_path(args.dir)[1]}: {', '.join(written)}")
    return 0


def _show(args) -> int:
    _, result = _load_dir(args.dir)
    console = _console()
    console.print(stage_table(result))
    console.print(_best_lines(result, with_best=True))
    return 0


_STAGES_HELP = "the most stages (default 5, or 20 with --precision)"
_OVERWRITE_HELP = (
    "replace files of the outputs' names that jaxsweep did not write (its own outputs are "
    "always replaced)"
)


def _add_sweep_options(parser: argparse.ArgumentParser, min_improvement: float | None) -> None:
    """The options every sweeping command shares: early stop, quiet, checkpoints."""
    default = "0.01 with one seed, off with several" if min_improvement is None else min_improvement
    parser.add_argument(
        "--min-improvement",
        type=float,
        default=min_improvement,
        help=f"stop early below this relative gain (default {default}; 0: never; several "
        "seeds also stop when nothing is left to resolve)",
    )
    parser.add_argument(
        "--precision",
        type=float,
        default=None,
        help="keep refining until the 95%% interval lies within best/(1+P) .. best*(1+P), "
        "e.g. 0.5 (default: stop by resolution)",
    )
    parser.add_argument(
        "--max-lanes",
        type=int,
        default=None,
        help="the most lanes (values x seeds) the sweep may train",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--target-steps",
        type=int,
        default=None,
        help="the length of the run the rate is for: retrain around the optimum at 2x and 4x "
        "the sweep's steps and give the rate for this many steps (result.horizon)",
    )
    target.add_argument(
        "--target-epochs", type=int, default=None, help="the same as --target-steps, in epochs"
    )
    parser.add_argument(
        "--keep-best",
        action="store_true",
        help="save the best value's trained weights (every seed) in OUT/best_variables "
        "(Orbax; jaxsweep.load_variables reads them)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save Orbax checkpoints here; rerun the same command to resume a killed sweep",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsweep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="sweep an MLP on scikit-learn's digits")
    demo.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--stages", type=int, default=None, help=_STAGES_HELP)
    demo.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="initialisations per rate (default 3, or 10 with --precision 0.5; 1: a one-seed "
        "interval, blind to seed-to-seed noise)",
    )
    _add_sweep_options(demo, min_improvement=0.0)
    demo.set_defaults(handler=_demo)
    _add_run_parser(commands)
    rebuild = commands.add_parser(
        "report", help="rebuild report.md, methods.tex and figures from DIR/result.json"
    )
    rebuild.add_argument(
        "dir", metavar="DIR", help="folder holding result.json (or the result.json itself)"
    )
    rebuild.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    rebuild.set_defaults(handler=_report)
    show = commands.add_parser("show", help="print the per-stage table and the best value")
    show.add_argument(
        "dir", metavar="DIR", help="folder holding result.json (or the result.json itself)"
    )
    show.set_defaults(handler=_show)
    return parser


def _add_run_parser(commands) -> None:
    run = commands.add_parser(
        "run",
        help="sweep your own model on your own data",
        description="Sweep the model built by FACTORY in FILE.py on the arrays of an .npz file "
        "(x and y, or x_train, y_train, x_val and y_val), then write result.json, report.md, "
        "methods.tex and figures/ to --out.",
    )
    run.add_argument("model", metavar="FILE.py:FACTORY", help="file and name of the model factory")
    run.add_argument("--data", required=True, metavar="FILE.npz", help="the training data")
    run.add_argument("--out", default=os.path.join("runs", "sweep"), help="output folder")
    budget = run.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="passes over the data (3)")
    budget.add_argument("--steps", type=int, default=None, help="training steps per value")
    run.add_argument("--eval-every", type=int, default=None, help="steps between validations")
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument(
        "--lr-range", type=float, nargs=2, metavar=("LO", "HI"), help="stage-0 learning rates"
    )
    run.add_argument(
        "--optimizer", default="adam", help="an optax name, e.g. adam or 'sgd(momentum=0.9)'"
    )
    run.add_argument("--loss", default="auto", choices=("auto", "cross_entropy", "mse"))
    run.add_argument(
        "--schedule",
        default=None,
        choices=("constant", "cosine", "linear", "warmup_cosine", "warmup_linear"),
        help="a schedule shape; the swept learning rate is its peak",
    )
    run.add_argument(
        "--metric",
        default="val_loss",
        help="the validation metric that ranks the values: val_loss (the --loss on the "
        "validation set) or, with cross-entropy on integer class labels, val_accuracy "
        "(with --mode max)",
    )
    run.add_argument(
        "--mode",
        default="min",
        choices=("min", "max"),
        help="which way is better: min for a loss, max for an accuracy",
    )
    run.add_argument("--stages", type=int, default=None, help=_STAGES_HELP)
    run.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="initialisations per value (default 3, or 10 with --precision 0.5; 1: a one-seed "
        "interval, blind to seed-to-seed noise)",
    )
    run.add_argument("--seed", type=int, default=0)
    _add_sweep_options(run, min_improvement=None)
    run.set_defaults(handler=_run)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Prints a warning as the command's other messages: its text, not where it was raised."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


# the commands that train: they own their process, so its CPU becomes one device per core
_TRAINING_COMMANDS = ("demo", "run")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _TRAINING_COMMANDS:
        from ._cores import try_use_cpu_cores

        try_use_cpu_cores()  # lanes in parallel on a CPU; JAX_NUM_CPU_DEVICES=1 keeps one
    with warnings.catch_warnings():  # restores the caller's warning display afterwards
        warnings.showwarning = _one_line_warning
        try:
            return args.handler(args)
        except (ValueError, TypeError, OSError) as error:
            print(f"jaxsweep {args.command}: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
            print(_interrupted_line(args), file=sys.stderr)
            return 130


def _interrupted_line(args) -> str:
    """What Ctrl-C leaves behind, and how to go on from it."""
    if args.command not in _TRAINING_COMMANDS:
        return "interrupted"
    if args.checkpoint_dir is None:
        return "interrupted: nothing was saved (pass --checkpoint-dir to make a sweep resumable)"
    return (
        "interrupted: rerun the same command to resume from the checkpoint in "
        f"{args.checkpoint_dir}"
    )


if __name__ == "__main__":
    sys.exit(main())
