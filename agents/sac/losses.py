"""SAC losses over a task-balanced batch. Every task's samples carry their own temperature."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agents.sac.networks import sample_tanh_gaussian


def critic_loss(critic_params, target_critic_params, actor_params, log_alpha, batch, key, *,
                actor, critic, gamma):
    """MSE of both critics to r + gamma * (1 - terminated) * (min Q_target - alpha_task * log pi).

    `terminated` is true only for real terminal states: a time-limit truncation keeps
    bootstrapping from the true final observation stored as `next_obs`.
    """
    mean, log_std = actor.apply(actor_params, batch["next_obs"], batch["task_id"])
    next_action, next_log_prob = sample_tanh_gaussian(key, mean, log_std)
    next_q = critic.apply(target_critic_params, batch["next_obs"], next_action, batch["task_id"])
    alpha = jnp.exp(log_alpha)[batch["task_id"]]
    soft_value = next_q.min(axis=0) - alpha * next_log_prob
    target = batch["reward"] + gamma * (1.0 - batch["terminated"]) * soft_value
    target = jax.lax.stop_gradient(target)
    q = critic.apply(critic_params, batch["obs"], batch["action"], batch["task_id"])
    loss = jnp.mean(jnp.sum((q - target) ** 2, axis=0))
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(actor_params, critic_params, log_alpha, batch, key, *, actor, critic):
    """mean(alpha_task * log pi(a|s) - min Q(s, a)), a ~ pi; returns log pi for the alpha step."""
    mean, log_std = actor.apply(actor_params, batch["obs"], batch["task_id"])
    action, log_prob = sample_tanh_gaussian(key, mean, log_std)
    q = critic.apply(critic_params, batch["obs"], action, batch["task_id"]).min(axis=0)
    alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))[batch["task_id"]]
    loss = jnp.mean(alpha * log_prob - q)
    return loss, {"actor_loss": loss, "entropy": -log_prob.mean(), "log_prob": log_prob}


def alpha_loss(log_alpha, log_prob, task_id, target_entropy):
    """-(log alpha_task * (log pi + target_entropy)), averaged over the batch (MOORE's form)."""
    return -jnp.mean(log_alpha[task_id] * jax.lax.stop_gradient(log_prob + target_entropy))
