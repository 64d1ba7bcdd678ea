"""The built-in cross-entropy on class labels records the accuracy: rank by it, no own loss."""

import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, make_classification

import jaxsweep
from jaxsweep import _losses, _stage, _train, cli

SEEDS = 2


@pytest.fixture(scope="module")
def by_accuracy(split_blobs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            metric="accuracy",
            mode="max",
            stages=2,
            points_per_stage=3,
            optimizer=optax.sgd,
            lr_range=(1e-3, 1.0),  # the low end barely trains: the accuracies differ
            **{**SMALL, "seeds": SEEDS},
        )


def plain_accuracy_and_loss(data, lr: float, seeds: int, epochs: int, batch_size: int):
    """TinyMLP trained with plain SGD by a Python loop per seed, keyed as a sweep's lanes are;
    the validation accuracy (from the predictions) and cross-entropy, mean over the seeds."""
    (x, y), (xv, yv) = data["train"], data["val"]
    module, tx = TinyMLP(), optax.sgd(np.float32(lr))
    init_keys, data_keys = _stage.seed_keys(0, seeds)

    def loss_of(params, xb, yb):
        logits = module.apply({"params": params}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    grad = jax.jit(jax.grad(loss_of))
    accuracies, losses = [], []
    for s in range(seeds):
        params = module.init(init_keys[s], x[:1])["params"]
        opt_state = tx.init(params)
        for epoch in range(epochs):
            order = np.asarray(
                jax.random.permutation(jax.random.fold_in(data_keys[s], epoch), len(x))
            )
            for step in range(len(x) // batch_size):
                idx = order[step * batch_size : (step + 1) * batch_size]
                updates, opt_state = tx.update(grad(params, x[idx], y[idx]), opt_state, params)
                params = optax.apply_updates(params, updates)
        predicted = np.argmax(np.asarray(module.apply({"params": params}, xv)), axis=-1)
        accuracies.append(float(np.mean(predicted == yv)))
        losses.append(float(loss_of(params, xv, yv)))
    return float(np.mean(accuracies)), float(np.mean(losses))


def test_the_sweep_ranks_by_the_recorded_accuracy(by_accuracy):
    assert by_accuracy.config["loss"] == "cross_entropy"
    assert by_accuracy.config["metric"] == "val_accuracy" and by_accuracy.mode == "max"
    for e in by_accuracy.evaluations:
        assert set(e.val_aux) == set(e.train_aux) == {"accuracy"}
        if not e.diverged:
            assert e.score == pytest.approx(np.mean(e.seed_scores))
            assert e.score == pytest.approx(e.val_aux["accuracy"][-1])
            assert 0.0 <= e.score <= 1.0
    finite = [e for e in by_accuracy.evaluations if not e.diverged]
    top = max(finite, key=lambda e: e.score)
    assert by_accuracy.best_score == top.score == max(e.score for e in finite)
    # the accuracies differ, so the ranking is the accuracy's, not a tie broken by the loss
    assert min(e.score for e in finite) < top.score
    lowest_loss = min(finite, key=lambda e: e.val_loss[-1])
    assert by_accuracy.best_value == top.value
    assert lowest_loss.score <= top.score


def test_the_recorded_accuracy_and_loss_are_a_plain_loops(by_accuracy, split_blobs):
    """Every value of stage 0: the lanes' validation accuracy is the accuracy of a plain
    loop's predictions, and the validation loss is its cross-entropy (the optimised loss,
    untouched by the accuracy entry)."""
    for e in by_accuracy.evaluations:
        if e.stage != 0 or e.diverged:
            continue
        accuracy, loss = plain_accuracy_and_loss(
            split_blobs, e.value, SEEDS, SMALL["epochs"], SMALL["batch_size"]
        )
        assert e.score == pytest.approx(accuracy, abs=1e-6)
        assert e.val_loss[-1] == pytest.approx(loss, rel=2e-4)


def test_the_accuracy_entry_leaves_the_loss_and_its_gradient_alone():
    x, y = make_classification(n=24)
    loss_fn, name, kind = _losses.resolve_loss("auto", y, (24, 3))
    assert (name, kind) == ("cross_entropy", "labels")
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)

    def built_in(w):
        return _losses.split_loss(loss_fn(x @ w, y))[0]

    def plain(w):
        return optax.softmax_cross_entropy_with_integer_labels(x @ w, y).mean()

    np.testing.assert_allclose(built_in(weights), plain(weights), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(built_in)(weights), jax.grad(plain)(weights), rtol=1e-6)
    _, aux = _losses.split_loss(loss_fn(x @ weights, y))
    expected = np.mean(np.argmax(np.asarray(x @ weights), -1) == y)
    assert float(aux["accuracy"]) == pytest.approx(expected)
    # labels as a column score the same
    column = _losses.split_loss(loss_fn(x @ weights, y[:, None]))
    assert float(column[1]["accuracy"]) == pytest.approx(expected)


def test_other_targets_record_no_accuracy():
    x, y = make_classification(n=24)
    one_hot = np.eye(3, dtype=np.float32)[y]
    for targets, outputs in ((one_hot, (24, 3)), (x[:, 0], (24, 1))):
        loss_fn, _, _ = _losses.resolve_loss("auto", targets, outputs)
        assert not isinstance(loss_fn(jnp.zeros(outputs), targets), dict)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(metric="accuracy"), "pass mode='max'"),  # mode left at "min"
        (dict(metric="val_accuracy", mode="min"), "pass mode='max'"),
        (dict(metric="accuracy", mode="max", loss="mse"), "not measured"),
    ],
)
def test_accuracy_with_mode_min_is_refused_before_compiling(kwargs, words, blobs, monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    x, y = blobs
    data = (x, np.eye(3, dtype=np.float32)[y]) if kwargs.get("loss") == "mse" else blobs
    with pytest.raises(ValueError, match=words):
        jaxsweep.run(lambda: TinyMLP(), data, **{**SMALL, **kwargs})


MODEL_FILE = textwrap.dedent(
    """
    import flax.linen as nn


    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))
    """
)


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_the_command_ranks_by_accuracy(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_FILE)
    x, y = make_classification(n=120)
    np.savez(tmp_path / "data.npz", x_train=x[:96], y_train=y[:96], x_val=x[96:], y_val=y[96:])
    out = tmp_path / "out"
    argv = ["run", f"{tmp_path / 'model.py'}:Small", "--data", str(tmp_path / "data.npz")]
    argv += ["--out", str(out), "--steps", "4", "--batch-size", "32", "--stages", "1"]
    argv += ["--seeds", "1", "--quiet", "--metric", "accuracy", "--mode", "max"]
    assert cli.main(argv) == 0
    result = jaxsweep.load(out / "result.json")
    assert (result.config["metric"], result.config["mode"]) == ("val_accuracy", "max")
    finite = [e for e in result.evaluations if not e.diverged]
    assert result.best_score == max(e.score for e in finite)
    assert all(e.score == e.val_aux["accuracy"][-1] for e in finite)


def test_the_commands_help_names_the_accuracy(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "val_accuracy" in text and "no other entry" not in text
