"""Result records: neutral names, the older names as aliases, and files of every format.

``data/result_v0.1.0.json`` and ``data/demo_result_v0.1.0.json`` were written by jaxsweep 0.1.0
(format 1, keys ``lr``, ``lrs``, ``best_lr``): a tiny sweep with diverged lanes and two seeds,
and the ``jaxsweep demo`` run. They must keep loading, unchanged in meaning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxsweep
from jaxsweep import _json
from jaxsweep._result import FORMAT_VERSION, from_dict

DATA = Path(__file__).parent / "data"
OLD = DATA / "result_v0.1.0.json"


def _decoded(value) -> float:
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(value, value)


def test_a_result_saved_by_0_1_0_loads_with_every_value(tmp_path):
    raw = json.loads(OLD.read_text())
    assert raw["format_version"] == 1 and "best_lr" in raw  # really the old format
    result = jaxsweep.load(OLD)
    assert result.best_value == raw["best_lr"]
    assert [e.value for e in result.evaluations] == [e["lr"] for e in raw["evaluations"]]
    for evaluation, record in zip(result.evaluations, raw["evaluations"]):
        np.testing.assert_equal(evaluation.score, _decoded(record["score"]))
        np.testing.assert_equal(
            evaluation.seed_scores, [_decoded(v) for v in record["seed_scores"]]
        )
        assert evaluation.diverged == record["diverged"]
    for stage, record in zip(result.stages, raw["stages"]):
        assert stage.values == tuple(record["lrs"]) and stage.best_value == record["best_lr"]
    assert any(math.isinf(e.score) for e in result.evaluations)  # "inf" decoded
    assert any(math.isnan(v) for e in result.evaluations for v in e.seed_scores)  # "nan" too
    assert result.setup_seconds == 0.0  # not recorded then: the time is the stages' alone
    assert result.seconds == pytest.approx(sum(s["seconds"] for s in raw["stages"]))


def test_an_old_result_resaves_in_the_current_format_and_means_the_same(tmp_path):
    old = jaxsweep.load(OLD)
    old.save(tmp_path / "result.json")
    raw = json.loads((tmp_path / "result.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert "best_value" in raw and "best_lr" not in raw
    assert "value" in raw["evaluations"][0] and "lr" not in raw["evaluations"][0]
    assert {"values", "best_value"} <= set(raw["stages"][0]) and "lrs" not in raw["stages"][0]
    assert jaxsweep.load(tmp_path / "result.json") == old


def test_the_older_names_read_the_new_fields_and_cannot_be_set():
    result = jaxsweep.load(OLD)
    stage, evaluation = result.stages[1], result.evaluations[1]
    assert result.best_lr == result.best_value
    assert result.lr_interval == result.value_interval == result.confidence.best.interval
    assert result.refined_lr == result.refined_value == result.confidence.refined.lr
    assert stage.lrs == stage.values and stage.best_lr == stage.best_value
    assert evaluation.lr == evaluation.value
    for record, name in [(result, "best_lr"), (stage, "lrs"), (evaluation, "lr")]:
        with pytest.raises(AttributeError):
            setattr(record, name, 0.5)
    with pytest.raises(TypeError):  # records are built with the new names only
        dataclasses.replace(evaluation, lr=0.5)


def test_a_newer_format_is_refused_with_a_message():
    raw = json.loads(OLD.read_text())
    with pytest.raises(ValueError, match="format_version 3 .* newer jaxsweep"):
        from_dict({**raw, "format_version": 3})


def test_a_file_that_is_not_a_result_says_so(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"format_version": 2, "evaluations": [{"value": 1.0}]}))
    with pytest.raises(ValueError, match="malformed result"):
        jaxsweep.load(path)


def test_the_json_codec_round_trips_non_finite_floats_and_arrays():
    array = np.array([[0.5, np.nan], [np.inf, -np.inf]], np.float32)
    value = {"scalar": np.float32(-np.inf), "array": array, "pair": (1.0, math.nan), 3: "x"}
    text = json.dumps(_json.encode(value), allow_nan=False)  # standard JSON only
    back = json.loads(text)
    assert back["scalar"] == "-inf" and back["pair"] == [1.0, "nan"] and back["3"] == "x"
    assert _json.is_array(back["array"]) and not _json.is_array(back)
    restored = _json.decode_array(back["array"])
    assert restored.dtype == np.float32
    np.testing.assert_array_equal(restored, array)
    assert _json.decode_floats(back["pair"])[0] == 1.0
    assert math.isnan(_json.decode_floats(back["pair"])[1])


def test_reading_a_result_imports_no_jax(tmp_path):
    """``jaxsweep report DIR`` and ``show DIR`` read JSON: they must not pay for importing JAX."""
    shutil.copy(OLD, tmp_path / "result.json")
    script = (
        "import sys, jaxsweep\n"
        "from jaxsweep import cli\n"
        "from jaxsweep.report import markdown, methods_tex\n"
        f"result = jaxsweep.load({str(tmp_path / 'result.json')!r})\n"
        "markdown(result), methods_tex(result)\n"
        f"assert cli.main(['show', {str(tmp_path)!r}]) == 0\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
