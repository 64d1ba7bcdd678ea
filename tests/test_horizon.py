"""The horizon check (``run(target_steps=...)``) on problems whose optimum is known at every
horizon, computed here in float64 without the engine.

* Early-stopped gradient descent on an over-parameterised regression: from zero, full-batch
  descent for ``T`` steps at rate ``lr`` leaves ``w_T = sum_i (1 - (1 - lr lam_i)^T) / lam_i
  (q_i . g) q_i`` (``lam_i, q_i`` the eigenpairs of ``H = 2 X^T X / n``, ``g = 2 X^T y / n``);
  the validation loss on fresh data is minimised at a fixed ``lr * T``: the optimum moves as 1/T.
* The least-squares problem of ``test_exact_problems`` whose optimum sits just below the
  divergence edge: nearly the same rate at every horizon.

From a sweep at ``T``, the value at ``16 T`` must land within 10% of the truth, inside its
interval.
"""

from __future__ import annotations

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import comparable
from test_exact_problems import _exact_optimum, _problem

import jaxsweep
from jaxsweep import _horizon
from jaxsweep.callbacks import Callback

STEPS = 20  # the sweep's own horizon
TARGET = 16 * STEPS


def _linear():
    return nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros)


def _early_stopping_problem(seed: int, n: int = 32, d: int = 96, n_val: int = 512):
    rng = np.random.default_rng(seed)
    w = 3 * rng.normal(size=d) / np.sqrt(d)
    x, x_val = (rng.normal(size=(m, d)) * np.sqrt(2.0 / d) for m in (n, n_val))
    y, y_val = (a @ w + 0.5 * rng.normal(size=len(a)) for a in (x, x_val))
    return tuple(a.astype(np.float32) for a in (x, y, x_val, y_val))


def _validation_losses(problem, steps: int, rates) -> np.ndarray:
    """Closed form of full-batch descent from zero, in float64, for each rate."""
    x, y, x_val, y_val = (a.astype(np.float64) for a in problem)
    lam, q = np.linalg.eigh(2 * x.T @ x / len(x))
    rates = np.asarray(rates, np.float64)[:, None]
    safe = np.where(lam > 1e-12, lam, 1.0)
    grown = np.where(lam > 1e-12, (1 - (1 - rates * lam) ** steps) / safe, rates * steps)
    w = (grown * (q.T @ (2 * x.T @ y / len(x)))) @ q.T  # (rates, features)
    return np.mean((w @ x_val.T - y_val) ** 2, axis=1)


def _early_stopping_optimum(problem, steps: int) -> float:
    """The minimiser over rates: a dense log grid below the stable rate, then a finer one
    around its best point, twice."""
    x = problem[0].astype(np.float64)
    low, high = 1e-4, 2 / np.linalg.eigvalsh(2 * x.T @ x / len(x)).max()
    for _ in range(3):
        grid = np.geomspace(low, high, 2001)
        i = int(np.argmin(_validation_losses(problem, steps, grid)))
        low, high = grid[max(i - 2, 0)], grid[min(i + 2, len(grid) - 1)]
    return float(np.sqrt(low * high))


def _sweep(data, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(
            _linear,
            data,
            loss="mse",
            optimizer=optax.sgd,
            batch_size=len(data["train"][0]),
            **{"progress": False, **options},
        )


@pytest.fixture(scope="module", params=[0, 1])
def early_stopping(request):
    problem = _early_stopping_problem(request.param)
    data = {"train": problem[:2], "val": problem[2:]}
    result = _sweep(data, steps=STEPS, lr_range=(1e-3, 1.0), target_steps=TARGET)
    return problem, result


def test_an_optimum_moving_as_one_over_t_is_followed_to_16x(early_stopping):
    problem, result = early_stopping
    horizon = result.horizon
    truth = _early_stopping_optimum(problem, TARGET)
    assert abs(horizon.value / truth - 1) < 0.1, (horizon.value, truth)
    assert horizon.interval[0] <= truth <= horizon.interval[1], (horizon.interval, truth)
    assert horizon.extrapolated and horizon.target_steps == TARGET
    assert [o.steps for o in horizon.horizons] == [STEPS, 2 * STEPS, 4 * STEPS]
    for optimum in horizon.horizons:  # each horizon's own optimum, against its own truth
        exact = _early_stopping_optimum(problem, optimum.steps)
        assert abs(optimum.value / exact - 1) < 0.05, (optimum, exact)
    # the truth's own exponent, from its optima at T and 16T
    exponent = math.log(truth / _early_stopping_optimum(problem, STEPS)) / math.log(16)
    assert abs(horizon.exponent - exponent) < 0.05, (horizon.exponent, exponent)
    # the sweep's best is far from the optimum of a run 2x longer: said, not hidden
    assert not horizon.ranking_held
    assert "does not hold" in horizon.note and f"{horizon.value:.3g}" in horizon.note


def test_the_horizon_stages_cost_at_most_three_times_the_search(early_stopping):
    _, result = early_stopping

    def lane_steps(evaluations):
        return sum(len(e.seed_scores) * e.steps[-1] for e in evaluations)

    search, horizons = lane_steps(result.evaluations), lane_steps(result.horizon_evaluations)
    assert 0 < horizons <= _horizon.COST_SHARE * search
    # the sweep's own answer reads the sweep's own stages only
    assert {e.steps[-1] for e in result.evaluations} == {STEPS}
    assert result.best_value in [e.value for e in result.evaluations]
    assert result.seconds >= sum(s.seconds for s in result.horizon_stages)


@pytest.fixture(scope="module", params=[0, 1])
def edge_capped(request):
    x, y, steps = _problem("edge", request.param)
    result = _sweep({"train": (x, y), "val": (x, y)}, steps=steps, target_steps=16 * steps)
    return (x, y, steps), result


def test_an_optimum_capped_by_the_divergence_edge_stays_put(edge_capped):
    (x, y, steps), result = edge_capped
    horizon, truth = result.horizon, _exact_optimum(x, y, 16 * steps)
    assert abs(horizon.value / truth - 1) < 0.1, (horizon.value, truth)
    assert horizon.interval[0] <= truth <= horizon.interval[1], (horizon.interval, truth)
    assert abs(horizon.exponent) < 0.1
    assert horizon.ranking_held and "stays inside" in horizon.note


def test_the_report_and_methods_say_what_each_horizon_found(early_stopping, edge_capped):
    from jaxsweep.plots import figures_for
    from jaxsweep.report import markdown, methods_tex, tex_number

    for result in (early_stopping[1], edge_capped[1]):
        horizon = result.horizon
        text, tex = markdown(result), methods_tex(result)
        assert "## The run you will do" in text
        for optimum in horizon.horizons:
            assert f"| {optimum.steps} | {optimum.value:.4g} |" in text
        assert f"$\\beta = {horizon.exponent:.2f}$" in tex
        assert tex_number(horizon.value) in tex
        # the sweep's best left behind is said only where it was
        outside = "lies outside the interval of a longer run"
        assert (outside in tex) == (not horizon.ranking_held)
        assert "horizon" in figures_for(result)
    plain = _sweep({"train": edge_capped[0][:2], "val": edge_capped[0][:2]}, steps=5)
    assert plain.horizon is None and "The run you will do" not in markdown(plain)
    assert "horizon" not in figures_for(plain) and "power law" not in methods_tex(plain)


def test_the_command_passes_the_target_on():
    from jaxsweep import cli

    parsed = cli.build_parser().parse_args(["demo", "--target-epochs", "12"])
    assert (parsed.target_epochs, parsed.target_steps) == (12, None)
    with pytest.raises(SystemExit):  # one target, not two
        cli.build_parser().parse_args(["demo", "--target-epochs", "12", "--target-steps", "9"])


def test_a_target_within_reach_is_trained_and_read_off_directly(tmp_path):
    problem = _early_stopping_problem(2)
    data = {"train": problem[:2], "val": problem[2:]}
    result = _sweep(data, steps=STEPS, lr_range=(1e-3, 1.0), target_steps=3 * STEPS)
    horizon = result.horizon
    assert [o.steps for o in horizon.horizons] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert not horizon.extrapolated and "trained at the target" in horizon.note
    last = horizon.horizons[-1]
    assert (horizon.value, horizon.interval) == (last.value, last.interval)
    assert abs(horizon.value / _early_stopping_optimum(problem, 3 * STEPS) - 1) < 0.05
    result.save(tmp_path / "result.json")  # the record is rebuilt from the saved evaluations
    loaded = jaxsweep.load(tmp_path / "result.json")
    assert loaded == result and loaded.horizon == horizon


def test_a_target_equal_to_the_sweep_trains_nothing_more():
    x, y, steps = _problem("edge", 0)
    result = _sweep({"train": (x, y), "val": (x, y)}, steps=steps, target_steps=steps)
    assert result.horizon_stages == () and result.horizon_evaluations == ()
    assert result.horizon.value == result.refined_value
    assert "the sweep's own" in result.horizon.note


def test_target_epochs_become_steps_and_a_stretched_schedule_trains_like_a_plain_loop():
    """A horizon lane against optax itself: sgd with warmup-cosine built for the horizon's
    own length, full-batch, from zero: the schedule is stretched, not cut or repeated."""
    problem = _early_stopping_problem(3)
    data = {"train": problem[:2], "val": problem[2:]}
    result = _sweep(
        data,
        epochs=STEPS,
        lr_range=(1e-3, 1.0),
        target_epochs=2 * STEPS,
        seeds=1,
        schedule="warmup_cosine",
    )
    assert result.config["target_steps"] == 2 * STEPS  # one full batch per epoch
    evaluation = result.horizon_evaluations[0]
    assert evaluation.steps[-1] == 2 * STEPS
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, evaluation.value, round(0.1 * 2 * STEPS), 2 * STEPS
    )
    x, y, x_val, y_val = (jnp.asarray(a) for a in problem)  # float32, as the lanes train
    w, optimizer = jnp.zeros(x.shape[1]), optax.sgd(schedule)
    state = optimizer.init(w)
    for _ in range(2 * STEPS):
        grad = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        updates, state = optimizer.update(grad, state)
        w = optax.apply_updates(w, updates)
    expected = float(jnp.mean((x_val @ w - y_val) ** 2))
    assert evaluation.seed_val_loss[0][-1] == pytest.approx(expected, rel=1e-4)


class _StopInLongerStage(Callback):
    """Stands for a kill inside the first 4x stage, once its first validation was saved."""

    def on_validation(self, event):
        if event.step == 2 * STEPS and event.segment == 0:
            raise KeyboardInterrupt


def test_a_sweep_interrupted_in_a_horizon_stage_resumes_to_the_same_result(tmp_path):
    problem = _early_stopping_problem(0)
    data = {"train": problem[:2], "val": problem[2:]}
    options = dict(
        steps=STEPS,
        eval_every=STEPS // 2,
        lr_range=(1e-3, 1.0),
        target_steps=TARGET,
        checkpoint_every_seconds=0.0,
    )
    with pytest.raises(KeyboardInterrupt):
        _sweep(
            data, checkpoint_dir=str(tmp_path / "ckpt"), callbacks=[_StopInLongerStage()], **options
        )
    resumed = _sweep(data, checkpoint_dir=str(tmp_path / "ckpt"), **options)
    assert resumed.environment["checkpoint"]["resumed_from"]["stage"] >= len(resumed.stages)
    fresh = _sweep(data, **options)
    assert comparable(resumed.to_dict()) == comparable(fresh.to_dict())
    assert resumed.horizon == fresh.horizon


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(target_steps=0), ValueError, "target_steps"),
        (dict(target_steps=True), TypeError, "target_steps"),
        (dict(target_steps=40, target_epochs=2), ValueError, "once"),
        (dict(target_steps=40, scale="linear", lr_range=(0.01, 0.1)), ValueError, "scale"),
        (
            dict(target_steps=40, schedule=optax.cosine_decay_schedule(1.0, 20)),
            ValueError,
            "stretch",
        ),
    ],
)
def test_a_target_that_cannot_be_checked_is_refused_before_training(options, error, match):
    x, y, _ = _problem("edge", 0)
    with pytest.raises(error, match=match):
        _sweep({"train": (x, y), "val": (x, y)}, steps=STEPS, **options)


# ----------------------------------------------------------------------------- pure parts


def test_the_power_law_fit_is_weighted_least_squares_on_logs():
    rng = np.random.default_rng(0)
    steps = np.array([100, 200, 400, 800])
    errors = np.array([0.05, 0.02, 0.04, 0.1])
    values = 0.3 * steps**-0.4 * np.exp(errors * rng.normal(size=4))
    optima = [
        _horizon.Optimum(int(t), float(v), (v * math.exp(-1.96 * e), v * math.exp(1.96 * e)), "x")
        for t, v, e in zip(steps, values, errors)
    ]
    law = _horizon.fit_power_law(optima)
    slope, intercept = np.polyfit(np.log(steps), np.log(values), 1, w=1 / errors)
    assert law.exponent == pytest.approx(slope, rel=1e-6)
    assert law.intercept == pytest.approx(intercept, rel=1e-6)
    # an open interval tells nothing about where the optimum is: left out of the fit
    open_end = optima[:1] + [optima[1]._replace(interval=(0.0, math.inf))]
    assert _horizon.fit_power_law(open_end) is None


def _record(held: bool, extrapolated: bool, value: float = 0.01) -> _horizon.Horizon:
    sweep = _horizon.Optimum(100, 0.02, (0.018, 0.022), "seed_curve")
    longer = _horizon.Optimum(
        400, 0.019 if held else 0.01, (0.017, 0.021) if held else (0.009, 0.011), "seed_curve"
    )
    interval = (value * 0.9, value * 1.1) if math.isfinite(value) else (0.0, math.inf)
    return _horizon.Horizon(
        1600, value, interval, -0.5, (-0.6, -0.4), (sweep, longer), held, extrapolated, ""
    )


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("extrapolated", [True, False])
def test_the_note_says_what_the_record_holds(held, extrapolated):
    note = _horizon.describe(_record(held, extrapolated), 0.02, "learning_rate")
    assert ("stays inside" in note) == held
    assert ("outside the interval at 400 steps" in note) == (not held)
    assert ("extrapolated" in note) == extrapolated
    assert "steps^-0.50" in note and "use 0.01" in note
    unbracketed = _horizon.describe(_record(held, extrapolated, math.nan), 0.02, "learning_rate")
    assert "no interval at 1600 steps" in unbracketed and "use" not in unbracketed


def test_the_horizons_for_a_target():
    assert _horizon.horizon_steps(100, 1600) == (200, 400)
    assert _horizon.horizon_steps(100, 400) == (200, 400)
    assert _horizon.horizon_steps(100, 250) == (200, 250)
    assert _horizon.horizon_steps(100, 150) == (150,)
    assert _horizon.horizon_steps(100, 50) == (50,)
    assert _horizon.horizon_steps(100, 100) == ()


def test_the_progress_bar_counts_the_horizon_stages_longer_steps(monkeypatch):
    """The bar's total follows a horizon stage's own steps: it never ends past its total, and
    at the end it has counted every step every stage trained (counted here from the result)."""
    from jaxsweep import _driver
    from jaxsweep._progress import BarProgress

    bars = []

    class Kept(BarProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.over = []  # (completed, total) whenever steps passed the total
            bars.append(self)

        def steps_done(self, steps):
            super().steps_done(steps)
            task = self._bar.tasks[self._task]
            if task.completed > task.total:
                self.over.append((task.completed, task.total))

    monkeypatch.setattr(_driver, "BarProgress", Kept)
    problem = _early_stopping_problem(0)
    data = {"train": problem[:2], "val": problem[2:]}
    result = _sweep(data, steps=STEPS, lr_range=(1e-3, 1.0), target_steps=4 * STEPS, progress=True)
    horizon_steps = {(e.stage, e.steps[-1]) for e in result.horizon_evaluations}
    assert horizon_steps and all(steps > STEPS for _, steps in horizon_steps)
    trained = STEPS * len(result.stages) + sum(steps for _, steps in horizon_steps)
    (bar,) = bars
    task = bar._bar.tasks[bar._task]
    assert bar.over == []
    assert task.completed == trained == task.total
