"""Runs one tiny sweep in a fresh process, on several CPU devices or as one of several processes.

Used by ``tests/test_sharding.py``: the device count of a process (``XLA_FLAGS``) and
``jax.distributed.initialize`` must come before JAX starts, so these runs need a process of
their own. Every process saves what it computed as ``process-<index>.json`` for the test to
compare; only the writer (process 0) saves ``result.json``, as the CLI does.

  python tests/_sharded_sweep.py OUT                       # every local device
  python tests/_sharded_sweep.py OUT --separate-too        # and "separate" sweeps
  python tests/_sharded_sweep.py OUT --coordinator 127.0.0.1:PORT --process-id I --processes N
"""

from __future__ import annotations

import argparse
import json
import pathlib
import warnings

import numpy as np


def tiny_data():
    """256 examples of a separable two-class problem (204 train / 52 validation)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    return x, y


# 3 values x 2 seeds = 6 lanes: padded to 8 on 4 devices, so padding is exercised too
SWEEP = dict(
    epochs=2,
    stages=2,
    points_per_stage=3,
    seeds=2,
    batch_size=64,
    min_improvement=0.0,
    progress=False,
)


def tiny_sweep(devices=None, lanes="auto", **options):
    import jaxsweep
    from jaxsweep.models import MLP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxsweep.SearchRangeWarning)
        return jaxsweep.run(
            lambda: MLP(hidden=(16,), outputs=2),
            tiny_data(),
            devices=devices,
            lanes=lanes,
            **SWEEP,
            **options,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--coordinator")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--lanes", default="auto")
    # also sweep with one-lane calls: on the last device alone (separate-last.json) and on
    # every device, saving checkpoints (separate-all.json)
    parser.add_argument("--separate-too", action="store_true")
    args = parser.parse_args()

    import jax

    if args.coordinator:
        # CPU collectives between processes (gloo is this jax's default; older ones had none)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.processes,
            process_id=args.process_id,
        )

    from jaxsweep import _sharding

    # watch the metrics the epoch program returns: their sharding is what ran where
    seen = []
    gather = _sharding.LaneLayout.gather

    def watching_gather(layout, tree):
        leaf = jax.tree.leaves(tree)[0]
        seen.append(
            {
                "devices": len(leaf.sharding.device_set),
                "spec": list(leaf.sharding.spec),
                "lanes": int(leaf.shape[0]),
            }
        )
        return gather(layout, tree)

    _sharding.LaneLayout.gather = watching_gather
    result = tiny_sweep(lanes=args.lanes)

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "writer": _sharding.is_writer(),
        "metrics_sharding": seen[0],
        "result": result.to_dict(),
    }
    (args.out / f"process-{jax.process_index()}.json").write_text(json.dumps(report))
    if _sharding.is_writer():
        result.save(args.out / "result.json")
    if args.separate_too:
        tiny_sweep(jax.local_devices()[-1:], "separate").save(args.out / "separate-last.json")
        every = tiny_sweep(lanes="separate", checkpoint_dir=args.out / "separate-checkpoints")
        every.save(args.out / "separate-all.json")


if __name__ == "__main__":
    main()
