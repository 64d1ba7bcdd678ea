"""Lanes over devices: a one-axis mesh, lane padding, placement, and gathering back.

A stage's lanes (values x seeds) are independent, so spreading them over devices needs no
communication inside the epoch program: the per-lane inputs (swept values, keys) and the lane
state are split along their leading axis with ``NamedSharding(mesh, P("lanes"))``, the data is
replicated with ``P()``, and ``jax.jit`` partitions the vmapped program by itself (SPMD). The
same code runs on one device, on several local devices, and on the devices of several hosts
under ``jax.distributed.initialize()``: every process runs the whole sweep (the same stages,
in the same order) and holds the lanes of its own devices.

The lane count must be a multiple of the device count, so a stage is padded with copies of its
last lane; padded lanes are computed but dropped before anything is reported or saved. A
:class:`LaneLayout` owns that for one stage: it pads and places the lanes, and gathers (or
slices) the real lanes back.

Only one process should write files: :func:`is_writer` is true in process 0 alone (and always
in a single-process run). Result files, figures, reports, warnings and the progress bar are the
writer's; Orbax checkpoints are the exception: every process writes the shards of its own
devices' lanes (Orbax coordinates the hosts and writes each array once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._hosts import lost

LANE_AXIS = "lanes"


def is_writer() -> bool:
    """True in the one process that writes results, figures and reports (process 0)."""
    return jax.process_index() == 0


def resolve_devices(devices) -> list:
    """The devices a sweep spreads its lanes over.

    Args:
      devices: None for every device JAX sees (``jax.local_devices()``; under
        ``jax.distributed`` with several processes, ``jax.devices()``, all hosts' devices), or
        a non-empty sequence of distinct ``jax.Device`` objects.

    Returns:
      The devices, in mesh order.

    Raises:
      TypeError: ``devices`` is not None nor a sequence of devices.
      ValueError: it is empty, repeats a device, or (several processes) holds none of this
        process's devices.
    """
    if devices is None:
        return jax.devices() if jax.process_count() > 1 else jax.local_devices()
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
        raise TypeError(
            f"devices: expected None or a list of jax devices, got {type(devices).__name__}"
        )
    devices = list(devices)
    if not devices:
        raise ValueError("devices: the list is empty; pass None to use every device")
    for device in devices:
        if not isinstance(device, jax.Device):
            raise TypeError(
                f"devices: expected jax devices (e.g. jax.devices()), got {type(device).__name__}"
            )
    if len({d.id for d in devices}) != len(devices):
        raise ValueError(f"devices: each device may appear once, got {devices}")
    if not any(d.process_index == jax.process_index() for d in devices):
        raise ValueError(
            f"devices: none of {devices} belongs to process {jax.process_index()}; every "
            "process of a multi-host sweep must hold some of its devices"
        )
    return devices


def lane_mesh(devices: Sequence) -> Mesh:
    """A one-axis mesh named ``"lanes"`` over ``devices``."""
    return Mesh(np.asarray(devices, dtype=object), (LANE_AXIS,))


def lane_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (lane) axis of an array over the mesh."""
    return NamedSharding(mesh, P(LANE_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of the mesh (the data, scalars)."""
    return NamedSharding(mesh, P())


def pad_count(lanes: int, device_count: int) -> int:
    """The smallest multiple of ``device_count`` that holds ``lanes`` lanes."""
    if lanes < 1 or device_count < 1:
        raise ValueError(f"lanes and device_count must be >= 1, got {lanes}, {device_count}")
    return -(-lanes // device_count) * device_count


def pad_lanes(tree, count: int):
    """Extends every array of ``tree`` along axis 0 to ``count`` rows by repeating its last row.

    A repeated lane trains exactly like the one it copies, so it can neither diverge on its own
    nor hold a better score than a real lane; it is dropped before results are collected.
    """

    def pad(array):
        missing = count - array.shape[0]
        if missing < 0:
            raise ValueError(f"cannot pad {array.shape[0]} lanes down to {count}")
        if missing == 0:
            return array
        # host arrays stay on the host: padding them compiles nothing
        xp = np if isinstance(array, np.ndarray) else jax.numpy
        return xp.concatenate([array, xp.repeat(array[-1:], missing, axis=0)])

    return jax.tree.map(pad, tree)


def _global_array(value, sharding: NamedSharding) -> jax.Array:
    """One global array with ``sharding`` from a value every process holds whole."""
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        # typed keys travel as their raw bits and are re-wrapped on the devices
        data = _global_array(jax.random.key_data(value), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    # float64 input becomes float32 unless x64 is enabled, as jnp.asarray would do
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_replicated(tree, mesh: Mesh):
    """Places a whole copy of every array of ``tree`` on every device of the mesh."""
    return jax.tree.map(lambda a: _global_array(a, replicated(mesh)), tree)


@dataclasses.dataclass(frozen=True)
class LaneLayout:
    """Where one stage's lanes live: ``lanes`` real lanes, padded to ``padded``, over ``mesh``.

    Every array that carries lanes (swept values, keys, lane state, metrics) goes through one
    layout: :meth:`place` pads and splits it over the devices, :meth:`gather` brings the real
    lanes back to the host, :meth:`real` drops the padding where the arrays are.

    >>> layout = LaneLayout.over(lane_mesh(jax.devices()[:1]), lanes=3)
    >>> layout.padded, layout.gather(layout.place(np.arange(3.0))).tolist()
    (3, [0.0, 1.0, 2.0])
    """

    mesh: Mesh
    lanes: int  # real lanes: reported and checkpointed
    padded: int  # lanes computed: the next multiple of the device count

    @classmethod
    def over(cls, mesh: Mesh, lanes: int) -> LaneLayout:
        return cls(mesh, lanes, pad_count(lanes, mesh.devices.size))

    @property
    def sharding(self) -> NamedSharding:
        return lane_sharding(self.mesh)

    def place(self, tree):
        """Pads every array of ``tree`` (real or padded lanes) and splits it over the mesh.

        Every process passes the same whole arrays; each keeps the rows of its devices.
        """
        padded = pad_lanes(tree, self.padded)
        return jax.tree.map(lambda a: _global_array(a, self.sharding), padded)

    def real(self, tree):
        """The real lanes of every array of ``tree``, left where they are (padding dropped)."""
        return jax.tree.map(lambda a: a if a.shape[0] == self.lanes else a[: self.lanes], tree)

    def gather(self, tree):
        """Numpy copies of lane-split arrays, padding dropped (gathered across hosts)."""
        if jax.process_count() > 1:
            try:
                tree = multihost_utils.process_allgather(tree, tiled=True)
            except Exception as error:  # a collective fails at once when a peer is gone
                raise lost("gathering the lanes' metrics from every process", error) from error
        else:
            tree = jax.device_get(tree)
        return jax.tree.map(lambda a: np.asarray(a)[: self.lanes], tree)


def first_local(devices: Sequence):
    """The first of ``devices`` that this process drives (for memory statistics)."""
    return next(d for d in devices if d.process_index == jax.process_index())
