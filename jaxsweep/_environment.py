"""Where a sweep ran: backend, devices and library versions, for results and benchmarks."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import jax

_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint", "jaxsweep")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else the platform's word)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def describe(devices) -> dict:
    """A JSON-ready description of the machine and the ``devices`` a sweep used."""
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions(),
    }
