"""``run(keep="best")``: the trained weights of every seed of the best value come back, and any
(value, seed) lane can be retrained by hand, from the documented recipe, to the same numbers.

The recipe (README, "The trained weights"): seed ``s`` of a sweep with root ``seed``
initialises with ``fold_in(fold_in(key(seed), s), 0)`` (``module.init(key, x_train[:2])``),
orders epoch ``e``'s batches by ``permutation(fold_in(data_key, e), n_train)`` with
``data_key = fold_in(fold_in(key(seed), s), 1)`` (the remainder dropped), and draws the
random stream ``name`` of step ``t`` from ``fold_in(fold_in(fold_in(rng_key, e), t),
crc32(name))``, ``rng_key = fold_in(fold_in(key(seed), s), 2)``; the optimizer is the factory
called with the value.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import comparable
from flax import nnx
from test_models import BatchNormNet, NNXBatchNormNet

import jaxsweep

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")

OPTIONS = dict(epochs=2, batch_size=32, seeds=2, stages=2, progress=False, keep="best")


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _by_hand(value: float, data, *, seed: int, seed_index: int, epochs: int, batch_size: int):
    """One lane of BatchNormNet with Adam, from the recipe alone: its final variables."""
    (x, y), _ = data["train"], data["val"]
    per_seed = jax.random.fold_in(jax.random.key(seed), seed_index)
    init_key, data_key, rng_key = (jax.random.fold_in(per_seed, i) for i in range(3))
    module = BatchNormNet()
    variables = module.init(init_key, x[:2], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(value)
    opt_state = tx.init(params)

    def loss_fn(params, stats, xb, yb, key):
        logits, updated = module.apply(
            {"params": params, "batch_stats": stats}, xb, train=True,
            mutable=["batch_stats"], rngs={"dropout": key},
        )  # fmt: skip
        return _ce(logits, yb), updated["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, xb, yb, key):
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    dropout = zlib.crc32(b"dropout") & 0x7FFFFFFF
    for epoch in range(epochs):
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x))
        for t in range(len(x) // batch_size):
            idx = np.asarray(order[t * batch_size : (t + 1) * batch_size])
            key = jax.random.fold_in(
                jax.random.fold_in(jax.random.fold_in(rng_key, epoch), t), dropout
            )
            params, stats, opt_state = step(params, stats, opt_state, x[idx], y[idx], key)
    return {"params": params, "batch_stats": stats}


def _val_loss(variables, data) -> float:
    xv, yv = data["val"]
    return float(_ce(BatchNormNet().apply(variables, xv, train=False), yv))


@pytest.fixture(scope="module")
def linen_kept(split_blobs):
    return jaxsweep.run(BatchNormNet, split_blobs, **OPTIONS)


def test_the_best_values_weights_reproduce_its_recorded_losses(linen_kept, split_blobs):
    result = linen_kept
    assert len(result.best_variables) == result.config["seeds"]
    for seed, variables in enumerate(result.best_variables):
        assert set(variables) == {"params", "batch_stats"}
        recorded = result.best.seed_val_loss[seed][-1]
        assert _val_loss(variables, split_blobs) == pytest.approx(recorded, rel=1e-5)


def test_any_lane_retrained_by_hand_from_the_recipe_equals_the_kept_one(linen_kept, split_blobs):
    result = linen_kept
    for seed_index, kept in enumerate(result.best_variables):
        mine = _by_hand(result.best_value, split_blobs, seed=0, seed_index=seed_index,
                        epochs=2, batch_size=32)  # fmt: skip
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(kept)):
            np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=3e-5)
    # any other value too: a lane's numbers depend on (value, seed) alone
    other = next(e for e in result.evaluations if e.value != result.best_value)
    mine = _by_hand(other.value, split_blobs, seed=0, seed_index=1, epochs=2, batch_size=32)
    assert _val_loss(mine, split_blobs) == pytest.approx(other.seed_val_loss[1][-1], rel=1e-4)


def test_nnx_weights_come_back_as_a_state_the_model_takes(split_blobs):
    result = jaxsweep.run(NNXBatchNormNet, split_blobs, **OPTIONS)
    xv, yv = split_blobs["val"]
    for seed, state in enumerate(result.best_variables):
        assert isinstance(state, nnx.State)
        model = NNXBatchNormNet(nnx.Rngs(123))  # other weights, until updated
        nnx.update(model, state)
        model.eval()
        recorded = result.best.seed_val_loss[seed][-1]
        assert float(_ce(model(jnp.asarray(xv)), yv)) == pytest.approx(recorded, rel=1e-5)


def test_saved_and_loaded_weights_are_the_same_arrays(linen_kept, tmp_path):
    path = jaxsweep.save_variables(linen_kept.best_variables, tmp_path / "best_variables")
    loaded = jaxsweep.load_variables(path)
    assert len(loaded) == len(linen_kept.best_variables)
    for mine, theirs in zip(loaded, linen_kept.best_variables):
        assert jax.tree.structure(mine) == jax.tree.structure(jax.tree.map(np.asarray, theirs))
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
            np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(FileExistsError, match="never written over"):
        jaxsweep.save_variables(linen_kept.best_variables, path)
    # the result file never holds them: a loaded result has none, and equals the live one
    linen_kept.save(tmp_path / "result.json")
    again = jaxsweep.load(tmp_path / "result.json")
    assert again == linen_kept and again.best_variables is None


def test_a_rerun_of_a_finished_sweep_trains_the_best_value_again(split_blobs, tmp_path):
    options = dict(OPTIONS, checkpoint_dir=str(tmp_path / "ckpt"))
    first = jaxsweep.run(BatchNormNet, split_blobs, **options)
    stored = jaxsweep.run(BatchNormNet, split_blobs, **options)  # returned, not searched
    assert comparable(stored.to_dict()) == comparable(first.to_dict())
    for a, b in zip(jax.tree.leaves(first.best_variables), jax.tree.leaves(stored.best_variables)):
        # another lane count: the same numbers to float rounding
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for seed, variables in enumerate(stored.best_variables):
        recorded = first.best.seed_val_loss[seed][-1]
        assert _val_loss(variables, split_blobs) == pytest.approx(recorded, rel=1e-4)


def test_keep_is_checked_and_off_by_default(split_blobs):
    with pytest.raises(ValueError, match="keep: expected None or 'best'"):
        jaxsweep.run(BatchNormNet, split_blobs, keep="all")
    plain = jaxsweep.run(BatchNormNet, split_blobs, **dict(OPTIONS, keep=None, stages=1))
    assert plain.best_variables is None
    assert not math.isnan(plain.best_score)


@pytest.mark.slow
def test_the_command_saves_the_weights_beside_the_result_and_never_over_them(tmp_path, capsys):
    from jaxsweep import cli

    out = tmp_path / "demo"
    arguments = ["demo", "--out", str(out), "--keep-best", "--quiet", "--epochs", "1"]
    assert cli.main([*arguments, "--stages", "1"]) == 0
    result, saved = jaxsweep.load(out / "result.json"), out / "best_variables"
    weights = jaxsweep.load_variables(saved)
    assert len(weights) == result.config["seeds"] and "params" in weights[0]
    before = sorted(p.name for p in saved.iterdir())
    assert cli.main([*arguments, "--stages", "1"]) == 2  # refused before training
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in saved.iterdir()) == before
