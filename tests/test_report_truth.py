"""Every sentence the report and the methods paragraph write, checked against results built
to make it true and results built to contradict it (simulated scores, no training)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from test_search import _config, _seed_effects, _valley, _valley_noise

from jaxsweep import _confidence, _search, _selector
from jaxsweep._efficiency import efficiency
from jaxsweep._history import blown_up
from jaxsweep._result import Evaluation, Stage, SweepResult
from jaxsweep.plots import FIGURES, caption, efficiency_figure, extrapolation_note
from jaxsweep.report import markdown, methods_tex, stage_kinds


def _evaluation(value, stage, row) -> Evaluation:
    row = tuple(float(s) for s in row)
    bad = tuple(not math.isfinite(s) for s in row)
    score = float(np.mean(row)) if not any(bad) else math.inf
    return Evaluation(
        value=float(value),
        stage=stage,
        score=score,
        diverged=any(bad),
        seed_scores=row,
        train_loss=(1.0,),
        val_loss=(score,),
        seed_val_loss=tuple((s,) for s in row),
        grad_norm=(1.0,),
        grad_norm_max=(1.0,),
        loss_reduction_rate=(0.1,),
        stability=(0.01,),
        seed_diverged=bad,
    )


def _stage(index, values, plan, best, seconds=1.0) -> Stage:
    return Stage(
        index=index,
        values=tuple(sorted(values)),
        intervals=tuple(plan.intervals),
        expansion=plan.expansion,
        best_value=best[0],
        best_score=best[1],
        seconds=seconds,
        seconds_per_epoch=(seconds,),
        compile_seconds=0.0,
        memory_bytes=0,
        memory_source="unavailable",
    )


def _sweep(scores_of, environment=None, param_count=0, **overrides) -> SweepResult:
    """The driver's loop on simulated scores, recording each stage's plan (its kept intervals
    or expansion span) as the driver does."""
    config = _config(**overrides)
    search = _search.hierarchical()
    points, rows, bests, evaluations, stages = [], [], [], [], []
    while True:
        evaluated = _evaluated(points, rows, bests)
        plan = search.plan(evaluated, config)
        raw = scores_of(np.asarray(plan.points))
        exploded = blown_up(raw.ravel(), np.full(raw.size, 2.3)).reshape(raw.shape)
        scored = np.where(exploded | ~np.isfinite(raw), np.inf, raw)
        index = len(stages)
        for value, row in zip(plan.points, scored, strict=True):
            evaluations.append(_evaluation(value, index, row))
            points.append(float(value))
            rows.append(tuple(float(s) for s in row))
        best = _selector.best_point(points, [np.mean(r) for r in rows])
        bests.append(best[1])
        stages.append(_stage(index, plan.points, plan, best))
        evaluated = _evaluated(points, rows, bests)
        reason = search.stop(evaluated, config)
        if reason is not None:
            break
    summary = search.summary(evaluated, config)
    record = {
        **config.to_json(),
        "lr_range": list(config.value_range),
        "model": "MLP",
        "optimizer": "adamw(b1=0.9)",
        "loss": "cross_entropy",
        "n_train": 192,
        "n_val": 48,
        "steps": 18,
    }
    best = min(evaluations, key=lambda e: (e.score, e.value))
    return SweepResult(
        best_value=best.value,
        best_score=best.score,
        evaluations=tuple(evaluations),
        stages=tuple(stages),
        config=record,
        environment=environment if environment is not None else {},
        param_count=param_count,
        stop_reason=reason,
        warnings=summary.notes,
        setup_seconds=2.0,
    )


def _evaluated(points, rows, bests) -> _search.Evaluated:
    means = tuple(float(np.mean(r)) for r in rows)
    return _search.Evaluated(tuple(points), means, tuple(rows), tuple(bests), 3 * len(rows))


def _noisy(optimum: float, noise: float = 0.02, seeds: int = 3):
    def scores(values, trial=0):
        d = np.log(np.asarray(values, np.float64) / optimum)
        base = 0.3 * (np.exp(1.5 * d) - 1.5 * d - 1) + 0.15
        rng = np.random.default_rng([trial, 7])
        return base[:, None] + rng.normal(0, noise, (len(d), seeds))

    return scores


def _texts(result: SweepResult) -> str:
    return markdown(result, ()) + "\n" + methods_tex(result)


@pytest.fixture(scope="module")
def valley():
    return _sweep(lambda v: _valley_noise(v, 0))


@pytest.fixture(scope="module")
def beyond():
    """An optimum at 3e-3 searched from a range that ends at 5e-4: the search expands up."""
    return _sweep(lambda v: _valley_noise(v, 0), value_range=(1e-6, 5e-4))


# ----------------------------------------------------------------------------- 1. lanes


@pytest.mark.parametrize(
    ("strategy", "says", "denies"),
    [
        ("vmap", "simultaneously in one vectorised program", "one after another"),
        ("map", "one after another inside one compiled program", "simultaneously"),
        ("chunks:2", "in groups of 2, each group vectorised", "simultaneously"),
        ("separate", "by its own call of one compiled one-lane program", "simultaneously"),
    ],
)
def test_methods_say_how_the_lanes_ran(valley, strategy, says, denies):
    environment = {"lanes": {"strategy": strategy, "reason": "given"}}
    result = dataclasses.replace(valley, environment=environment)
    tex = methods_tex(result)
    assert says in tex and denies not in tex


def test_an_old_result_says_nothing_about_how_the_lanes_ran(valley):
    tex = methods_tex(valley)
    assert "lanes" not in valley.environment
    assert not re.search(r"vectorised|one after another|its own call|lax\.map|vmap", tex)


# ----------------------------------------------------------------------------- 2. stages


def test_an_expansion_is_named_with_its_span_and_a_best_value_beyond_the_range(beyond):
    expanded = [s for s in beyond.stages if s.expansion == "up"]
    assert expanded and beyond.best_value > 5e-4
    low, high = expanded[0].intervals[0]
    text = _texts(beyond)
    words = f"Stage {expanded[0].index} searched beyond the largest evaluated value, "
    assert f"{words}{low:.4g} to {high:.4g}" in markdown(beyond, ())
    assert f"lies above the starting range ({1e-6:.4g} to {5e-4:.4g})" in text
    assert "best intervals" not in text  # the old sentence that claimed refinement only


def test_a_bracketed_search_claims_no_expansion_and_nothing_outside_its_range(valley):
    assert not any(s.expansion for s in valley.stages)
    low, high = valley.config["value_range"]
    assert low <= valley.best_value <= high and low <= valley.refined_value <= high
    text = _texts(valley)
    assert "searched beyond" not in text and "starting range" not in text


def _ranked_by_score(result, stage):
    """The best-ranked intervals before ``stage``, computed here from the evaluations."""
    before = sorted((e.value, e.score) for e in result.evaluations if e.stage < stage.index)
    pairs = [
        (min(a[1], b[1]), max(a[1], b[1]), a[0], (a[0], b[0]))
        for a, b in zip(before, before[1:], strict=False)
    ]
    return sorted(p[3] for p in sorted(pairs)[: len(stage.intervals)])


def test_refinement_says_whether_the_kept_intervals_were_the_best_ranked():
    seen = {True: 0, False: 0}
    for trial in range(4):
        for seeds in (1, 3):
            result = _sweep(
                lambda v, t=trial, n=seeds: _noisy(3e-3, 0.03, n)(v, t),
                seeds=seeds,
            )
            md = markdown(result, ())
            for stage, kind in zip(result.stages, stage_kinds(result), strict=True):
                if kind.kind != "refined":
                    continue
                top = sorted(stage.intervals) == _ranked_by_score(result, stage)
                assert kind.best_ranked == top
                seen[top] += 1
                line = next(x for x in md.splitlines() if x.startswith(f"- Stage {stage.index} "))
                if top:
                    assert "best-ranked interval" in line and "not the best-ranked" not in line
                else:
                    assert "not the best-ranked by score" in line and "noise-aware" in line
                    assert seeds == 3  # one seed always keeps the best-ranked
    assert seen[True] and seen[False]  # both kinds of stage were checked


def test_precision_stages_say_they_spread_values_over_the_interval():
    spread = _sweep(lambda v: _valley_noise(v, 1), precision=0.5)
    kinds = [k.kind for k in stage_kinds(spread)]
    assert "precision" in kinds
    index = kinds.index("precision")
    low, high = spread.stages[index].intervals[0]
    words = f"Stage {index} spread 5 values over {low:.4g} to {high:.4g}"
    assert words in markdown(spread, ())
    plain = _sweep(lambda v: _valley_noise(v, 1))
    assert "precision" not in [k.kind for k in stage_kinds(plain)]
    assert not re.search(r"spread \d+ values over", _texts(plain))


# ----------------------------------------------------------------------------- 3. efficiency


def test_a_sweep_ahead_of_the_grid_says_how_much_it_saved(valley):
    eff = efficiency(valley)
    assert eff.evaluations < eff.grid_evaluations
    saved = 100 * (1 - eff.evaluations / eff.grid_evaluations)
    text = markdown(valley, ())
    assert f"{eff.evaluations} evaluations, {saved:.1f}% fewer than the {eff.grid_evaluations}" in (
        text
    )
    assert f"{saved:.1f}\\% fewer" in methods_tex(valley)
    assert "more than" not in text


def _behind(result):
    """The same sweep with its interval many times wider: a grid that coarse is small."""
    wide = dataclasses.replace(result.confidence.best, low=1e-5, high=1e-2)
    behind = dataclasses.replace(result)
    confidence = dataclasses.replace(result.confidence, best=wide)
    behind.__dict__["confidence"] = confidence  # the cached property, set as computed
    return behind


def test_a_sweep_behind_the_grid_never_states_a_negative_saving(valley):
    behind = _behind(valley)
    eff = efficiency(behind)
    assert eff.evaluations > eff.grid_evaluations and eff.sweep_seconds > eff.grid_seconds
    text, tex = markdown(behind, ()), methods_tex(behind)
    words = f"{eff.evaluations} evaluations, more than the {eff.grid_evaluations} of a grid"
    assert words in text
    assert f"the search used {eff.evaluations}, more than that grid" in tex
    assert "took longer than that grid would" in tex
    for written in (text, tex):
        assert not re.search(r"-\d[\d.]*\s*(\\?%)", written)  # no negative percentages
        assert "fewer" not in written and "saved)" not in written
    assert "| none (" in text  # the table's saved cells say none, and by how much
    figure = efficiency_figure(behind)
    titles = [ax.get_title() for ax in figure.axes]
    assert f"Evaluations: {eff.evaluations}, more than the grid's {eff.grid_evaluations}" in titles
    assert "Wall time: more than the grid's estimate" in titles
    assert not any("%" in t for t in titles)
    ahead = [ax.get_title() for ax in efficiency_figure(valley).axes]
    assert any(t.startswith("Evaluations:") and "% fewer than the grid" in t for t in ahead)


# ----------------------------------------------------------------------------- 4. divergence


def test_an_all_diverged_sweep_headlines_no_best_value_and_claims_no_saving():
    result = _sweep(lambda v: np.full((len(v), 3), np.inf))
    assert all(e.diverged for e in result.evaluations)
    text, tex = markdown(result, ()), methods_tex(result)
    first = text.split("\n\n")[1]
    assert first.startswith("No learning rate trained without diverging")
    assert "Best learning rate **" not in text
    for written in (text, tex):
        assert "fewer" not in written and "saved" not in written.replace("no saving", "")
        assert "% less" not in written and "\\% less" not in written
    assert "no saving is claimed" in tex and "no learning rate was selected" in tex
    assert not efficiency(result).comparable
    titles = [ax.get_title() for ax in efficiency_figure(result).axes]
    assert not any("%" in t for t in titles)


def _one_stage(values, rows) -> SweepResult:
    evaluations = tuple(_evaluation(v, 0, r) for v, r in zip(values, rows, strict=True))
    best = min(evaluations, key=lambda e: (e.score, e.value))
    plan = _selector.StagePlan(tuple(values), (), None)
    return SweepResult(
        best_value=best.value,
        best_score=best.score,
        evaluations=evaluations,
        stages=(_stage(0, values, plan, (best.value, best.score)),),
        config={
            **_config(seeds=len(rows[0])).to_json(),
            "model": "m",
            "optimizer": "sgd",
            "loss": "mse",
        },
        environment={},
    )


def test_an_interval_ending_at_a_diverged_value_says_so():
    values = [1e-4, 1e-3, 3e-3, 1e-2]
    rows = [(0.9, 0.8, 0.85), (0.5, 0.52, 0.49), (0.2, 0.21, 0.19), (math.inf,) * 3]
    result = _one_stage(values, rows)
    low, high = result.value_interval
    assert high == 1e-2 and result.evaluations[3].diverged  # the result's own interval
    text = markdown(result, ())
    assert "The interval's upper end, 0.01, is an evaluated value that diverged (in 3 of 3" in text
    assert "the largest value inside the interval that trained without diverging is 0.003" in text
    assert "upper end, $0.01$, is an evaluated value that diverged" in methods_tex(result)
    clean = _one_stage(values, [*rows[:3], (0.6, 0.62, 0.59)])
    assert clean.value_interval[1] == 1e-2
    assert "diverged" not in _texts(clean)


# ----------------------------------------------------------------------------- 5. lr_curve


def test_the_lr_curve_caption_names_the_fitted_curve(valley):
    assert isinstance(valley.confidence.refined.fit, _confidence.SeedCurveFit)
    assert valley.confidence.refined.fit.terms == 4
    text = caption("lr_curve", valley)
    assert "cubic fitted to each seed's scores" in text and "quadratic" not in text
    assert "small dots the scores of each seed" in text
    one = _sweep(lambda v: _valley(v)[:, None] + _seed_effects(v, 0, 1, lambda r: 0), seeds=1)
    if isinstance(one.confidence.refined.fit, _confidence.QuadraticFit):
        assert "quadratic fit" in caption("lr_curve", one) and "cubic" not in caption(
            "lr_curve", one
        )
    assert "small dots" not in caption("lr_curve", one)


def test_the_lr_curve_draws_every_seeds_score(valley):
    figure = FIGURES["lr_curve"].draw(valley)
    finite = sorted(
        (e.value, s) for e in valley.evaluations if not e.diverged for s in e.seed_scores
    )
    drawn = []
    for collection in figure.axes[0].collections:
        offsets = collection.get_offsets()
        if len(offsets) and collection.get_sizes()[0] < 10:  # the small per-seed dots
            drawn += [tuple(p) for p in np.asarray(offsets)]
    assert np.allclose(sorted(drawn), finite)


def test_a_curve_deeper_than_every_observed_mean_gets_a_note(valley):
    assert extrapolation_note(valley) == ""  # a good fit: no note
    fit = valley.confidence.refined.fit
    deep = dataclasses.replace(
        fit, coefficients=(*fit.coefficients[:-1], fit.coefficients[-1] - 1.0)
    )
    refined = dataclasses.replace(valley.confidence.refined, fit=deep)
    result = dataclasses.replace(valley)
    result.__dict__["confidence"] = dataclasses.replace(valley.confidence, refined=refined)
    note = extrapolation_note(result)
    assert "lies" in note and "below every seed-averaged score observed" in note
    assert note in caption("lr_curve", result)


# ----------------------------------------------------------------------------- 6. methods


def test_methods_state_the_data_model_budget_and_the_t_tests_degrees_of_freedom():
    environment = {"lanes": {"strategy": "vmap", "reason": "auto"}}
    result = _sweep(lambda v: _valley_noise(v, 0), environment=environment, param_count=1234)
    tex = methods_tex(result)
    assert "192 training and 48 held-out validation examples" in tex
    assert "the MLP model (1,234 parameters)" in tex
    assert "3 epochs (18 training steps) with batch size 32" in tex
    assert "optimizer adamw(b1=0.9)" in tex and "every value with the same seeds (3 seeds)" in tex
    for written in (tex, markdown(result, ())):
        said = [m.end() for m in re.finditer(r"Student's (\$t\$|t)", written)]
        assert said
        for end in said:
            assert re.match(r", 2 degrees of freedom", written[end:]), written[end : end + 40]
    flat = _sweep(lambda v: np.full((len(v), 3), 0.3) + _noisy(1.0, 0.01)(v) - 0.15)
    for written in (methods_tex(flat), markdown(flat, ())):
        for m in re.finditer(r"Student's (\$t\$|t)", written):
            assert written[m.end() :].startswith(", 2 degrees of freedom")


def test_methods_say_what_a_precision_sweeps_interval_spans():
    precise = _sweep(lambda v: _valley_noise(v, 1), precision=0.5)
    note, tex = precise.confidence.best.note, methods_tex(precise)
    widened = "every wider window whose fit also closed" in tex
    staged = f"the last {_confidence.STABLE_STAGES} stages" in tex
    assert widened or staged
    assert widened == ("wider windows" in note)  # said exactly when the interval was stretched
    assert staged == ("successive stages agree" in note)
    plain = _sweep(lambda v: _valley_noise(v, 1))
    assert "stretched over" not in methods_tex(plain)
    assert "wider windows" not in plain.confidence.best.note
