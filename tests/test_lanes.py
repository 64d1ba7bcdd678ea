"""Lane strategies: every way of running a stage's lanes trains exactly what vmap trains."""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import _lanes, _sharding, _stage

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")


class TinyCNN(nn.Module):
    """A convolution on 6 features seen as a 3x2 image: the kind "auto" runs separately on CPU."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], 3, 2, 1))
        x = nn.relu(nn.Conv(4, (2, 2))(x))
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


STAGE = {**SMALL, **dict(stages=1, points_per_stage=3, seeds=2, lr_range=(1e-3, 1e-1))}


@pytest.fixture(scope="module")
def by_strategy(split_blobs):
    return {
        lanes: jaxsweep.run(lambda: TinyCNN(), split_blobs, lanes=lanes, **STAGE)
        for lanes in ("auto", "vmap", "map", "chunks:4", "separate")
    }


def test_every_strategy_trains_what_vmap_trains(by_strategy):
    reference = by_strategy["vmap"].evaluations
    for lanes, result in by_strategy.items():
        assert result.environment["lanes"]["strategy"] == ("separate" if lanes == "auto" else lanes)
        for got, want in zip(result.evaluations, reference, strict=True):
            assert got.lr == want.lr
            # float32 sums in another order (batched or not) drift by ~1e-6 relative
            np.testing.assert_allclose(got.seed_val_loss, want.seed_val_loss, rtol=1e-4)
            np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=1e-4)
            np.testing.assert_allclose(got.grad_norm, want.grad_norm, rtol=1e-4)
            for name, ratios in want.update_ratio.items():
                np.testing.assert_allclose(got.update_ratio[name], ratios, rtol=1e-3)


def test_auto_runs_a_convolution_separately_on_one_cpu(by_strategy):
    environment = by_strategy["auto"].environment["lanes"]
    assert environment["strategy"] == "separate"
    # a sweep of milliseconds: a trial of the other strategy would cost more than it saves
    assert environment["chosen_by"] == "rule"
    assert environment["reason"].startswith("cpu, convolutions; not measured")
    assert "seconds_per_call" not in environment


def test_a_sweep_compiles_a_handful_of_programs(by_strategy):
    # keys, gathers and casts live inside the init, start and epoch programs
    assert by_strategy["vmap"].environment["compilation_cache"]["programs"] == 3
    # separate adds the programs that split the lanes apart and stack them back
    assert by_strategy["separate"].environment["compilation_cache"]["programs"] == 5


def test_update_ratio_is_the_epochs_parameter_change(split_blobs):
    """Against a plain optax loop: |params after the epoch - before| / |before|, per module."""
    result = jaxsweep.run(
        lambda: TinyMLP(), split_blobs, stages=1, points_per_stage=2, lr_range=(1e-2, 1e-1), **SMALL
    )
    (x, y), _ = split_blobs["train"], split_blobs["val"]
    per_seed = jax.random.fold_in(jax.random.key(0), 0)
    init_key, data_key = jax.random.fold_in(per_seed, 0), jax.random.fold_in(per_seed, 1)

    def loss(params, xb, yb):
        logits = TinyMLP().apply({"params": params}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    grad = jax.jit(jax.grad(loss))
    for evaluation in result.evaluations:
        params = TinyMLP().init(init_key, x[:1])["params"]
        tx = optax.adam(evaluation.lr)
        opt_state = tx.init(params)
        expected = {name: [] for name in params}
        for epoch in range(SMALL["epochs"]):
            before = params
            order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x)))
            for step in range(len(x) // 32):
                idx = order[step * 32 : (step + 1) * 32]
                updates, opt_state = tx.update(grad(params, x[idx], y[idx]), opt_state, params)
                params = optax.apply_updates(params, updates)
            for name in params:
                change = jax.tree.map(jnp.subtract, params[name], before[name])
                expected[name].append(
                    float(optax.tree.norm(change) / optax.tree.norm(before[name]))
                )
        for name, ratios in expected.items():
            np.testing.assert_allclose(evaluation.update_ratio[name], ratios, rtol=1e-3)


@pytest.mark.parametrize(
    "lanes, expected",
    [
        ("vmap", _lanes.Strategy("vmap")),
        ("map", _lanes.Strategy("map")),
        ("separate", _lanes.Strategy("separate")),
        ("chunks:3", _lanes.Strategy("chunks", 3)),
        ("auto", None),
    ],
)
def test_strategy_names(lanes, expected):
    assert _lanes.parse(lanes) == expected
    if expected is not None:
        assert str(expected) == lanes


@pytest.mark.parametrize(
    "lanes, error",
    [("pmap", ValueError), ("chunks:0", ValueError), ("chunks", ValueError), (2, TypeError)],
)
def test_unknown_strategies_fail_before_anything_compiles(blobs, lanes, error):
    with pytest.raises(error, match="lanes"):
        jaxsweep.run(lambda: TinyMLP(), blobs, lanes=lanes, **SMALL)


class _Device(NamedTuple):
    process_index: int


def test_separate_refuses_devices_of_several_processes():
    two_processes = [_Device(0), _Device(1)]
    with pytest.raises(ValueError, match="lanes: 'separate' .* several processes"):
        _lanes.check(_lanes.Strategy("separate"), two_processes)
    _lanes.check(_lanes.Strategy("map"), two_processes)  # one program over every process
    _lanes.check(_lanes.Strategy("separate"), [_Device(0), _Device(0)])  # one process


@pytest.mark.parametrize(
    "backend, devices, params, convolutions, expected",
    [
        ("cpu", 1, 26_000, False, "vmap"),
        ("cpu", 1, 300_000, False, "separate"),
        ("cpu", 1, 4_000, True, "separate"),
        ("cpu", 4, 4_000, True, "separate"),
        ("gpu", 1, 4_000, True, "vmap"),
        ("tpu", 8, 300_000, False, "vmap"),
    ],
)
def test_auto_rule(backend, devices, params, convolutions, expected):
    traits = _lanes.ModelTraits(params, convolutions)
    strategy, reason = _lanes.choose(None, backend, devices, traits)
    assert str(strategy) == expected and backend in reason
    if expected == "separate":  # devices of several processes: one program over all
        assert str(_lanes.choose(None, backend, devices, traits, processes=2)[0]) == "map"
    forced = _lanes.Strategy("chunks", 2)
    assert _lanes.choose(forced, backend, devices, traits) == (forced, "forced by lanes=")


def test_convolutions_are_found_inside_nested_programs():
    x = jnp.zeros((2, 3, 2, 1))
    conv = nn.Conv(2, (2, 2))
    variables = conv.init(jax.random.key(0), x)

    def scanned():  # a convolution inside a scan inside a jit: still seen
        body = lambda c, _: (c, conv.apply(variables, x))
        return jax.jit(lambda: jax.lax.scan(body, 0.0, None, length=2))()

    assert _lanes.model_traits(1, scanned).convolutions
    assert not _lanes.model_traits(1, lambda: jnp.ones(3) @ jnp.ones(3)).convolutions


def test_seed_keys_inside_a_program_equal_the_eager_ones():
    for seed in (0, 7, 2**31 - 1):
        eager = _stage.seed_keys(seed, 3)
        traced = jax.jit(_stage.derive_seed_keys, static_argnums=1)(_stage.seed_argument(seed), 3)
        for a, b in zip(eager, traced):
            np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
        # the documented contract: fold_in(fold_in(key(seed), s), 0 for init | 1 for data)
        per_seed = jax.random.fold_in(jax.random.key(seed), 2)
        np.testing.assert_array_equal(
            jax.random.key_data(eager[1][2]),
            jax.random.key_data(jax.random.fold_in(per_seed, 1)),
        )


def test_host_lanes_are_value_major_and_padded_on_the_host_with_the_last_lane():
    values, seed_index = _stage.host_lanes([0.1, 0.2, 0.3], seeds=2)
    np.testing.assert_array_equal(seed_index, [0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(values, [0.1, 0.1, 0.2, 0.2, 0.3, 0.3], rtol=1e-7)
    assert values.dtype == np.float32 and seed_index.dtype == np.int32
    padded = _sharding.pad_lanes(seed_index, 8)
    assert isinstance(padded, np.ndarray)  # no device round trip, nothing compiled
    np.testing.assert_array_equal(padded, [0, 1, 0, 1, 0, 1, 1, 1])


def test_diagnostics_off_trains_the_same_lanes_and_says_what_was_skipped(split_blobs):
    settings = {**STAGE, "seeds": 1}
    measured = jaxsweep.run(lambda: TinyMLP(), split_blobs, **settings)
    skipped = jaxsweep.run(lambda: TinyMLP(), split_blobs, diagnostics=False, **settings)
    assert measured.config["diagnostics"] is True and skipped.config["diagnostics"] is False
    for on, off in zip(measured.evaluations, skipped.evaluations, strict=True):
        np.testing.assert_allclose(off.val_loss, on.val_loss, rtol=1e-6)
        assert np.all(np.isfinite(on.grad_norm)) and on.module_grad_norm and on.update_ratio
        assert np.all(np.isnan(off.grad_norm)) and not off.module_grad_norm
        assert not off.update_ratio
