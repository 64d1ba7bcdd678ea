"""Crash-safe resume: Orbax checkpoints of the running stage, and the sweep's history as JSON.

A sweep killed at any moment (preempted TPU, shared GPU, Ctrl-C, even in the middle of writing
a checkpoint) and rerun with the same call resumes from its latest complete checkpoint and
returns exactly what an uninterrupted run returns. That holds because nothing random depends
on how often something ran: initialisation keys and batch orders derive from (seed, epoch),
the next stage's values from the history of scores (a pure function), so the only state worth
saving is the running stage's lanes and what the finished stages found.

One checkpoint is one Orbax step directory with two items:

- ``lanes`` (only while a stage is running): the stage's lanes of parameters, optimizer
  states and constants, the raw bits of their random keys, their swept values (all as the
  devices hold them, padding included) and the ``(stage, epoch)`` counters;
- ``progress`` (JSON): the configuration fingerprint, the counters, the finished stages as a
  partial :class:`~jaxsweep.SweepResult`, the running stage's per-epoch metrics, and, once the
  sweep is over, its result.

The step number is ``stage * epochs + epochs done``: it grows with the work done and names
every point once. Orbax writes a step into a temporary directory and renames it when complete,
so a killed save leaves a temporary directory (removed here) and never a half step; a step
that still fails to read (a file deleted, a disk fault) is moved aside, with a warning, and the
previous one is used. Only the latest two steps are kept.

Several processes (``jax.distributed``) save through Orbax's multi-process protocol: every
process writes the shards of its own devices' lanes, process 0 writes the JSON item, and
process 0 renames the step into place only after every process has written its part, so a
step is complete only when all processes committed it. Everything else on disk is done by
process 0 alone (removing temporary directories, setting damaged steps aside, warnings); it
chooses the step to resume from and the others follow (:mod:`jaxsweep._hosts`). A resumed
run reads the lanes back to the host whole, so any number of processes and devices can
resume any checkpoint.

The directory is jaxsweep's alone. A new or empty one gets a marker file,
``jaxsweep-checkpoint.json`` (with a format number). A directory that is not empty and has
no marker is refused with a ValueError before anything trains, and nothing in it is created,
renamed or deleted (a dataset of class folders ``0/``, ``1/`` would otherwise look like
damaged steps), unless its content shows an earlier version of jaxsweep wrote it: every entry
a step holding this package's ``progress`` item, a temporary or a set-aside step. Such a
directory is adopted (marked) and resumed. So ``resume="overwrite"`` only ever deletes
jaxsweep's own steps.

One sweep writes a directory at a time: its writer (process 0) holds an exclusive ``flock``
on ``jaxsweep-checkpoint.lock`` from opening to close, the file naming its pid and host
(empty once released). A second sweep is refused at once with :class:`CheckpointInUseError`
naming them. The kernel drops the lock with its process, killed or not, so it is never left
stuck.

Every saved step records SHA-256 checksums of its lane arrays, block by block, in its
``progress`` item (each process hashes the shards it saves; process 0 records them all). A
restore hashes what it read back: a step whose bytes changed on disk is set aside like any
other damaged step, so a flipped bit never resumes silently. Steps saved by earlier versions
carry no checksums and are read as before.

Limits: the lock is advisory (it keeps jaxsweep sweeps apart, not other programs) and needs
POSIX ``fcntl`` (without it nothing is locked); two sweeps on different hosts sharing a
network directory are kept apart only where that file system's ``flock`` works across hosts.
The directory is a local or mounted path that every process sees. The checksums guard the
lane arrays; the JSON ``progress`` item must parse and match the fingerprint. The fingerprint
sees every setting, the data's content, the model's parameter shapes and the names of the loss
and optimizer, not the body of a function whose name and shapes stay the same.

Pieces, from the disk up: :func:`_prepare` (whether the directory is jaxsweep's, its lock
and marker), :class:`StepStore` (the Orbax directory: read, save, set a damaged step aside;
no sweep logic), :func:`lane_checksums` and :func:`check_checksums` (a step's lanes as saved
and as read back), :func:`inspect_steps` and :func:`readable_steps` (this sweep's steps as
the writer finds them, and the policy for another sweep's), :func:`restore` (a step back into
a :class:`ResumePoint`, its lanes shaped by a :class:`LaneTemplate` the driver hands over as
data), and :class:`SweepCheckpoints`, the driver's view: when to save, what to store, where
to resume.

All Orbax I/O of the package lives in this module; the pure core never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from . import _json
from ._history import History, Running
from ._hosts import Hosts, differences, lost
from ._result import SweepResult, from_dict
from ._sharding import LaneLayout
from ._train import SegmentMetrics
from ._warnings import warn

CHECKPOINT_FORMAT = 1
MARKER = "jaxsweep-checkpoint.json"  # says that a directory is jaxsweep's checkpoint directory
MARKER_FORMAT = 1
LOCK = "jaxsweep-checkpoint.lock"  # held (flock) by the one sweep writing the directory
RESUME_MODES = ("auto", "require", "overwrite")
KEEP = 2  # the latest complete step and the one before it, in case the latest is damaged
_HASH_WHOLE_BYTES = 256 << 20  # data up to this size is hashed whole, larger data is sampled
_HASH_SAMPLES = 4096
_HASH_SAMPLE_BYTES = 16 << 10


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was set aside, or another sweep's checkpoints were replaced."""


class ConfigurationMismatchError(ValueError):
    """``checkpoint_dir`` holds checkpoints of a sweep with a different configuration."""


class CheckpointInUseError(RuntimeError):
    """Another live sweep holds ``checkpoint_dir`` (its lock file is locked)."""


# ----------------------------------------------------------------------------- arguments


@dataclasses.dataclass(frozen=True)
class CheckpointArgs:
    """``run``'s checkpoint arguments, checked: what :class:`SweepCheckpoints` opens."""

    directory: str | None  # absolute path, or None for no checkpoints
    resume: str  # "auto" | "require" | "overwrite"
    every_seconds: float  # least time between two saves inside a stage


def check_arguments(checkpoint_dir, resume, every_seconds) -> CheckpointArgs:
    """Validates the checkpoint arguments of ``run`` (messages name the argument)."""
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint_dir: expected a path or None, got {type(checkpoint_dir).__name__}"
        )
    if resume not in RESUME_MODES:
        raise ValueError(f"resume: expected one of {RESUME_MODES}, got {resume!r}")
    if isinstance(every_seconds, bool) or not isinstance(every_seconds, numbers.Real):
        raise TypeError(
            f"checkpoint_every_seconds: expected a number, got {type(every_seconds).__name__}"
        )
    if not every_seconds >= 0 or math.isinf(every_seconds):
        raise ValueError(f"checkpoint_every_seconds: must be finite and >= 0, got {every_seconds}")
    if checkpoint_dir is None:
        return CheckpointArgs(None, resume, float(every_seconds))
    if os.fspath(checkpoint_dir) == "":
        raise ValueError(
            "checkpoint_dir: an empty path; pass the folder to keep the checkpoints in (a new "
            "or empty one, or one jaxsweep wrote), or None for no checkpoints"
        )
    return CheckpointArgs(os.path.abspath(os.fspath(checkpoint_dir)), resume, float(every_seconds))


# ----------------------------------------------------------------------------- fingerprint


def content_digest(tree) -> str:
    """A content hash of the arrays of a pytree: whole up to 256 MiB, sampled beyond."""
    digest = hashlib.blake2b(digest_size=16)
    for array in jax.tree.leaves(tree):
        if hasattr(array, "digest"):  # a training source: never read whole
            digest.update(array.digest())
            continue
        array = np.asarray(array)
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        digest.update(f"{array.dtype}{array.shape}".encode())
        if raw.size <= _HASH_WHOLE_BYTES:
            digest.update(raw.data)
        else:
            starts = np.linspace(0, raw.size - _HASH_SAMPLE_BYTES, _HASH_SAMPLES).astype(np.int64)
            for start in starts:
                digest.update(raw[start : start + _HASH_SAMPLE_BYTES].data)
    return digest.hexdigest()


def fingerprint(record: dict[str, Any], split: Sequence[np.ndarray], abstract_params) -> dict:
    """What must match for a checkpoint to be resumed: a flat, JSON-ready mapping.

    Args:
      record: the result's ``config`` record (every argument that shapes the sweep).
      split: the host data ``(x_train, y_train, x_val, y_val)`` after the split (inputs may
        be tuples or dicts of arrays).
      abstract_params: one lane's parameters as shapes (``jax.eval_shape`` of the init).
    """
    names = ("x_train", "y_train", "x_val", "y_val")

    def described(part):
        return jax.tree.map(lambda a: f"{a.dtype}{tuple(a.shape)}", part)

    shapes = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    layout = ";".join(
        f"{jax.tree_util.keystr(path)}:{leaf.dtype}{tuple(leaf.shape)}" for path, leaf in shapes
    )
    fields = {f"config.{key}": value for key, value in record.items()}
    fields["data.arrays"] = {n: described(a) for n, a in zip(names, split, strict=True)}
    fields["data.content"] = content_digest(tuple(split))
    fields["model.parameters"] = hashlib.blake2b(layout.encode(), digest_size=8).hexdigest()
    return json.loads(json.dumps(_json.encode(fields)))  # tuples become lists, as read back


# ----------------------------------------------------------------------------- JSON


def _metrics_to_json(metrics: SegmentMetrics) -> dict:
    return _json.encode(jax.tree.map(np.asarray, metrics._asdict()))


def _metrics_from_json(encoded: dict) -> SegmentMetrics:
    def decode(value):
        if _json.is_array(value):
            return _json.decode_array(value)
        return {k: decode(v) for k, v in value.items()}

    renamed = {"grad_norm_mean": "grad_norm"}  # the name a running stage was saved with before
    return SegmentMetrics(
        **{renamed.get(name, name): decode(value) for name, value in encoded.items()}
    )


def _running_to_json(running: Running) -> dict:
    return {
        "values": _json.encode(list(running.values)),
        "epoch_metrics": [_metrics_to_json(m) for m in running.epoch_metrics],
        "seconds_per_epoch": list(running.seconds_per_epoch),
        "seconds": running.seconds,
        "compile_seconds": running.compile_seconds,
    }


def _running_from_json(record: dict) -> Running:
    return Running(
        values=_json.decode_floats(record["values"]),
        epoch_metrics=tuple(_metrics_from_json(m) for m in record["epoch_metrics"]),
        seconds_per_epoch=tuple(record["seconds_per_epoch"]),
        seconds=float(record["seconds"]),
        compile_seconds=float(record["compile_seconds"]),
    )


# ----------------------------------------------------------------------------- lane state


class LaneTemplate(NamedTuple):
    """What restoring a running stage needs to know about this sweep's lanes (data only).

    Every stage of a sweep has the same lanes, so one template serves any resume point.
    """

    state: Any  # one stage's lane state as shapes (jax.ShapeDtypeStruct), real lanes only
    init_keys: np.ndarray  # (lanes, ...) raw bits of the lanes' initialisation keys
    data_keys: np.ndarray  # (lanes, ...) raw bits of the lanes' batch-order keys
    layout: LaneLayout  # how a restored state is padded and placed


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a rerun starts: after ``epoch`` epochs of stage ``stage``."""

    step: int
    stage: int  # the stage to run (or continue)
    epoch: int  # epochs of that stage already trained (0: start it)
    history: History  # the finished stages
    running: Running | None  # the stage's partial record, when ``epoch > 0``
    lanes: Any  # its lane state: host arrays of the real lanes, then padded and placed
    lane_strategy: str | None = None  # the strategy the sweep's lanes ran (None: not saved)


def _lanes_item(state, inputs, stage: int, epoch: int) -> dict:
    """The ``lanes`` item: state, random keys (raw bits), swept values, counters.

    The arrays go to Orbax as the devices hold them, padding included, so every process
    writes the shards of its own devices and nothing is gathered (slicing the padding off
    would turn them into whole copies that one process writes alone). Restoring drops it.
    """
    keys = {"init_keys": inputs.init_keys, "data_keys": inputs.data_keys}
    return {
        "state": state,
        "keys": {name: jax.random.key_data(k) for name, k in keys.items()},
        "values": inputs.values,
        "counters": np.asarray([stage, epoch], np.int32),
    }


def _restore_target(template: LaneTemplate, stage: int, epoch: int, saved_lanes: int) -> dict:
    """The ``lanes`` item as host arrays of ``saved_lanes`` rows (as the saving run padded).

    Host arrays, not device arrays: any number of processes and devices can read them.
    """

    def target(leaf):  # np.empty commits no memory; Orbax only reads its shape and dtype
        return np.empty((saved_lanes, *leaf.shape[1:]), leaf.dtype)

    keys = {"init_keys": template.init_keys, "data_keys": template.data_keys}
    return {
        # the state's tree brings back the optax state types
        "state": jax.tree.map(target, template.state),
        "keys": {name: target(k) for name, k in keys.items()},
        "values": target(jax.ShapeDtypeStruct((saved_lanes,), np.float32)),
        "counters": np.asarray([stage, epoch], np.int32),
    }


def _check_restored(restored: dict, template: LaneTemplate, stage, epoch, values) -> None:
    """Raises when the saved lanes (padding dropped) are not this sweep's lanes at this point."""
    counters = np.asarray(restored["counters"]).tolist()
    if counters != [stage, epoch]:
        raise ValueError(f"lanes record stage/epoch {counters}, progress says {stage}/{epoch}")
    for name in ("init_keys", "data_keys"):
        if not np.array_equal(np.asarray(restored["keys"][name]), getattr(template, name)):
            raise ValueError(f"the saved {name} random keys differ from this sweep's")
    expected = np.repeat(np.asarray(values, np.float32), template.layout.lanes // len(values))
    if not np.array_equal(np.asarray(restored["values"]), expected):
        raise ValueError("the saved lane values differ from this stage's")


def lane_checksums(item: dict, hosts: Hosts, step: int) -> dict[str, list]:
    """SHA-256 checksums of the ``lanes`` item as it is saved, for the ``progress`` record.

    Each process hashes the blocks it holds (its devices' shards of an array, each stored
    block once: replicas are left to the process holding replica 0), on the host; the
    processes then pool them, so the record covers every block of every array. Returns
    ``{leaf path: [[index, sha256], ...]}``, an index being ``[[start, stop], ...]`` per axis.
    """
    own: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(item)[0]:
        blocks = own.setdefault(jax.tree_util.keystr(path), [])
        if isinstance(leaf, jax.Array):
            for shard in leaf.addressable_shards:
                if shard.replica_id == 0:
                    index = _index_record(shard.index, leaf.shape)
                    blocks.append([index, _block_digest(np.asarray(shard.data))])
        else:  # a host array (the counters): every process has it whole
            leaf = np.asarray(leaf)
            blocks.append([[[0, n] for n in leaf.shape], _block_digest(leaf)])
    if hosts.count == 1:
        return own
    pooled: dict[str, dict] = {}
    for said in hosts.exchange(f"checksums of step {step}", json.dumps(own)):
        for name, blocks in json.loads(said).items():
            for index, digest in blocks:
                pooled.setdefault(name, {}).setdefault(json.dumps(index), [index, digest])
    return {name: sorted(blocks.values()) for name, blocks in pooled.items()}


def check_checksums(restored: dict, checksums: dict[str, list]) -> None:
    """Raises when the restored ``lanes`` item (host arrays, padding included) is not what
    was saved: a block whose bytes changed on disk, or a leaf without its checksums."""
    leaves = {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]
    }
    if set(leaves) != set(checksums):
        changed = sorted(set(leaves) ^ set(checksums))
        raise ValueError(f"lanes: the saved checksums name other arrays ({', '.join(changed)})")
    for name, blocks in checksums.items():
        array = np.asarray(leaves[name])
        if sum(math.prod(b - a for a, b in index) for index, _ in blocks) != array.size:
            raise ValueError(f"lanes: the saved checksums of {name} do not cover it")
        for index, digest in blocks:
            block = array[tuple(slice(a, b) for a, b in index)]
            if _block_digest(block) != digest:
                where = "" if not index else f" (rows {index[0][0]}:{index[0][1]})"
                raise ValueError(
                    f"lanes: checksum mismatch, {name}{where} changed on disk after it was saved"
                )


def _index_record(index: tuple, shape: tuple) -> list[list[int]]:
    return [list(part.indices(size)[:2]) for part, size in zip(index, shape, strict=True)]


def _block_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype}{tuple(array.shape)}".encode())
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the directory


class StepStore:
    """The Orbax steps of one directory: read, save, set aside, delete. No sweep logic.

    Opening removes what killed saves left (Orbax's temporary step directories). With several
    processes every method is called by all of them: saves and deletions follow Orbax's
    multi-process protocol, and what touches the directory outside it (removing temporary
    directories, setting a step aside) is done by the writer while the others wait. Reading
    is done by each process alone, with no meeting.
    """

    def __init__(self, directory: str, hosts: Hosts):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers

        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"checkpoint_dir: {directory} exists and is not a directory")
        self.directory, self._hosts, self._ocp = directory, hosts, ocp
        self._manager, self._lock = None, None
        self._save_failed = False  # a save failed on disk and was reported

        def prepare() -> str:  # the writer alone: refuse, lock, mark, clean
            self._lock = _prepare(directory)
            return directory

        hosts.writer_says("open checkpoint_dir", prepare)
        try:
            self._manager = ocp.CheckpointManager(
                directory,
                item_names=("lanes", "progress"),
                options=ocp.CheckpointManagerOptions(
                    preservation_policy=checkpoint_managers.LatestN(KEEP),
                    enable_async_checkpointing=True,
                    create=False,  # the writer made it
                    multiprocessing_options=_multiprocessing_options(ocp, hosts),
                ),
            )
        except BaseException:
            self._release()
            raise

    def steps(self) -> list[int]:
        """The complete steps, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def reload(self) -> None:
        """Sees the steps as they are on disk now (after the writer set one aside)."""
        self._manager.reload()

    def read_progress(self, step: int) -> dict:
        from etils import epath

        handler = self._ocp.handlers.JsonCheckpointHandler()
        progress = handler.restore(epath.Path(self.directory, str(step), "progress"))
        if not isinstance(progress, dict) or "fingerprint" not in progress:
            raise ValueError("no jaxsweep progress record")
        return progress

    def read_lanes(self, step: int, target: Callable[[int], dict]) -> dict:
        """The step's ``lanes`` item as host arrays; ``target(rows)`` describes it, given how
        many lanes (padding included) the saving run wrote."""
        from etils import epath

        item = os.path.join(self.directory, str(step), "lanes")
        _verify_arrays(item)  # first: Orbax's own readers flood errors on a damaged item
        handler = self._ocp.StandardCheckpointHandler()
        rows = handler.metadata(epath.Path(item)).tree["values"].shape[0]
        args = self._ocp.args.StandardRestore(target(int(rows)))
        return handler.restore(epath.Path(item), args=args)

    def save(self, step: int, progress: dict, lanes_item: dict | None) -> None:
        """Starts an asynchronous save of ``progress`` (JSON) and, if given, the lanes.

        Raises:
          OSError: this save, or the previous one finishing in the background, failed on disk
            (full, read-only): one line naming the directory and the latest complete step it
            keeps. The unfinished step is removed.
        """
        ocp = self._ocp
        items = {"progress": ocp.args.JsonSave({"format": CHECKPOINT_FORMAT, **progress})}
        if lanes_item is not None:
            items["lanes"] = ocp.args.StandardSave(lanes_item)
        with self._meeting(f"saving checkpoint step {step}"):
            if step in self._manager.all_steps():  # only after a damaged step was set aside
                self._manager.delete(step)
            with self._disk_errors():  # this save's, or the previous one's, surfacing here
                self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def set_aside(self, step: int, reason: str) -> None:
        """Moves a step that cannot be read to ``<step>.damaged``: the writer, with a warning."""
        self._hosts.writer_says(f"set aside step {step}", lambda: self.move_aside(step, reason))
        self._manager.reload()

    def move_aside(self, step: int, reason: str) -> str:
        """:meth:`set_aside` in this process alone (the writer, while the others wait)."""
        source = os.path.join(self.directory, str(step))
        target, suffix = f"{source}.damaged", 1
        while os.path.exists(target):
            suffix += 1
            target = f"{source}.damaged-{suffix}"
        os.replace(source, target)
        warn(
            f"checkpoint_dir: step {step} of {self.directory} could not be read ({reason}); "
            f"moved it to {target}; the previous complete checkpoint is used instead, if there "
            "is one",
            CheckpointWarning,
        )
        return target

    def delete_all(self) -> None:
        with self._meeting("deleting checkpoints"):
            for step in self._manager.all_steps():
                self._manager.delete(step)
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending saves to be complete on disk, then lets the directory go (safe
        to call twice)."""
        reported = self._save_failed  # close runs while a save's failure propagates
        try:
            if self._manager is not None:
                manager, self._manager = self._manager, None
                with self._meeting("completing the last checkpoint save"):
                    with self._disk_errors():
                        manager.wait_until_finished()
                    manager.close()
        except OSError:
            if not reported:
                raise  # else: a later sign of the failure already reported
        finally:
            self._release()

    @contextlib.contextmanager
    def _disk_errors(self):
        """An asynchronous save that failed on disk (full, read-only, gone) as one short
        OSError naming the directory and what it keeps, instead of Orbax's chain of threads."""
        try:
            yield
        except Exception as error:
            if not _is_disk_error(error):
                raise
            self._save_failed = True
            with contextlib.suppress(OSError):
                if self._hosts.count == 1:  # the failed save's unfinished step: space back
                    _remove_temporary_steps(self.directory)
            try:
                steps = sorted(int(n) for n in os.listdir(self.directory) if _STEP.fullmatch(n))
            except OSError:
                steps = []
            kept = (
                f"its latest complete step, {steps[-1]}, is kept, and a rerun of the same call "
                "resumes from it"
                if steps
                else "it holds no complete step, so a rerun starts over"
            )
            message = (
                f"checkpoint_dir: saving a checkpoint in {self.directory} failed "
                f"({_reason(error)}); {kept}. Free space (or fix the directory) and rerun"
            )
            code = getattr(error, "errno", None)
            raise (OSError(code, message) if code else OSError(message)) from None

    def _release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    @contextlib.contextmanager
    def _meeting(self, what: str):
        """Orbax's barriers fail this way when another process is gone."""
        try:
            yield
        except (jax.errors.JaxRuntimeError, TimeoutError) as error:
            if self._hosts.count == 1:
                raise
            raise lost(what, error) from error


def _multiprocessing_options(ocp, hosts: Hosts):
    """Process 0 is Orbax's primary host. Naming every process as active makes Orbax meet
    through the coordination service (barriers with timeouts) rather than collectives."""
    if hosts.count == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(
        primary_host=0,
        active_processes=set(range(hosts.count)),
        barrier_sync_key_prefix=hosts.namespace.replace("/", "-"),
    )


def _prepare(directory: str) -> _DirectoryLock:
    """The writer's opening of the directory: refuses one that is not jaxsweep's, takes the
    lock, marks a new (or adopted) directory, removes Orbax's unfinished temporary step
    directories. Returns the held lock.

    Nothing is created, renamed or deleted in a directory that is refused.
    """
    _ownership(directory)  # before the lock file is created in it
    os.makedirs(directory, exist_ok=True)
    lock = _DirectoryLock(directory)
    try:
        if _ownership(directory) != "marked":  # again: another sweep may have come first
            _write_marker(directory)
        _remove_temporary_steps(directory)
    except BaseException:
        lock.release()
        raise
    return lock


def _remove_temporary_steps(directory: str) -> None:
    """Removes Orbax's unfinished step directories (a killed or failed save's)."""
    for name in os.listdir(directory):
        if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


# what a full, read-only or vanished disk says through Orbax and TensorStore, whose errors are
# not always OSErrors
_DISK_ERROR = re.compile(
    r"No space left|ENOSPC|Disk quota|EDQUOT|Read-only file system|EROFS|Input/output error"
)


def _is_disk_error(error: BaseException) -> bool:
    if isinstance(error, TimeoutError):  # a barrier's: another process is gone
        return False
    return isinstance(error, OSError) or bool(_DISK_ERROR.search(str(error)))


_STEP = re.compile(r"\d+")
_TEMPORARY = re.compile(r"\d+\.orbax-checkpoint-tmp.*")  # a save killed before its rename
_SET_ASIDE = re.compile(r"\d+\.damaged(-\d+)?")


def _ownership(directory: str) -> str:
    """Whether jaxsweep may use ``directory`` as its checkpoint directory.

    Returns ``"new"`` (missing or empty), ``"marked"`` (it carries the marker) or
    ``"adopted"`` (written by an earlier version, which set no marker: every entry is a step
    of this package, holding its ``progress`` item, or what its saves and set-asides left).
    Raises a ValueError naming ``checkpoint_dir`` for anything else, before anything in the
    directory is touched.
    """
    if not os.path.exists(directory):
        return "new"
    names = set(os.listdir(directory)) - {LOCK, _MARKER_PARTIAL}
    if not names:
        return "new"
    if MARKER in names:
        marker = _read_marker(directory)
        if marker is not None:
            if marker > MARKER_FORMAT:
                raise ValueError(
                    f"checkpoint_dir: {directory} was written by a newer version of jaxsweep "
                    f"(checkpoint directory format {marker}, this version reads "
                    f"{MARKER_FORMAT}); upgrade jaxsweep or choose an empty or new folder. "
                    "Nothing was changed."
                )
            return "marked"
        names.discard(MARKER)  # unreadable: recognised by its content, then marked again
        if not names:
            return "new"
    if _written_by_jaxsweep(directory, names):
        return "adopted"
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise ValueError(
        f"checkpoint_dir: {directory} is not empty and is not a jaxsweep checkpoint directory "
        f"(it has no {MARKER}; it holds {shown}). jaxsweep does not use it, so that nothing "
        "in it is renamed or deleted; nothing was changed. Choose an empty or new folder for "
        "checkpoint_dir (jaxsweep creates a missing one)."
    )


def _written_by_jaxsweep(directory: str, names: set[str]) -> bool:
    """Whether ``names`` are all what this package writes (steps holding a ``progress``
    item, Orbax's temporary step directories, steps set aside), with at least one step whose
    ``progress`` record reads as this package's."""
    recognised = False
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isdir(path):
            return False
        if _STEP.fullmatch(name):
            if not os.path.isdir(os.path.join(path, "progress")):
                return False
            recognised = recognised or _is_progress(os.path.join(path, "progress", "metadata"))
        elif not (_TEMPORARY.fullmatch(name) or _SET_ASIDE.fullmatch(name)):
            return False
    return recognised


def _is_progress(path: str) -> bool:
    record = _json.read_dict(path)
    return record is not None and "fingerprint" in record and "stage" in record


_MARKER_PARTIAL = f".{MARKER}.partial"


def _read_marker(directory: str) -> int | None:
    """The marker's format number, or None when it cannot be read as jaxsweep's."""
    try:
        with open(os.path.join(directory, MARKER)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != "jaxsweep":
        return None
    number = record.get("format")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def _write_marker(directory: str) -> None:
    """Writes the marker whole (a partial file renamed into place)."""
    record = {
        "written_by": "jaxsweep",
        "format": MARKER_FORMAT,
        "about": "a jaxsweep checkpoint directory: only jaxsweep writes here, one sweep at a "
        "time; delete the whole folder when its sweep is no longer needed",
    }
    partial = os.path.join(directory, _MARKER_PARTIAL)
    with open(partial, "w") as handle:
        json.dump(record, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, os.path.join(directory, MARKER))


class _DirectoryLock:
    """An exclusive ``flock`` on the directory's lock file, taken at once or refused.

    The kernel releases it when the holding process ends, even by SIGKILL, so it is never
    left stuck. While held the file names the holder (pid, host); released, it is empty.
    Without ``fcntl`` (not POSIX) nothing is locked.
    """

    def __init__(self, directory: str):
        self.directory, self._handle = directory, None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        handle = open(os.path.join(directory, LOCK), "a+")  # held until released
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another open file: another sweep
            holder = _holder(handle)
            handle.close()
            raise CheckpointInUseError(
                f"checkpoint_dir: {directory} is in use by another sweep ({holder}); two "
                "sweeps writing one directory would destroy each other's checkpoints. Wait "
                "for it to end or stop it (its lock goes with its process, even when it is "
                "killed), or choose another checkpoint_dir. Nothing was changed."
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Empties the lock file and unlocks it (safe to call twice)."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.truncate(0)
            handle.flush()
        finally:
            handle.close()  # closing the file releases the lock


def _holder(handle) -> str:
    """Who holds the lock, as its file says (it may be about to write it)."""
    for _ in range(10):
        handle.seek(0)
        text = handle.read()
        try:
            record = json.loads(text)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["since"]))
            return f"process {record['pid']} on host {record['host']}, since {since}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that has not written its pid and host yet"


# ----------------------------------------------------------------------------- policy


def inspect_steps(store: StepStore, fingerprint: dict) -> dict:
    """The writer's look at the directory before a sweep resumes (the others wait for it).

    Returns:
      ``{"steps": [...]}``, this sweep's steps whose JSON reads, newest first (a damaged step
      is moved aside, with a warning), or ``{"mismatch": [...]}``, the fields in which the
      directory's sweep differs from this one.
    """
    current = {**fingerprint, "checkpoint.format": CHECKPOINT_FORMAT}
    readable = []
    for step in store.steps():
        try:
            progress = store.read_progress(step)
        except Exception as error:  # a damaged step: any reader error means unusable
            store.move_aside(step, _reason(error))
            continue
        saved = {**progress["fingerprint"], "checkpoint.format": progress.get("format")}
        if saved != current:
            return {"mismatch": differences(saved, current)}
        readable.append(step)
    return {"steps": readable}


def readable_steps(
    store: StepStore, fingerprint: dict, resume: str, hosts: Hosts
) -> list[tuple[int, dict]]:
    """This sweep's steps whose JSON reads, newest first, as the writer found them.

    Another sweep's steps are refused (``ConfigurationMismatchError``) or, with
    ``resume="overwrite"``, deleted with a warning.
    """
    said = hosts.writer_says(
        "inspect checkpoint_dir", lambda: json.dumps(inspect_steps(store, fingerprint))
    )
    found = json.loads(said)
    store.reload()  # the writer may have moved steps aside
    if "mismatch" in found:
        _on_mismatch(store, found["mismatch"], resume)
        return []
    return [(step, store.read_progress(step)) for step in found["steps"]]


def _on_mismatch(store: StepStore, changed: list[str], resume: str) -> None:
    if resume == "overwrite":
        store.delete_all()
        warn(
            f"checkpoint_dir: replaced the checkpoints of a different sweep in "
            f"{store.directory} (resume='overwrite'); it differed in: " + "; ".join(changed),
            CheckpointWarning,
        )
        return
    raise ConfigurationMismatchError(
        f"checkpoint_dir: {store.directory} holds checkpoints of a different sweep, so it "
        "cannot be resumed by this call. Differences (saved -> now):\n  "
        + "\n  ".join(changed)
        + "\nNothing was changed on disk. To resume it, rerun with its original arguments "
        "and data; to keep it and start this sweep, pass another checkpoint_dir; to replace "
        "it with this sweep, pass resume='overwrite'."
    )


def restore(store: StepStore, step: int, progress: dict, template: LaneTemplate) -> ResumePoint:
    """The resume point a step describes, its running lanes read back to the host.

    The lanes are the real ones (padding dropped), not yet placed on the devices.
    """
    stage, epoch = int(progress["stage"]), int(progress["epoch"])
    # inside stage 0 nothing is finished yet: no history was written
    history = History.from_record(progress["history"])
    if epoch == 0:
        return ResumePoint(step, stage, epoch, history, None, None)
    running = _running_from_json(progress["running"])
    restored = store.read_lanes(step, lambda rows: _restore_target(template, stage, epoch, rows))
    if progress.get("checksums") is not None:  # saved by a version that recorded them
        check_checksums(restored, progress["checksums"])
    real = template.layout.real({name: restored[name] for name in ("state", "keys", "values")})
    _check_restored(
        {**real, "counters": restored["counters"]}, template, stage, epoch, running.values
    )
    return ResumePoint(step, stage, epoch, history, running, real["state"])


# ----------------------------------------------------------------------------- the sweep's view


class SweepCheckpoints:
    """The checkpoints of one sweep in one directory: open, resume, save, close.

    Args:
      args: :func:`check_arguments`' record. ``args.directory``: created and marked when
        missing or empty; one that is not jaxsweep's is refused (ValueError), one another
        sweep holds too (:class:`CheckpointInUseError`); held from here until :meth:`close`.
        ``args.resume``: ``"auto"`` resumes this sweep's checkpoints and refuses another
        sweep's; ``"require"`` also refuses to start when there is nothing to resume;
        ``"overwrite"`` replaces another sweep's checkpoints (with a warning) instead of
        refusing. ``args.every_seconds``: least time between two saves inside a stage
        (stage ends always save).
      fingerprint: :func:`fingerprint` of this sweep.
      epochs: epochs per stage (the step number is ``stage * epochs + epoch``).
      config: the result's ``config`` record, stored with the history.
      hosts: this process among the sweep's processes (they all make the same calls).
    """

    def __init__(self, args: CheckpointArgs, fingerprint, epochs, config, hosts):
        directory, resume, every_seconds = args.directory, args.resume, args.every_seconds
        self.directory = directory
        self._fingerprint, self._resume, self._config = fingerprint, resume, config
        self._every_seconds, self._epochs, self._hosts = every_seconds, epochs, hosts
        self._history: dict | None = None  # the stored history the next save carries
        self._last_save = time.monotonic()
        self.resumed_from: tuple[int, int] | None = None
        # the lane strategy every save records, once decided (the driver tells it how)
        self.lane_strategy: Callable[[], str | None] = lambda: None
        self._store = StepStore(directory, hosts)
        try:
            self._candidates = readable_steps(self._store, fingerprint, resume, hosts)
        except BaseException:
            self.close()
            raise

    @property
    def finished(self) -> SweepResult | None:
        """The stored result when the directory holds a finished sweep."""
        if self._candidates and self._candidates[0][1].get("result") is not None:
            return from_dict(self._candidates[0][1]["result"])
        return None

    def check_resumable(self) -> None:
        """Raises for ``resume='require'`` when there is nothing to resume."""
        if self._resume == "require" and not self._candidates:
            self.close()
            raise FileNotFoundError(
                f"checkpoint_dir: resume='require' but {self.directory} holds no complete "
                "checkpoint of this sweep"
            )

    def resume_point(self, template: LaneTemplate) -> ResumePoint | None:
        """The latest point to resume from, its lanes restored and placed, or None.

        A step whose arrays cannot be read (in any process) is set aside and the one before
        it is tried; every process reads each step alone and they agree before going on.
        """
        while self._candidates:
            step, progress = self._candidates.pop(0)
            try:
                point, problem = restore(self._store, step, progress, template), ""
            except Exception as error:  # damaged arrays: fall back to the previous step
                point, problem = None, _reason(error)
            problems = self._hosts.exchange(f"restore step {step}", problem)
            failed = [(index, text) for index, text in enumerate(problems) if text]
            if failed:
                index, text = failed[0]
                self._store.set_aside(
                    step, text if len(problems) == 1 else f"process {index}: {text}"
                )
                continue
            self._history = progress["history"]
            self.resumed_from = (point.stage, point.epoch)
            strategy = progress.get("lane_strategy")
            point = dataclasses.replace(
                point, lane_strategy=strategy if isinstance(strategy, str) else None
            )
            if point.lanes is None:
                return point
            return dataclasses.replace(point, lanes=template.layout.place(point.lanes))
        return None

    def _save(self, stage: int, epoch: int, lanes_item: dict | None = None, **extra) -> None:
        progress = {
            "fingerprint": self._fingerprint,
            "stage": stage,
            "epoch": epoch,
            "history": self._history,
            **extra,
        }
        strategy = self.lane_strategy()
        if strategy is not None:  # a resumed sweep runs it again: the same numbers
            progress["lane_strategy"] = strategy
        self._store.save(stage * self._epochs + epoch, progress, lanes_item)
        self._last_save = time.monotonic()

    def epoch_done(self, stage: int, epoch: int, lane_state, inputs, running: Running) -> bool:
        """Saves after ``epoch`` epochs of ``stage`` when ``every_seconds`` have passed.

        Args:
          stage, epoch: the stage, and how many of its epochs are trained.
          lane_state: ``() ->`` the lane state after those epochs (device arrays, maybe
            padded), called only when a save is due (the state may have to be stacked).
          inputs: the per-lane inputs (``values``, ``init_keys``, ``data_keys``), placed.
          running: the stage's record so far.

        Returns:
          Whether a checkpoint was started.
        """
        if epoch >= self._epochs or not self._save_due(stage, epoch):
            return False
        item = _lanes_item(lane_state(), inputs, stage, epoch)
        checksums = lane_checksums(item, self._hosts, stage * self._epochs + epoch)
        self._save(stage, epoch, item, running=_running_to_json(running), checksums=checksums)
        return True

    def _save_due(self, stage: int, epoch: int) -> bool:
        """Whether ``every_seconds`` have passed since the last save, by the writer's clock
        (every process saves, or none)."""
        if self._every_seconds == 0:
            return True
        due = time.monotonic() - self._last_save >= self._every_seconds
        return (
            self._hosts.writer_says(f"save {stage}.{epoch}", lambda: "yes" if due else "") == "yes"
        )

    def stage_done(self, stage: int, history: History) -> None:
        """Saves the boundary after ``stage``: the history only, no arrays."""
        self._history = history.to_record(self._config)
        self._save(stage + 1, 0)

    def finish(self, stage: int, result: SweepResult, history: History) -> None:
        """Stores the finished sweep's result after its last ``stage`` and waits for disk."""
        self._history = history.to_record(self._config)
        self._save(stage + 1, 0, result=result.to_dict())
        self.close()

    def close(self) -> None:
        """Waits for pending saves to be complete on disk (safe to call twice)."""
        self._store.close()

    def describe(self, epochs_trained: int) -> dict:
        """This run's record for ``result.environment["checkpoint"]``."""
        origin = self.resumed_from
        return {
            "directory": self.directory,
            "resumed_from": None if origin is None else {"stage": origin[0], "epoch": origin[1]},
            "epochs_trained": epochs_trained,
        }

    def stored_result(self) -> SweepResult:
        """The finished sweep's stored result, marked as returned without training."""
        result = self.finished
        checkpoint = {"directory": self.directory, "resumed_from": "finished", "epochs_trained": 0}
        environment = {**result.environment, "checkpoint": checkpoint}
        return dataclasses.replace(result, environment=environment)


def _verify_arrays(item: str) -> None:
    """Reads every stored value of an array item once, one at a time.

    A damaged item then fails here with one clear error, instead of inside Orbax's concurrent
    restore, which leaves a flood of unretrieved task errors behind when a file is missing.
    """
    if not os.path.exists(os.path.join(item, "manifest.ocdbt")):
        raise FileNotFoundError(f"{item}: no array manifest")
    import tensorstore

    store = tensorstore.KvStore.open({"driver": "ocdbt", "base": f"file://{item}"}).result()
    for key in store.list().result():
        store.read(key).result()


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
