"""The persistent compilation cache: where it goes, who decides, and that a rerun loads from it."""

import json
import os
import subprocess
import sys

import jax
import pytest
from conftest import SMALL, TinyMLP

import jaxsweep
from jaxsweep import _cache

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")


def test_the_argument_wins(tmp_path):
    environ = {"JAXSWEEP_CACHE_DIR": "/elsewhere"}
    choice = _cache.resolve(tmp_path, environ, jax_directory="/jax")
    assert choice == _cache.CacheChoice(str(tmp_path), "argument", True)
    for off in (False, "off", "OFF"):
        assert _cache.resolve(off, environ, "/jax").directory is None


def test_the_environment_variable_comes_next():
    assert _cache.resolve(None, {"JAXSWEEP_CACHE_DIR": "/here"}, "/jax").directory == "/here"
    choice = _cache.resolve(None, {"JAXSWEEP_CACHE_DIR": "off"}, "/jax")
    assert choice.directory is None and choice.source == "environment"


def test_a_cache_configured_for_jax_is_left_as_it_is():
    choice = _cache.resolve(None, {}, jax_directory="/jax")
    assert choice == _cache.CacheChoice("/jax", "jax_config", managed=False)


def test_the_default_is_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    choice = _cache.resolve(None, {}, None)
    assert choice == _cache.CacheChoice(str(tmp_path / "jaxsweep" / "xla"), "default", True)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _cache.default_directory() == os.path.expanduser("~/.cache/jaxsweep/xla")


def test_a_bad_value_fails_before_anything_compiles(blobs):
    with pytest.raises(TypeError, match="compilation_cache"):
        jaxsweep.run(lambda: TinyMLP(), blobs, compilation_cache=3, **SMALL)


def test_a_sweep_writes_into_the_given_folder_and_restores_jax(blobs, tmp_path):
    before = {
        name: getattr(jax.config, name)
        for name in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_compilation_cache_max_size",
        )
    }
    result = jaxsweep.run(
        lambda: TinyMLP(), blobs, stages=1, compilation_cache=tmp_path / "xla", **SMALL
    )
    cached = list((tmp_path / "xla").glob("*-cache"))
    assert len(cached) >= 3  # small programs too, not only those compiling for over 1 s
    assert result.environment["compilation_cache"]["directory"] == str(tmp_path / "xla")
    assert result.environment["compilation_cache"]["source"] == "argument"
    assert {name: getattr(jax.config, name) for name in before} == before


_SWEEP = """
import json, warnings
import flax.linen as nn
import numpy as np
import jaxsweep
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
x = rng.normal(size=(240, 6)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int32)
model = lambda: nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
result = jaxsweep.run(model, (x, y), stages=2, epochs=2, batch_size=32, progress=False)
print(json.dumps(result.environment["compilation_cache"]))
"""


def test_a_second_process_loads_every_program_from_the_cache(tmp_path):
    env = dict(os.environ, JAXSWEEP_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu")

    def sweep() -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _SWEEP], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = sweep(), sweep()
    assert first["source"] == "environment" and first["cache_hits"] == 0
    assert second["programs"] == first["programs"] >= 3
    assert second["cache_hits"] == second["programs"]  # nothing compiled again
    assert second["seconds"] < first["seconds"]
