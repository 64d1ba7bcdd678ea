"""Results people read: efficiency numbers, a Markdown report and a LaTeX methods paragraph.

Every number written here is computed from a :class:`~jaxsweep.SweepResult` alone, so
``jaxsweep report DIR`` rebuilds the same text from ``DIR/result.json`` on any machine.
The figures the report links to are drawn by :func:`jaxsweep.plot`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from . import _selector
from ._result import SweepResult

FIGURE_DIR = "figures"

# name -> what the figure shows; plots.py draws them, the report links them with these words
FIGURES = {
    "heatmap": "Convergence heatmap: for each stage (x), the score of the nearest rate evaluated "
    "so far at every learning rate (y, log); dots mark the rates that stage evaluated.",
    "search_path": "Search path: every evaluated rate per stage, the kept intervals shaded and "
    "the best rate after each stage joined; right, a zoom on the final stages.",
    "lr_curve": "Score against learning rate (log), coloured by stage; the best rate with its "
    "95% interval and the quadratic fit that refines it.",
    "loss_curves": "Training and validation loss per epoch for every rate, coloured by rate; "
    "the three best rates drawn thick.",
    "efficiency": "Evaluations and wall time of this sweep against the log-uniform grid that "
    "reaches the same resolution over the same span (method in the figure and below).",
}


# ----------------------------------------------------------------------------- efficiency


@dataclass(frozen=True)
class Efficiency:
    """This sweep against the grid that would reach the same resolution over the same span.

    The equivalent grid spans the lowest to the highest evaluated rate, evenly spaced on the
    sweep's scale, with the spacing the hierarchy reached around its best rate: the width of
    the final best interval (the best rate and its better evaluated neighbour). Its time is the
    sweep's one-time cost (compilation and set-up) plus its size times the measured seconds per
    evaluation: the wall time of the stages after the first (which reuse the compiled program)
    divided by the rates they evaluated. Each rate trains all seeds, in lanes of the same size
    as the sweep's, so the unit cost carries over. A single-stage sweep falls back to its
    per-epoch times.
    """

    evaluations: int  # rates this sweep evaluated
    span: tuple[float, float]  # lowest and highest evaluated rate
    scale: str  # "log" or "linear"
    spacing: float  # grid step: a ratio (log scale) or a difference (linear scale)
    grid_evaluations: int  # rates the equivalent grid evaluates
    seconds_per_evaluation: float  # measured, see per_evaluation_source
    per_evaluation_source: str  # how seconds_per_evaluation was measured, in words
    one_time_seconds: (
        float  # sweep_seconds - evaluations * seconds_per_evaluation (compile, set-up)
    )
    sweep_seconds: float  # measured wall time of every stage, compilation included
    grid_seconds: float  # estimated: one_time_seconds + grid_evaluations * seconds_per_evaluation

    @property
    def evaluations_saved(self) -> float:
        """Fraction of the grid's evaluations this sweep did not need."""
        return 1.0 - self.evaluations / self.grid_evaluations

    @property
    def seconds_saved(self) -> float:
        """Fraction of the grid's estimated wall time this sweep did not need."""
        if self.grid_seconds <= 0:
            return 0.0
        return 1.0 - self.sweep_seconds / self.grid_seconds

    def method(self) -> str:
        """One paragraph saying how the grid was sized and timed, with this run's numbers."""
        step = (
            f"a ratio of {self.spacing:.4g} between neighbours"
            if self.scale == "log"
            else f"a step of {self.spacing:.4g}"
        )
        return (
            f"The equivalent grid is evenly spaced on a {self.scale} scale from the lowest to the "
            f"highest evaluated rate ({_g(self.span[0])} to {_g(self.span[1])}), with the "
            f"spacing the search reached around its best rate (the width of the final best "
            f"interval: {step}), so {self.grid_evaluations} rates. Its time is the sweep's "
            f"one-time cost ({self.one_time_seconds:.2f} s of compilation and set-up) plus "
            f"{self.grid_evaluations} times the measured {self.seconds_per_evaluation:.4f} s "
            f"per evaluation ({self.per_evaluation_source})."
        )


def efficiency(result: SweepResult) -> Efficiency:
    """Sizes and times the grid equivalent to ``result`` (see :class:`Efficiency`)."""
    scale = result.config.get("scale", "log")
    lrs = [e.lr for e in result.evaluations]
    scores = [e.score for e in result.evaluations]
    span = (min(lrs), max(lrs))
    ranked = _selector.rank_intervals(lrs, scores) if len(lrs) > 1 else []
    if not ranked:
        spacing, count = (1.0 if scale == "log" else 0.0), 1
    elif scale == "log":
        spacing = ranked[0].high / ranked[0].low
        count = math.ceil(math.log(span[1] / span[0]) / math.log(spacing) - 1e-9) + 1
    else:
        spacing = ranked[0].high - ranked[0].low
        count = math.ceil((span[1] - span[0]) / spacing - 1e-9) + 1
    sweep_seconds = sum(s.seconds for s in result.stages)
    warm = [s for s in result.stages[1:] if s.compile_seconds == 0 and s.lrs]
    if warm:
        rates = sum(len(s.lrs) for s in warm)
        per_evaluation = sum(s.seconds for s in warm) / rates
        source = (
            f"wall time of stages {warm[0].index} to {warm[-1].index}, which reuse the compiled "
            f"program, divided by the {rates} rates they evaluated"
        )
    else:
        epochs = sum(sum(s.seconds_per_epoch) for s in result.stages)
        per_evaluation = epochs / max(len(lrs), 1)
        source = f"per-epoch wall time summed over the sweep, divided by the {len(lrs)} rates"
    one_time = max(sweep_seconds - per_evaluation * len(lrs), 0.0)
    return Efficiency(
        evaluations=len(lrs),
        span=span,
        scale=scale,
        spacing=spacing,
        grid_evaluations=count,
        seconds_per_evaluation=per_evaluation,
        per_evaluation_source=source,
        one_time_seconds=one_time,
        sweep_seconds=sweep_seconds,
        grid_seconds=one_time + count * per_evaluation,
    )


# ----------------------------------------------------------------------------- formatting


def _g(value: float, digits: int = 4) -> str:
    """A rate or score for text: 4 significant digits, 'diverged' for +inf."""
    if math.isinf(value) and value > 0:
        return "diverged"
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _interval(low: float, high: float) -> str:
    return f"[{_g(low)}, {_g(high)}]"


METHOD_NAMES = {
    "quadratic_fit": "quadratic fit of score against log learning rate (Fieller interval)",
    "seed_bootstrap": "bootstrap over seeds of the best rate",
    "neighbours": "evaluated neighbours of the best rate",
    "none": "none (every evaluation diverged)",
}


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _stage_rows(result: SweepResult) -> list[str]:
    name = result.config.get("hyperparam", "learning_rate")
    rows = [
        f"| stage | {name} values evaluated | kept intervals | best {name} after stage "
        "| best score after stage | seconds (compile) |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for stage in result.stages:
        kept = ", ".join(_interval(a, b) for a, b in stage.intervals) or "(initial grid)"
        if stage.expansion:
            kept += f" (beyond the evaluated range, {stage.expansion})"
        rows.append(
            f"| {stage.index} | {', '.join(_g(v, 3) for v in stage.lrs)} | {kept} "
            f"| {_g(stage.best_lr)} | {_g(stage.best_score)} "
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


def metric_name(metric: str) -> str:
    """``val_accuracy`` -> ``validation accuracy``; ``val_loss`` -> ``validation loss``."""
    return "validation " + metric.removeprefix("val_").replace("_", " ")


REPORTED_VALUES = 5  # rows of the report's validation-metrics table


def _metric_rows(result: SweepResult) -> list[str]:
    """The best values by score, with the final value of every validation metric."""
    names = result.evaluations[0].validation_metrics()
    ranked = sorted(result.evaluations, key=lambda e: (result.objective(e.score), e.lr))
    header = " | ".join(
        f"**{metric_name(n)}**" if n == result.metric else metric_name(n) for n in names
    )
    rows = [f"| value | stage | {header} |", "|" + "---|" * 2 + "---:|" * len(names)]
    for evaluation in ranked[:REPORTED_VALUES]:
        cells = " | ".join(
            "diverged" if evaluation.diverged else _g(evaluation.series(n)[-1]) for n in names
        )
        rows.append(f"| {_g(evaluation.lr)} | {evaluation.stage} | {cells} |")
    return rows


def _schedule_sentence(config: dict, escape) -> str:
    """`` The swept ... is the peak of a <schedule> schedule.`` or nothing without one."""
    schedule = config.get("schedule")
    if not schedule:
        return ""
    name = config.get("hyperparam", "learning_rate").replace("_", " ")
    return (
        f" The rate followed a {escape(schedule)} schedule over the training steps: the swept "
        f"{escape(name)} is its peak."
    )


def _environment_lines(result: SweepResult) -> list[str]:
    env = dict(result.environment)
    versions = env.pop("versions", {}) or {}
    lines = [f"- {key}: {value}" for key, value in env.items()]
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def markdown(result: SweepResult, figures: list[str] | tuple[str, ...] = tuple(FIGURES)) -> str:
    """The Markdown report of ``result``, linking the named figures under ``figures/``."""
    conf = result.confidence
    best, refined = conf.best, conf.refined
    eff = efficiency(result)
    seeds = int(result.config.get("seeds", 1))
    lines = [
        "# jaxsweep report",
        "",
        f"Best learning rate **{_g(result.best_lr)}** ({metric_name(result.metric)} "
        f"{_g(result.best_score)}), "
        f"{best.label} {_interval(best.low, best.high)} from the {METHOD_NAMES[best.method]}; "
        f"refined rate {_g(refined.lr)}. {eff.evaluations} evaluations in {len(result.stages)} "
        f"stages where an equivalent grid needs {eff.grid_evaluations} "
        f"({100 * eff.evaluations_saved:.1f}% fewer).",
        "",
        "## Configuration",
        "",
        f"Model `{result.config.get('model', '?')}` with optimizer "
        f"`{result.config.get('optimizer', '?')}`, loss `{result.config.get('loss', '?')}`; "
        f"stop reason: {result.stop_reason}.{_schedule_sentence(result.config, _md_escape)}",
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
        f"{'lower' if result.mode == 'min' else 'higher'} is better.",
        "",
        *_stage_rows(result),
        "",
        "## Validation metrics",
        "",
        "The best values by score, with every metric measured on the validation set after "
        "the last epoch (mean over seeds).",
        "",
        *_metric_rows(result),
        "",
        "## Best learning rate",
        "",
        f"- best evaluated rate: **{_g(result.best_lr)}**, score {_g(result.best_score)}",
        f"- {best.label}: **{_interval(best.low, best.high)}**, method: "
        f"{METHOD_NAMES[best.method]} (`{best.method}`): {best.note}.",
        f"- refined rate (local quadratic fit): **{_g(refined.lr)}**, {refined.label} "
        f"{_interval(refined.low, refined.high)}, method `{refined.method}`: {refined.note}.",
    ]
    if refined.fit is not None:
        fit = refined.fit
        lines.append(
            f"- fit: {fit.points} points from {_g(fit.window[0])} to {_g(fit.window[1])}, "
            f"curvature {fit.curvature_t:.1f} standard errors above zero, residual standard "
            f"deviation {fit.residual_std:.3g}."
        )
    if seeds < 2:
        lines.append(
            "- one seed: the intervals reflect how the score varies between neighbouring "
            "rates for this initialisation and batch order, not the variation between seeds "
            "(run with `seeds >= 2` for a bootstrap over seeds)."
        )
    lines += [
        "",
        "## Efficiency",
        "",
        "| | this sweep | equivalent grid | saved |",
        "|---|---:|---:|---:|",
        f"| evaluations | {eff.evaluations} | {eff.grid_evaluations} "
        f"| {100 * eff.evaluations_saved:.1f}% |",
        f"| wall time (s) | {eff.sweep_seconds:.2f} (measured) | {eff.grid_seconds:.2f} "
        f"(estimated) | {100 * eff.seconds_saved:.1f}% |",
        "",
        eff.method(),
        "",
    ]
    if result.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in result.warnings], ""]
    lines += ["## Figures", ""]
    if figures:
        for name in figures:
            lines += [f"![{name}]({FIGURE_DIR}/{name}.png)", "", f"*{FIGURES[name]}*", ""]
    else:
        lines += ["No figures were drawn: `jaxsweep.plot(result, out_dir)` draws them.", ""]
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


def methods_tex(result: SweepResult) -> str:
    """A LaTeX ``\\subsection`` describing the search, with this run's numbers."""
    cfg = result.config
    conf = result.confidence
    best, refined = conf.best, conf.refined
    eff = efficiency(result)
    low, high = cfg.get("lr_range", cfg.get("value_range", [math.nan, math.nan]))
    stages = len(result.stages)
    seeds = int(cfg.get("seeds", 1))
    stop = (
        "ran every stage"
        if result.stop_reason == "completed"
        else "stopped early because a stage improved the best score by less than "
        f"{100 * float(cfg.get('min_improvement', 0)):.3g}\\%"
    )
    interval_method = {
        "seed_bootstrap": f"a percentile bootstrap over the {seeds} seeds of the rate with the "
        f"{'lowest' if result.mode == 'min' else 'highest'} mean score, widened where needed to "
        "the evaluated rates next to the best one",
        "quadratic_fit": "Fieller's interval for the vertex of a parabola fitted by least squares "
        f"to the {tex_escape(metric_name(result.metric))} against the logarithm of the learning "
        "rate around the best "
        "evaluated rate, widened where needed to the evaluated rates next to the best one",
        "neighbours": "the evaluated rates on either side of the best one (no reliable "
        "quadratic fit was available)",
        "none": "not available, since every evaluation diverged",
    }
    paragraphs = [
        r"\subsection{Learning-rate selection}",
        r"\label{sec:lr-selection}",
        "",
        f"We selected the learning rate of the {tex_escape(cfg.get('model', 'model'))} model "
        f"(optimizer {tex_escape(cfg.get('optimizer', ''))}, loss "
        f"{tex_escape(cfg.get('loss', ''))}, {budget_phrase(cfg)}, batch size "
        f"{int(cfg.get('batch_size', 0))}, {seeds} seed{'s' if seeds != 1 else ''}) with a "
        f"hierarchical coarse-to-fine search. The score of a rate is its "
        f"{tex_escape(metric_name(result.metric))} after the last epoch"
        f"{'' if result.mode == 'min' else ', higher being better'}"
        f" (mean over seeds; {int(cfg.get('n_val', 0))} held-out examples). "
        f"Stage~0 trained {int(cfg.get('points_per_stage', 0))} rates spaced log-uniformly "
        f"from {tex_number(low)} to {tex_number(high)}; each later stage kept the "
        f"{int(cfg.get('top_k', 0))} best intervals between neighbouring evaluated rates and "
        f"trained {int(cfg.get('points_per_stage', 0))} new rates inside them, following the "
        "optimum beyond the evaluated range when the best rate lay on its edge. All rates of a "
        "stage were trained simultaneously in one vectorised program, each starting from the "
        "same initial parameters and seeing the same batches."
        + _schedule_sentence(cfg, tex_escape),
        "",
        f"The search {stop}: {stages} stages, {eff.evaluations} evaluations in "
        f"{eff.sweep_seconds:.1f}~s. The best evaluated rate was "
        f"{tex_number(result.best_lr)} ({tex_escape(metric_name(result.metric))} "
        f"{tex_number(result.best_score, 4)}), "
        f"with a {tex_escape(best.label)} from {tex_number(best.low)} to "
        f"{tex_number(best.high)}, "
        f"obtained by {interval_method[best.method]}. A local quadratic fit refines the "
        f"optimum to {tex_number(refined.lr)} ({tex_escape(refined.label)} "
        f"{tex_number(refined.low)} to "
        f"{tex_number(refined.high)}, method: "
        f"{tex_escape(METHOD_NAMES[refined.method])}).",
        "",
        f"A grid spaced log-uniformly over the same span ({tex_number(eff.span[0])} to "
        f"{tex_number(eff.span[1])}) with the resolution the search reached around its "
        f"optimum (neighbouring rates a factor of {tex_number(eff.spacing, 4)} apart) "
        f"would need {eff.grid_evaluations} evaluations; the search used {eff.evaluations}, "
        f"{100 * eff.evaluations_saved:.1f}\\% fewer. At the measured "
        f"{tex_number(eff.seconds_per_evaluation)}~s per evaluation plus the one-time "
        f"{eff.one_time_seconds:.1f}~s of compilation and set-up, "
        f"that grid would take an estimated {eff.grid_seconds:.1f}~s against "
        f"{eff.sweep_seconds:.1f}~s measured ({100 * eff.seconds_saved:.1f}\\% saved).",
        "",
    ]
    if eff.scale != "log":
        paragraphs[-3] = paragraphs[-3].replace("log-uniformly", "uniformly")
        paragraphs[-3] = paragraphs[-3].replace(
            f"a factor of {tex_number(eff.spacing, 4)} apart", f"{tex_number(eff.spacing)} apart"
        )
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
    drawn = [
        name for name in FIGURES if os.path.exists(os.path.join(out_dir, FIGURE_DIR, f"{name}.png"))
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
