"""PPO's separate actor (action logits) and critic (state value), each built on any multi-task
architecture of agents/nn/registry.py, as MOORE's MiniGrid code has one network for each."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.registry import NetworkConfig, make_network


class Actor(nn.Module):
    """Logits of a categorical (Boltzmann, temperature 1) policy."""

    network: NetworkConfig
    num_tasks: int
    num_actions: int

    @nn.compact
    def __call__(self, obs, task_id):
        return make_network(self.network, self.num_tasks, self.num_actions)(obs, task_id)


class Critic(nn.Module):
    network: NetworkConfig
    num_tasks: int

    @nn.compact
    def __call__(self, obs, task_id):
        return make_network(self.network, self.num_tasks, 1)(obs, task_id)[..., 0]


def per_task_apply(module: nn.Module, params, obs: jax.Array) -> jax.Array:
    """`module` on task-major observations (T, N, D) (any dtype; uint8 images are cast), each
    task's slice with its scalar task id: per-task heads then cost one matmul, not T."""
    tasks = jnp.arange(obs.shape[0])
    return jax.vmap(module.apply, in_axes=(None, 0, 0))(params, obs.astype(jnp.float32), tasks)
