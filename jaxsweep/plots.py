"""Figures of a sweep, drawn headless from a :class:`~jaxsweep.SweepResult` alone.

The only module that imports matplotlib, and only when :func:`plot` runs. Figures are built
on ``matplotlib.figure.Figure`` with the Agg canvas rather than through ``pyplot``, so drawing
never changes the caller's backend or global figure state (safe in notebooks and threads).
Each figure is written as a PNG (150 dpi) and a PDF for papers. Every axis, legend and title
names the swept hyperparameter and its scale, read from the result.

:data:`FIGURES` is the one list of figures: what draws each and the caption the report gives it.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from . import _scale
from ._efficiency import efficiency
from ._result import SweepResult

FIGURE_DIR = "figures"

DPI = 150
SCORE_LABEL = "validation loss after the last epoch (lower is better)"
SCORE_METRIC = "val_loss"
MAX_EXTRA_METRICS = 4  # other validation metrics drawn beside the score in lr_curve
BEST_COLOUR = "#d62728"
INTERVAL_COLOUR = "#1f77b4"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def score_label(result: SweepResult) -> str:
    """What the score axis shows: the metric that ranked the values, and which way is better."""
    if result.metric == SCORE_METRIC and result.mode == "min":
        return SCORE_LABEL
    better = "lower" if result.mode == "min" else "higher"
    return f"{metric_name(result.metric)} after the last epoch ({better} is better)"


def metric_name(metric: str) -> str:
    """``val_accuracy`` -> ``validation accuracy``; ``val_loss`` -> ``validation loss``."""
    return "validation " + metric.removeprefix("val_").replace("_", " ")


def _value_label(result: SweepResult) -> str:
    return f"{result.value_name} ({result.scale} scale)"


def _finite(values) -> np.ndarray:
    array = np.asarray(values, np.float64)
    return array[np.isfinite(array)]


def _score_norm(scores):
    """Log colour scale when scores span more than a factor of 10, else linear."""
    from matplotlib.colors import LogNorm, Normalize

    finite = _finite(scores)
    if len(finite) == 0:
        return Normalize(0, 1)
    low, high = float(finite.min()), float(finite.max())
    if low > 0 and high / low > 10:
        return LogNorm(low, high)
    if low == high:
        return Normalize(low - 0.5, high + 0.5)
    return Normalize(low, high)


def _score_cmap(result: SweepResult):
    import matplotlib

    # the best scores are the brightest (viridis reversed when lower is better); diverged grey
    name = "viridis_r" if result.mode == "min" else "viridis"
    return matplotlib.colormaps[name].with_extremes(bad="0.75")


def _edges(values: np.ndarray, low: float, high: float, scale: str) -> np.ndarray:
    """Cell edges around sorted ``values``: midpoints on ``scale``, then the outer limits."""
    return np.concatenate([[low], _scale.midpoints(values, scale), [high]])


def _span(result: SweepResult, pad: float = 0.15) -> tuple[float, float]:
    values = [e.value for e in result.evaluations]
    return _scale.padded(min(values), max(values), pad, result.scale)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(value: float, _position=None) -> str:
    """``10⁻⁵`` as plain text: the look of matplotlib's default log labels without its
    mathtext parser, which costs a noticeable share of drawing every figure."""
    exponent = math.log10(value) if value > 0 else math.nan
    if not math.isfinite(exponent) or abs(exponent - round(exponent)) > 1e-9:
        return ""
    return "10" + str(round(exponent)).translate(_SUPERSCRIPT)


def _plain_log_ticks(axis) -> None:
    """Plain numbers (0.032, not 3.2x10^-2) on a log axis that spans less than two decades;
    powers of ten as plain text on a wider one."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    low, high = sorted(axis.get_view_interval())
    if axis.get_scale() != "log" or low <= 0:
        return
    axis.set_minor_formatter(NullFormatter())
    if high / low >= 100:
        axis.set_major_formatter(FuncFormatter(_power_of_ten))
        return
    subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if high / low < 10 else (1, 2, 5)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    if len([t for t in axis.get_majorticklocs() if low <= t <= high]) < 3:
        axis.set_major_locator(MaxNLocator(5))


def _stage_ticks(ax, result: SweepResult) -> None:
    ax.set_xticks([s.index for s in result.stages])
    ax.set_xticklabels([f"{s.index}\n({len(s.values)} values)" for s in result.stages])
    ax.set_xlabel("stage")
    ax.set_xlim(-0.6, len(result.stages) - 0.4)


def _best_path(ax, result: SweepResult, limits, size: float, width: float) -> None:
    """The best value after each stage, joined; stars inside ``limits`` are drawn whole even
    on the panel's edge (the joining line is clipped as usual)."""
    stages = [s.index for s in result.stages]
    best = [s.best_value for s in result.stages]
    ax.plot(stages, best, color=BEST_COLOUR, linewidth=width, zorder=4)
    inside = [(x, y) for x, y in zip(stages, best, strict=True) if limits[0] <= y <= limits[1]]
    if inside:
        ax.plot(
            *zip(*inside, strict=True),
            ls="",
            marker="*",
            markersize=size,
            color=BEST_COLOUR,
            zorder=5,
            clip_on=False,
        )


def _mark_zoom(ax, zoom: tuple[float, float], colour: str):
    """Dotted lines at the zoom panel's limits; returns their legend handle."""
    for edge in zoom:
        ax.axhline(edge, color=colour, linestyle=":", lw=1.2, zorder=2)
    from matplotlib.lines import Line2D

    return Line2D([], [], color="0.3", linestyle=":", lw=1.2, label="window of the zoom (right)")


def _stage_panels(result: SweepResult, width: float):
    """A stage-by-value figure: the whole search, plus a zoom panel when the final stages need
    one, sharing one score colour scale. Returns (figure, axes, zoom limits, norm, cmap)."""
    zoom = _zoom_limits(result)
    figure = _figure(12 if zoom else width, 5.5)
    axes = figure.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    norm = _score_norm([e.score for e in result.evaluations])
    return figure, axes, zoom, norm, _score_cmap(result)


def _value_axis(ax, result: SweepResult, limits: tuple[float, float]) -> None:
    ax.set_yscale(result.scale)
    ax.set_ylim(*limits)
    _plain_log_ticks(ax.yaxis)
    ax.set_ylabel(_value_label(result))
    _stage_ticks(ax, result)


def heatmap(result: SweepResult):
    """Convergence heatmap: stage on x, the swept value on y, colour = score known after it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    figure, axes, zoom, norm, cmap = _stage_panels(result, width=8)
    low, high = _span(result, pad=0.05)
    mesh = None
    for ax, limits in zip(axes, [(low, high), zoom], strict=False):
        for stage in result.stages:
            # what the search knew after this stage: each value's cell reaches halfway (on the
            # sweep's scale) to its evaluated neighbours
            known = sorted((e.value, e.score) for e in result.evaluations if e.stage <= stage.index)
            values = np.array([k[0] for k in known])
            scores = np.ma.masked_invalid(np.array([[k[1]] for k in known]))
            edges = _edges(values, low, high, result.scale)
            x = np.array([[stage.index - 0.45, stage.index + 0.45]] * len(edges))
            y = np.stack([edges, edges], axis=1)
            mesh = ax.pcolormesh(x, y, scores, cmap=cmap, norm=norm, shading="flat")
            new = [e.value for e in result.evaluations if e.stage == stage.index]
            ax.scatter(
                [stage.index] * len(new),
                new,
                s=14,
                c="white",
                edgecolors="black",
                linewidths=0.6,
                zorder=5,
            )
        _best_path(ax, result, limits, size=11, width=1.2)
        _value_axis(ax, result, limits)
    name = result.value_name
    axes[0].set_title("What the search knew after each stage")
    handles = [
        Line2D([], [], color=BEST_COLOUR, marker="*", markersize=11, label=f"best {name} so far"),
        Line2D(
            [], [], ls="", marker="o", mfc="white", mec="black", label="values this stage trained"
        ),
    ]
    if zoom:
        axes[1].set_title("Zoom on the values the final stages refined")
        handles.append(_mark_zoom(axes[0], zoom, "white"))
    colourbar = figure.colorbar(mesh, ax=list(axes))
    _plain_log_ticks(colourbar.ax.yaxis)
    colourbar.set_label("score of the nearest evaluated value:\n" + score_label(result))
    if any(e.diverged for e in result.evaluations):
        handles.append(Patch(color="0.75", label="diverged"))
    axes[0].legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    return figure


def _zoom_limits(result: SweepResult) -> tuple[float, float] | None:
    """Values covered by the kept intervals of the last two stages, padded; None if too few."""
    late = [s for s in result.stages[-2:] if s.index > 0]
    spans = [iv for s in late for iv in s.intervals]
    if len(result.stages) < 3 or not spans:
        return None
    low = min(a for a, _ in spans)
    high = max(b for _, b in spans)
    return _scale.padded(low, high, 0.08, result.scale)


def search_path(result: SweepResult):
    """Every evaluated value per stage, kept intervals shaded, the best value's path joined."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    figure, axes, zoom, norm, cmap = _stage_panels(result, width=7.5)
    interval = result.value_interval
    points = None
    for ax, limits in zip(axes, [_span(result, 0.05), zoom], strict=False):
        for stage in result.stages:
            for a, b in stage.intervals:
                colour = "#ff7f0e" if stage.expansion else INTERVAL_COLOUR
                ax.add_patch(
                    Rectangle((stage.index - 0.35, a), 0.7, b - a, color=colour, alpha=0.18, lw=0)
                )
        evaluations = result.evaluations
        points = ax.scatter(
            [e.stage for e in evaluations],
            [e.value for e in evaluations],
            c=np.ma.masked_invalid([e.score for e in evaluations]),
            cmap=cmap,
            norm=norm,
            s=36,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            plotnonfinite=True,
        )
        _best_path(ax, result, limits, size=13, width=1.5)
        if all(math.isfinite(v) for v in interval):
            ax.axhspan(*interval, color=BEST_COLOUR, alpha=0.08, lw=0, zorder=0)
        _value_axis(ax, result, limits)
    axes[0].set_title("The whole search")
    handles = [
        Patch(color=INTERVAL_COLOUR, alpha=0.3, label="kept interval (refined next)"),
        Patch(color=BEST_COLOUR, alpha=0.15, label=f"{result.confidence.best.label}, optimum"),
        Line2D(
            [],
            [],
            color=BEST_COLOUR,
            marker="*",
            markersize=13,
            label=f"best {result.value_name} after the stage",
        ),
    ]
    if any(s.expansion for s in result.stages):
        handles.insert(1, Patch(color="#ff7f0e", alpha=0.3, label="searched beyond the range"))
    if zoom:
        axes[1].set_title("Zoom on the final stages")
        handles.append(_mark_zoom(axes[0], zoom, "0.3"))
    axes[0].legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    colourbar = figure.colorbar(points, ax=list(axes))
    _plain_log_ticks(colourbar.ax.yaxis)
    colourbar.set_label(score_label(result))
    return figure


def curve_words(fit) -> str:
    """The fitted curve's kind in words, from its number of terms (``SeedCurveFit``: 4, a
    ``cubic``; ``QuadraticFit``: 3, a ``quadratic``); ``cubic`` without a fit (the seeds'
    curve is a cubic unless the result says otherwise)."""
    if fit is None:
        return "cubic"
    terms = getattr(fit, "terms", 3)
    return {2: "straight line", 3: "quadratic", 4: "cubic"}.get(
        int(terms), f"polynomial of degree {int(terms) - 1}"
    )


def fit_kind(result: SweepResult) -> str:
    """``a cubic per seed, averaged over the 3 seeds`` or ``a quadratic fit to one seed``."""
    fit = result.confidence.refined.fit
    words = curve_words(fit)
    if fit is not None and hasattr(fit, "seeds"):  # a SeedCurveFit: one curve per seed
        return f"the {words} fitted to each seed's scores and averaged over the {fit.seeds} seeds"
    return f"the {words} fit"


class Extrapolation(NamedTuple):
    """The fitted curve's minimum against what was observed."""

    curve_best: float  # the fitted curve's best score in its window (the metric's sign)
    at: float  # where
    observed_best: float  # the best seed-averaged score observed in the window
    spread: float  # the seeds' spread: median over the window's values of their seeds' std
    gap: float  # how far the curve's best lies beyond every observed mean (objective sign)


def extrapolation(result: SweepResult) -> Extrapolation | None:
    """Where the fitted curve's best lies beyond every observed mean by more than the seeds'
    spread (the curve promises a score no value delivered), else None."""
    fit = result.confidence.refined.fit
    if fit is None:
        return None
    low, high = fit.window
    inside = [e for e in result.evaluations if low <= e.value <= high and not e.diverged]
    if not inside:
        return None
    grid = np.asarray(_scale.spaced(low, high, 400, result.scale))
    curve = np.asarray(fit.predict(grid), np.float64)  # objective sign: lower is better
    index = int(np.argmin(curve))
    observed = min(result.objective(e.score) for e in inside)
    stds = [
        float(np.std(e.seed_scores, ddof=1))
        for e in inside
        if len(e.seed_scores) > 1 and np.isfinite(e.seed_scores).all()
    ]
    if not stds:
        return None  # one seed: no spread to compare with
    spread = float(np.median(stds))
    gap = observed - float(curve[index])
    if gap <= spread:
        return None
    return Extrapolation(
        result.objective(float(curve[index])),
        float(grid[index]),
        result.objective(observed),
        spread,
        gap,
    )


def extrapolation_note(result: SweepResult) -> str:
    """The caption's note when the fitted curve's best lies beyond every observed mean by more
    than the seeds' spread; ``""`` otherwise."""
    found = extrapolation(result)
    if found is None:
        return ""
    better = "below" if result.mode == "min" else "above"
    return (
        f"The fitted curve's best, {found.curve_best:.4g} at {result.value_name} "
        f"{found.at:.4g}, lies {found.gap:.3g} {better} every seed-averaged score observed "
        f"(best {found.observed_best:.4g}), more than the seeds' spread ({found.spread:.3g}): "
        "no evaluated value scored that well, so read the curve's depth as extrapolation."
    )


def _lr_curve_caption(result: SweepResult) -> str:
    fit = result.confidence.refined.fit
    seeds = int(result.config.get("seeds", 1))
    dots = (
        "small dots the scores of each seed, larger ones their means, coloured by stage"
        if seeds > 1
        else "coloured by stage"
    )
    if fit is None:
        curve = "; no curve was fitted (the interval comes from the evaluated values)."
    else:
        band = (
            " with the band where 95% of the seed-averaged scores fall if the fit holds"
            if hasattr(fit, "seeds")
            else " with the band where 95% of scores fall if the fit holds"
        )
        curve = (
            f", and {fit_kind(result)} that refines it,{band} (a note says when the fit and "
            "the points disagree)."
        )
    text = (
        f"Score against {result.value_name} ({result.scale} scale), {dots}; the best value "
        f"with its interval{curve}"
    )
    note = extrapolation_note(result)
    return text + (f" {note}" if note else "")


class _FitQuality(NamedTuple):
    """How well the fitted curve describes the scores it was fitted to."""

    band: float  # half-width of the band holding 95% of scores if the residuals are normal
    explained: float  # R^2: share of the scores' variance in the window the curve explains
    best_residual: float  # best evaluated score minus the fit at its value (the metric's sign)
    poor: bool  # the fit explains under half the variance, or the best score lies off the band


def _fit_quality(result: SweepResult) -> _FitQuality | None:
    from ._confidence import t_quantile_975

    fit = result.confidence.refined.fit
    if fit is None:
        return None
    low, high = fit.window
    inside = [e for e in result.evaluations if low <= e.value <= high and math.isfinite(e.score)]
    # the fit minimised the signed score (result.objective): residuals are taken in that sign
    scores = np.array([result.objective(e.score) for e in inside])
    residuals = scores - fit.predict([e.value for e in inside])
    spread = float(np.sum((scores - scores.mean()) ** 2))
    explained = 1.0 - float(np.sum(residuals**2)) / spread if spread > 0 else 1.0
    band = t_quantile_975(max(fit.points - fit.terms, 1)) * fit.residual_std
    best_residual = float(result.best_score - result.objective(fit.predict(result.best_value)))
    return _FitQuality(band, explained, best_residual, explained < 0.5 or abs(best_residual) > band)


def _draw_fit(ax, result: SweepResult, quality: _FitQuality | None) -> None:
    """The fitted curve and the refined value; with ``quality``, the band of its residuals."""
    refined = result.confidence.refined
    grid = np.asarray(_scale.spaced(*refined.fit.window, 200, result.scale))
    curve = result.objective(refined.fit.predict(grid))  # back in the metric's own sign
    ax.plot(grid, curve, color="black", lw=1.2, label="fitted curve")
    if quality is not None:
        for sign in (-1, 1):
            ax.plot(
                grid,
                curve + sign * quality.band,
                color="0.35",
                lw=0.9,
                ls=":",
                label=f"fit ± {quality.band:.3g}: 95% of scores if the fit holds"
                if sign > 0
                else None,
            )
    ax.axvline(
        refined.lr,
        color="black",
        linestyle="--",
        lw=1,
        label=f"refined {result.value_name} {refined.lr:.4g}",
    )


def _fit_note(result: SweepResult, quality: _FitQuality) -> str:
    """Says in words why the fit should not be trusted."""
    fit = result.confidence.refined.fit
    side = "below" if quality.best_residual < 0 else "above"
    return (
        f"Poor fit: the curve explains {100 * max(quality.explained, 0):.0f}% of the variance "
        f"of the {fit.points} scores it was fitted to, and the best evaluated score lies "
        f"{abs(quality.best_residual):.3g} {side} it. Treat the refined value and the fitted "
        "curve as rough."
    )


def lr_curve(result: SweepResult):
    """Score against the swept value, coloured by stage; best value, interval and the fitted
    curve with its residual band (and a note when the fit and the points disagree)."""
    import matplotlib

    best = result.confidence.best
    quality = _fit_quality(result)
    name = result.value_name
    extras = _extra_metrics(result)
    figure = _figure(13.5, 9 if extras else 5)
    top, bottom = figure.subfigures(2, 1, height_ratios=(5, 4)) if extras else (figure, None)
    axes = top.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    seeds = int(result.config.get("seeds", 1))
    finite = _finite([e.score for e in result.evaluations])
    log_y = len(finite) > 0 and finite.min() > 0 and finite.max() / finite.min() > 10
    for ax, limits in zip(axes, [_span(result, 0.05), _fit_limits(result)], strict=True):
        for stage in result.stages:
            chosen = [e for e in result.evaluations if e.stage == stage.index and not e.diverged]
            if seeds > 1:  # every seed's score, small, behind the means
                each = [(e.value, s) for e in chosen for s in e.seed_scores if math.isfinite(s)]
                if each:
                    ax.scatter(
                        *zip(*each, strict=True),
                        color=colours(stage.index % 10),
                        s=7,
                        alpha=0.55,
                        linewidths=0,
                        zorder=2,
                        label="one seed's score" if stage.index == result.stages[0].index else None,
                    )
            ax.scatter(
                [e.value for e in chosen],
                [e.score for e in chosen],
                color=colours(stage.index % 10),
                s=30,
                edgecolors="black",
                linewidths=0.4,
                label=f"stage {stage.index}" + (" (mean over seeds)" if seeds > 1 else ""),
                zorder=3,
            )
        diverged = [e.value for e in result.evaluations if e.diverged]
        if diverged:
            ax.scatter(
                diverged,
                [1.0] * len(diverged),
                transform=ax.get_xaxis_transform(),
                marker="x",
                color="black",
                label="diverged (scored worst)",
                clip_on=False,
            )
        if all(math.isfinite(v) for v in best.interval):
            ax.axvspan(
                *best.interval,
                color=BEST_COLOUR,
                alpha=0.12,
                lw=0,
                label=f"{best.label} for the optimum ({best.method.replace('_', ' ')})",
            )
        ax.scatter(
            [result.best_value],
            [result.best_score],
            marker="*",
            s=260,
            color=BEST_COLOUR,
            edgecolors="black",
            zorder=5,
            label=f"best evaluated {name} {result.best_value:.4g}",
        )
        if quality is not None:  # the band only where the panel is wide enough to read it
            _draw_fit(ax, result, quality if ax is axes[1] else None)
        ax.set_xscale(result.scale)
        ax.set_xlim(*limits)
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel(_value_label(result))
        ax.grid(True, which="major", alpha=0.3)
    if log_y:
        axes[0].set_yscale("log")
        _plain_log_ticks(axes[0].yaxis)
    axes[0].set_ylabel(score_label(result))
    _fit_y_limits(axes[1], result)
    axes[0].set_title("Every evaluation")
    axes[1].set_title("Around the best value (points outside the view are clipped)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, framealpha=0.9)
    notes = [_fit_note(result, quality)] if quality is not None and quality.poor else []
    if extrapolation_note(result):
        notes.append(extrapolation_note(result))
    if notes:
        axes[1].text(
            1.03,
            0.0,
            "\n\n".join(textwrap.fill(note, 48) for note in notes),
            transform=axes[1].transAxes,
            va="bottom",
            ha="left",
            fontsize=8,
            color=BEST_COLOUR,
        )
    if extras:
        _extra_panels(bottom, result, extras)
    return figure


def _extra_metrics(result: SweepResult) -> tuple[str, ...]:
    """The validation metrics other than the score (the loss when ranked by another)."""
    names = result.evaluations[0].validation_metrics()
    return tuple(n for n in names if n != result.metric)[:MAX_EXTRA_METRICS]


def _extra_panels(subfigure, result: SweepResult, extras) -> None:
    """One small panel per other validation metric: its final value against the swept value."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    axes = subfigure.subplots(1, len(extras), squeeze=False)[0]
    for ax, metric in zip(axes, extras, strict=True):
        for stage in result.stages:
            chosen = [e for e in result.evaluations if e.stage == stage.index and not e.diverged]
            ax.scatter(
                [e.value for e in chosen],
                [e.series(metric)[-1] for e in chosen],
                color=colours(stage.index % 10),
                s=18,
                edgecolors="black",
                linewidths=0.3,
            )
        ax.axvline(result.best_value, color=BEST_COLOUR, lw=1, ls="--")
        ax.set_xscale(result.scale)
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel(_value_label(result))
        ax.set_title(f"{metric_name(metric)} after the last epoch", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    subfigure.suptitle(
        f"Other validation metrics (dashed: the best value by {metric_name(result.metric)})",
        fontsize=10,
    )


def _fit_spans(result: SweepResult) -> list[tuple[float, float]]:
    """The intervals shown and the fit's window: what the zoom panel must hold."""
    conf = result.confidence
    spans = [conf.best.interval, conf.refined.interval]
    if conf.refined.fit is not None:
        spans.append(conf.refined.fit.window)
    return spans


def _fit_limits(result: SweepResult) -> tuple[float, float]:
    scale = result.scale
    values = [
        v
        for span in _fit_spans(result)
        for v in span
        if math.isfinite(v) and (scale != "log" or v > 0)
    ]
    values.append(result.best_value)
    return _scale.padded(min(values), max(values), 0.25, scale)


def _fit_y_limits(ax, result: SweepResult) -> None:
    """Scores of the values the fit and the intervals cover, with a margin; others clip."""
    spans = _fit_spans(result)
    low = min(min(span) for span in spans)
    high = max(max(span) for span in spans)
    inside = [
        e.score for e in result.evaluations if low <= e.value <= high and math.isfinite(e.score)
    ]
    if len(inside) >= 2:
        bottom, top = min(inside), max(inside)
        pad = (top - bottom) * 0.12 or abs(top) * 0.05 or 1.0
        ax.set_ylim(bottom - pad, top + pad)


def _value_norm(result: SweepResult):
    """Colours for values on the sweep's scale."""
    from matplotlib.colors import LogNorm, Normalize

    values = np.array([e.value for e in result.evaluations])
    low, high = values.min(), values.max()
    if low == high:
        return Normalize(low * 0.5, high * 1.5)
    return LogNorm(low, high) if result.scale == "log" and low > 0 else Normalize(low, high)


def loss_curves(result: SweepResult):
    """Training and validation loss per epoch for every value, the three best drawn thick."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    figure = _figure(12, 5.6)
    axes = figure.subplots(1, 2, sharey=True)
    norm = _value_norm(result)
    # plasma without its palest yellows, which vanish on white
    cmap = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, 256)))
    styles = [(BEST_COLOUR, "o", "-"), ("black", "s", "--"), ("#2ca02c", "^", ":")]
    ranked = sorted(result.evaluations, key=lambda e: (result.objective(e.score), e.value))
    top = ranked[:3]
    # one point per validation: at its training step when recorded, else by epoch
    recorded = result.evaluations[0].steps
    epochs = (
        np.asarray(recorded) if recorded else np.arange(1, len(result.evaluations[0].val_loss) + 1)
    )
    for ax, field, title in zip(
        axes,
        ("train_loss", "val_loss"),
        (
            "training loss (mean since the previous validation)"
            if recorded and result.config.get("epochs") is None
            else "training loss (mean over the epoch)",
            "validation loss",
        ),
        strict=True,
    ):
        for evaluation in result.evaluations:
            values = np.asarray(getattr(evaluation, field), np.float64)
            ax.plot(epochs, values, color=cmap(norm(evaluation.value)), lw=0.8, alpha=0.6)
        for rank, evaluation in enumerate(top):
            values = np.asarray(getattr(evaluation, field), np.float64)
            colour, marker, line = styles[rank]
            ax.plot(
                epochs,
                values,
                color=colour,
                lw=2.2,
                ls=line,
                marker=marker,
                markersize=6,
                label=f"#{rank + 1}: {result.value_name} {evaluation.value:.4g} "
                f"(score {evaluation.score:.4g})",
                zorder=4,
            )
        ax.set_yscale("log")
        ax.set_xlabel("training step" if recorded else "epoch")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("loss (log scale)")
    axes[0].set_ylim(*_loss_limits(result))
    _plain_log_ticks(axes[0].yaxis)
    # below the panels, where it covers no curve
    figure.legend(
        *axes[1].get_legend_handles_labels(),
        title=f"best {result.value_name} values",
        fontsize=8,
        loc="outside lower center",
        ncol=3,
    )
    colourbar = figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes))
    _plain_log_ticks(colourbar.ax.yaxis)
    colourbar.set_label(_value_label(result))
    figure.suptitle(
        f"Loss per epoch of every evaluated {result.value_name} (curves beyond the view clip)"
    )
    return figure


def _loss_limits(result: SweepResult) -> tuple[float, float]:
    """Shows every non-diverged curve of the better half of values; diverging ones are clipped."""
    ranked = sorted(result.evaluations, key=lambda e: (result.objective(e.score), e.value))
    better = ranked[: max(3, len(ranked) // 2)]
    values = _finite([v for e in result.evaluations for v in (*e.train_loss, *e.val_loss)])
    positive = values[values > 0]
    if len(positive) == 0:
        return 1e-3, 1.0
    best_values = _finite([v for e in better for v in (*e.train_loss, *e.val_loss)])
    best_values = best_values[best_values > 0]
    high = (best_values.max() if len(best_values) else positive.max()) * 1.6
    return positive.min() / 1.3, high


def _evaluations_title(eff) -> str:
    """``Evaluations: 46.7% fewer than the grid``, or ``more than`` (never a negative saving)."""
    if not eff.comparable:
        return "Evaluations: every one diverged (no grid compares)"
    if eff.evaluations < eff.grid_evaluations:
        return f"Evaluations: {100 * eff.evaluations_saved:.1f}% fewer than the grid"
    if eff.evaluations > eff.grid_evaluations:
        return f"Evaluations: {eff.evaluations}, more than the grid's {eff.grid_evaluations}"
    return "Evaluations: as many as the grid"


def _seconds_title(eff) -> str:
    """``Wall time: 17.9% less than the grid (estimated)``, or ``more than``."""
    if not eff.comparable:
        return "Wall time: measured only (no grid compares)"
    if eff.sweep_seconds < eff.grid_seconds:
        return f"Wall time: {100 * eff.seconds_saved:.1f}% less than the grid (estimated)"
    if eff.sweep_seconds > eff.grid_seconds:
        return "Wall time: more than the grid's estimate"
    return "Wall time: the same as the grid's estimate"


def efficiency_figure(result: SweepResult):
    """Evaluations and wall time of the sweep against the equivalent grid, method in the text."""
    from matplotlib.patches import Patch

    eff = efficiency(result)
    figure = _figure(10, 5.4)
    grid = figure.add_gridspec(2, 2, height_ratios=[5, 1])
    left, right = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    caption_ax = figure.add_subplot(grid[1, :])
    names = ["this sweep", "equivalent grid"]
    colours = [INTERVAL_COLOUR, "0.6"]
    bars = left.bar(names, [eff.evaluations, eff.grid_evaluations], color=colours)
    left.bar_label(bars, labels=[f"{eff.evaluations}", f"{eff.grid_evaluations}"], padding=2)
    left.set_ylabel(f"{result.value_name} values trained")
    left.set_title(_evaluations_title(eff))
    one_time = [eff.one_time_seconds, eff.one_time_seconds]
    training = [eff.sweep_seconds - eff.one_time_seconds, eff.grid_seconds - eff.one_time_seconds]
    right.bar(names, one_time, color="0.92", edgecolor="0.4", hatch="//")
    bars = right.bar(names, training, bottom=one_time, color=colours, edgecolor="0.4")
    right.bar_label(
        bars,
        labels=[f"{eff.sweep_seconds:.1f} s (measured)", f"{eff.grid_seconds:.1f} s (estimated)"],
        padding=2,
    )
    right.set_ylabel("wall time (seconds)")
    right.set_title(_seconds_title(eff))
    # headroom above the bars' labels for the legend, so neither hides the other
    right.set_ylim(0, 1.5 * max(eff.sweep_seconds, eff.grid_seconds, 1e-9))
    right.legend(
        handles=[
            Patch(facecolor="0.92", edgecolor="0.4", hatch="//", label="set-up and compilation"),
            Patch(facecolor=colours[0], edgecolor="0.4", label="training: this sweep"),
            Patch(facecolor=colours[1], edgecolor="0.4", label="training: grid (estimated)"),
        ],
        loc="upper left",
        fontsize=8,
    )
    for ax in (left, right):
        ax.margins(y=0.15)
    caption_ax.axis("off")
    caption_ax.text(
        0,
        1,
        textwrap.fill(eff.method(), 150),
        va="top",
        ha="left",
        fontsize=7.5,
        transform=caption_ax.transAxes,
    )
    device = result.environment.get("device_kind", "?")
    figure.suptitle(f"Cost of this sweep against a grid of the same resolution (device: {device})")
    return figure


def horizon_figure(result: SweepResult):
    """The optimum against the training length: each horizon's optimum with its interval,
    the fitted power law with its 95% band out to the target, the target's answer."""
    from . import _horizon

    horizon = result.horizon
    figure = _figure(6.4, 4.2)
    ax = figure.add_subplot()
    trained = [o for o in horizon.horizons if math.isfinite(o.value)]
    steps = np.array([o.steps for o in trained], float)
    values = np.array([o.value for o in trained])
    lows = np.array([min(o.interval[0], o.value) for o in trained])
    highs = np.array([max(o.interval[1], o.value) for o in trained])
    bounded = np.isfinite(highs) & (lows > 0)
    ax.errorbar(
        steps[bounded],
        values[bounded],
        yerr=[values[bounded] - lows[bounded], highs[bounded] - values[bounded]],
        fmt="o",
        color=INTERVAL_COLOUR,
        capsize=3,
        label="optimum at each horizon (95% interval)",
    )
    ax.plot(steps[~bounded], values[~bounded], "o", mfc="none", color=INTERVAL_COLOUR)
    law = _horizon.fit_power_law(list(horizon.horizons))
    span = np.geomspace(
        steps.min() if steps.size else horizon.sweep_steps, horizon.target_steps, 60
    )
    if law is not None:
        centre, error = np.array([law.predict(t) for t in span]).T
        ax.plot(
            span,
            np.exp(centre),
            color="0.3",
            lw=1,
            label=f"fit: optimum ~ steps^{law.exponent:.2f}",
        )
        ax.fill_between(
            span,
            np.exp(centre - _horizon.Z * error),
            np.exp(centre + _horizon.Z * error),
            color="0.3",
            alpha=0.12,
            lw=0,
        )
    low, high = horizon.interval
    if math.isfinite(horizon.value) and 0 < low <= high < math.inf:
        kind = "extrapolated" if horizon.extrapolated else "trained"
        ax.errorbar(
            [horizon.target_steps],
            [horizon.value],
            yerr=[[horizon.value - low], [high - horizon.value]],
            fmt="*",
            ms=12,
            color=BEST_COLOUR,
            capsize=4,
            label=f"target, {kind} (95% interval)",
        )
    ax.axhline(
        result.best_value,
        color="0.5",
        ls="--",
        lw=0.8,
        label=f"the sweep's best ({result.best_value:.3g})",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training steps per lane (log scale)")
    ax.set_ylabel(f"optimal {result.value_name} (log scale)")
    ax.set_title(f"Optimal {result.value_name} against the training length")
    ax.legend(fontsize=7, loc="best")
    return figure


def has_horizon(result: SweepResult) -> bool:
    """Whether the result trained longer horizons (``run(target_steps=...)``)."""
    return result.horizon is not None and len(result.horizon.horizons) > 1


def _always(result: SweepResult) -> bool:
    return True


# ----------------------------------------------------------------------------- the list


class FigureSpec(NamedTuple):
    """One figure: what draws it, and its caption in the report."""

    draw: Callable[[SweepResult], object]  # result -> matplotlib Figure
    # {name} and {scale}: the swept hyperparameter in words, and its scale; or a function of
    # the result, for a caption that depends on what the run found (the fitted curve's kind)
    caption: str | Callable[[SweepResult], str]
    applies: Callable[[SweepResult], bool] = _always  # drawn only for results it fits


FIGURES: dict[str, FigureSpec] = {
    "heatmap": FigureSpec(
        heatmap,
        "Convergence heatmap: for each stage (x), the score of the nearest {name} evaluated so "
        "far at every {name} (y, {scale} scale); dots mark the values that stage evaluated.",
    ),
    "search_path": FigureSpec(
        search_path,
        "Search path: every evaluated {name} per stage, the kept intervals shaded and the best "
        "value after each stage joined; right, a zoom on the final stages (its window dotted "
        "on the left).",
    ),
    "lr_curve": FigureSpec(lr_curve, _lr_curve_caption),
    "loss_curves": FigureSpec(
        loss_curves,
        "Training and validation loss per epoch for every {name} evaluated, coloured by value "
        "({scale} scale); the three best drawn thick.",
    ),
    "efficiency": FigureSpec(
        efficiency_figure,
        "Evaluations and wall time of this sweep against the grid, evenly spaced on a {scale} "
        "scale, that reaches the same resolution over the same span (method in the figure and "
        "below).",
    ),
    "horizon": FigureSpec(
        horizon_figure,
        "Horizon check: the optimal {name} found at each training length (the sweep's own "
        "first), the power law fitted through them with its 95% band, and the value for the "
        "target run; the dashed line is the sweep's best.",
        has_horizon,
    ),
}


def figures_for(result: SweepResult) -> list[str]:
    """The figures :func:`plot` draws for ``result``, in :data:`FIGURES` order."""
    return [name for name, spec in FIGURES.items() if spec.applies(result)]


def caption(name: str, result: SweepResult) -> str:
    """The report's caption of figure ``name`` for ``result``."""
    text = FIGURES[name].caption
    if callable(text):
        return text(result)
    return text.format(name=result.value_name, scale=result.scale)


def _save(figure, folder: str, name: str) -> str:
    png = os.path.join(folder, f"{name}.png")
    figure.savefig(png, dpi=DPI)
    # the layout does not depend on the resolution: the PDF reuses the one solved for the PNG
    # rather than solving it again (the layout is most of a figure's drawing time)
    figure.set_layout_engine("none")
    figure.savefig(os.path.join(folder, f"{name}.pdf"))
    return png


def plot(result: SweepResult, out_dir: str | os.PathLike) -> dict[str, str]:
    """Draws every figure of ``result`` into ``out_dir/figures/`` as PNG (150 dpi) and PDF.

    Args:
      result: a finished sweep (``jaxsweep.run`` or ``jaxsweep.load``).
      out_dir: folder that receives ``figures/``; created if missing.

    Returns:
      ``{name: png_path}`` for every figure of :data:`FIGURES` (``heatmap``, ``search_path``,
      ``lr_curve``, ``loss_curves``, ``efficiency``, and ``horizon`` for a sweep with a
      target), each with a ``.pdf`` beside it.

    Example::

      paths = jaxsweep.plot(result, "runs/demo")
    """
    if not isinstance(result, SweepResult):
        raise TypeError(f"result: expected a SweepResult, got {type(result).__name__}")
    if not result.evaluations:
        raise ValueError("result: has no evaluations to plot")
    folder = os.path.join(os.fspath(out_dir), FIGURE_DIR)
    os.makedirs(folder, exist_ok=True)
    return {name: _save(FIGURES[name].draw(result), folder, name) for name in figures_for(result)}
