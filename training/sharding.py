"""Data parallelism for the learner over the local devices (jax.sharding).

A 1-D mesh over the local devices, axis "data". The learner's state and the replay buffer
are replicated on every device; every sampled batch is split along its rows
(`agents/sac/learner.py`), so each device runs the forward and backward passes of its share
and XLA all-reduces the gradients. Replicating the buffer keeps sampling local to each
device (no gather across devices) at the cost of one buffer copy per device.

With one device there is no mesh and nothing here changes the learner: it runs the code and
gives the numbers of a plain `jax.jit`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from training.errors import UsageError

AXIS = "data"


def learner_device(index: int) -> jax.Device:
    """The local device at `index` (--train.learner_device) of the default backend."""
    devices = jax.local_devices()
    if not 0 <= index < len(devices):
        raise UsageError(f"--train.learner_device must be in [0, {len(devices) - 1}] (this "
                         f"process has {len(devices)} {devices[0].platform} device"
                         f"{'s' if len(devices) > 1 else ''}), got {index}")
    return devices[index]


def local_mesh(devices: int, first: int = 0) -> Mesh | None:
    """The mesh over `devices` local devices from index `first` on (0: all of them); None for
    one (the learner then runs on device `first`)."""
    candidates = jax.local_devices()[first:]
    if not 0 <= devices <= len(candidates):
        raise UsageError(f"--train.devices must be in [0, {len(candidates)}] (0: all local "
                         f"devices{f' from learner_device {first} on' if first else ''}), got "
                         f"{devices}")
    chosen = candidates[:devices or len(candidates)]
    return Mesh(np.array(chosen), (AXIS,)) if len(chosen) > 1 else None


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def batch_rows(mesh: Mesh | None) -> NamedSharding | None:
    """A batch's leading (row) axis split over the mesh."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(AXIS))


def jit(fn, mesh: Mesh | None, **kwargs):
    """`jax.jit(fn)`; on a mesh, every input and output is replicated over its devices."""
    if mesh is None:
        return jax.jit(fn, **kwargs)
    return jax.jit(fn, in_shardings=replicated(mesh), out_shardings=replicated(mesh), **kwargs)


def place(tree, mesh: Mesh | None):
    """`tree` replicated over the mesh (unchanged without one)."""
    return tree if mesh is None else jax.device_put(tree, replicated(mesh))


def one_copy(tree, mesh: Mesh | None):
    """The first device's copy of a replicated tree (unchanged without a mesh): what a
    checkpoint stores, so that it restores like a one-device run's, on any device count."""
    return tree if mesh is None else jax.tree.map(lambda x: x.addressable_data(0), tree)
