"""Strict, deterministic test environment: CPU only, small problems, warnings are errors."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The benchmarks are a package of the source tree, not of the installed distribution: their
# tests import them from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tests never write into the user's compilation cache (~/.cache/jaxsweep/xla); the cache's
# own tests pass a temporary folder. Subprocesses started by tests inherit this.
os.environ["JAXSWEEP_CACHE_DIR"] = "off"
# Test programs are tiny: LLVM's optimisation passes cost more than they save, and halving
# compile time keeps the suite inside its budget on 2 cores. Benchmarks never set this.
# Subprocesses started by tests inherit it through the environment.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

from jaxsweep._cores import configured_cpu_devices  # noqa: E402

# One CPU device in this process, whichever test runs first: the jaxsweep command splits an
# unconfigured CPU into one device per core (tests/test_cores.py checks it in new processes).
# Set here, not in the environment, which subprocesses with their own device counts inherit;
# a helper script that imports this file keeps the count its test gave it (XLA_FLAGS).
if configured_cpu_devices() is None:
    jax.config.update("jax_num_cpu_devices", 1)
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402


class TinyMLP(nn.Module):
    """A two-layer classifier small enough to compile in about a second."""

    hidden: int = 16
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes)(nn.relu(nn.Dense(self.hidden)(x)))


def make_classification(n: int = 240, features: int = 6, classes: int = 3, seed: int = 0):
    """Gaussian blobs: learnable, so good and bad learning rates score apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features)) * 2.0
    y = rng.integers(0, classes, size=n).astype(np.int32)
    x = (centres[y] + rng.normal(size=(n, features))).astype(np.float32)
    return x, y


@pytest.fixture(scope="session")
def blobs():
    return make_classification()


@pytest.fixture(scope="session")
def split_blobs(blobs):
    """The blobs with a fixed validation part (the last 48 examples)."""
    x, y = blobs
    return {"train": (x[:192], y[:192]), "val": (x[192:], y[192:])}


def _tiny_loss(params, x, y):
    logits = TinyMLP().apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


_tiny_value_and_grad = jax.jit(jax.value_and_grad(_tiny_loss))  # one compile for every run
_tiny_val_loss = jax.jit(_tiny_loss)


def train_alone(tx, data, *, epochs, batch_size, seed=0):
    """TinyMLP trained with one optax transformation by a plain Python loop over steps.

    No vmap, no scan, no injected hyperparameters, no jaxsweep program: the independent
    reference for a sweep's lanes. Keys follow the documented contract: parameters from
    ``fold_in(fold_in(key(seed), 0), 0)``, epoch ``e``'s batch order from
    ``fold_in(fold_in(fold_in(key(seed), 0), 1), e)``.
    """
    (x, y), (xv, yv) = data["train"], data["val"]
    per_seed = jax.random.fold_in(jax.random.key(seed), 0)
    init_key, data_key = jax.random.fold_in(per_seed, 0), jax.random.fold_in(per_seed, 1)
    params = TinyMLP().init(init_key, x[:1])["params"]
    opt_state = tx.init(params)
    history = {"train_loss": [], "val_loss": [], "grad_norm": []}
    steps = len(x) // batch_size
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x)))
        losses, norms = [], []
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss, grads = _tiny_value_and_grad(params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            losses.append(float(loss))
            norms.append(float(optax.tree.norm(grads)))
        history["train_loss"].append(float(np.mean(losses)))
        history["grad_norm"].append(float(np.mean(norms)))
        history["val_loss"].append(float(_tiny_val_loss(params, xv, yv)))
    return history


# Small defaults shared by engine tests: 2 epochs of 6 batches, one seed, no early stop.
SMALL = dict(epochs=2, batch_size=32, progress=False, min_improvement=0.0, seeds=1)


def two_rate_sweep(data, **kwargs):
    """TinyMLP trained at two rates in one stage (the best lands on an edge: not warned)."""
    import warnings

    import jaxsweep

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(
            lambda: TinyMLP(), data, stages=1, points_per_stage=2, lr_range=(1e-3, 3e-2), **kwargs
        )


def comparable(result: dict) -> dict:
    """A saved result without what legitimately differs between runs: timings, memory, machine."""
    timing = {"seconds", "seconds_per_epoch", "compile_seconds", "memory_bytes", "memory_source"}
    kept = {k: v for k, v in result.items() if k not in {"environment", "setup_seconds", "seconds"}}
    for stages in ("stages", "horizon_stages"):
        kept[stages] = [{k: v for k, v in s.items() if k not in timing} for s in result[stages]]
    return kept


@pytest.fixture(scope="module")
def helper_env(tmp_path_factory):
    """The environment of a helper sweep run in a subprocess: CPU, a compilation cache of the
    test module's own (each run after the first loads its programs)."""
    cache = tmp_path_factory.mktemp("compilation-cache")
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
