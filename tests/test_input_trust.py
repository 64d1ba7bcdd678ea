"""What comes from outside is checked where it enters: result files, disks, data, optimizers.

A result file is refused field by field with one error naming the file and the field; a save
that fails on disk leaves no temporary behind and says what was kept; complex data is refused
before anything compiles; an optimizer whose updates ignore the swept value is recognised
from one traced update.
"""

from __future__ import annotations

import errno
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, TinyMLP, two_rate_sweep
from orbax.checkpoint._src.handlers import json_checkpoint_handler

import jaxsweep
from jaxsweep import _json, _train, cli
from jaxsweep._cache import CompileLog
from jaxsweep._checkpoint import StepStore
from jaxsweep._hosts import Hosts
from jaxsweep._optim import _dependent_outputs, resolve_optimizer, swept_value_reaches_updates

OLD = Path(__file__).parent / "data" / "result_v0.1.0.json"


@pytest.fixture(scope="module")
def record() -> dict:
    """A result record in the current format (the 0.1.0 file read and written again)."""
    return jaxsweep.load(OLD).to_dict()


def written(tmp_path, record, name="result.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


def refused(path) -> str:
    """The one ValueError ``jaxsweep.load`` raises for ``path``, as text (no chained cause)."""
    with pytest.raises(ValueError) as info:
        jaxsweep.load(path)
    error = info.value
    assert type(error) is ValueError
    assert error.__cause__ is None  # no chain of internal errors
    assert error.__context__ is None or error.__suppress_context__
    message = str(error)
    assert str(path) in message and "\n" not in message
    return message


# ----------------------------------------------------------------------------- result files


def _set(record, dotted: str, value) -> dict:
    """A deep copy of ``record`` with ``dotted`` (``config.seeds``, ``evaluations.0.score``)
    set to ``value``, or deleted where ``value`` is ``DELETE``."""
    record = json.loads(json.dumps(record))
    *parents, last = dotted.split(".")
    node = record
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return record


DELETE = object()


@pytest.mark.parametrize(
    "where, value, field, words",
    [
        ("config.seeds", "three", "config.seeds", "expected an integer >= 1, got str 'three'"),
        ("config.seeds", -2, "config.seeds", "expected an integer >= 1, got int -2"),
        ("config.seeds", 2.5, "config.seeds", "expected an integer"),
        ("config.mode", "sideways", "config.mode", "expected 'min' or 'max'"),
        ("config.scale", "cubic", "config.scale", "expected 'log' or 'linear'"),
        ("config.lr_range", [1.0, 0.1], "config.lr_range", "low < high"),
        ("config.validation_fraction", 2, "config.validation_fraction", "between 0 and 1"),
        ("config.expand", "yes", "config.expand", "true or false"),
        ("config", [1, 2], "config", "expected an object"),
        ("config", DELETE, "config", "missing"),
        ("evaluations.1.score", "high", "evaluations[1].score", 'a number or "nan"'),
        ("evaluations.0.value", "inf", "evaluations[0].value", "a finite number"),
        ("evaluations.0.seed_scores", [1.0, None], "evaluations[0].seed_scores[1]", "NoneType"),
        ("evaluations.0.stage", DELETE, "evaluations[0].stage", "missing"),
        ("evaluations.0.diverged", 0, "evaluations[0].diverged", "true or false"),
        ("evaluations.0.val_aux", {"accuracy": "x"}, "evaluations[0].val_aux.accuracy", "str"),
        ("evaluations", {"a": 1}, "evaluations", "expected a list"),
        ("stages.0.memory_bytes", -1, "stages[0].memory_bytes", "integer >= 0"),
        ("stages.0.expansion", "sideways", "stages[0].expansion", "'up' or 'down'"),
        ("best_score", [0.5], "best_score", "got list"),
        ("stop_reason", "bored", "stop_reason", "'completed' or"),
        ("warnings", [3], "warnings[0]", "a string"),
        ("param_count", True, "param_count", "integer"),
    ],
)
def test_a_wrong_field_is_refused_naming_the_file_and_the_field(
    tmp_path, record, where, value, field, words
):
    message = refused(written(tmp_path, _set(record, where, value)))
    assert f": malformed result: {field}: " in message
    assert words in message


def test_every_field_a_sweep_writes_still_loads(tmp_path, record):
    """The checks refuse only what no sweep writes: the 0.1.0 file (format 1, diverged lanes,
    "nan" and "inf" scores) and its current-format copy load unchanged."""
    assert jaxsweep.load(OLD).to_dict() == record
    assert jaxsweep.load(written(tmp_path, record)).to_dict() == record


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"evaluations": [', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not a jaxsweep result"),
    ],
)
def test_a_file_that_is_not_json_or_not_a_result_is_one_error(tmp_path, text, words):
    path = tmp_path / "result.json"
    path.write_text(text)
    assert words in refused(path)


def test_bytes_that_are_not_text_are_one_error(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b'{"evaluations": "\xff\xfe"}')
    assert "not valid JSON (not UTF-8 text" in refused(path)


@pytest.mark.parametrize("depth", [100, 1000, 20000])
def test_absurdly_deep_nesting_is_one_error_naming_the_field(tmp_path, record, depth):
    """Python's parser raises RecursionError near 1000 levels; a shallower excess would fail
    in every recursive reader after it. Both are one ValueError naming where."""
    text = json.dumps(_set(record, "config.x_shape", "DEEP"))
    text = text.replace('"DEEP"', "[" * depth + "]" * depth)
    path = tmp_path / "result.json"
    path.write_text(text)
    message = refused(path)
    assert "config.x_shape[0][0]" in message and f"more than {_json.MAX_DEPTH} levels" in message


def test_the_depth_walk_names_keys_and_positions_from_text_and_from_values():
    assert _json.deep_field({"a": [1, {"b": [[]]}]}, limit=3) == "a[1].b"
    assert _json.deep_field({"a": [1, {"b": 2}], "c": [[]]}, limit=3) is None
    text = '{"x": "[[[[", "a": [1, {"b": [[[' + "]" * 3 + "}]}"
    assert _json._deep_field_in_text(text, limit=3) == "a[1].b"


def test_a_bogus_value_never_reaches_the_report(tmp_path, record, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    written(folder, _set(record, "config.mode", "sideways"))
    assert cli.main(["report", str(folder)]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "config.mode" in error and "sideways" in error
    assert sorted(os.listdir(folder)) == ["result.json"]  # no report.md, methods.tex, figures


# ----------------------------------------------------------------------------- failing disks


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_rename_keeps_the_previous_file_and_leaves_no_temporary(
    tmp_path, record, monkeypatch
):
    result = jaxsweep.load(OLD)
    path = tmp_path / "result.json"
    path.write_text("previous")
    monkeypatch.setattr(os, "replace", _full_disk)
    with pytest.raises(OSError) as info:
        result.save(path)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and info.value.__suppress_context__
    assert str(path) in message and "No space left on device" in message
    assert "the file already there was kept, unchanged" in message
    assert os.listdir(tmp_path) == ["result.json"] and path.read_text() == "previous"


class _FullFile:
    """A file whose writes fail after the first bytes, as on a disk that fills up."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, text):
        self.handle.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from jaxsweep import _result

    result = jaxsweep.load(OLD)
    monkeypatch.setattr(_result, "open", lambda *a, **k: _FullFile(open(*a, **k)), raising=False)
    path = tmp_path / "out" / "result.json"
    with pytest.raises(OSError, match="nothing was written") as info:
        result.save(path)
    assert str(path) in str(info.value) and info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "out") == []  # the partial temporary is gone
    monkeypatch.undo()
    result.save(path)  # the same call works once the disk does
    assert jaxsweep.load(path) == result


def _failing_progress_saves(monkeypatch, after: int) -> None:
    """Orbax's lowest write of a checkpoint's ``progress`` item fails (disk full) from the
    ``after + 1``-th call on."""
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn
    calls = {"n": 0}

    async def save_fn(self, x, directory):
        calls["n"] += 1
        if calls["n"] > after:
            _full_disk()
        return await original(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save_fn)


def _checkpoint_error(error: OSError, directory) -> str:
    message = str(error)
    assert type(error) is OSError and error.errno == errno.ENOSPC
    assert error.__suppress_context__ and error.__cause__ is None  # no chain of threads
    assert f"saving a checkpoint in {directory} failed" in message
    assert "No space left on device" in message and "\n" not in message
    return message


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("surfaces", ["next save", "close"])
def test_a_checkpoint_save_on_a_full_disk_is_one_error_naming_what_is_kept(
    tmp_path, monkeypatch, surfaces
):
    directory = str(tmp_path / "ckpt")
    _failing_progress_saves(monkeypatch, after=1)
    store = StepStore(directory, Hosts(0, 1, "jaxsweep/test"))
    try:
        store.save(1, {"fingerprint": {}, "stage": 0}, None)
        store.save(2, {"fingerprint": {}, "stage": 0}, None)  # fails in the background
        with pytest.raises(OSError) as info:
            if surfaces == "next save":
                store.save(3, {"fingerprint": {}, "stage": 0}, None)
            else:
                store.close()
    finally:
        store.close()  # once reported, closing does not raise it again
    message = _checkpoint_error(info.value, directory)
    assert "its latest complete step, 1, is kept, and a rerun of the same call resumes" in message
    assert sorted(n for n in os.listdir(directory) if n[0].isdigit()) == ["1"]  # no temporary


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_sweep_whose_checkpoint_disk_fills_up_fails_with_that_one_error(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _failing_progress_saves(monkeypatch, after=1)  # step 1 (after epoch 1) is written
    with pytest.raises(OSError) as info:
        two_rate_sweep(
            (np.ones((40, 6), np.float32), np.zeros(40, np.int32)),
            **SMALL,
            checkpoint_dir=str(directory),
            checkpoint_every_seconds=0,
        )
    assert "its latest complete step, 1, is kept" in _checkpoint_error(info.value, directory)


# ----------------------------------------------------------------------------- complex data


@pytest.fixture
def no_compiling(monkeypatch):
    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))


def _complex_data(case, x, y):
    if case == "x":
        return (x.astype(np.complex64), y)
    if case == "y":
        return (x, y.astype(np.complex128))
    if case == "several inputs":
        return ((x, x.astype(np.complex64)), y)
    return {"train": (x, y), "val": (x + 1j * x, y)}


@pytest.mark.parametrize(
    "case, name",
    [
        ("x", "data x"),
        ("y", "data y"),
        ("several inputs", "data x[1]"),
        ("val", "val x"),
    ],
)
def test_complex_data_is_refused_before_anything_compiles(no_compiling, blobs, case, name):
    data = _complex_data(case, *blobs)
    with pytest.raises(ValueError) as info:
        jaxsweep.run(lambda: TinyMLP(), data, **SMALL)
    message = str(info.value)
    assert message.startswith(f"data: {name} is complex (dtype complex")
    assert "imaginary part would be lost" in message


# ----------------------------------------------------------------------------- optimizers

PARAMS = {
    "Dense_0": {"kernel": jax.ShapeDtypeStruct((6, 16), jnp.float32), "bias": np.zeros(16)},
    "Dense_1": {"kernel": jax.ShapeDtypeStruct((16, 3), jnp.bfloat16)},
}


def _ignores_its_rate(learning_rate):
    return optax.chain(optax.scale_by_adam(), optax.scale(-1e-3))


@pytest.mark.parametrize(
    "factory, hyperparam, reaches",
    [
        (optax.adam, "learning_rate", True),
        (optax.sgd, "learning_rate", True),
        (functools.partial(optax.sgd, momentum=0.9), "learning_rate", True),
        (functools.partial(optax.adamw, 1e-3), "weight_decay", True),
        (functools.partial(optax.adam, 1e-3), "b1", True),
        (lambda learning_rate: optax.adam(1e-3), "learning_rate", False),
        (_ignores_its_rate, "learning_rate", False),
    ],
    ids=["adam", "sgd", "momentum", "adamw-decay", "adam-b1", "fixed-adam", "fixed-scale"],
)
def test_whether_the_swept_value_reaches_the_updates(factory, hyperparam, reaches):
    tx = resolve_optimizer(factory, hyperparam)
    with CompileLog() as log:
        assert swept_value_reaches_updates(tx, PARAMS, hyperparam) is reaches
    assert log.programs == 0  # traced, never compiled


def test_a_schedule_does_not_hide_a_rate_that_is_used_or_one_that_is_not():
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    used = resolve_optimizer(optax.sgd, "learning_rate", schedule)
    unused = resolve_optimizer(lambda learning_rate: optax.sgd(0.1), "learning_rate", schedule)
    assert swept_value_reaches_updates(used, PARAMS, "learning_rate")
    assert not swept_value_reaches_updates(unused, PARAMS, "learning_rate")


def test_the_dependency_walk_follows_the_value_into_inner_programs():
    """Each inner program takes the value, and only some of its outputs use it: an equation
    read as a whole would mark them all."""

    def program(v, x):
        called = jax.jit(lambda a, b: (a * 2, a * b))(x, v)
        chosen = jax.lax.cond(x[0] > 0, lambda a, b: (a * 2, a * b), lambda a, b: (a, a), x, v)
        by_index = jax.lax.cond(v > 0, lambda a: a * 2, lambda a: a + 1, x)

        def step(carry, xi):  # v reaches the first carry, then the second, then the output
            first, second, free = carry
            return (xi * v, first, free + xi), second

        (first, second, free), out = jax.lax.scan(step, (0.0, 0.0, 0.0), x)
        _, scaled, doubled = jax.lax.while_loop(
            lambda s: s[0] < 3, lambda s: (s[0] + 1, s[1] * v, s[2] * 2), (0, 1.0, x)
        )
        counted = jax.lax.while_loop(lambda s: s[0] < v, lambda s: (s[0] + 1, s[1] * 2), (0.0, x))
        return (*called, *chosen, by_index, first, second, free, out, scaled, doubled, counted[1])

    jaxpr = jax.make_jaxpr(program)(1.0, jnp.ones(3)).jaxpr
    names = "called chosen by_index first second free out scaled doubled counted".split()
    names[0:2] = ["called[0]", "called[1]", "chosen[0]", "chosen[1]"]
    got = dict(zip(names, _dependent_outputs(jaxpr, [True, False]), strict=True))
    assert {name for name, reached in got.items() if reached} == {
        "called[1]",
        "chosen[1]",
        "by_index",
        "first",
        "second",
        "out",
        "scaled",
        "counted",
    }


@pytest.mark.parametrize(
    "factory",
    [
        lambda learning_rate: optax.adam(1e-3),
        lambda learning_rate: optax.chain(optax.scale_by_adam(), optax.scale(-1e-3)),
    ],
)
def test_a_factory_that_ignores_the_swept_value_fails_before_anything_compiles(
    factory, monkeypatch
):
    from conftest import make_classification

    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(TypeError, match="never use 'learning_rate'"):
        jaxsweep.run(lambda: TinyMLP(), make_classification(), optimizer=factory, **SMALL)


class _ComplexSource:
    """A random-access source (len + getitem) whose inputs are complex."""

    def __init__(self, n: int = 64):
        self.x = (np.arange(n * 6).reshape(n, 6) * (1 + 1j)).astype(np.complex64)
        self.y = (np.arange(n) % 3).astype(np.int32)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_a_source_with_complex_inputs_is_refused_before_anything_compiles(monkeypatch):
    from conftest import make_classification

    monkeypatch.setattr(_train, "make_programs", lambda *a, **k: pytest.fail("compiled"))
    x_val, y_val = make_classification(48)
    data = {"train": _ComplexSource(), "val": (x_val, y_val)}
    with pytest.raises(ValueError, match="train source's x is complex"):
        jaxsweep.run(lambda: TinyMLP(), data, **{**SMALL, "batch_size": 16})
