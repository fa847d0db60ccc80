"""A replay buffer per task, on the JAX device, with task-balanced sampling.

All tasks step in lockstep (one sub-env per task), so the buffers share one write pointer
and one size. Arrays are (num_tasks, capacity, ...). Inserting a chunk and sampling are
pure functions, so they run inside the learner's jitted code with no host round trip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


@struct.dataclass
class ReplayBuffer:
    data: dict  # field -> (num_tasks, capacity, ...) array
    ptr: jax.Array  # int32, next write position
    size: jax.Array  # int32, filled entries per task

    @property
    def num_tasks(self) -> int:
        return self.data["obs"].shape[0]

    @property
    def capacity(self) -> int:
        return self.data["obs"].shape[1]


def init_buffer(num_tasks: int, capacity: int, obs_dim: int, action_dim: int,
                sharding: jax.sharding.Sharding | None = None) -> ReplayBuffer:
    """An empty buffer; its arrays are created with `sharding` if given (no staging copy)."""
    shapes = {
        "obs": (obs_dim,),
        "action": (action_dim,),
        "reward": (),
        "next_obs": (obs_dim,),
        "terminated": (),
    }
    # Zeros computed in place on every device of `sharding` (jnp.zeros(device=...) would fill
    # one device and copy from it).
    @functools.partial(jax.jit, **({} if sharding is None else {"out_shardings": sharding}))
    def zeros():
        return {k: jnp.zeros((num_tasks, capacity, *s), jnp.float32) for k, s in shapes.items()}

    return ReplayBuffer(data=zeros(), ptr=jnp.int32(0), size=jnp.int32(0))


def insert(buffer: ReplayBuffer, chunk: dict) -> ReplayBuffer:
    """Append a chunk whose fields are (length, num_tasks, ...) (time-major, as collected)."""
    length = chunk["obs"].shape[0]
    idx = (buffer.ptr + jnp.arange(length)) % buffer.capacity
    data = {
        k: buffer.data[k].at[:, idx].set(jnp.swapaxes(chunk[k].astype(jnp.float32), 0, 1))
        for k in FIELDS
    }
    return ReplayBuffer(
        data=data,
        ptr=(buffer.ptr + length) % buffer.capacity,
        size=jnp.minimum(buffer.size + length, buffer.capacity),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, per_task: int) -> dict:
    """`per_task` uniform draws from every task's buffer, concatenated task by task.

    Returns fields of shape (num_tasks * per_task, ...) plus `task_id`.
    """
    num_tasks = buffer.num_tasks
    idx = jax.random.randint(key, (num_tasks, per_task), 0, jnp.maximum(buffer.size, 1))
    rows = jnp.arange(num_tasks)[:, None]
    batch = {k: v[rows, idx].reshape(num_tasks * per_task, *v.shape[2:])
             for k, v in buffer.data.items()}
    batch["task_id"] = jnp.repeat(jnp.arange(num_tasks, dtype=jnp.int32), per_task)
    return batch


def filled(buffer: ReplayBuffer) -> dict:
    """The filled part of every field (what a checkpoint needs to store)."""
    size = int(buffer.size)  # a static slice: computed where the buffer lives
    return {k: jax.lax.slice_in_dim(v, 0, size, axis=1) for k, v in buffer.data.items()}


def from_filled(data: dict, capacity: int, ptr: int,
                sharding: jax.sharding.Sharding | None = None) -> ReplayBuffer:
    """Inverse of `filled`: place the stored entries in a buffer of full capacity (its arrays
    with `sharding` if given)."""
    size = next(iter(data.values())).shape[1]

    @functools.partial(jax.jit, **({} if sharding is None else {"out_shardings": sharding}))
    def place(stored):  # one jitted write: no second full-size temporary
        return {k: jnp.zeros((v.shape[0], capacity, *v.shape[2:]), jnp.float32).at[:, :size].set(v)
                for k, v in stored.items()}

    return ReplayBuffer(data=place(data), ptr=jnp.int32(ptr), size=jnp.int32(size))
