"""Swept ranges the optimizer cannot train as reported are refused before anything compiles;
an expansion never leaves a hyperparameter's valid values."""

from __future__ import annotations

import numpy as np
import pytest
from test_search import _config

from jaxsweep import _selector


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(value_range=(1e-60, 1e-50)), "not a normal float32"),
        (dict(value_range=(1e-3, 1e40)), "not a normal float32"),
        (dict(value_range=(-0.1, 0.1), scale="linear"), "learning rate must be positive"),
        (dict(value_range=(0.0, 0.1), scale="linear"), "learning rate must be positive"),
        (dict(hyperparam="b1", value_range=(0.5, 1.2), scale="linear"), r"b1 must lie in \[0, 1\)"),
        (dict(hyperparam="momentum", value_range=(-0.5, 0.9), scale="linear"), "momentum"),
        (dict(hyperparam="weight_decay", value_range=(-1e-3, 0.1), scale="linear"), "decay"),
    ],
)
def test_ranges_the_optimizer_cannot_hold_are_refused(overrides, words):
    with pytest.raises(ValueError, match=words):
        _config(**overrides)


def test_an_expansion_toward_a_bound_stops_short_of_it():
    config = _config(hyperparam="b1", value_range=(0.5, 0.95), scale="linear", seeds=1)
    points = list(_selector.initial_points(config.value_range, 5, "linear"))
    scores = [1.0, 0.9, 0.8, 0.7, 0.6]  # better and better toward 1: the search follows
    plan = _selector.plan_stage(1, points, scores, config)
    assert plan.expansion == "up"
    assert min(plan.points) > 0.95 and max(plan.points) < 1.0
    assert len(set(plan.points)) == 5 and np.all(np.diff(plan.points) > 0)
    # the unbounded learning rate keeps its full expansion
    free = _config(value_range=(1e-3, 1e-1), seeds=1)
    rates = list(_selector.initial_points(free.value_range, 5, "log"))
    assert max(_selector.plan_stage(1, rates, scores, free).points) > 0.5  # up to 1.0
