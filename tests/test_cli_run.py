"""``jaxsweep run FILE.py:FACTORY --data FILE.npz``: your model and data from the command line."""

import json
import textwrap

import numpy as np
import pytest
from conftest import make_classification

import jaxsweep
from jaxsweep import _train, cli

MODEL_FILE = textwrap.dedent(
    """
    import flax.linen as nn


    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


    def make_model():
        return Small()
    """
)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_FILE)
    x, y = make_classification(n=120)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    np.savez(tmp_path / "split.npz", x_train=x[:96], y_train=y[:96], x_val=x[96:], y_val=y[96:])
    return tmp_path


@pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")
def test_run_writes_result_report_and_figures_with_the_options_given(files, capsys):
    out = files / "out"
    argv = ["run", f"{files / 'model.py'}:make_model", "--data", str(files / "split.npz")]
    argv += ["--out", str(out), "--steps", "5", "--eval-every", "2", "--batch-size", "32"]
    argv += ["--stages", "2"]
    argv += ["--lr-range", "1e-3", "1e-1", "--optimizer", "sgd(momentum=0.9)", "--seeds", "2"]
    argv += ["--min-improvement", "0", "--quiet", "--schedule", "warmup_cosine"]
    argv += ["--metric", "loss", "--mode", "min"]
    assert cli.main(argv) == 0
    result = jaxsweep.load(out / "result.json")
    assert result.config["optimizer"] == "sgd(momentum=0.9)"
    assert result.config["lr_range"] == [1e-3, 1e-1]
    assert (result.config["seeds"], result.config["steps"], result.config["stages"]) == (2, 5, 2)
    assert result.config["epochs"] is None and result.evaluations[0].steps == (2, 4, 5)
    assert "5 training steps" in (out / "methods.tex").read_text()
    assert (result.config["n_train"], result.config["n_val"]) == (96, 24)
    assert result.config["model"] == "Small"
    assert (result.config["metric"], result.config["mode"]) == ("val_loss", "min")
    assert result.config["schedule"].startswith("warmup_cosine (linear warmup over 10%")
    assert (out / "report.md").is_file() and (out / "methods.tex").is_file()
    assert (out / "figures" / "lr_curve.png").stat().st_size > 10_000
    assert f"{result.best_lr:.4g}" in capsys.readouterr().out
    json.loads((out / "result.json").read_text())


@pytest.mark.parametrize(
    "case, words",
    [
        ("no_file", "nowhere.py: no such file"),
        ("no_factory", "has no 'make_net'"),
        ("no_colon", "expected FILE.py:FACTORY"),
        ("broken_file", "could not be imported (SyntaxError"),
        ("no_data", "missing.npz: no such file"),
        ("bad_keys", "expected arrays x and y"),
        ("bad_optimizer", "optax has no optimizer 'adamm'"),
    ],
)
def test_run_errors_are_one_line_naming_the_thing(case, words, files, capsys, monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    model, data, optimizer = f"{files / 'model.py'}:make_model", str(files / "data.npz"), "adam"
    if case == "no_file":
        model = f"{files / 'nowhere.py'}:make_model"
    if case == "no_factory":
        model = f"{files / 'model.py'}:make_net"
    if case == "no_colon":
        model = str(files / "model.py")
    if case == "broken_file":
        (files / "broken.py").write_text("def oops(:\n")
        model = f"{files / 'broken.py'}:oops"
    if case == "no_data":
        data = str(files / "missing.npz")
    if case == "bad_keys":
        np.savez(files / "bad.npz", inputs=np.zeros(3))
        data = str(files / "bad.npz")
    if case == "bad_optimizer":
        optimizer = "adamm"
    argv = ["run", model, "--data", data, "--optimizer", optimizer, "--out", str(files / "o")]
    assert cli.main(argv) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("jaxsweep run: error:") and words in error
