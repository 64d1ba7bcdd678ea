"""Seed-to-seed noise of a sweep's scores: paired comparisons between values (pure numpy).

Every seed trains every value from the same initial parameters and on the same batches, so
two values are compared seed by seed: the part of a seed's luck that both share cancels in
the difference, and the spread of the differences over seeds is the noise a comparison has to
beat. Student's t with ``seeds - 1`` degrees of freedom keeps the tests honest with few seeds.

Vocabulary:
  * *scores*: a ``(values, seeds)`` matrix of final scores, lower is better; a value that
    diverged in any seed scores +inf there;
  * *worse*: a value whose mean score exceeds another's by more than ``t`` standard errors of
    their paired difference (one-sided, 95%);
  * *tied with the best*: not worse than the value with the lowest mean score.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

# Student's t quantiles for df = 1..30; beyond, a Cornish-Fisher expansion around the normal
# quantile is accurate to 1e-4.
_T_TABLES = {
    0.975: (
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ),
    0.95: (
        6.3138, 2.9200, 2.3534, 2.1318, 2.0150, 1.9432, 1.8946, 1.8595, 1.8331, 1.8125,
        1.7959, 1.7823, 1.7709, 1.7613, 1.7531, 1.7459, 1.7396, 1.7341, 1.7291, 1.7247,
        1.7207, 1.7171, 1.7139, 1.7109, 1.7081, 1.7056, 1.7033, 1.7011, 1.6991, 1.6973,
    ),
}  # fmt: skip
_Z = {0.975: 1.959963984540054, 0.95: 1.6448536269514722}


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (0.95 or 0.975) of Student's t with ``df`` degrees of
    freedom."""
    if probability not in _T_TABLES:
        raise ValueError(f"probability: expected one of {sorted(_T_TABLES)}, got {probability}")
    if df < 1:
        raise ValueError(f"df: must be >= 1, got {df}")
    table = _T_TABLES[probability]
    if df <= len(table):
        return table[df - 1]
    z = _Z[probability]
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def score_matrix(seed_scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-seed scores as a ``(values, seeds)`` float array, non-finite scores as +inf.

    Raises:
      ValueError: the rows differ in length or are empty.
    """
    lengths = {len(row) for row in seed_scores}
    if len(lengths) > 1 or lengths == {0}:
        raise ValueError(
            f"seed_scores: every value needs the same number (>= 1) of per-seed scores, "
            f"got lengths {sorted(lengths)}"
        )
    matrix = np.asarray(seed_scores, np.float64).reshape(len(seed_scores), -1)
    return np.where(np.isfinite(matrix), matrix, np.inf)


def seed_count(seed_scores: Sequence[Sequence[float]] | None) -> int:
    """How many seeds each value was trained with (0 without per-seed scores)."""
    if seed_scores is None or len(seed_scores) == 0:
        return 0
    return len(seed_scores[0])


def best_index(matrix: np.ndarray) -> int:
    """The row with the lowest mean score (the first on ties, as the selector breaks them)."""
    return int(np.argmin(matrix.mean(axis=1)))


ERRATIC = 3.0  # a pair this many times noisier than the floor is tested seed by seed too
FAR_ABOVE = 1000.0  # a row with a seed this many times the best's level above it is far away
NEAR_BEST = 2  # values on each side of the best whose residuals set the noise floor


def near_best_rows(matrix: np.ndarray, span: int = NEAR_BEST) -> np.ndarray:
    """Indices of the finite rows nearest the best one in value order: up to ``span`` on each
    side of it (more on one side where the other runs out), the best included.

    The noise that decides a comparison with the best is the noise near it. Rows far away
    (a rate that blew up to 1e25, one at chance level with erratic seeds) say nothing about
    it and, pooled, would swamp it; a row with any seed more than :data:`FAR_ABOVE` times the
    best's level (its mean's size plus its seeds' spread) above the best is far away however
    close its value.
    """
    finite = np.flatnonzero(np.isfinite(matrix).all(axis=1))
    if len(finite) == 0:
        return finite
    means = matrix[finite].mean(axis=1)
    best = int(np.argmin(means))
    # a row whose scores lie orders of magnitude above the best's is no neighbour of it
    scale = abs(float(means[best])) + float(matrix[finite[best]].std())
    near = (matrix[finite] <= means[best] + FAR_ABOVE * scale).all(axis=1)
    finite, best = finite[near], int(np.sum(near[:best]))
    width = 2 * span + 1
    low = max(0, min(best - span, len(finite) - width))
    return finite[low : low + width]


def pooled_error(matrix: np.ndarray) -> float:
    """A floor for the standard error of a paired difference: the typical noise of one value.

    Taken over the finite rows near the best (:func:`near_best_rows`). Each row less its own
    mean, less each seed's mean over those rows (the part of a seed's luck every value
    shares), leaves residuals; the median over rows of their variance, doubled for a
    difference and divided by the seeds, is the standard error of a difference between two
    values whose residuals are independent. Centring each row first keeps the arithmetic on
    numbers of the residuals' own size (no cancellation); rows far from the best (a lane at
    1e25 before it was set aside, one at chance level) never enter. Two seeds' paired
    differences can agree closely by chance (a standard deviation from 2 or 3 seeds is
    itself very noisy); the floor keeps such a chance agreement from passing for a real
    difference.
    """
    rows = near_best_rows(matrix)
    if len(rows) < 2 or matrix.shape[1] < 2:
        return 0.0
    centred = matrix[rows] - matrix[rows].mean(axis=1, keepdims=True)
    residual = centred - centred.mean(axis=0)
    variance = float(np.median(residual.var(axis=1, ddof=1)))
    return math.sqrt(2 * variance / matrix.shape[1])


def every_seed_margin(probability: float, seeds: int) -> float:
    """How many standard deviations of a paired difference every seed's difference must
    exceed for "worse on every seed" to be a one-sided test at ``probability``.

    Under no difference, each of ``seeds`` independent differences exceeds ``z`` standard
    deviations with chance ``1 - Φ(z)``; all of them do with ``(1 - Φ(z))**seeds``, set to
    ``1 - probability``. With 3 seeds and 95%: 0.33 standard deviations.
    """
    tail = (1.0 - probability) ** (1.0 / seeds)
    return statistics.NormalDist().inv_cdf(1.0 - tail)


def worse(
    matrix: np.ndarray, i: int, j: int, probability: float = 0.95, floor: float = 0.0
) -> bool:
    """Whether value ``i`` is significantly worse than value ``j`` (one-sided, ``probability``).

    Two tests, either suffices: the paired t test, its standard error at least ``floor``
    (see :func:`pooled_error`); and, for a pair far noisier than the values near the best
    (its own standard error above :data:`ERRATIC` times ``floor``), worse on every seed by
    more than :func:`every_seed_margin` standard deviations of a paired difference at the
    floor's noise. One erratic seed (a lane at 1e4 among lanes near 2.7) inflates the t
    test's own standard error until nothing is worse; it cannot hide a difference that
    every seed shows. A value that diverged in a seed where the other did not is worse; two
    values that both diverged somewhere cannot be told apart. With identical differences in
    every seed (no noise, no floor) any positive difference counts.
    """
    a, b = matrix[i], matrix[j]
    a_bad, b_bad = not np.isfinite(a).all(), not np.isfinite(b).all()
    if a_bad or b_bad:
        return a_bad and not b_bad
    seeds = len(a)
    difference = a - b
    mean = float(difference.mean())
    if seeds < 2:
        return False  # one seed carries no estimate of the noise
    own = float(difference.std(ddof=1)) / math.sqrt(seeds)
    if mean > t_quantile(probability, seeds - 1) * max(own, floor):
        return True
    if floor > 0 and own > ERRATIC * floor:
        spread = floor * math.sqrt(seeds)  # one paired difference: sqrt(seeds) x its mean's error
        margin = every_seed_margin(probability, seeds) * spread
        return bool((difference > margin).all())
    return False


def different(matrix: np.ndarray, i: int, j: int) -> bool:
    """Whether values ``i`` and ``j`` differ significantly (paired two-sided t test, 95%)."""
    floor = pooled_error(matrix)
    return worse(matrix, i, j, 0.975, floor) or worse(matrix, j, i, 0.975, floor)


def tied_with_best(matrix: np.ndarray, probability: float = 0.95) -> np.ndarray:
    """Per value, whether it is not significantly worse than the best (``(values,)`` bool)."""
    best, floor = best_index(matrix), pooled_error(matrix)
    return np.array([not worse(matrix, i, best, probability, floor) for i in range(len(matrix))])


def tied_run(matrix: np.ndarray, probability: float = 0.95) -> tuple[int, int]:
    """The first and last row of the run of consecutive values tied with the best, around it.

    Rows are values in increasing order. The run stops at the first value on each side that
    is significantly worse than the best: for an expected score with one minimum, values
    beyond a worse one are farther from the optimum (however noisy their own scores are).
    """
    tied = tied_with_best(matrix, probability)
    first = last = best_index(matrix)
    while first > 0 and tied[first - 1]:
        first -= 1
    while last < len(tied) - 1 and tied[last + 1]:
        last += 1
    return first, last
