"""Strict, deterministic test environment: CPU only, small problems, warnings are errors."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Test programs are tiny: LLVM's optimisation passes cost more than they save, and halving
# compile time keeps the suite inside its budget on 2 cores. Benchmarks never set this.
# Subprocesses started by tests inherit it through the environment.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
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


# Small defaults shared by engine tests: 2 epochs of 6 batches, no early stop.
SMALL = dict(epochs=2, batch_size=32, progress=False, min_improvement=0.0)
