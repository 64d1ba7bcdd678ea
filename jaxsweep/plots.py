"""Figures of a sweep, drawn headless from a :class:`~jaxsweep.SweepResult` alone.

The only module that imports matplotlib, and only when :func:`plot` runs. Figures are built
on ``matplotlib.figure.Figure`` with the Agg canvas rather than through ``pyplot``, so drawing
never changes the caller's backend or global figure state (safe in notebooks and threads).
Each figure is written as a PNG (150 dpi) and a PDF for papers.
"""

from __future__ import annotations

import math
import os
import textwrap

import numpy as np

from ._result import SweepResult
from .report import FIGURE_DIR, FIGURES, Efficiency, efficiency

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
    return f"{_metric_name(result.metric)} after the last epoch ({better} is better)"


def _metric_name(metric: str) -> str:
    """``val_accuracy`` -> ``validation accuracy``."""
    return "validation " + metric.removeprefix("val_").replace("_", " ")


def _rate_label(result: SweepResult) -> str:
    name = result.config.get("hyperparam", "learning_rate").replace("_", " ")
    scale = result.config.get("scale", "log")
    return f"{name} ({scale} scale)"


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


def _scale(result: SweepResult) -> str:
    """The sweep's scale, which is also the scale of every rate axis: "log" or "linear"."""
    return "linear" if result.config.get("scale", "log") == "linear" else "log"


def _edges(values: np.ndarray, low: float, high: float, scale: str) -> np.ndarray:
    """Cell edges around sorted ``values``: midpoints on ``scale``, then the outer limits."""
    if scale == "log":
        middles = np.sqrt(values[:-1] * values[1:])
    else:
        middles = (values[:-1] + values[1:]) / 2
    return np.concatenate([[low], middles, [high]])


def _padded(low: float, high: float, fraction: float, scale: str) -> tuple[float, float]:
    """``[low, high]`` widened by ``fraction`` of its width on ``scale`` at both ends."""
    if scale == "log":
        ratio = (high / low) ** fraction if high > low * 1.001 else 1.5
        return low / ratio, high * ratio
    width = (high - low) * fraction if high > low else max(abs(high), 1.0) * 0.5
    return low - width, high + width


def _span(result: SweepResult, pad: float = 0.15) -> tuple[float, float]:
    lrs = np.asarray([e.lr for e in result.evaluations])
    return _padded(float(lrs.min()), float(lrs.max()), pad, _scale(result))


def _plain_log_ticks(axis) -> None:
    """Plain numbers (0.032, not 3.2x10^-2) on a log axis that spans less than two decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    low, high = sorted(axis.get_view_interval())
    if axis.get_scale() != "log" or low <= 0 or high / low >= 100:
        return
    subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if high / low < 10 else (1, 2, 5)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())
    if len([t for t in axis.get_majorticklocs() if low <= t <= high]) < 3:
        axis.set_major_locator(MaxNLocator(5))


def _stage_ticks(ax, result: SweepResult) -> None:
    ax.set_xticks([s.index for s in result.stages])
    ax.set_xticklabels([f"{s.index}\n({len(s.lrs)} rates)" for s in result.stages])
    ax.set_xlabel("stage")
    ax.set_xlim(-0.6, len(result.stages) - 0.4)


# ----------------------------------------------------------------------------- figures


def _stage_panels(result: SweepResult, width: float):
    """A stage-by-rate figure: the whole search, plus a zoom panel when the final stages need
    one, sharing one score colour scale. Returns (figure, axes, zoom limits, norm, cmap)."""
    zoom = _zoom_limits(result)
    figure = _figure(12 if zoom else width, 5.5)
    axes = figure.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    norm = _score_norm([e.score for e in result.evaluations])
    return figure, axes, zoom, norm, _score_cmap(result)


def heatmap(result: SweepResult):
    """Convergence heatmap: stage on x, learning rate on y, colour = score known after it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    figure, axes, zoom, norm, cmap = _stage_panels(result, width=8)
    low, high = _span(result, pad=0.05)
    mesh = None
    for ax, limits in zip(axes, [(low, high), zoom], strict=False):
        for stage in result.stages:
            # what the search knew after this stage: each rate's cell reaches halfway (on the
            # sweep's scale) to its evaluated neighbours
            known = sorted((e.lr, e.score) for e in result.evaluations if e.stage <= stage.index)
            lrs = np.array([k[0] for k in known])
            values = np.ma.masked_invalid(np.array([[k[1]] for k in known]))
            edges = _edges(lrs, low, high, _scale(result))
            x = np.array([[stage.index - 0.45, stage.index + 0.45]] * len(edges))
            y = np.stack([edges, edges], axis=1)
            mesh = ax.pcolormesh(x, y, values, cmap=cmap, norm=norm, shading="flat")
            new = [e.lr for e in result.evaluations if e.stage == stage.index]
            ax.scatter(
                [stage.index] * len(new),
                new,
                s=14,
                c="white",
                edgecolors="black",
                linewidths=0.6,
                zorder=5,
            )
        ax.plot(
            [s.index for s in result.stages],
            [s.best_lr for s in result.stages],
            color=BEST_COLOUR,
            marker="*",
            markersize=11,
            linewidth=1.2,
            zorder=4,
        )
        ax.set_yscale(_scale(result))
        ax.set_ylim(*limits)
        _plain_log_ticks(ax.yaxis)
        ax.set_ylabel(_rate_label(result))
        _stage_ticks(ax, result)
    axes[0].set_title("What the search knew after each stage")
    if zoom:
        axes[1].set_title("Zoom on the rates the final stages refined")
        axes[0].axhspan(*zoom, fill=False, edgecolor="white", linestyle=":", lw=1.2)
    colourbar = figure.colorbar(mesh, ax=list(axes))
    colourbar.set_label("score of the nearest evaluated rate:\n" + score_label(result))
    handles = [
        Line2D([], [], color=BEST_COLOUR, marker="*", markersize=11, label="best rate so far"),
        Line2D(
            [], [], ls="", marker="o", mfc="white", mec="black", label="rates this stage trained"
        ),
    ]
    if any(e.diverged for e in result.evaluations):
        handles.append(Patch(color="0.75", label="diverged"))
    axes[0].legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    return figure


def _zoom_limits(result: SweepResult) -> tuple[float, float] | None:
    """Rates covered by the kept intervals of the last two stages, padded; None if too few."""
    late = [s for s in result.stages[-2:] if s.index > 0]
    spans = [iv for s in late for iv in s.intervals]
    if len(result.stages) < 3 or not spans:
        return None
    low = min(a for a, _ in spans)
    high = max(b for _, b in spans)
    return _padded(low, high, 0.08, _scale(result))


def search_path(result: SweepResult):
    """Every evaluated rate per stage, kept intervals shaded, the best rate's path joined."""
    from matplotlib.patches import Patch, Rectangle

    figure, axes, zoom, norm, cmap = _stage_panels(result, width=7.5)
    interval = result.lr_interval
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
            [e.lr for e in evaluations],
            c=np.ma.masked_invalid([e.score for e in evaluations]),
            cmap=cmap,
            norm=norm,
            s=36,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            plotnonfinite=True,
        )
        ax.plot(
            [s.index for s in result.stages],
            [s.best_lr for s in result.stages],
            color=BEST_COLOUR,
            marker="*",
            markersize=13,
            linewidth=1.5,
            zorder=4,
        )
        if all(math.isfinite(v) for v in interval):
            ax.axhspan(*interval, color=BEST_COLOUR, alpha=0.08, lw=0, zorder=0)
        ax.set_yscale(_scale(result))
        ax.set_ylim(*limits)
        _plain_log_ticks(ax.yaxis)
        ax.set_ylabel(_rate_label(result))
        _stage_ticks(ax, result)
    axes[0].set_title("The whole search")
    if zoom:
        axes[1].set_title("Zoom on the final stages")
        axes[0].axhspan(*zoom, fill=False, edgecolor="0.3", linestyle=":", lw=1)
    handles = [
        Patch(color=INTERVAL_COLOUR, alpha=0.3, label="kept interval (refined next)"),
        Patch(color=BEST_COLOUR, alpha=0.15, label=f"{result.confidence.best.label} of the best"),
        axes[0].lines[0] if axes[0].lines else Patch(color=BEST_COLOUR),
    ]
    handles[-1].set_label("best rate after the stage")
    if any(s.expansion for s in result.stages):
        handles.insert(1, Patch(color="#ff7f0e", alpha=0.3, label="searched beyond the range"))
    axes[0].legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    colourbar = figure.colorbar(points, ax=list(axes))
    colourbar.set_label(score_label(result))
    return figure


def lr_curve(result: SweepResult):
    """Score against rate (log x), coloured by stage; best rate, interval and quadratic fit."""
    import matplotlib

    conf = result.confidence
    best, refined = conf.best, conf.refined
    extras = _extra_metrics(result)
    figure = _figure(13.5, 9 if extras else 5)
    top, bottom = figure.subfigures(2, 1, height_ratios=(5, 4)) if extras else (figure, None)
    axes = top.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    finite = _finite([e.score for e in result.evaluations])
    log_y = len(finite) > 0 and finite.min() > 0 and finite.max() / finite.min() > 10
    zoom = _fit_limits(result)
    for ax, limits in zip(axes, [_span(result, 0.05), zoom], strict=True):
        for stage in result.stages:
            chosen = [e for e in result.evaluations if e.stage == stage.index and not e.diverged]
            ax.scatter(
                [e.lr for e in chosen],
                [e.score for e in chosen],
                color=colours(stage.index % 10),
                s=30,
                edgecolors="black",
                linewidths=0.4,
                label=f"stage {stage.index}",
                zorder=3,
            )
        diverged = [e.lr for e in result.evaluations if e.diverged]
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
                label=f"{best.label} of the best rate ({best.method.replace('_', ' ')})",
            )
        ax.scatter(
            [result.best_lr],
            [result.best_score],
            marker="*",
            s=260,
            color=BEST_COLOUR,
            edgecolors="black",
            zorder=5,
            label=f"best evaluated rate {result.best_lr:.4g}",
        )
        if refined.fit is not None:
            fit = refined.fit
            grid = (np.geomspace if _scale(result) == "log" else np.linspace)(*fit.window, 200)
            # the fit minimised the signed score: drawn back in the metric's own sign
            fitted = [result.objective(v) for v in fit.predict(grid)]
            ax.plot(grid, fitted, color="black", lw=1.2, label="local quadratic fit")
            ax.axvline(
                refined.lr,
                color="black",
                linestyle="--",
                lw=1,
                label=f"refined rate {refined.lr:.4g}",
            )
        ax.set_xscale(_scale(result))
        ax.set_xlim(*limits)
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel(_rate_label(result))
        ax.grid(True, which="major", alpha=0.3)
    if log_y:
        axes[0].set_yscale("log")
    axes[0].set_ylabel(score_label(result))
    _fit_y_limits(axes[1], result)
    axes[0].set_title("Every evaluation")
    axes[1].set_title("Around the best rate (points outside the view are clipped)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, framealpha=0.9)
    if extras:
        _extra_panels(bottom, result, extras)
    return figure


def _extra_metrics(result: SweepResult) -> tuple[str, ...]:
    """The validation metrics other than the score (the loss when ranked by another)."""
    names = result.evaluations[0].validation_metrics()
    return tuple(n for n in names if n != result.metric)[:MAX_EXTRA_METRICS]


def _extra_panels(subfigure, result: SweepResult, extras) -> None:
    """One small panel per other validation metric: its final value against the rate."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    axes = subfigure.subplots(1, len(extras), squeeze=False)[0]
    for ax, metric in zip(axes, extras, strict=True):
        for stage in result.stages:
            chosen = [e for e in result.evaluations if e.stage == stage.index and not e.diverged]
            ax.scatter(
                [e.lr for e in chosen],
                [e.series(metric)[-1] for e in chosen],
                color=colours(stage.index % 10),
                s=18,
                edgecolors="black",
                linewidths=0.3,
            )
        ax.axvline(result.best_lr, color=BEST_COLOUR, lw=1, ls="--")
        ax.set_xscale(_scale(result))
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel(_rate_label(result))
        ax.set_title(f"{_metric_name(metric)} after the last epoch", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    subfigure.suptitle(
        f"Other validation metrics (dashed: the best value by {_metric_name(result.metric)})",
        fontsize=10,
    )


def _fit_limits(result: SweepResult) -> tuple[float, float]:
    conf = result.confidence
    spans = [conf.best.interval, conf.refined.interval]
    if conf.refined.fit is not None:
        spans.append(conf.refined.fit.window)
    scale = _scale(result)
    values = [v for span in spans for v in span if math.isfinite(v) and (scale != "log" or v > 0)]
    values.append(result.best_lr)
    return _padded(min(values), max(values), 0.25, scale)


def _fit_y_limits(ax, result: SweepResult) -> None:
    """Scores of the rates the fit and the intervals cover, with a margin; others clip."""
    conf = result.confidence
    spans = [conf.best.interval, conf.refined.interval]
    if conf.refined.fit is not None:
        spans.append(conf.refined.fit.window)
    low = min(min(span) for span in spans)
    high = max(max(span) for span in spans)
    inside = [e.score for e in result.evaluations if low <= e.lr <= high and math.isfinite(e.score)]
    if len(inside) >= 2:
        bottom, top = min(inside), max(inside)
        pad = (top - bottom) * 0.12 or abs(top) * 0.05 or 1.0
        ax.set_ylim(bottom - pad, top + pad)


def loss_curves(result: SweepResult):
    """Training and validation loss per epoch for every rate, the three best drawn thick."""
    from matplotlib.colors import LogNorm, Normalize

    figure = _figure(12, 5)
    axes = figure.subplots(1, 2, sharey=True)
    lrs = np.array([e.lr for e in result.evaluations])
    log_scale = result.config.get("scale", "log") == "log" and lrs.min() > 0
    norm = LogNorm(lrs.min(), lrs.max()) if log_scale else Normalize(lrs.min(), lrs.max())
    if lrs.min() == lrs.max():
        norm = Normalize(lrs.min() * 0.5, lrs.max() * 1.5)
    import matplotlib
    from matplotlib.colors import ListedColormap

    # plasma without its palest yellows, which vanish on white
    cmap = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, 256)))
    styles = [(BEST_COLOUR, "o", "-"), ("black", "s", "--"), ("#2ca02c", "^", ":")]
    ranked = sorted(result.evaluations, key=lambda e: (result.objective(e.score), e.lr))
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
            ax.plot(epochs, values, color=cmap(norm(evaluation.lr)), lw=0.8, alpha=0.6)
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
                label=f"#{rank + 1}: rate {evaluation.lr:.4g} (score {evaluation.score:.4g})",
                zorder=4,
            )
        ax.set_yscale("log")
        ax.set_xlabel("training step" if recorded else "epoch")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("loss (log scale)")
    low, high = _loss_limits(result)
    axes[0].set_ylim(low, high)
    _plain_log_ticks(axes[0].yaxis)
    axes[1].legend(title="best rates", fontsize=8, loc="upper right", framealpha=0.9)
    colourbar = figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes))
    colourbar.set_label(_rate_label(result))
    figure.suptitle("Loss per epoch of every evaluated rate (rates beyond the range are clipped)")
    return figure


def _loss_limits(result: SweepResult) -> tuple[float, float]:
    """Shows every non-diverged curve of the better half of rates; diverging ones are clipped."""
    ranked = sorted(result.evaluations, key=lambda e: (result.objective(e.score), e.lr))
    better = ranked[: max(3, len(ranked) // 2)]
    values = _finite(
        [v for e in better for v in (*e.train_loss, *e.val_loss)]
        + [v for e in result.evaluations for v in (*e.train_loss, *e.val_loss)]
    )
    positive = values[values > 0]
    if len(positive) == 0:
        return 1e-3, 1.0
    best_values = _finite([v for e in better for v in (*e.train_loss, *e.val_loss)])
    best_values = best_values[best_values > 0]
    high = (best_values.max() if len(best_values) else positive.max()) * 1.6
    return positive.min() / 1.3, high


def efficiency_figure(result: SweepResult):
    """Evaluations and wall time of the sweep against the equivalent grid, method in the text."""
    eff: Efficiency = efficiency(result)
    from matplotlib.patches import Patch

    figure = _figure(10, 5.4)
    grid = figure.add_gridspec(2, 2, height_ratios=[5, 1])
    left, right = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    caption = figure.add_subplot(grid[1, :])
    names = ["this sweep", "equivalent grid"]
    colours = [INTERVAL_COLOUR, "0.6"]
    bars = left.bar(names, [eff.evaluations, eff.grid_evaluations], color=colours)
    left.bar_label(bars, labels=[f"{eff.evaluations}", f"{eff.grid_evaluations}"], padding=2)
    left.set_ylabel("learning rates trained")
    left.set_title(f"Evaluations: {100 * eff.evaluations_saved:.1f}% fewer")
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
    right.set_title(f"Wall time: {100 * eff.seconds_saved:.1f}% less")
    right.legend(
        handles=[
            Patch(facecolor="0.92", edgecolor="0.4", hatch="//", label="compilation and set-up"),
            Patch(facecolor=colours[0], edgecolor="0.4", label="training: this sweep"),
            Patch(facecolor=colours[1], edgecolor="0.4", label="training: grid (estimated)"),
        ],
        loc="upper left",
        fontsize=8,
    )
    for ax in (left, right):
        ax.margins(y=0.15)
    caption.axis("off")
    caption.text(
        0,
        1,
        textwrap.fill(eff.method(), 150),
        va="top",
        ha="left",
        fontsize=7.5,
        transform=caption.transAxes,
    )
    device = result.environment.get("device_kind", "?")
    figure.suptitle(f"Cost of this sweep against a grid of the same resolution (device: {device})")
    return figure


_DRAW = {
    "heatmap": heatmap,
    "search_path": search_path,
    "lr_curve": lr_curve,
    "loss_curves": loss_curves,
    "efficiency": efficiency_figure,
}


def plot(result: SweepResult, out_dir: str | os.PathLike) -> dict[str, str]:
    """Draws every figure of ``result`` into ``out_dir/figures/`` as PNG (150 dpi) and PDF.

    Args:
      result: a finished sweep (``jaxsweep.run`` or ``jaxsweep.load``).
      out_dir: folder that receives ``figures/``; created if missing.

    Returns:
      ``{name: png_path}`` for ``heatmap``, ``search_path``, ``lr_curve``, ``loss_curves`` and
      ``efficiency`` (each with a ``.pdf`` beside it).

    Example::

      paths = jaxsweep.plot(result, "runs/demo")
    """
    if not isinstance(result, SweepResult):
        raise TypeError(f"result: expected a SweepResult, got {type(result).__name__}")
    if not result.evaluations:
        raise ValueError("result: has no evaluations to plot")
    folder = os.path.join(os.fspath(out_dir), FIGURE_DIR)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name in FIGURES:
        figure = _DRAW[name](result)
        png = os.path.join(folder, f"{name}.png")
        figure.savefig(png, dpi=DPI)
        figure.savefig(os.path.join(folder, f"{name}.pdf"))
        paths[name] = png
    return paths
