"""SAC's actor and twin critics, each built on any multi-task architecture (agents/nn/)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.masks import MASKS, PROBE
from agents.nn.registry import NetworkConfig, make_network


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; the network outputs (mean, log_std) for each action dim."""

    network: NetworkConfig
    num_tasks: int
    action_dim: int
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs, task_id):
        out = make_network(self.network, self.num_tasks, 2 * self.action_dim)(obs, task_id)
        mean, log_std = jnp.split(out, 2, axis=-1)
        # A hard clamp, as MOORE's code does (mtrl rescales with tanh instead).
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


class _QNetwork(nn.Module):
    network: NetworkConfig
    num_tasks: int

    @nn.compact
    def __call__(self, obs, action, task_id):
        x = jnp.concatenate([obs, action], axis=-1)
        return make_network(self.network, self.num_tasks, 1)(x, task_id)[..., 0]


class TwinCritic(nn.Module):
    """Two independent Q networks (each with its own experts, task weights and heads) -> (2, B)."""

    network: NetworkConfig
    num_tasks: int

    @nn.compact
    def __call__(self, obs, action, task_id):
        twins = nn.vmap(
            _QNetwork,
            # Weight masks and their probes are per twin, like the parameters they mask.
            variable_axes={"params": 0, MASKS: 0, PROBE: 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        return twins(self.network, self.num_tasks)(obs, action, task_id)


def sample_tanh_gaussian(key, mean, log_std):
    """Reparameterised sample of tanh(N(mean, std)) and its log-probability (summed over dims)."""
    std = jnp.exp(log_std)
    pre_tanh = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    action = jnp.tanh(pre_tanh)
    log_prob = jax.scipy.stats.norm.logpdf(pre_tanh, mean, std)
    # log(1 - tanh(u)^2) written stably as 2 (log 2 - u - softplus(-2u)).
    log_prob -= 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return action, log_prob.sum(-1)
