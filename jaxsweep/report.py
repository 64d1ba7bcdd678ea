"""Results people read: a Markdown report and a LaTeX methods paragraph.

Every number written here is computed from a :class:`~jaxsweep.SweepResult` alone, so
``jaxsweep report DIR`` rebuilds the same text from ``DIR/result.json`` on any machine.
The text names the swept hyperparameter and describes its scale: a linear momentum sweep is
never called a learning-rate search nor said to be log-spaced. The figures the report links to
are drawn by :func:`jaxsweep.plot`.
"""

from __future__ import annotations

import math
import os

from ._efficiency import efficiency
from ._result import SweepResult
from .plots import FIGURE_DIR, FIGURES, caption, metric_name

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


def method_name(method: str, result: SweepResult) -> str:
    """An interval method in words, for ``result``'s hyperparameter and scale."""
    if method == "plateau":
        return f"plateau ({_plateau_words(result)}; no bound on that side)"
    return {
        "seed_curve": f"cubic in {_axis_words(result)} fitted to each seed's scores, the values "
        "where the seed-averaged slope is not significantly different from zero",
        "not_worse": "values not significantly worse than the best over seeds (paired t test)",
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


def lanes_trained(result: SweepResult) -> int:
    """Lanes (value x seed pairs) the sweep trained."""
    return sum(len(e.seed_scores) for e in result.evaluations)


def precision_sentence(result: SweepResult) -> str:
    """How precisely the optimum is located, and what asking for more would cost."""
    reached, lanes = result.precision, lanes_trained(result)
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
    return sentence + (
        f" Halving it (run with precision={_g(reached / 2, 2)}) would take about {3 * lanes} "
        "more lanes, if the width keeps shrinking as one over the square root of the lanes."
    )


def _saved(fraction: float) -> str:
    """'80.0% fewer' or, when the grid would have been smaller, '25.0% more'."""
    if fraction >= 0:
        return f"{100 * fraction:.1f}% fewer"
    return f"{-100 * fraction:.1f}% more"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _stage_rows(result: SweepResult) -> list[str]:
    name = result.value_name
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
    lines = [f"- {key}: {value}" for key, value in env.items()]
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def _best_lines(result: SweepResult) -> list[str]:
    """The best value, its interval and the refined value, each with its method."""
    best, refined = result.confidence.best, result.confidence.refined
    name = result.value_name
    lines = [
        f"- best evaluated {name}: **{_g(result.best_value)}**, score {_g(result.best_score)}",
        f"- {best.label}: **{_interval(best.low, best.high)}**, method: "
        f"{method_name(best.method, result)} (`{best.method}`): {best.note}.",
        f"- {covers(result)}",
        f"- refined {name} (optimum of the fitted curve): **{_g(refined.lr)}**.",
    ]
    fit = refined.fit
    if fit is not None and hasattr(fit, "curvature_t"):
        lines.append(
            f"- fit: {fit.points} points from {_g(fit.window[0])} to {_g(fit.window[1])}, "
            f"curvature {fit.curvature_t:.1f} standard errors above zero, residual standard "
            f"deviation {fit.residual_std:.3g}."
        )
    elif fit is not None:
        lines.append(
            f"- fit: a cubic per seed over {fit.points} values from {_g(fit.window[0])} to "
            f"{_g(fit.window[1])}, residual standard deviation of the seed-averaged scores "
            f"{fit.residual_std:.3g}."
        )
    return lines


def _efficiency_lines(result: SweepResult) -> list[str]:
    eff = efficiency(result)
    return [
        "| | this sweep | equivalent grid | saved |",
        "|---|---:|---:|---:|",
        f"| evaluations | {eff.evaluations} | {eff.grid_evaluations} "
        f"| {_saved(eff.evaluations_saved)} |",
        f"| wall time (s) | {eff.sweep_seconds:.2f} (measured) | {eff.grid_seconds:.2f} "
        f"(estimated) | {100 * eff.seconds_saved:.1f}% |",
        "",
        f"The sweep's wall time covers {TIME_COVERS} ({result.setup_seconds:.2f} s before the "
        "first stage, then the stages' own times in the table above). " + eff.method(),
    ]


def _figure_lines(result: SweepResult, figures) -> list[str]:
    if not figures:
        return ["No figures were drawn: `jaxsweep.plot(result, out_dir)` draws them.", ""]
    lines = []
    for name in figures:
        lines += [f"![{name}]({FIGURE_DIR}/{name}.png)", "", f"*{caption(name, result)}*", ""]
    return lines


def markdown(result: SweepResult, figures: list[str] | tuple[str, ...] = tuple(FIGURES)) -> str:
    """The Markdown report of ``result``, linking the named figures under ``figures/``."""
    eff = efficiency(result)
    name = result.value_name
    seeds = int(result.config.get("seeds", 1))
    lines = [
        "# jaxsweep report",
        "",
        f"Best {name} **{_g(result.best_value)}** ({metric_name(result.metric)} "
        f"{_g(result.best_score)}, mean over {seeds} seed{'s' if seeds != 1 else ''}), "
        + _headline_interval(result)
        + f"{eff.evaluations} evaluations in {len(result.stages)} stages and "
        f"{result.seconds:.2f} s ({TIME_COVERS}), where an equivalent grid at the resolution "
        f"reached needs {eff.grid_evaluations} ({_saved(eff.evaluations_saved)}). "
        + precision_sentence(result),
        "",
        "## Configuration",
        "",
        f"Model `{result.config.get('model', '?')}` with optimizer "
        f"`{result.config.get('optimizer', '?')}`, loss `{result.config.get('loss', '?')}`"
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


def _tex_search(result: SweepResult) -> str:
    """The first paragraph: what was searched, how, and on which scale."""
    cfg, name = result.config, result.value_name
    span = cfg.get("value_range") or cfg.get("lr_range") or cfg.get("hyperparam_range")
    low, high = span or (math.nan, math.nan)
    seeds = int(cfg.get("seeds", 1))
    points, top_k = int(cfg.get("points_per_stage", 0)), int(cfg.get("top_k", 0))
    spaced = "log-uniformly" if result.scale == "log" else "uniformly"
    return (
        f"We selected the {name} of the {tex_escape(cfg.get('model', 'model'))} model "
        f"(optimizer {tex_escape(cfg.get('optimizer', ''))}, loss "
        f"{tex_escape(cfg.get('loss', ''))}, {budget_phrase(cfg)}, batch size "
        f"{int(cfg.get('batch_size', 0))}, {seeds} seed{'s' if seeds != 1 else ''}) with a "
        f"hierarchical coarse-to-fine search. The score of a {name} is its "
        f"{tex_escape(metric_name(result.metric))} after the last epoch"
        f"{'' if result.mode == 'min' else ', higher being better'} (mean over seeds; "
        f"{int(cfg.get('n_val', 0))} held-out examples). "
        f"Stage~0 trained {points} values spaced {spaced} from {tex_number(low)} to "
        f"{tex_number(high)}; each later stage kept the {top_k} best intervals between "
        f"neighbouring evaluated values and trained {points} new values inside them, spaced "
        f"{spaced}, following the optimum beyond the evaluated range when the best value lay on "
        "its edge. All values of a stage were trained simultaneously in one vectorised program, "
        "each starting from the same initial parameters and seeing the same batches."
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
    )
    if method == "plateau":
        plateau = result.plateaus[0]
        at = "at or below" if plateau.direction == "down" else "at or above"
        return (
            f"taking the evaluated values whose mean score over the {seeds} seeds is not "
            "significantly worse than the best one's (paired one-sided $t$ test at 95\\%): "
            f"every value {at} {tex_number(plateau.bound)}, evaluated out to "
            f"{tex_number(plateau.edge)}, scored alike with the best, a plateau the search "
            "stopped following, so no interval bounds the optimum on that side"
        )
    return {
        "seed_curve": f"fitting a cubic in {against} to each of the {seeds} seeds' {metric} "
        "around the best value and keeping the values where the seed-averaged slope is within "
        f"Student's $t$ ({seeds - 1} degrees of freedom) standard errors of zero (the standard "
        "error from the spread of the slopes between seeds, at least what the seeds' scatter "
        f"about their cubics implies, and the fit's misfit){moved}",
        "not_worse": f"taking the evaluated values whose mean score over the {seeds} seeds is "
        "not significantly worse than the best one's (paired one-sided $t$ test at 95\\%) and "
        "the evaluated values just beyond them",
        "quadratic_fit": "Fieller's interval for the vertex of a parabola fitted by least squares "
        f"to the {tex_escape(metric_name(result.metric))} against {against} around the best "
        f"evaluated value, {widened}",
        "neighbours": "the evaluated values on either side of the best one (no reliable "
        "quadratic fit was available)",
        "none": "not available, since every evaluation diverged",
    }[method]


def _tex_outcome(result: SweepResult) -> str:
    """The second paragraph: how the search ended and what it found."""
    best, refined = result.confidence.best, result.confidence.refined
    seeds = int(result.config.get("seeds", 1))
    stop = {
        "completed": "ran every stage",
        "min_improvement": "stopped early because a stage improved the best score by less than "
        f"{100 * float(result.config.get('min_improvement', 0)):.3g}\\%",
        "resolution": "stopped early because no interval next to the values tied with the best "
        f"had significantly different ends with {seeds} seeds (finer values could not be told "
        "apart)",
        "precision": "stopped once the interval reached the requested precision of "
        f"{tex_number(float(result.config.get('precision') or math.nan))}",
        "budget": "stopped at its budget (the stage bound or max\\_lanes) before reaching the "
        f"requested precision of {tex_number(float(result.config.get('precision') or math.nan))}",
    }.get(result.stop_reason, f"stopped ({tex_escape(result.stop_reason)})")
    return (
        f"The search {stop}: {len(result.stages)} stages, {len(result.evaluations)} evaluations "
        f"in {result.seconds:.1f}~s of wall time ({TIME_COVERS}). The best evaluated "
        f"{result.value_name} was {tex_number(result.best_value)} "
        f"({tex_escape(metric_name(result.metric))} {tex_number(result.best_score, 4)}), "
        f"with a {tex_escape(best.label)} from "
        f"{tex_number(best.low)} to {tex_number(best.high)}, obtained by "
        f"{_tex_interval_method(result, best.method)}. {tex_escape(covers(result))} "
        + (f"The refined optimum is {tex_number(refined.lr)}. " if best.method != "plateau" else "")
        + tex_escape(precision_sentence(result))
    )


def _tex_efficiency(result: SweepResult) -> str:
    """The third paragraph: the equivalent grid, on the sweep's own scale."""
    eff = efficiency(result)
    if eff.scale == "log":
        grid = "spaced log-uniformly"
        apart = f"a factor of {tex_number(eff.spacing, 4)} apart"
    else:
        grid = "spaced uniformly"
        apart = f"{tex_number(eff.spacing, 4)} apart"
    return (
        f"A grid {grid} over the same span ({tex_number(eff.span[0])} to "
        f"{tex_number(eff.span[1])}) with the resolution the search resolved around its "
        f"optimum (neighbouring values {apart}) would need {eff.grid_evaluations} evaluations; "
        f"the search used {eff.evaluations}, {tex_escape(_saved(eff.evaluations_saved))}. At the "
        f"measured {tex_number(eff.seconds_per_evaluation)}~s per evaluation plus the one-time "
        f"{eff.one_time_seconds:.1f}~s of set-up and compilation, that grid would take an "
        f"estimated {eff.grid_seconds:.1f}~s against {eff.sweep_seconds:.1f}~s measured "
        f"({100 * eff.seconds_saved:.1f}\\% saved)."
    )


def methods_tex(result: SweepResult) -> str:
    """A LaTeX ``\\subsection`` describing the search, with this run's numbers."""
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
