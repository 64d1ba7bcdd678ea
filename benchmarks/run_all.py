"""Runs the benchmarks and writes ``benchmarks/results/<machine>[-quick].{json,md}``.

python -m benchmarks.run_all            # benchmarks 1-5, full size (make bench)
python -m benchmarks.run_all --quick    # smaller, a few minutes (make bench-quick)
python -m benchmarks.run_all --only stage_throughput,cost_growth
python -m benchmarks.run_all --dry      # tiny sizes on any backend: checks that it all runs
python -m benchmarks.run_all --only coverage --suffix -coverage   # 6 (make bench-coverage)
python -m benchmarks.run_all --only horizon --suffix -horizon     # 7 (make bench-horizon)
python -m benchmarks.run_all --only peers --suffix -peers         # 8: grid, random search, TPE
python -m benchmarks.run_all --only source_memory --suffix -source-memory  # 9: large sources
python -m benchmarks.run_all --only accelerator --suffix -accelerator  # 10 (gpu.sh runs it first)
python -m benchmarks.run_all --only precision_study --suffix -precision-study  # 11
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from . import _common as c
from . import (
    accelerator,
    cost_growth,
    coverage,
    data_sources,
    engine_costs,
    horizon,
    peers,
    precision,
    precision_study,
    source_memory,
    stage_throughput,
    whole_sweep,
)

BENCHMARKS = {
    module.NAME: module
    for module in (
        stage_throughput,
        whole_sweep,
        precision,
        cost_growth,
        engine_costs,
        data_sources,
        coverage,
        horizon,
        peers,
        source_memory,
        accelerator,
        precision_study,
    )
}
# the coverage, horizon and peers benchmarks train many sweeps, the source-memory one starts
# a process per size, and the accelerator one trains models of real size (compiling them takes
# minutes on a CPU), and the precision study trains 60 sweeps of 12 stages: asked for by name,
# into their own file
ASKED_BY_NAME = ("coverage", "horizon", "peers", "source_memory", "accelerator", "precision_study")
DEFAULT = tuple(name for name in BENCHMARKS if name not in ASKED_BY_NAME)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    sizes.add_argument("--gpu", action="store_true", help="sizes for an accelerator (gpu.sh)")
    sizes.add_argument(
        "--dry", action="store_true", help="tiny sizes, seconds: every code path, no timings"
    )
    sizes.add_argument(
        "--search",
        action="store_true",
        help="with --only coverage: the defaults against precision=0.5 (20 MLP sweeps each)",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--out", default=RESULTS, help="folder for the JSON and Markdown files")
    parser.add_argument(
        "--suffix", default="", help="added to the results' file names, e.g. -coverage"
    )
    parser.add_argument(
        "--lanes",
        default=None,
        help="lane counts for cost_growth, e.g. 1,2,5,10,20,50,100 on a GPU",
    )
    parser.add_argument(
        "--cpu-devices",
        default="cores",
        help="CPU devices: 'cores' (jaxsweep.use_cpu_cores(), as the jaxsweep command does; "
        "the sweep's lanes train in parallel) or a count (1: JAX's default)",
    )
    return parser


def _split_cpu(cpu_devices: str) -> None:
    """Makes the CPU devices before JAX starts; a process that already computed keeps its own."""
    from jaxsweep._cores import try_use_cpu_cores, use_cpu_cores

    if cpu_devices == "cores":
        try_use_cpu_cores()
    elif cpu_devices.isdigit():
        use_cpu_cores(int(cpu_devices))
    else:
        raise SystemExit(f"--cpu-devices: expected 'cores' or a count, got {cpu_devices!r}")


def _run_one(name: str, mode: str, overrides: dict) -> dict:
    """One benchmark's record; a failure becomes a record saying so, and the next one runs.

    A run on a borrowed accelerator may be the only one: one benchmark's error (a library
    version's change, say) must not cost the others their numbers.
    """
    started, load = time.perf_counter(), c.load_average()
    try:
        return BENCHMARKS[name].run(mode=mode, **overrides)
    except Exception as error:  # reported in the results; the next benchmark runs
        traceback.print_exc()
        note = f"failed: {type(error).__name__}: {error}"
        seconds = time.perf_counter() - started
        return c.benchmark_record(name, f"{name} (failed)", [], [note], {}, load, seconds)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"--only: unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
        return 2
    _split_cpu(args.cpu_devices)
    mode = "quick" if args.quick else "gpu" if args.gpu else "dry" if args.dry else "full"
    if args.search:
        if names != ["coverage"]:
            print("--search: only the coverage benchmark has it (add --only coverage)")
            return 2
        mode = "search"
    # a timed sweep compiles, as a first one does; nothing is written into the user's cache
    os.environ.setdefault("JAXSWEEP_CACHE_DIR", "off")
    info = c.machine()
    run = {
        "slug": c.machine_slug(info) + args.suffix,
        "mode": mode,
        "machine": info,
        "load_average": {"start": c.load_average()},
        "benchmarks": [],
    }
    started = time.perf_counter()
    try:
        for name in names:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            overrides = {}
            if name == "cost_growth" and args.lanes:
                overrides["lanes"] = tuple(int(n) for n in args.lanes.split(","))
            # long on an accelerator: keep each model's (each part's) numbers as they come
            if name in ("engine_costs", "accelerator"):

                def on_partial(record):
                    c.write_results({**run, "benchmarks": [*run["benchmarks"], record]}, args.out)

                overrides["on_partial"] = on_partial
            run["benchmarks"].append(_run_one(name, mode, overrides))
            # written after every benchmark: a run that is cut short keeps what it measured
            run["load_average"]["end"] = c.load_average()
            run["seconds"] = time.perf_counter() - started
            paths = c.write_results(run, args.out)
    except KeyboardInterrupt:
        print(f"interrupted during {name}; kept the benchmarks before it", file=sys.stderr)
        if not run["benchmarks"]:
            return 130
    print(c.render_markdown(run))
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
