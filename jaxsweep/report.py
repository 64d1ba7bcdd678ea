"""Results people read: a Markdown report and a LaTeX methods paragraph.

Every number written here is computed from a :class:`~jaxsweep.SweepResult` alone, so
``jaxsweep report DIR`` rebuilds the same text from ``DIR/result.json`` on any machine.
The text names the swept hyperparameter and describes its scale: a linear momentum sweep is
never called a learning-rate search nor said to be log-spaced. The figures the report links to
are drawn by :func:`jaxsweep.plot`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import NamedTuple

from . import _confidence, _selector
from ._config import default_seeds
from ._efficiency import efficiency
from ._result import SweepResult
from .plots import FIGURE_DIR, FIGURES, caption, curve_words, figures_for, metric_name

# What ``result.seconds`` covers, in the words every output uses.
TIME_COVERS = "set-up, compilation and training"


# ----------------------------------------------------------------------------- formatting


def _g(value: float, digits: int = 4) -> str:
    """A value or score for text: 4 significant digits, 'diverged' for +inf."""
    if math.isinf(value) and value > 0:
        return "diverged"
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _interval(low: float, high: float) -> str:
    return f"[{_g(low)}, {_g(high)}]"


def _axis_words(result: SweepResult) -> str:
    """What the parabola is fitted against: the log of the value, or the value itself."""
    return f"log {result.value_name}" if result.scale == "log" else result.value_name


def _plateau_words(result: SweepResult) -> str:
    """``values at or below 1e-03 score alike with the best`` for the result's first flat end."""
    plateau = result.plateaus[0]
    at = "at or below" if plateau.direction == "down" else "at or above"
    return f"values {at} {_g(plateau.bound, 3)} score alike with the best"


def _t_words(result: SweepResult) -> str:
    """``Student's t, 2 degrees of freedom``: the seeds' test, with its degrees of freedom."""
    df = int(result.config.get("seeds", 1)) - 1
    return f"Student's t, {df} degree{'s' if df != 1 else ''} of freedom"


def method_name(method: str, result: SweepResult) -> str:
    """An interval method in words, for ``result``'s hyperparameter and scale."""
    if method == "plateau":
        return f"plateau ({_plateau_words(result)}; no bound on that side)"
    return {
        "seed_curve": f"{curve_words(result.confidence.best.fit)} in {_axis_words(result)} "
        "fitted to each seed's scores, the values where the seed-averaged slope is not "
        f"significantly different from zero ({_t_words(result)})",
        "not_worse": "values not significantly worse than the best over seeds (paired "
        f"{_t_words(result)})",
        "quadratic_fit": f"quadratic fit of one seed's score against {_axis_words(result)} "
        "(Fieller interval)",
        "neighbours": "evaluated neighbours of the best value",
        "none": "none (every evaluation diverged)",
    }[method]


def covers(result: SweepResult) -> str:
    """What the interval shown covers, in one sentence, with the number of seeds."""
    seeds = int(result.config.get("seeds", 1))
    target, name = metric_name(result.metric), result.value_name
    if result.confidence.best.method == "none":
        return "Every evaluation diverged, so there is no interval."
    if result.confidence.best.method == "plateau":
        return (
            f"No 95% interval bounds the {name} that optimises the expected {target}: on the "
            f"plateau every value scored alike over the {seeds} seeds, so any of them is as good."
        )
    if seeds < 2:
        return (
            "One seed: the interval describes how this one initialisation and batch order "
            f"scores neighbouring values; it cannot include seed-to-seed variation, so it is not "
            f"a 95% interval for the {name} that optimises the expected {target} (run with "
            "seeds >= 2 for one)."
        )
    return (
        f"The 95% interval is for the {name} that optimises the expected {target} over the "
        f"training randomness (initialisation and batch order), estimated from {seeds} seeds "
        "trained at every value: its width includes the seed-to-seed variation."
    )


def _headline_interval(result: SweepResult) -> str:
    """The interval (or the plateau) and the refined value, for the report's first line."""
    best, refined, name = result.confidence.best, result.confidence.refined, result.value_name
    if best.method == "plateau":
        edge = result.plateaus[0].edge
        return (
            f"on a plateau: {_plateau_words(result)} (evaluated out to {_g(edge)}; nothing "
            f"bounds the optimum that way, any of them is as good). "
        )
    return (
        f"{best.label} {_interval(best.low, best.high)} from the "
        f"{method_name(best.method, result)}; refined {name} {_g(refined.lr)}. "
    )


def all_diverged(result: SweepResult) -> bool:
    """Whether every evaluation diverged (in at least one seed): no value trained cleanly."""
    return all(e.diverged for e in result.evaluations)


def _seeds_diverged(evaluation) -> str:
    """``in 1 of 3 seeds`` for an evaluation that diverged, as far as the result records."""
    flags = evaluation.seed_diverged or tuple(not math.isfinite(s) for s in evaluation.seed_scores)
    count, seeds = sum(flags), len(evaluation.seed_scores)
    return f"in {count} of {seeds} seeds" if 0 < count and seeds > 1 else ""


def _number(value: float) -> str:
    """A value for plain text (4 significant digits)."""
    return _g(value)


def diverged_end_sentence(result: SweepResult, number=_number) -> str:
    """Says when an end of the interval shown is a value that diverged (``""`` otherwise).

    The interval is reported as the result computes it (``result.value_interval``, the same in
    ``result.json``, ``jaxsweep show`` and here); an end that diverged is named as such, with
    the last value on that side that trained without diverging, rather than moved.
    """
    best = result.confidence.best
    if best.method in ("none", "plateau") or all_diverged(result):
        return ""
    sentences = []
    for side, end in (("lower", best.low), ("upper", best.high)):
        hit = [
            e
            for e in result.evaluations
            if e.diverged and math.isfinite(end) and math.isclose(e.value, end, rel_tol=1e-9)
        ]
        if not hit:
            continue
        clean = [e.value for e in result.evaluations if not e.diverged]
        inward = [v for v in clean if (v > end if side == "lower" else v < end)]
        last = (min if side == "lower" else max)(inward) if inward else None
        where = _seeds_diverged(hit[0])
        sentence = (
            f"The interval's {side} end, {number(end)}, is an evaluated value that diverged"
            + (f" ({where})" if where else "")
        )
        if last is not None:
            sentence += (
                f"; the {'smallest' if side == 'lower' else 'largest'} value inside the interval "
                f"that trained without diverging is {number(last)}"
            )
        sentences.append(sentence + ".")
    return " ".join(sentences)


def _starting_range(result: SweepResult) -> tuple[float, float] | None:
    cfg = result.config
    span = cfg.get("value_range") or cfg.get("lr_range") or cfg.get("hyperparam_range")
    return (float(span[0]), float(span[1])) if span else None


def outside_range_sentence(result: SweepResult, number=_number) -> str:
    """Says when the best (or the refined) value lies outside the stated starting range."""
    span = _starting_range(result)
    if span is None or all_diverged(result):
        return ""
    low, high = span
    name, sentences = result.value_name, []
    candidates = [("best evaluated", result.best_value)]
    if result.confidence.best.method != "plateau":
        candidates.append(("refined", result.confidence.refined.lr))
    for what, value in candidates:
        if not math.isfinite(value) or low <= value <= high:
            continue
        if what == "refined" and sentences and math.isclose(value, result.best_value):
            continue  # the same value, said once
        side = "below" if value < low else "above"
        sentences.append(
            f"The {what} {name}, {number(value)}, lies {side} the starting range "
            f"({number(low)} to {number(high)}): later stages searched beyond it."
        )
    return " ".join(sentences)


# ----------------------------------------------------------------------------- stages


class StageKind(NamedTuple):
    """What a stage did, read back from the result (see :func:`stage_kinds`)."""

    kind: str  # "grid" | "expansion" | "precision" | "refined" | "unrecorded"
    best_ranked: bool | None  # refined: whether the kept intervals are the best-ranked ones
    ranked: tuple[tuple[float, float], ...]  # refined: the best-ranked intervals, as many


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)


def _neighbours(interval: tuple[float, float], before: list[float]) -> bool:
    """Whether ``interval`` runs between two neighbouring values evaluated before."""
    low, high = interval
    ends = any(_close(low, v) for v in before) and any(_close(high, v) for v in before)
    return ends and not any(low < v < high and not _close(v, low) for v in before)


def stage_kinds(result: SweepResult) -> list[StageKind]:
    """For each stage: the grid, an expansion beyond the evaluated values, a precision stage
    (values spread over the interval and a margin), or a refinement of kept intervals (and
    whether they were the best-ranked by score), from the stages' recorded intervals."""
    kinds = []
    precision = result.config.get("precision") is not None
    for number, stage in enumerate(result.stages):
        before = [e for e in result.evaluations if e.stage < stage.index]
        if number == 0 and not before:
            kinds.append(StageKind("grid", None, ()))
        elif stage.expansion:
            kinds.append(StageKind("expansion", None, ()))
        elif not stage.intervals:
            kinds.append(StageKind("unrecorded", None, ()))
        elif precision and not all(
            _neighbours(iv, [e.value for e in before]) for iv in stage.intervals
        ):
            kinds.append(StageKind("precision", None, ()))
        else:
            values = [e.value for e in before]
            scores = [result.objective(e.score) for e in before]
            ranked = _selector.rank_intervals(values, scores)[: len(stage.intervals)]
            top = tuple(sorted((iv.low, iv.high) for iv in ranked))
            kept = tuple(sorted(stage.intervals))
            same = len(top) == len(kept) and all(
                _close(a[0], b[0]) and _close(a[1], b[1]) for a, b in zip(top, kept, strict=True)
            )
            kinds.append(StageKind("refined", same, top))
    return kinds


def _spans(intervals, number) -> str:
    words = [f"{number(a)} to {number(b)}" for a, b in intervals]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def stage_sentences(result: SweepResult, number=_number, stage_word: str = "stage ") -> list[str]:
    """One sentence per stage after the first: what it searched, in this run's numbers (the
    words need no escaping in LaTeX; ``number`` formats the values)."""
    sentences = []
    seeds = int(result.config.get("seeds", 1))
    for stage, kind in zip(result.stages, stage_kinds(result), strict=True):
        head = f"{stage_word}{stage.index}"
        new = _count(len(stage.values), "value")
        if kind.kind == "grid":
            continue
        if kind.kind == "expansion":
            edge = "largest" if stage.expansion == "up" else "smallest"
            where = f", {_spans(stage.intervals, number)}" if stage.intervals else ""
            sentences.append(f"{head} searched beyond the {edge} evaluated value{where} ({new}).")
        elif kind.kind == "unrecorded":
            low, high = min(stage.values), max(stage.values)
            sentences.append(
                f"{head} trained {new} from {number(low)} to {number(high)} (the intervals they "
                "refine were not recorded)."
            )
        elif kind.kind == "precision":
            sentences.append(
                f"{head} spread {new} over {_spans(stage.intervals, number)}: the interval for "
                f"the optimum after the stage before, with a margin on each side, for the "
                f"requested precision (values spread for the fit rather than packed at the best)."
            )
        elif kind.best_ranked:
            kept = len(stage.intervals)
            which = "the best-ranked interval" if kept == 1 else f"the {kept} best-ranked intervals"
            sentences.append(
                f"{head} refined {which} between neighbouring evaluated values "
                f"({_spans(stage.intervals, number)}) with {new}."
            )
        else:
            sentences.append(
                f"{head} refined {_spans(stage.intervals, number)} with {new}: not the "
                f"best-ranked by score ({_spans(kind.ranked, number)}), but intervals next to the "
                f"values tied with the best over the {seeds} seeds, chosen by the noise-aware "
                "rule."
            )
    return [s[0].upper() + s[1:] for s in sentences]


def _lanes_words(strategy: str) -> str:
    if strategy == "vmap":
        return (
            "All lanes of a stage (every value with every seed) were trained simultaneously in "
            "one vectorised program (jax.vmap)."
        )
    if strategy == "map":
        return (
            "The lanes of a stage (every value with every seed) were trained one after another "
            "inside one compiled program (lax.map)."
        )
    if strategy.startswith("chunks:"):
        size = strategy.partition(":")[2]
        return (
            f"The lanes of a stage (every value with every seed) were trained in groups of "
            f"{size}, each group vectorised (jax.vmap), the groups one after another inside one "
            "compiled program (lax.map)."
        )
    if strategy == "separate":
        return (
            "Each lane of a stage (one value with one seed) was trained by its own call of one "
            "compiled one-lane program."
        )
    return f"The lanes of a stage ran with the lane strategy {strategy}."


def _bytes(count: float) -> str:
    """A byte count in words: binary units from a kibibyte up."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{_g(count / size, 3)} {unit}"
    return f"{int(count)} bytes"


def lanes_sentence(result: SweepResult) -> str:
    """How the lanes of a stage ran, from ``environment["lanes"]``; ``""`` where the result
    does not record it (results written before it was). Says when the strategy was timed
    against another, and when a memory limit split the lanes into groups."""
    lanes = result.environment.get("lanes")
    strategy = lanes.get("strategy") if isinstance(lanes, dict) else None
    if not strategy:
        return ""
    sentence = _lanes_words(str(strategy))
    seconds = lanes.get("seconds_per_call")
    if lanes.get("chosen_by") in ("measured", "remembered") and isinstance(seconds, dict):
        times = ", ".join(f"{name} {_g(value * 1e3, 3)} ms" for name, value in seconds.items())
        sentence += (
            " The strategy was the fastest of those timed on one training call of a stage "
            f"({times})."
        )
    memory = lanes.get("memory")
    if isinstance(memory, dict) and memory.get("chunked") and lanes.get("chosen"):
        sentence += (
            f" Its groups are smaller than the {lanes['chosen']} strategy chosen, so that a "
            f"call's compiled memory estimate fits the limit of {_bytes(memory['limit_bytes'])} "
            "per device."
        )
    return sentence


def precision_sentence(result: SweepResult) -> str:
    """How precisely the optimum is located, and what asking for more would cost."""
    reached, lanes = result.precision, result.lanes
    wanted = result.config.get("precision")
    if math.isinf(reached):
        why = (
            f"{_plateau_words(result)}, so nothing bounds the optimum on that side"
            if result.plateaus
            else "the interval is open or missing"
        )
        return f"No precision can be stated: {why}."
    value = result.confidence.best.lr
    if result.scale == "log":
        within = f"{_g(value)}/{_g(1 + reached, 3)} to {_g(value)}x{_g(1 + reached, 3)}"
    else:
        within = f"{_g(value)} +/- {_g(reached * abs(value), 3)}"
    sentence = (
        f"Precision reached: {_g(reached, 3)} (the interval's relative half-width: it lies "
        f"within {within}) after {lanes} lanes."
    )
    # widths of intervals from seeds fall about as one over the square root of the lanes
    # near the optimum: a rough guide to the cost, said as one
    if wanted is not None and reached <= float(wanted):
        return sentence + f" The requested precision {_g(float(wanted), 3)} was reached."
    if wanted is not None:
        more = math.ceil(lanes * ((reached / float(wanted)) ** 2 - 1))
        return sentence + (
            f" The requested precision {_g(float(wanted), 3)} was not reached; if the width "
            f"keeps shrinking as one over the square root of the lanes, about {more} more "
            "lanes would reach it (raise max_lanes or stages)."
        )
    half = float(_g(reached / 2, 2))
    seeds = int(result.config.get("seeds", 1))
    return sentence + (
        f" Halving it would take about {3 * lanes} more lanes at {seeds} seed"
        f"{'s' if seeds != 1 else ''} per value, if the width keeps shrinking as one over the "
        f"square root of the lanes; run(precision={_g(half, 2)}) would train "
        f"{default_seeds(half)} seeds per value unless seeds= is given."
    )


def _saved_cell(saved: float, ahead: bool, more: str) -> str:
    """The table's ``saved`` cell: ``80.0%``, or ``none (7 more)`` where the sweep was behind."""
    return f"{100 * saved:.1f}%" if ahead else f"none ({more})"


def _md_escape(text: str) -> str:
    """Text for a Markdown table cell or a code span: no cell break, no closing backtick, no
    HTML a renderer would run (a result file may come from anywhere)."""
    text = str(text).replace("|", "\\|").replace("`", "'")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PLAIN = re.compile(r"[^A-Za-z0-9_.-]")


def _displayable(result: SweepResult) -> SweepResult:
    """``result`` with a swept name that is safe in Markdown and LaTeX text and labels.

    A hyperparameter is an optimizer's keyword argument, so a real one is a Python name; a
    result file holding anything else (``\\immediate\\write18{...}``) is shown with those
    characters as ``?``, never passed on to TeX or a Markdown renderer as they are.
    """
    name = result.hyperparam
    plain = _PLAIN.sub("?", name)
    if plain == name:
        return result
    return dataclasses.replace(result, config={**result.config, "hyperparam": plain})


def _stage_rows(result: SweepResult) -> list[str]:
    name = result.value_name
    rows = [
        f"| stage | {name} values evaluated | kept intervals | best {name} after stage "
        "| best score after stage | seconds (compile) |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for stage, kind in zip(result.stages, stage_kinds(result), strict=True):
        kept = ", ".join(_interval(a, b) for a, b in stage.intervals)
        if kind.kind == "grid":
            kept = "(initial grid)"
        elif kind.kind == "expansion":
            edge = "largest" if stage.expansion == "up" else "smallest"
            kept = f"beyond the {edge} evaluated value: {kept}"
        elif kind.kind == "precision":
            kept = f"spread over {kept} (precision)"
        elif kind.kind == "unrecorded":
            kept = "(not recorded)"
        elif not kind.best_ranked:
            kept += " (not the best-ranked: noise-aware)"
        rows.append(
            f"| {stage.index} | {', '.join(_g(v, 3) for v in stage.values)} | {kept} "
            f"| {_g(stage.best_value)} | {_g(stage.best_score)} "
            f"| {stage.seconds:.2f} ({stage.compile_seconds:.2f}) |"
        )
    return rows


def _config_rows(result: SweepResult) -> list[str]:
    rows = ["| setting | value |", "|---|---|"]
    for key in sorted(result.config):
        rows.append(f"| {key} | {_md_escape(result.config[key])} |")
    rows.append(f"| parameters | {result.param_count} |")
    return rows


def budget_phrase(config: dict) -> str:
    """``3 epochs`` for an epoch budget, ``2000 training steps`` for a step budget."""
    epochs = config.get("epochs")
    if epochs is not None:
        return f"{int(epochs)} epoch{'s' if int(epochs) != 1 else ''}"
    return f"{int(config.get('steps', 0))} training steps"


def training_phrase(config: dict) -> str:
    """``3 epochs (18 training steps) with batch size 32``: the budget and the batch."""
    phrase = budget_phrase(config)
    steps = config.get("steps")
    if config.get("epochs") is not None and steps:
        phrase += f" ({int(steps)} training steps)"
    return phrase + f" with batch size {int(config.get('batch_size', 0))}"


REPORTED_VALUES = 5  # rows of the report's validation-metrics table


def _metric_rows(result: SweepResult) -> list[str]:
    """The best values by score, with the final value of every validation metric."""
    names = result.evaluations[0].validation_metrics()
    ranked = sorted(result.evaluations, key=lambda e: (result.objective(e.score), e.value))
    header = " | ".join(
        f"**{metric_name(n)}**" if n == result.metric else metric_name(n) for n in names
    )
    rows = [f"| value | stage | {header} |", "|" + "---|" * 2 + "---:|" * len(names)]
    for evaluation in ranked[:REPORTED_VALUES]:
        cells = " | ".join(
            "diverged" if evaluation.diverged else _g(evaluation.series(n)[-1]) for n in names
        )
        rows.append(f"| {_g(evaluation.value)} | {evaluation.stage} | {cells} |")
    return rows


def _better(result: SweepResult) -> str:
    return "lower" if result.mode == "min" else "higher"


def _schedule_sentence(result: SweepResult, escape) -> str:
    """`` The swept ... is the peak of a <schedule> schedule.`` or nothing without one."""
    schedule = result.config.get("schedule")
    if not schedule:
        return ""
    return (
        f" The {escape(result.value_name)} followed a {escape(schedule)} schedule over the "
        f"training steps: the swept {escape(result.value_name)} is its peak."
    )


def _environment_lines(result: SweepResult) -> list[str]:
    env = dict(result.environment)
    versions = env.pop("versions", {}) or {}
    lines = [f"- {_md_escape(key)}: {_md_escape(value)}" for key, value in env.items()]
    if versions:
        listed = ", ".join(f"{k} {v}" for k, v in versions.items())
        lines.append("- versions: " + _md_escape(listed))
    return lines


def _best_lines(result: SweepResult) -> list[str]:
    """The best value, its interval and the refined value, each with its method."""
    best, refined = result.confidence.best, result.confidence.refined
    name = result.value_name
    if all_diverged(result):
        return [
            f"- no {name} trained without diverging: all {len(result.evaluations)} evaluations "
            "diverged (in at least one seed), so there is no best value, interval or refined "
            "value.",
        ]
    lines = [
        f"- best evaluated {name}: **{_g(result.best_value)}**, score {_g(result.best_score)}",
        f"- {best.label}: **{_interval(best.low, best.high)}**, method: "
        f"{method_name(best.method, result)} (`{best.method}`): {best.note}.",
        f"- {covers(result)}",
        f"- refined {name} (optimum of the fitted curve): **{_g(refined.lr)}**.",
    ]
    for extra in (diverged_end_sentence(result), outside_range_sentence(result)):
        if extra:
            lines.append(f"- {extra}")
    fit = refined.fit
    if fit is not None and hasattr(fit, "curvature_t"):
        lines.append(
            f"- fit: {fit.points} points from {_g(fit.window[0])} to {_g(fit.window[1])}, "
            f"curvature {fit.curvature_t:.1f} standard errors above zero, residual standard "
            f"deviation {fit.residual_std:.3g}."
        )
    elif fit is not None:
        lines.append(
            f"- fit: a {curve_words(fit)} per seed over {fit.points} values from "
            f"{_g(fit.window[0])} to "
            f"{_g(fit.window[1])}, residual standard deviation of the seed-averaged scores "
            f"{fit.residual_std:.3g}."
        )
    return lines


def _efficiency_lines(result: SweepResult) -> list[str]:
    eff = efficiency(result)
    covered = (
        f"The sweep's wall time covers {TIME_COVERS} ({result.setup_seconds:.2f} s before the "
        "first stage, then the stages' own times in the table above). "
    )
    if not eff.comparable:
        return [
            f"The sweep used {eff.evaluations} evaluations in {eff.sweep_seconds:.2f} s "
            "(measured); no saving is claimed. " + covered + eff.method()
        ]
    more_evaluations = f"{eff.evaluations - eff.grid_evaluations} more"
    more_seconds = f"{eff.sweep_seconds - eff.grid_seconds:.2f} s more"
    return [
        "| | this sweep | equivalent grid | saved |",
        "|---|---:|---:|---:|",
        f"| evaluations | {eff.evaluations} | {eff.grid_evaluations} "
        f"| {_saved_cell(eff.evaluations_saved, eff.ahead, more_evaluations)} |",
        f"| wall time (s) | {eff.sweep_seconds:.2f} (measured) | {eff.grid_seconds:.2f} "
        f"(estimated) | {_saved_cell(eff.seconds_saved, eff.faster, more_seconds)} |",
        "",
        f"The sweep used {eff.evaluations_words()}; its wall time: {eff.seconds_words()}. "
        + covered
        + eff.method(),
    ]


def _horizon_lines(result: SweepResult) -> list[str]:
    """The horizon check's section: each horizon's optimum, then the note (empty without a
    target)."""
    horizon = result.horizon
    if horizon is None:
        return []
    lines = [
        "## The run you will do",
        "",
        f"The target run trains {horizon.target_steps} steps per lane; the sweep trained "
        f"{horizon.sweep_steps}.",
        "",
    ]
    if len(horizon.horizons) > 1:
        lines += [
            f"| steps | optimal {result.value_name} | 95% interval | method |",
            "|---:|---:|---|---|",
            *[
                f"| {o.steps} | {_g(o.value)} | {_interval(*o.interval)} | "
                f"{o.method.replace('_', ' ')} |"
                for o in horizon.horizons
            ],
            "",
        ]
    note = horizon.note[0].upper() + horizon.note[1:]
    return [*lines, f"{note}.", ""]


def _figure_lines(result: SweepResult, figures) -> list[str]:
    if not figures:
        return ["No figures were drawn: `jaxsweep.plot(result, out_dir)` draws them.", ""]
    lines = []
    for name in figures:
        lines += [f"![{name}]({FIGURE_DIR}/{name}.png)", "", f"*{caption(name, result)}*", ""]
    return lines


def _headline(result: SweepResult, eff, name: str, seeds: int) -> str:
    """The report's first paragraph: the answer, what it cost, how precise it is."""
    spent = f"{len(result.stages)} stages and {result.seconds:.2f} s ({TIME_COVERS})"
    if all_diverged(result):
        values = [e.value for e in result.evaluations]
        return (
            f"No {name} trained without diverging: all {len(values)} evaluations, from "
            f"{_g(min(values))} to {_g(max(values))}, diverged (in at least one of the {seeds} "
            f"seed{'s' if seeds != 1 else ''}), in {spent}. There is no best value and no "
            "interval, and no saving against a grid is claimed: try a lower range or a "
            "different optimizer."
        )
    outside = outside_range_sentence(result)
    return (
        f"Best {name} **{_g(result.best_value)}** ({metric_name(result.metric)} "
        f"{_g(result.best_score)}, mean over {seeds} seed{'s' if seeds != 1 else ''}), "
        + _headline_interval(result)
        + (outside + " " if outside else "")
        + f"The sweep used {eff.evaluations_words()}, in {spent}. "
        + precision_sentence(result)
    )


def markdown(result: SweepResult, figures: list[str] | tuple[str, ...] = tuple(FIGURES)) -> str:
    """The Markdown report of ``result``, linking the named figures under ``figures/``."""
    result = _displayable(result)
    eff = efficiency(result)
    name = result.value_name
    seeds = int(result.config.get("seeds", 1))
    lines = [
        "# jaxsweep report",
        "",
        _headline(result, eff, name, seeds),
        "",
        "## Configuration",
        "",
        f"Model `{_md_escape(result.config.get('model', '?'))}` with optimizer "
        f"`{_md_escape(result.config.get('optimizer', '?'))}`, "
        + (
            "its own training step (`jaxsweep.Training`; the loss its metrics report)"
            if _own_training(result.config)
            else f"loss `{_md_escape(result.config.get('loss', '?'))}`"
        )
        + (f" on {result.config['targets']} targets" if "targets" in result.config else "")
        + f"; {name} searched on a {result.scale} scale; stop reason: {result.stop_reason}."
        + _schedule_sentence(result, _md_escape),
        "",
        *_config_rows(result),
        "",
        "## Environment",
        "",
        *_environment_lines(result),
        "",
        "## Stages",
        "",
        f"Scores are the final {metric_name(result.metric)} (mean over seeds), "
        f"{_better(result)} is better.",
        "",
        *_stage_rows(result),
        "",
        *[f"- {sentence}" for sentence in stage_sentences(result)],
        *([""] if len(result.stages) > 1 else []),
        "## Validation metrics",
        "",
        "The best values by score, with every metric measured on the validation set after "
        "the last epoch (mean over seeds).",
        "",
        *_metric_rows(result),
        "",
        f"## Best {name}",
        "",
        *_best_lines(result),
        "",
        *_horizon_lines(result),
        "## Efficiency",
        "",
        *_efficiency_lines(result),
        "",
    ]
    if result.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in result.warnings], ""]
    lines += ["## Figures", "", *_figure_lines(result, figures)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- LaTeX

_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """Plain text made safe for LaTeX body text."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def tex_number(value: float, digits: int = 3) -> str:
    """A number in math mode: ``$3.28\\times10^{-2}$`` (or plain for 0.01 <= |x| < 1000)."""
    if math.isnan(value) or math.isinf(value):
        return r"$\infty$" if value > 0 else r"n/a"
    if value == 0 or 1e-2 <= abs(value) < 1e3:
        return f"${value:.{digits}g}$"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    return f"${mantissa:.{digits - 1}f}\\times10^{{{exponent}}}$"


def _tex_t(result: SweepResult) -> str:
    """``Student's $t$, 2 degrees of freedom`` for the seeds' tests."""
    df = int(result.config.get("seeds", 1)) - 1
    return f"Student's $t$, {df} degree{'s' if df != 1 else ''} of freedom"


def _tex_data(result: SweepResult) -> str:
    """``192 training and 48 held-out validation examples`` where the result records them."""
    cfg = result.config
    if "n_train" not in cfg or "n_val" not in cfg:
        return f"{int(cfg.get('n_val', 0))} held-out examples" if "n_val" in cfg else ""
    return f"{int(cfg['n_train'])} training and {int(cfg['n_val'])} held-out validation examples"


def _own_training(cfg) -> bool:
    """Whether the run trained a ``jaxsweep.Training`` (the user's own steps)."""
    return cfg.get("model_api") == "training"


def _trained_by(cfg, escape) -> str:
    """How the lanes were trained, in words: the optimizer and loss, or the user's own step."""
    optimizer = escape(str(cfg.get("optimizer", "")))
    if _own_training(cfg):
        return f"trained by its own training step with the optimizer {optimizer}"
    return f"trained with the optimizer {optimizer} and the loss {escape(str(cfg.get('loss', '')))}"


def _tex_model(result: SweepResult) -> str:
    cfg = result.config
    model = f"the {tex_escape(cfg.get('model', 'model'))} model"
    if result.param_count:
        model += f" ({result.param_count:,} parameters)"
    return model


def _tex_search(result: SweepResult) -> str:
    """The first paragraph: what was searched, on which data, how, stage by stage."""
    cfg, name = result.config, result.value_name
    low, high = _starting_range(result) or (math.nan, math.nan)
    seeds = int(cfg.get("seeds", 1))
    points = int(cfg.get("points_per_stage", len(result.stages[0].values)))
    spaced = "log-uniformly" if result.scale == "log" else "uniformly"
    data = _tex_data(result)
    stages = " ".join(stage_sentences(result, tex_number, "stage~"))
    lanes = tex_escape(lanes_sentence(result))
    if str(cfg.get("init", "fresh")).startswith("given"):
        start = "every lane started from the given initial parameters and each seed fixed the "
        start += "batch order, the same at every value"
    else:
        start = "each seed fixed the initial parameters and the batch order, the same at every "
        start += "value"
    return (
        f"We selected the {name} of {_tex_model(result)}, {_trained_by(cfg, tex_escape)} "
        f"for {training_phrase(cfg)}"
        + (f" on {data}" if data else "")
        + f", every value with the same seeds ({seeds} seed{'s' if seeds != 1 else ''}), by a "
        f"hierarchical coarse-to-fine search. The score of a {name} is its "
        f"{tex_escape(metric_name(result.metric))} after the last epoch"
        f"{'' if result.mode == 'min' else ', higher being better'} (mean over seeds, on the "
        "held-out examples). "
        f"Stage~0 trained {points} values spaced {spaced} from {tex_number(low)} to "
        f"{tex_number(high)}."
        + (f" {stages}" if stages else "")
        + (f" {lanes}" if lanes else "")
        + f" Within a stage, {start}."
        + _schedule_sentence(result, tex_escape)
    )


def _tex_interval_method(result: SweepResult, method: str) -> str:
    seeds = int(result.config.get("seeds", 1))
    against = (
        f"the logarithm of the {result.value_name}"
        if result.scale == "log"
        else f"the {result.value_name}"
    )
    widened = "widened where needed to the evaluated values next to the best one"
    metric = tex_escape(metric_name(result.metric))
    moved = (
        " (the cubic missed the seed means by far more than their noise, so the interval was "
        "moved out to the nearest evaluated values)"
        if "reaches out" in result.confidence.best.note
        else ""
    ) + _tex_stretched(result.confidence.best.note)
    if method == "plateau":
        plateau = result.plateaus[0]
        at = "at or below" if plateau.direction == "down" else "at or above"
        return (
            f"taking the evaluated values whose mean score over the {seeds} seeds is not "
            f"significantly worse than the best one's (paired one-sided test at 95\\%, "
            f"{_tex_t(result)}): "
            f"every value {at} {tex_number(plateau.bound)}, evaluated out to "
            f"{tex_number(plateau.edge)}, scored alike with the best, a plateau the search "
            "stopped following, so no interval bounds the optimum on that side"
        )
    return {
        "seed_curve": f"fitting a {curve_words(result.confidence.best.fit)} in {against} to "
        f"each of the {seeds} seeds' {metric} around the best value and keeping the values "
        "where the seed-averaged slope is within $t$ standard errors of zero ($t$ the 97.5\\% "
        f"quantile of {_tex_t(result)}; the standard "
        "error from the spread of the slopes between seeds, at least what the seeds' scatter "
        f"about their cubics implies, and the fit's misfit){moved}",
        "not_worse": f"taking the evaluated values whose mean score over the {seeds} seeds is "
        f"not significantly worse than the best one's (paired one-sided test at 95\\%, "
        f"{_tex_t(result)}) and the evaluated values just beyond them",
        "quadratic_fit": "Fieller's interval for the vertex of a parabola fitted by least squares "
        f"to the {tex_escape(metric_name(result.metric))} against {against} around the best "
        f"evaluated value, {widened}",
        "neighbours": "the evaluated values on either side of the best one (no reliable "
        "quadratic fit was available)",
        "none": "not available, since every evaluation diverged",
    }[method]


def _tex_stretched(note: str) -> str:
    """What a precision sweep's interval spans beyond one fit, read from the estimate's note
    (the words ``_confidence`` writes when it stretches an interval), else nothing."""
    over = []
    if "wider windows" in note:
        over.append("the intervals of every wider window whose fit also closed")
    if "successive stages agree" in note:
        intervals = "those" if over else "the intervals"
        over.append(f"{intervals} after each of the last {_confidence.STABLE_STAGES} stages")
    return f", stretched over {' and '.join(over)}" if over else ""


def _tex_outcome(result: SweepResult) -> str:
    """The second paragraph: how the search ended and what it found."""
    best, refined = result.confidence.best, result.confidence.refined
    seeds = int(result.config.get("seeds", 1))
    stop = {
        "completed": "ran every stage",
        "min_improvement": "stopped early because a stage improved the best score by less than "
        f"{100 * float(result.config.get('min_improvement', 0)):.3g}\\%",
        "resolution": "stopped early because no interval next to the values tied with the best "
        f"had significantly different ends with {seeds} seeds (paired tests, {_tex_t(result)}; "
        "finer values could not be told apart)",
        "precision": "stopped once the interval reached the requested precision of "
        f"{tex_number(float(result.config.get('precision') or math.nan))}",
        "budget": "stopped at its budget (the stage bound or max\\_lanes) before reaching the "
        f"requested precision of {tex_number(float(result.config.get('precision') or math.nan))}",
    }.get(result.stop_reason, f"stopped ({tex_escape(result.stop_reason)})")
    spent = (
        f"The search {stop}: {len(result.stages)} stages, {len(result.evaluations)} evaluations "
        f"in {result.seconds:.1f}~s of wall time ({TIME_COVERS})."
    )
    if all_diverged(result):
        return spent + (
            f" Every evaluation diverged (in at least one seed), so no {result.value_name} was "
            "selected and no interval can be given."
        )
    extras = " ".join(
        x
        for x in (
            diverged_end_sentence(result, tex_number),
            outside_range_sentence(result, tex_number),
        )
        if x
    )
    return (
        f"{spent} The best evaluated "
        f"{result.value_name} was {tex_number(result.best_value)} "
        f"({tex_escape(metric_name(result.metric))} {tex_number(result.best_score, 4)}), "
        f"with a {tex_escape(best.label)} from "
        f"{tex_number(best.low)} to {tex_number(best.high)}, obtained by "
        f"{_tex_interval_method(result, best.method)}. {tex_escape(covers(result))} "
        + (f"{extras} " if extras else "")
        + (f"The refined optimum is {tex_number(refined.lr)}. " if best.method != "plateau" else "")
        + tex_escape(precision_sentence(result))
    )


def _tex_efficiency(result: SweepResult) -> str:
    """The third paragraph: the equivalent grid, on the sweep's own scale (never a negative
    saving: a sweep that needed more than the grid says so)."""
    eff = efficiency(result)
    if not eff.comparable:
        return (
            f"Every one of the {eff.evaluations} evaluations diverged, so the search resolved no "
            f"{tex_escape(eff.name)} and no grid of the same resolution compares with it; no "
            "saving is claimed."
        )
    if eff.scale == "log":
        grid = "spaced log-uniformly"
        apart = f"a factor of {tex_number(eff.spacing, 4)} apart"
    else:
        grid = "spaced uniformly"
        apart = f"{tex_number(eff.spacing, 4)} apart"
    if eff.ahead:
        used = f"the search used {eff.evaluations}, {100 * eff.evaluations_saved:.1f}\\% fewer"
    elif eff.evaluations > eff.grid_evaluations:
        used = f"the search used {eff.evaluations}, more than that grid"
    else:
        used = f"the search used as many, {eff.evaluations}"
    if eff.faster:
        time = f"({100 * eff.seconds_saved:.1f}\\% less)"
    elif eff.sweep_seconds > eff.grid_seconds:
        time = "(the search took longer than that grid would)"
    else:
        time = "(the same)"
    return (
        f"A grid {grid} over the same span ({tex_number(eff.span[0])} to "
        f"{tex_number(eff.span[1])}) with the resolution the search resolved around its "
        f"optimum (neighbouring values {apart}) would need {eff.grid_evaluations} evaluations; "
        f"{used}. At the "
        f"measured {tex_number(eff.seconds_per_evaluation)}~s per evaluation plus the one-time "
        f"{eff.one_time_seconds:.1f}~s of set-up and compilation, that grid would take an "
        f"estimated {eff.grid_seconds:.1f}~s against {eff.sweep_seconds:.1f}~s measured {time}."
    )


def _tex_horizon(result: SweepResult) -> str:
    """The horizon check in a paragraph: what was retrained, the law, the target's value."""
    horizon, name = result.horizon, tex_escape(result.value_name)
    target = horizon.target_steps
    longer = horizon.horizons[1:]
    if not longer:
        return f"The target run's {target} steps are the sweep's own; nothing was retrained."
    trained = ", ".join(str(o.steps) for o in longer)
    text = (
        f"Because the best {name} depends on the training length, the values around the "
        f"optimum were retrained with every seed for {trained} steps (the sweep trained "
        f"{horizon.sweep_steps}"
        + ("; schedules stretched to each length" if result.config.get("schedule") else "")
        + "), each length placed where the shorter ones predicted its optimum and refined "
        "by the same rules; each optimum and its interval were found as above."
    )
    if math.isfinite(horizon.exponent):
        low, high = horizon.exponent_interval
        text += (
            r" A power law $v^*(T) = B\,T^{\beta}$ in the training steps $T$, fitted by "
            f"weighted least squares to the log optima of the {len(horizon.horizons)} lengths, "
            f"gives $\\beta = {horizon.exponent:.2f}$ (95\\% interval {low:.2f} to {high:.2f})."
        )
    low, high = horizon.interval
    if math.isfinite(horizon.value) and 0 < low and math.isfinite(high):
        how = (
            "extrapolated along the fitted law, its interval carrying each length's "
            "uncertainty and the fit's"
            if horizon.extrapolated
            else "trained at that length"
        )
        text += (
            f" For the target of {target} steps the {name} is {tex_number(horizon.value)} "
            f"(95\\% interval {tex_number(low)} to {tex_number(high)}; {how})."
        )
    else:
        text += f" No interval for {target} steps could be given: the optima are not bracketed."
    if not horizon.ranking_held:
        text += " The sweep's own best value lies outside the interval of a longer run."
    return text


def methods_tex(result: SweepResult) -> str:
    """A LaTeX ``\\subsection`` describing the search, with this run's numbers."""
    result = _displayable(result)
    name = result.value_name
    title = "Learning-rate" if result.hyperparam == "learning_rate" else name.capitalize()
    label = "lr" if result.hyperparam == "learning_rate" else result.hyperparam.replace("_", "-")
    paragraphs = [
        f"\\subsection{{{tex_escape(title)} selection}}",
        f"\\label{{sec:{label}-selection}}",
        "",
        _tex_search(result),
        "",
        _tex_outcome(result),
        "",
        *([_tex_horizon(result), ""] if result.horizon is not None else []),
        _tex_efficiency(result),
        "",
    ]
    return "\n".join(paragraphs)


# ----------------------------------------------------------------------------- files


def report(result: SweepResult, out_dir: str | os.PathLike) -> dict[str, str]:
    """Writes ``report.md`` and ``methods.tex`` into ``out_dir``.

    The report links the figures found in ``out_dir/figures/`` (draw them first with
    :func:`jaxsweep.plot`).

    Args:
      result: a finished sweep (``jaxsweep.run`` or ``jaxsweep.load``).
      out_dir: folder to write into; created if missing.

    Returns:
      ``{"report": path, "methods": path}``.

    Example::

      jaxsweep.plot(result, "runs/demo")
      jaxsweep.report(result, "runs/demo")
    """
    if not isinstance(result, SweepResult):
        raise TypeError(f"result: expected a SweepResult, got {type(result).__name__}")
    if not result.evaluations:
        raise ValueError("result: has no evaluations to report")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    drawn = [  # a figure left from another result in this folder is not linked
        name
        for name in figures_for(result)
        if os.path.exists(os.path.join(out_dir, FIGURE_DIR, f"{name}.png"))
    ]
    paths = {
        "report": os.path.join(out_dir, "report.md"),
        "methods": os.path.join(out_dir, "methods.tex"),
    }
    texts = {"report": markdown(result, drawn), "methods": methods_tex(result)}
    for key, path in paths.items():
        with open(path, "w") as handle:
            handle.write(texts[key])
    return paths
