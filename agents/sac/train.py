"""The SAC learner: state, one gradient step, and a jitted chunk of G steps in one `lax.scan`.

`make_learner` returns pure functions. `train_chunk(state, buffer, critic_on, actor_on)`
samples every batch from the on-device replay buffer inside the scan, so a whole chunk of
updates runs without a host round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents.networks import NetworkConfig
from agents.sac import losses
from agents.sac.networks import Actor, TwinCritic, sample_tanh_gaussian
from training import replay


@dataclass(frozen=True)
class SACConfig:
    """MOORE's Meta-World SAC defaults (its run scripts and mushroom-rl's SAC)."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: -action_dim
    batch_size_per_task: int = 128
    buffer_size_per_task: int = 1_000_000
    critic_warmup: int = 1500  # critic updates once every task holds more transitions than this
    actor_warmup: int = 3000  # actor and alpha updates once every task holds more than this
    log_std_min: float = -10.0
    log_std_max: float = 2.0


@struct.dataclass
class SACState:
    actor_params: dict
    critic_params: dict
    target_critic_params: dict
    log_alpha: jax.Array  # (num_tasks,)
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    key: jax.Array
    updates: jax.Array  # int32, gradient steps taken


class Learner(NamedTuple):
    actor: Actor
    critic: TwinCritic
    init: Callable  # (key) -> SACState
    update: Callable  # (state, batch, critic_on, actor_on) -> (state, metrics)
    train_chunk: Callable  # (state, buffer, critic_on[G], actor_on[G]) -> (state, metrics[G])
    policy: Callable  # (actor_params, obs, task_id, key, deterministic) -> action


def make_learner(sac: SACConfig, network: NetworkConfig, num_tasks: int, obs_dim: int,
                 action_dim: int) -> Learner:
    actor = Actor(network, num_tasks, action_dim, sac.log_std_min, sac.log_std_max)
    critic = TwinCritic(network, num_tasks)
    actor_tx = optax.adam(sac.actor_lr)
    critic_tx = optax.adam(sac.critic_lr)
    alpha_tx = optax.adam(sac.alpha_lr)
    target_entropy = -float(action_dim) if sac.target_entropy is None else sac.target_entropy

    def init(key):
        k_actor, k_critic, k_state = jax.random.split(key, 3)
        obs = jnp.zeros((1, obs_dim), jnp.float32)
        act = jnp.zeros((1, action_dim), jnp.float32)
        tid = jnp.zeros((1,), jnp.int32)
        actor_params = actor.init(k_actor, obs, tid)
        critic_params = critic.init(k_critic, obs, act, tid)
        log_alpha = jnp.full((num_tasks,), jnp.log(sac.init_alpha), jnp.float32)
        return SACState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=jax.tree.map(jnp.copy, critic_params),  # own buffers: donatable
            log_alpha=log_alpha,
            actor_opt=actor_tx.init(actor_params),
            critic_opt=critic_tx.init(critic_params),
            alpha_opt=alpha_tx.init(log_alpha),
            key=k_state,
            updates=jnp.int32(0),
        )

    def update(state: SACState, batch, critic_on, actor_on):
        """One SAC step in MOORE's order: actor, alpha, critic, target (each gated by warm-up)."""
        key, k_actor, k_critic = jax.random.split(state.key, 3)

        def keep_or(new, old, on):
            return jax.tree.map(lambda n, o: jnp.where(on, n, o), new, old)

        (_, actor_info), actor_grads = jax.value_and_grad(losses.actor_loss, has_aux=True)(
            state.actor_params, state.critic_params, state.log_alpha, batch, k_actor,
            actor=actor, critic=critic)
        actor_updates, actor_opt = actor_tx.update(actor_grads, state.actor_opt, state.actor_params)
        actor_params = keep_or(optax.apply_updates(state.actor_params, actor_updates),
                               state.actor_params, actor_on)
        actor_opt = keep_or(actor_opt, state.actor_opt, actor_on)

        alpha_grads = jax.grad(losses.alpha_loss)(state.log_alpha, actor_info["log_prob"],
                                                  batch["task_id"], target_entropy)
        alpha_updates, alpha_opt = alpha_tx.update(alpha_grads, state.alpha_opt, state.log_alpha)
        log_alpha = keep_or(optax.apply_updates(state.log_alpha, alpha_updates),
                            state.log_alpha, actor_on)
        alpha_opt = keep_or(alpha_opt, state.alpha_opt, actor_on)

        (_, critic_info), critic_grads = jax.value_and_grad(losses.critic_loss, has_aux=True)(
            state.critic_params, state.target_critic_params, actor_params, log_alpha, batch,
            k_critic, actor=actor, critic=critic, gamma=sac.gamma)
        critic_updates, critic_opt = critic_tx.update(critic_grads, state.critic_opt,
                                                      state.critic_params)
        critic_params = keep_or(optax.apply_updates(state.critic_params, critic_updates),
                                state.critic_params, critic_on)
        critic_opt = keep_or(critic_opt, state.critic_opt, critic_on)
        target = keep_or(optax.incremental_update(critic_params, state.target_critic_params,
                                                  sac.tau),
                         state.target_critic_params, critic_on)

        new_state = SACState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target,
            log_alpha=log_alpha,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
            key=key,
            updates=state.updates + critic_on.astype(jnp.int32),
        )
        metrics = {
            "critic_loss": critic_info["critic_loss"],
            "q_mean": critic_info["q_mean"],
            "actor_loss": actor_info["actor_loss"],
            "entropy": actor_info["entropy"],
            "alpha": jnp.exp(log_alpha),
        }
        return new_state, metrics

    def train_chunk(state: SACState, buffer: replay.ReplayBuffer, critic_on, actor_on):
        def step(state, flags):
            key, k_batch = jax.random.split(state.key)
            batch = replay.sample(buffer, k_batch, sac.batch_size_per_task)
            return update(state.replace(key=key), batch, *flags)

        return jax.lax.scan(step, state, (critic_on, actor_on))

    def policy(actor_params, obs, task_id, key, deterministic):
        mean, log_std = actor.apply(actor_params, obs, task_id)
        sampled, _ = sample_tanh_gaussian(key, mean, log_std)
        return jnp.where(deterministic, jnp.tanh(mean), sampled)

    return Learner(actor=actor, critic=critic, init=init, update=update,
                   train_chunk=train_chunk, policy=policy)
