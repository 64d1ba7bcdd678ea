"""What a user reads first: the result's repr, best_params, to_dataframe, show/report with a
result.json path, and Ctrl-C in the jaxsweep command."""

import math
import os
import signal
import subprocess
import sys
import time
import warnings

import optax
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import cli

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
JAXSWEEP = os.path.join(os.path.dirname(sys.executable), "jaxsweep")  # the installed command
# a background job of a shell ignores SIGINT, and so would its children: Ctrl-C restored first
SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def loss_with_accuracy(logits, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return {"loss": loss, "accuracy": (logits.argmax(-1) == labels).mean()}


@pytest.fixture(scope="module")
def result(split_blobs):
    """Two stages of three values and two seeds, ranked by accuracy (higher is better)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(
            lambda: TinyMLP(),
            split_blobs,
            loss=loss_with_accuracy,
            metric="val_accuracy",
            mode="max",
            **{**SMALL, "seeds": 2},
            stages=2,
            points_per_stage=3,
            lr_range=(1e-3, 3e-2),
        )


def test_repr_is_short_and_names_the_best_value(result):
    text = repr(result)
    assert len(text) < 400 and "\n" not in text
    assert f"best_value={result.best_value:.4g} (learning_rate)" in text
    assert f"best_score={result.best_score:.4g} (val_accuracy)" in text
    assert f"stop_reason={result.stop_reason!r}" in text
    assert f"lanes={2 * len(result.evaluations)}" in text
    low, high = result.value_interval
    assert f"interval=[{low:.3g}, {high:.3g}]" in text and f"{result.precision:.3g}" in text
    assert str(result) == text


@pytest.mark.parametrize("name", ["result_v0.1.0.json", "demo_result_v0.1.0.json"])
def test_repr_of_results_written_by_earlier_versions(name):
    loaded = jaxsweep.load(os.path.join(DATA, name))
    text = repr(loaded)
    assert len(text) < 400 and f"{loaded.best_value:.4g}" in text


def test_best_params_is_the_best_value_under_the_hyperparameter_name(result):
    best = max(result.evaluations, key=lambda e: e.score)  # mode="max"
    assert result.best_params == {"learning_rate": best.value}


def test_dataframe_has_a_row_per_lane_and_gives_back_the_scores(result):
    frame = result.to_dataframe()
    assert len(frame) == 2 * len(result.evaluations)
    expected = ["value", "seed", "stage", "val_accuracy", "val_loss", "train_loss"]
    assert list(frame.columns) == [*expected, "diverged", "score"]
    finite = frame[~frame["diverged"]]
    means = finite.groupby("value")["val_accuracy"].mean()
    for evaluation in result.evaluations:
        rows = frame[frame["value"] == evaluation.value]
        assert rows["seed"].tolist() == [0, 1]
        assert (rows["stage"] == evaluation.stage).all()
        assert (rows["score"] == evaluation.score).all()
        assert rows["val_loss"].tolist() == [s[-1] for s in evaluation.seed_val_loss]
        if not evaluation.diverged:
            assert means[evaluation.value] == pytest.approx(evaluation.score, rel=1e-12)
    by_value = frame.groupby("value")["score"].first()
    assert by_value.to_dict() == {e.value: e.score for e in result.evaluations}


def test_dataframe_without_pandas_names_the_extra(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"jaxsweep\[dataframe\]"):
        result.to_dataframe()


def test_dataframe_marks_the_diverged_seed(result):
    import dataclasses

    first = result.evaluations[0]
    bad = dataclasses.replace(first, diverged=True, score=-math.inf, seed_diverged=(False, True))
    broken = dataclasses.replace(result, evaluations=(bad, *result.evaluations[1:]))
    rows = broken.to_dataframe().query("value == @first.value")
    assert rows["diverged"].tolist() == [False, True]
    assert (rows["score"] == -math.inf).all()


# ----------------------------------------------------------------------------- the command


@pytest.fixture()
def saved(result, tmp_path):
    folder = tmp_path / "sweep"
    result.save(folder / "result.json")
    return folder


def test_show_takes_the_folder_or_its_result_json(saved, capsys):
    assert cli.main(["show", str(saved)]) == 0
    from_folder = capsys.readouterr().out
    assert cli.main(["show", str(saved / "result.json")]) == 0
    from_file = capsys.readouterr().out
    assert from_file == from_folder
    assert f"{jaxsweep.load(saved / 'result.json').best_value:.4g}" in from_file


def test_report_takes_the_result_json_and_writes_beside_it(saved, capsys):
    assert cli.main(["report", str(saved / "result.json")]) == 0
    assert (saved / "report.md").is_file() and (saved / "figures").is_dir()
    assert str(saved / "result.json") in capsys.readouterr().out


def test_show_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert cli.main(["show", str(tmp_path / "nothing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing.json" in err


def _interrupted_demo(tmp_path, *options, started=None, wait=None):
    """Starts ``jaxsweep demo``, sends Ctrl-C once ``started()`` says training began (or after
    ``wait`` seconds); returns (return code, stderr, seconds until the signal)."""
    command = [JAXSWEEP, "demo", "--epochs", "50", "--quiet", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(
        [sys.executable, "-c", SIGINT_THEN_EXEC, *command, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    began = time.monotonic()
    try:
        deadline = began + 300
        while time.monotonic() < deadline and process.poll() is None:
            elapsed = time.monotonic() - began
            if (started is not None and started()) or (wait is not None and elapsed >= wait):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the demo ended before it was interrupted"
        waited = time.monotonic() - began
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err, waited


@pytest.mark.slow
def test_ctrl_c_ends_the_command_with_one_line(tmp_path):
    checkpoints = tmp_path / "checkpoints"

    def saved_a_step() -> bool:  # a checkpoint step on disk: training has begun
        return checkpoints.is_dir() and any(n.isdigit() for n in os.listdir(checkpoints))

    code, err, waited = _interrupted_demo(
        tmp_path, "--checkpoint-dir", str(checkpoints), started=saved_a_step
    )
    expected = f"interrupted: rerun the same command to resume from the checkpoint in {checkpoints}"
    assert code == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == expected and err.count("interrupted") == 1
    # without checkpoints, interrupted as far into the sweep
    code, err, _ = _interrupted_demo(tmp_path, wait=waited)
    assert code == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (
        "interrupted: nothing was saved (pass --checkpoint-dir to make a sweep resumable)"
    )
    assert err.count("interrupted") == 1
