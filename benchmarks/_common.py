"""What every benchmark shares: the machine's description, timing, and the result files.

Timings on a shared machine are noisy, so every figure is a median over repeated runs, the
methods compared are run interleaved (A B C A B C ...) in one process, and each benchmark
records the load average before and after it ran.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxsweep._environment import cpu_model, describe

# ----------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """The backend, device, CPU model, core count and library versions, with the date."""
    info = describe(jax.local_devices()[:1])
    info["cpu"] = cpu_model()
    # jaxsweep.use_cpu_cores() splits the CPU: the engine's lanes spread over these devices
    info["cpu_devices"] = len(jax.local_devices(backend="cpu"))
    info["date_utc"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        import optuna

        info["versions"]["optuna"] = optuna.__version__
    except ImportError:
        info["versions"]["optuna"] = "not installed"
    return info


def machine_slug(info: Mapping[str, Any]) -> str:
    """A file name for the machine: ``cpu-<cpu model>-<cores>c`` or ``gpu-<device kind>``."""
    if info["backend"] == "cpu":
        name = f"cpu-{info['cpu']}-{info['cpu_count']}c"
    else:
        name = f"{info['backend']}-{info['device_kind']}"
    name = re.sub(r"\((r|tm)\)|cpu @.*|processor", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine disturbs timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` took until its result was ready on the device, and the result."""
    started = time.perf_counter()
    value = jax.block_until_ready(fn())
    return time.perf_counter() - started, value


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Times each function ``repeats`` times, round-robin (A B C A B C ...).

    Round-robin spreads slow spells of a shared machine over every method alike, so ratios
    of medians stay meaningful when absolute times drift.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn)[0])
    return samples


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of repeated timings, with the samples themselves."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "repeats": len(samples),
        "samples": [round(s, 6) for s in samples],
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


# ----------------------------------------------------------------------------- result records


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """A table as plain data: the JSON keeps it, the Markdown writer renders it."""
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` significant figures, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "diverged" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _jsonable(value.item())
    return value


def render_markdown(run: Mapping[str, Any]) -> str:
    """The Markdown report of one run: the machine, then each benchmark's tables and notes."""
    info = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        f"# jaxsweep benchmarks: {run['slug']}",
        "",
        f"- date: {info['date_utc']}; mode: {run['mode']}",
        f"- machine: {info['cpu']}, {info['cpu_count']} cores; backend {info['backend']} "
        f"({info['device_kind']}); {info.get('cpu_devices', 1)} CPU device(s)",
        f"- versions: {versions}",
        "- every time is a median over repeated runs; ratios come from runs interleaved in one "
        "process",
        "",
    ]
    for bench in run["benchmarks"]:
        load = bench["load_average"]
        lines += [
            f"## {bench['title']}",
            "",
            f"Load average (1/5/15 min) at start {load['start']}, at end {load['end']}; "
            f"{bench['seconds']:.0f} s.",
            "",
        ]
        for tab in bench["tables"]:
            lines += [f"**{tab['title']}**", ""]
            lines.append("| " + " | ".join(tab["columns"]) + " |")
            lines.append("|" + "|".join("---" for _ in tab["columns"]) + "|")
            for row in tab["rows"]:
                lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
            lines.append("")
        lines += [f"- {note}" for note in bench["notes"]]
        lines.append("")
    return "\n".join(lines)


def write_results(run: Mapping[str, Any], directory: str) -> tuple[str, str]:
    """Writes ``<slug>[-quick|-dry].json`` and ``.md`` into ``directory``; returns both paths."""
    os.makedirs(directory, exist_ok=True)
    stem = run["slug"] + (f"-{run['mode']}" if run["mode"] in ("quick", "dry") else "")
    json_path = os.path.join(directory, stem + ".json")
    md_path = os.path.join(directory, stem + ".md")
    with open(json_path, "w") as handle:
        json.dump(_jsonable(run), handle, indent=1)
        handle.write("\n")
    with open(md_path, "w") as handle:
        handle.write(render_markdown(run))
    return json_path, md_path


def benchmark_record(
    name: str,
    title: str,
    tables: Sequence[dict],
    notes: Sequence[str],
    data: Mapping[str, Any],
    load_start: Sequence[float],
    seconds: float,
) -> dict[str, Any]:
    """One benchmark's output: tables for people, ``data`` (every sample) for checking."""
    return {
        "name": name,
        "title": title,
        "tables": list(tables),
        "notes": list(notes),
        "data": dict(data),
        "load_average": {"start": list(load_start), "end": load_average()},
        "seconds": seconds,
    }
