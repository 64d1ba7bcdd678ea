"""A CPU's cores as JAX devices, so that the lanes of a stage train in parallel on a CPU.

JAX gives a CPU one device. Every lane strategy then runs a stage's lanes inside programs on
that one device, and XLA's CPU backend runs independent work of a program one piece after
another (its threads only share each operation; a small model's operations keep one core
busy). Split into one device per core, the CPU is used the way a TPU's chips are: the lanes
are sharded over the devices and each device trains its own lanes at the same time, with the
same arithmetic per lane. Measured on 2 idle cores (AMD EPYC, digits, a sweep's stages in
steady state against best-practice sequential code on the same rates;
``benchmarks/engine_costs.py``): a small MLP went from 1.01x on one device to 1.33x-1.50x on
two, a wide one from 0.82x to 0.94x-1.08x, two CNNs from 1.06x-1.14x to 1.20x-1.35x.

JAX fixes the number of CPU devices when its CPU backend starts (the first JAX computation),
so :func:`use_cpu_cores` must run before that, right after ``import jax``. Each device keeps
its own copy of arrays that every lane reads (the training data): in-memory datasets cost
that much host memory per device, which is one reason the default stops at
:data:`MAX_DEFAULT_DEVICES`.
"""

from __future__ import annotations

import numbers
import os

import jax

# The default device count's ceiling: lanes are padded to a multiple of the device count
# (5 rates on 16 devices would train 11 copies) and the shared data is copied per device.
MAX_DEFAULT_DEVICES = 8


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configured_cpu_devices() -> int | None:
    """The CPU device count the user configured (``JAX_NUM_CPU_DEVICES``,
    ``jax.config.update("jax_num_cpu_devices", n)``, or XLA's
    ``--xla_force_host_platform_device_count``); None when JAX would pick (one)."""
    value = jax.config.jax_num_cpu_devices
    if value >= 0:
        return int(value)
    for flag in os.environ.get("XLA_FLAGS", "").split():
        name, _, count = flag.partition("=")
        if name == "--xla_force_host_platform_device_count" and count.isdigit():
            return int(count)
    return None


def use_cpu_cores(count: int | None = None) -> int:
    """Splits this process's CPU into ``count`` JAX devices, so sweeps train lanes in parallel.

    Call it right after ``import jax``, before any JAX computation (JAX fixes the CPU's device
    count when it starts). ``jaxsweep.run`` then spreads each stage's lanes over the devices,
    as it does over the chips of an accelerator; results are the same as on one device (each
    lane's arithmetic is unchanged). On a machine with a GPU or TPU the CPU devices go unused.
    The ``jaxsweep`` command does this itself.

    Args:
      count: CPU devices to make; None for one per usable core, at most
        :data:`MAX_DEFAULT_DEVICES`, unless the user already configured a count
        (``JAX_NUM_CPU_DEVICES`` or XLA's ``--xla_force_host_platform_device_count``), which
        is then kept.

    Returns:
      The number of CPU devices JAX makes.

    Raises:
      TypeError: ``count`` is not an integer.
      ValueError: ``count`` is below 1.
      RuntimeError: JAX has already started its CPU backend with another device count.
    """
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise TypeError(f"count: expected an integer or None, got {type(count).__name__}")
        if count < 1:
            raise ValueError(f"count: need at least 1 CPU device, got {count}")
    configured = configured_cpu_devices()
    if count is None and configured is not None:
        return configured
    wanted = min(usable_cores(), MAX_DEFAULT_DEVICES) if count is None else int(count)
    try:
        jax.config.update("jax_num_cpu_devices", wanted)
    except RuntimeError:
        started = len(jax.local_devices(backend="cpu"))
        if started == wanted:
            return started
        raise RuntimeError(
            f"use_cpu_cores: JAX already started its CPU backend with {started} device(s), "
            f"so it cannot make {wanted}; call jaxsweep.use_cpu_cores() right after "
            f"`import jax`, before any JAX computation, or start Python with "
            f"JAX_NUM_CPU_DEVICES={wanted} in the environment"
        ) from None
    return wanted


def try_use_cpu_cores() -> int | None:
    """:func:`use_cpu_cores` with its default, or None where JAX has already started (the
    command line, called from a process that already computed something, keeps its devices)."""
    try:
        return use_cpu_cores()
    except RuntimeError:
        return None
