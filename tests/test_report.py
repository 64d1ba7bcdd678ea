"""Figures, report, LaTeX and CLI from one real small sweep whose optimum is known exactly.

The sweep fits a linear model by full-batch gradient descent (one step per epoch, zero initial
weights, validation set = training set), so the score of a rate is the training loss after
``EPOCHS`` gradient steps: ``w_T = (I - (I - lr H)^T) w*`` in closed form. The test finds
the best rate of that function independently, in float64, and checks the sweep against it.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import warnings
from pathlib import Path

import flax.linen as nn
import numpy as np
import optax
import pytest

import jaxsweep
from jaxsweep import cli
from jaxsweep._efficiency import efficiency
from jaxsweep.plots import FIGURES, figures_for
from jaxsweep.report import markdown, methods_tex

EPOCHS = 3
LR_RANGE = (1e-3, 1.0)


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)) * np.array([2.0, 1.0, 0.5, 0.25])
    y = x @ rng.normal(size=4) + 0.1 * rng.normal(size=64)
    return x, y


def closed_form_loss(lr: float, x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error after EPOCHS full-batch gradient steps from zero weights."""
    n, d = x.shape
    hessian = 2 * x.T @ x / n
    solution = np.linalg.lstsq(x, y, rcond=None)[0]
    contraction = np.linalg.matrix_power(np.eye(d) - lr * hessian, EPOCHS)
    weights = solution - contraction @ solution
    return float(np.mean((x @ weights - y) ** 2))


def known_optimum(x: np.ndarray, y: np.ndarray) -> float:
    """The best rate of the closed form: a dense log grid, then golden-section refinement."""
    logs = np.linspace(math.log(LR_RANGE[0]), math.log(LR_RANGE[1]), 4001)
    losses = [closed_form_loss(math.exp(v), x, y) for v in logs]
    i = int(np.argmin(losses))
    low, high = logs[max(i - 1, 0)], logs[min(i + 1, len(logs) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if closed_form_loss(math.exp(a), x, y) < closed_form_loss(math.exp(b), x, y):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


@pytest.fixture(scope="module")
def problem():
    x, y = _problem()
    return x, y, known_optimum(x, y)


def _sweep(problem, seeds: int):
    """The sweep, and the wall time of the ``run`` call measured around it."""
    x, y, _ = problem
    data = (x.astype(np.float32), y.astype(np.float32))
    started = time.perf_counter()
    result = jaxsweep.run(
        lambda: nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros),
        {"train": data, "val": data},
        loss="mse",
        optimizer=optax.sgd,
        lr_range=LR_RANGE,
        epochs=EPOCHS,
        batch_size=len(x),
        seeds=seeds,
        min_improvement=0.0,
        progress=False,
    )
    return result, time.perf_counter() - started


@pytest.fixture(scope="module")
def timed(problem):
    return _sweep(problem, seeds=2)


@pytest.fixture(scope="module")
def result(timed):
    return timed[0]


@pytest.fixture(scope="module")
def out(result, tmp_path_factory):
    """A folder holding only result.json, then rebuilt by ``jaxsweep report DIR``."""
    folder = tmp_path_factory.mktemp("run")
    result.save(folder / "result.json")
    assert cli.main(["report", str(folder)]) == 0
    return folder


# ----------------------------------------------------------------------------- honesty


def test_sweep_scores_match_the_closed_form(result, problem):
    x, y, _ = problem
    for evaluation in result.evaluations:
        if evaluation.score < 1e3:  # far-diverging rates lose float32 precision
            expected = closed_form_loss(evaluation.value, x, y)
            assert evaluation.score == pytest.approx(expected, rel=1e-4)


def test_intervals_contain_the_known_optimum(result, problem):
    *_, optimum = problem
    low, high = result.value_interval
    # full batches from zero weights: the seeds agree exactly, so the search never stops
    # on resolution and the interval rests on the fit's misfit alone
    assert result.stop_reason == "completed"
    assert result.confidence.best.method == "seed_curve"
    assert low <= optimum <= high
    assert result.confidence.refined is result.confidence.best
    assert result.refined_value == pytest.approx(optimum, rel=0.02)
    assert high / low < 1.1  # and the interval is precise, not the whole range


def test_confidence_survives_the_json_round_trip(result, out):
    loaded = jaxsweep.load(out / "result.json")
    assert loaded.value_interval == result.value_interval
    assert loaded.refined_value == result.refined_value


# ----------------------------------------------------------------------------- figures


def _png_size_and_dpi(path) -> tuple[int, int, float]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    at = data.find(b"pHYs")
    per_metre, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    assert unit == 1  # metres
    return width, height, per_metre * 0.0254


def test_every_figure_is_written_as_png_and_pdf(out):
    import matplotlib.image

    for name in ("heatmap", "search_path", "lr_curve", "loss_curves", "efficiency"):
        png = out / "figures" / f"{name}.png"
        width, height, dpi = _png_size_and_dpi(png)
        assert dpi >= 149.5
        assert 1000 <= width <= 3000 and 600 <= height <= 2000
        pixels = matplotlib.image.imread(png)
        assert pixels[..., :3].std() > 0.05  # something was drawn
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_and_report_reject_what_is_not_a_result(tmp_path):
    with pytest.raises(TypeError, match="result"):
        jaxsweep.plot({"best_value": 1e-3}, tmp_path)
    with pytest.raises(TypeError, match="result"):
        jaxsweep.report("result.json", tmp_path)


# ----------------------------------------------------------------------------- report


def test_report_states_the_best_rate_of_result_json(out):
    raw = json.loads((out / "result.json").read_text())
    text = (out / "report.md").read_text()
    assert f"**{raw['best_value']:.4g}**" in text
    loaded = jaxsweep.load(out / "result.json")
    low, high = loaded.value_interval
    assert f"[{low:.4g}, {high:.4g}]" in text
    assert "seed-averaged slope" in text  # the method that produced the interval shown
    assert "mean over 2 seeds" in text and "its width includes the seed-to-seed" in text
    for stage in raw["stages"]:
        assert re.search(rf"^\| {stage['index']} \| ", text, flags=re.MULTILINE)
    for name in FIGURES:  # every figure but the horizon check's (no target here)
        drawn = name != "horizon"
        assert (f"](figures/{name}.png)" in text) == drawn, name
        assert (out / "figures" / f"{name}.png").exists() == drawn, name


def test_efficiency_is_computed_from_the_run(result, out):
    lrs = np.array(sorted(e.value for e in result.evaluations))
    scores = {e.value: e.score for e in result.evaluations}
    i = int(np.argmin([scores[v] for v in lrs]))
    neighbour = min((lrs[i - 1], lrs[i + 1]), key=lambda v: scores[v])  # the better one
    low, high = result.value_interval
    # the grid needs no finer step than the interval the sweep resolved
    step = max(abs(math.log(neighbour / lrs[i])), math.log(high / low))
    expected = math.ceil(math.log(lrs[-1] / lrs[0]) / step - 1e-9) + 1
    eff = efficiency(result)
    assert eff.grid_evaluations == expected
    assert eff.spacing == pytest.approx(math.exp(step))
    by_interval = math.log(high / low) - abs(math.log(neighbour / lrs[i]))
    if abs(by_interval) > 1e-9:  # (equal when the interval is the best one)
        assert eff.spacing_source == ("interval" if by_interval > 0 else "best interval")
    assert eff.evaluations == len(result.evaluations) == 25
    later = result.stages[1:]
    per_evaluation = sum(s.seconds for s in later) / sum(len(s.values) for s in later)
    assert eff.seconds_per_evaluation == pytest.approx(per_evaluation)
    measured = result.setup_seconds + sum(s.seconds for s in result.stages)
    assert eff.sweep_seconds == pytest.approx(measured)
    assert eff.grid_seconds == pytest.approx(measured + (expected - 25) * per_evaluation)
    assert f"| evaluations | 25 | {expected} |" in (out / "report.md").read_text()
    assert f"would need {expected} evaluations" in (out / "methods.tex").read_text()


def _assert_latex_subsection(text: str) -> None:
    """Structural LaTeX checks without a TeX install."""
    assert text.startswith("\\subsection{") and text.count("\\subsection") == 1
    plain = re.sub(r"\\[{}%&#_$]", "", text)  # escaped specials are text
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert plain.count("$") % 2 == 0
    outside_math = plain.split("$")[0::2]
    for chunk in outside_math:
        assert not re.search(r"[%&#_^]", chunk), chunk
    commands = set(re.findall(r"\\([A-Za-z]+)", plain))
    assert commands <= {"subsection", "label", "times", "textbackslash", "infty"}, commands
    assert len(re.findall(r"\\begin\{", plain)) == len(re.findall(r"\\end\{", plain))


def test_methods_tex_is_a_subsection_with_this_runs_numbers(result, out):
    text = (out / "methods.tex").read_text()
    _assert_latex_subsection(text)
    assert "25 evaluations" in text
    assert "$0.196$" in text  # the best rate, 3 significant digits
    _assert_latex_subsection(methods_tex(result))


def test_a_one_seed_sweep_says_its_interval_cannot_show_seed_to_seed_variation(problem):
    one, _ = _sweep(problem, seeds=1)
    assert one.confidence.best.seeds == 1
    assert one.confidence.best.label == "one-seed interval"
    for text in (markdown(one, ()), methods_tex(one)):
        assert "cannot include seed-to-seed variation" in text
        assert "not a 95\\% interval" in text or "not a 95% interval" in text
    assert "1 seed)" in methods_tex(one) and "mean over 1 seed)" in markdown(one, ())


# ----------------------------------------------------------------------------- CLI


def test_cli_report_from_result_json_alone_equals_the_live_result(result, out, tmp_path):
    # ``out`` was rebuilt from result.json by the CLI; the in-memory result must agree
    assert (out / "report.md").read_text() == markdown(result, tuple(figures_for(result)))
    assert (out / "methods.tex").read_text() == methods_tex(result)
    for name in figures_for(result):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    # the library call writes the same LaTeX, and a report without figures says so
    paths = jaxsweep.report(result, tmp_path)
    assert Path(paths["methods"]).read_text() == methods_tex(result)
    assert "jaxsweep.plot" in Path(paths["report"]).read_text()


def test_cli_show_prints_the_stage_table_and_best_rate(out, capsys):
    assert cli.main(["show", str(out)]) == 0
    printed = capsys.readouterr().out
    best = jaxsweep.load(out / "result.json").best_value
    assert f"{best:.4g}" in printed and "stage" in printed and "95% interval" in printed


def test_cli_show_names_the_device_count_of_a_sweep_on_several(out, tmp_path, capsys):
    saved = json.loads((out / "result.json").read_text())
    saved["environment"]["device_count"] = 2  # as a sweep over a CPU split in two saves it
    (tmp_path / "result.json").write_text(json.dumps(saved))
    assert cli.main(["show", str(tmp_path)]) == 0
    assert " s on 2 cpu devices (" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "malformed", "not_a_result", "unwritable"])
def test_cli_errors_are_one_line_and_a_nonzero_exit(case, out, tmp_path, capsys):
    folder = tmp_path / "run"
    if case != "missing":
        folder.mkdir()
    if case == "malformed":
        (folder / "result.json").write_text('{"evaluations": [')
    if case == "not_a_result":
        (folder / "result.json").write_text("[1, 2]")
    argv = ["show", str(folder)]
    if case == "unwritable":  # a path under a file cannot be created, whoever runs the test
        (folder / "file").write_text("")
        argv = ["demo", "--out", str(folder / "file" / "out")]
    assert cli.main(argv) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "error" in error


def test_cli_prints_a_warning_as_one_clean_line(out, monkeypatch, capsys):
    def show_and_warn(args):  # a command whose sweep warns, as run() does
        warnings.warn(
            "stage 1: the best value was the largest", jaxsweep.SearchRangeWarning, stacklevel=2
        )
        return 0

    monkeypatch.setattr(cli, "_show", show_and_warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown, not raised as the suite's default does
        assert cli.main(["show", str(out)]) == 0
    assert capsys.readouterr().err == "warning: stage 1: the best value was the largest\n"


# ----------------------------------------------------------------------------- time


def test_one_definition_of_the_sweep_time_everywhere(timed, out, capsys):
    result, measured = timed
    assert result.setup_seconds > 0
    assert result.seconds == pytest.approx(
        result.setup_seconds + sum(s.seconds for s in result.stages)
    )
    # it is the time of the run call itself: set-up, compilation and training, nothing else
    assert result.seconds <= measured
    assert measured - result.seconds < max(0.1 * measured, 0.5)
    loaded = jaxsweep.load(out / "result.json")
    assert loaded.seconds == result.seconds
    covers = "set-up, compilation and training"
    assert f"{result.seconds:.2f} s ({covers})" in (out / "report.md").read_text()
    assert f"| wall time (s) | {result.seconds:.2f} (measured)" in (out / "report.md").read_text()
    assert f"in {result.seconds:.1f}~s of wall time ({covers})" in (out / "methods.tex").read_text()
    assert cli.main(["show", str(out)]) == 0
    assert f"evaluations in {result.seconds:.2f} s on cpu ({covers})" in capsys.readouterr().out


# ----------------------------------------------------------------------------- figure details


def _texts(figure) -> list[str]:
    import matplotlib.text

    return [t.get_text() for t in figure.findobj(matplotlib.text.Text)]


@pytest.mark.parametrize("name", ["search_path", "heatmap"])
def test_zoom_window_is_labelled_and_no_stage_star_is_clipped(result, name):
    figure = FIGURES[name].draw(result)
    whole, zoom = figure.axes[:2]
    assert "window of the zoom (right)" in [t.get_text() for t in whole.get_legend().get_texts()]
    low, high = zoom.get_ylim()
    inside = [s.best_value for s in result.stages if low <= s.best_value <= high]
    stars = [line for line in zoom.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and not stars[0].get_clip_on()  # drawn whole, even on the edge
    assert list(stars[0].get_ydata()) == inside and len(inside) >= 2


def test_loss_curves_legend_covers_no_panel(result):
    figure = FIGURES["loss_curves"].draw(result)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    panels = figure.axes[:2]
    assert all(ax.get_legend() is None for ax in panels)
    (legend,) = figure.legends
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in panels)


def test_lr_curve_says_when_the_fit_and_the_points_disagree(result):
    good = FIGURES["lr_curve"].draw(result)  # a closed-form score: the parabola fits
    labels = [t.get_text() for t in good.axes[1].get_legend().get_texts()]
    assert any("95% of scores if the fit holds" in label for label in labels)
    assert not any("Poor fit" in text for text in _texts(good))
    # the demo of jaxsweep 0.1.0: its best score lies far below a parabola that explains
    # under half of the scores' variance
    demo = jaxsweep.load(Path(__file__).parent / "data" / "demo_result_v0.1.0.json")
    fit = demo.confidence.refined.fit
    inside = [e for e in demo.evaluations if fit.window[0] <= e.value <= fit.window[1]]
    scores = np.array([e.score for e in inside])
    residual = scores - fit.predict([e.value for e in inside])
    explained = 1 - np.sum(residual**2) / np.sum((scores - scores.mean()) ** 2)
    assert explained < 0.5  # independently: the fit is poor
    (note,) = [t for t in _texts(FIGURES["lr_curve"].draw(demo)) if t.startswith("Poor fit")]
    assert f"explains {100 * explained:.0f}% of the variance" in note.replace("\n", " ")
