"""End to end with the defaults, on least-squares problems whose optimal rate is known exactly.

A linear model (no bias, zero init) trained by full-batch gradient descent for ``E`` steps has
the final loss ``L(lr) = L* + sum_i c_i (1 - lr * lam_i)^(2E)`` (``lam_i`` the eigenvalues of
``H = 2 X^T X / n``, ``c_i = lam_i (q_i . w*)^2 / 2``), computed here in float64 from the data
the sweep trains on; its minimiser comes from bisection on the slope (``L`` is convex). Every
seed trains the same numbers (full batches from zero): zero noise, and the lanes past the
divergence edge end at huge finite losses, the two cases that fooled the search.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import numpy as np
import optax
import pytest

import jaxsweep


def _problem(kind: str, seed: int, n: int = 64, d: int = 16):
    """Data whose spectrum puts the optimum beside the divergence edge ("edge"), inside a
    broad valley ("interior"), or ~10x above the default range ("outside")."""
    rng = np.random.default_rng([seed, ("edge", "interior", "outside").index(kind)])
    if kind == "edge":  # one stiff direction carrying little of the loss caps the rate
        spectrum = np.concatenate([[1000.0], np.geomspace(5.0, 60.0, d - 1)])
        components, steps = np.concatenate([[0.05], np.ones(d - 1)]), 20
    elif kind == "interior":
        spectrum = np.geomspace(500.0, 5000.0, d)
        components, steps = 0.3 * (spectrum / spectrum.max()) ** 2, 5
    else:
        spectrum, components, steps = np.geomspace(1.5, 24.0, d), np.ones(d), 20
    spectrum = spectrum * np.exp(rng.uniform(np.log(0.7), np.log(1.4)))
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = (np.sqrt(n / 2.0) * (u * np.sqrt(spectrum)) @ v.T).astype(np.float32)
    y = (x @ (v @ (components * rng.choice([-1.0, 1.0], d))) + 0.1 * rng.normal(size=n)).astype(
        np.float32
    )
    return x, y, steps


def _exact_optimum(x: np.ndarray, y: np.ndarray, steps: int) -> float:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    lam, q = np.linalg.eigh(2.0 * x64.T @ x64 / len(x))
    solution, *_ = np.linalg.lstsq(x64, y64, rcond=None)
    weights = 0.5 * lam * (q.T @ solution) ** 2

    def slope(lr: float) -> float:
        e = 2 * steps
        return float(np.sum(-e * lam * weights * (1.0 - lr * lam) ** (e - 1)))

    low, high = 0.0, 1.0 / lam.max()
    while slope(high) < 0:
        low, high = high, 2 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    return 0.5 * (low + high)


@pytest.mark.parametrize("kind", ["edge", "interior", "outside"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_defaults_find_an_exactly_known_optimum(kind, seed):
    x, y, steps = _problem(kind, seed)
    truth = _exact_optimum(x, y, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        result = jaxsweep.run(
            lambda: nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros),
            {"train": (x, y), "val": (x, y)},
            loss="mse",
            optimizer=optax.sgd,
            epochs=steps,
            batch_size=len(x),
            seed=seed,
            progress=False,
        )
    assert result.config["seeds"] == 3  # the defaults: three seeds, the default range
    assert abs(result.refined_value / truth - 1) < 0.01, (result.refined_value, truth)
    low, high = result.value_interval
    assert low <= truth <= high, (low, high, truth)
    assert result.precision < 0.1  # no noise: the interval is narrow, and honest
    exploded = [e for e in result.evaluations if any(e.seed_diverged) and e.value > truth]
    if kind == "edge":  # past the edge the loss is huge but finite: counted as diverged
        assert any(np.isfinite(e.seed_scores).all() for e in exploded)
    assert all(e.diverged for e in exploded)
