"""The examples gallery and the Colab notebook run top to bottom in their tiny configurations.

Each example runs as a user would run it (``python examples/NAME.py --quick``, a fresh
process) and must end by printing ``best learning rate: <value>``. The notebook runs headless
through nbclient with ``JAXSWEEP_NOTEBOOK_QUICK=1``. Almost all of their time is XLA
compilation in separate processes, so they are started together, a few at a time, when the
first of these tests runs; each test then waits for its own process.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

# every example is a fresh process that compiles its own programs: the slow part of the suite
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOK = EXAMPLES / "colab_tpu.ipynb"
# longest first, so that the short ones fill the gaps
SCRIPTS = (
    "resumed_sweep",
    "char_transformer",
    "resnet_batchnorm",
    "resnet_official",
    "cnn_nnx",
    "own_train_step",
    "schedule_accuracy",
    "digits_mlp",
    "regression_multiloss",
)
WORKERS = 3  # the processes are mostly single-threaded compilation
TIMEOUT = 600
DEVICES = 4  # simulated CPU devices for the notebook
# what each test that is not parametrized by example name reads
NEEDS = {
    "test_classifiers_learn_something": (
        "digits_mlp",
        "cnn_nnx",
        "resnet_batchnorm",
        "resnet_official",
        "own_train_step",
        "char_transformer",
    ),
    "test_models_with_state_say_what_they_carry": ("resnet_batchnorm", "char_transformer"),
    "test_multi_part_loss_entries_add_up": ("regression_multiloss",),
    "test_resumed_sweep_skips_the_finished_stage": ("resumed_sweep",),
    "test_notebook_runs_top_to_bottom": ("notebook",),
    "test_schedule_example_selects_by_accuracy": ("schedule_accuracy",),
}
BEST_LINE = re.compile(r"best learning rate: (\S+)")

# Executes the notebook in a fresh kernel and writes the executed copy (outputs included).
_RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, kernel_name="python3", timeout=300,
               resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(notebook, sys.argv[2])
"""


def _environment(name: str, cache: Path) -> dict[str, str]:
    """CPU only, one compilation cache for all processes, and for the notebook its quick switch
    and four CPU devices (it shards its lanes over every device, as over a TPU's cores).

    The examples compile many of the same small programs (key derivation, lane set-up), and the
    resumed sweep compiles its programs twice, in two processes: a shared persistent cache
    halves the suite's compile time without changing what any example computes.
    """
    environment = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    if name == "notebook":
        flags = environment.get("XLA_FLAGS", "")
        environment["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={DEVICES}"
        environment["JAXSWEEP_NOTEBOOK_QUICK"] = "1"
    return environment


def _run(name: str, scratch: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(name, scratch),
        cwd=scratch,
        env=_environment(name, cache),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _command(name: str, scratch: Path) -> list[str]:
    if name == "notebook":
        executed = scratch / "executed.ipynb"
        return [sys.executable, "-c", _RUN_NOTEBOOK, str(NOTEBOOK), str(executed), str(scratch)]
    return [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick"]


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """Starts every selected example (and the notebook) in the background: name -> Future."""
    selected = set()
    for item in request.session.items:
        if getattr(item, "module", None) is request.module:  # doctests have none
            callspec = getattr(item, "callspec", None)
            selected.update([callspec.params["name"]] if callspec else NEEDS[item.originalname])
    order = [name for name in ("notebook", *SCRIPTS) if name in selected]
    cache = tmp_path_factory.mktemp("compilation_cache")
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures: dict[str, tuple[Future, Path]] = {}
    for name in order:
        scratch = tmp_path_factory.mktemp(name)
        futures[name] = (pool.submit(_run, name, scratch, cache), scratch)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _finished(launched, name: str) -> tuple[str, Path]:
    """The stdout of a launched process, after checking that it succeeded."""
    future, scratch = launched[name]
    process = future.result()
    assert process.returncode == 0, (
        f"{name} failed (exit {process.returncode}):\n{process.stdout[-3000:]}\n"
        f"{process.stderr[-3000:]}"
    )
    return process.stdout, scratch


def _best_rate(text: str) -> float:
    lines = [line for line in text.splitlines() if line.strip()]
    match = BEST_LINE.fullmatch(lines[-1].strip())
    assert match, f"the last line is not 'best learning rate: <value>': {lines[-1]!r}"
    rate = float(match.group(1))
    assert math.isfinite(rate) and rate > 0, rate
    return rate


def _number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no line matches {pattern!r} in:\n{text}"
    return float(match.group(1))


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_prints_its_best_rate(launched, name):
    stdout, _ = _finished(launched, name)
    _best_rate(stdout)


def test_classifiers_learn_something(launched):
    """Each quick classifier's best validation loss beats a uniform guess over the classes."""
    names = ("digits_mlp", "cnn_nnx", "resnet_batchnorm", "resnet_official", "own_train_step")
    for name in names:  # 10 digits
        stdout, _ = _finished(launched, name)
        loss = _number(stdout, r"validation loss at the best rate: ([\d.]+)")
        assert loss < math.log(10), (name, loss)
    stdout, _ = _finished(launched, "char_transformer")
    loss = _number(stdout, r"validation loss at the best rate: ([\d.]+)")
    assert loss < _number(stdout, r"a uniform guess would score ([\d.]+)")
    stdout, _ = _finished(launched, "own_train_step")  # its own step, ranked by accuracy
    assert _number(stdout, r"validation accuracy at the best rate: ([\d.]+)") > 0.1
    assert "trained state of seed 0: step 30, 4 modules" in stdout


def test_models_with_state_say_what_they_carry(launched):
    """The ResNet trains with batch statistics and dropout; the NNX transformer with its own
    RNG streams (dropout) carried per lane."""
    stdout, _ = _finished(launched, "resnet_batchnorm")
    assert "called with train=True to train, False to validate" in stdout
    assert "state carried per lane: batch_stats" in stdout
    assert "random streams drawn every step: dropout" in stdout
    stdout, _ = _finished(launched, "char_transformer")
    carried = re.search(r"state carried per lane: (.+)", stdout)
    assert carried and {"RngCount", "RngKey"} <= set(carried.group(1).split(", "))


def test_multi_part_loss_entries_add_up(launched):
    """The recorded auxiliary entries of the best evaluation sum to its scored loss."""
    stdout, _ = _finished(launched, "regression_multiloss")
    total = _number(stdout, r"validation loss at the best rate: ([\d.eE+-]+)")
    mse = _number(stdout, r"\n\s+mse: ([\d.eE+-]+)")
    penalty = _number(stdout, r"\n\s+l1_penalty: ([\d.eE+-]+)")
    assert 0 < penalty < mse
    assert mse + penalty == pytest.approx(total, abs=1e-4 + 1e-3 * total)


def test_schedule_example_selects_by_accuracy(launched):
    """The peak of a warmup-cosine schedule, ranked by validation accuracy, from a source."""
    stdout, _ = _finished(launched, "schedule_accuracy")
    assert "warmup_cosine (linear warmup over 10% of the steps (4 of 40)" in stdout
    assert "validations after steps (20, 40)" in stdout
    assert _number(stdout, r"validation accuracy at the best peak: ([\d.]+)") > 0.5


def test_resumed_sweep_skips_the_finished_stage(launched):
    stdout, _ = _finished(launched, "resumed_sweep")
    stage = _number(stdout, r"rerun resumed from stage (\d+)")
    epoch = _number(stdout, r"rerun resumed from stage \d+, epoch (\d+)")
    assert (stage, epoch) >= (1, 0), "the rerun started over instead of resuming"
    trained = _number(stdout, r"trained (\d+) epochs instead of")
    scratch_epochs = _number(stdout, r"epochs instead of (\d+) from scratch")
    assert trained < scratch_epochs
    assert "third call: finished, 0 epochs trained, same result: True" in stdout


def test_notebook_runs_top_to_bottom(launched):
    _, scratch = _finished(launched, "notebook")
    notebook = json.loads((scratch / "executed.ipynb").read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell.get("execution_count") for cell in code), "a cell did not run"
    outputs = [output for cell in code for output in cell["outputs"]]
    text = "".join(
        "".join(output.get("text", "")) for output in outputs if output["output_type"] == "stream"
    )
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert code[0]["outputs"] == [], "the install cell must do nothing outside Colab"

    assert f"lanes sharded over {DEVICES} device(s)" in text
    rate = _number(text, r"best learning rate: ([\d.eE+-]+)")
    assert math.isfinite(rate) and rate > 0
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    out = scratch / "jaxsweep_digits_quick"
    assert images, "no figure was shown inline"
    assert len(images) == len(list((out / "figures").glob("*.png")))
    assert (out / "report.md").exists() and (out / "result.json").exists()
    assert "resumed from: finished, epochs trained: 0" in text
