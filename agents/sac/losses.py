"""SAC losses. Every task's samples carry their own temperature.

Each loss takes (params, batch, key, *other networks) and returns the loss of every sample
(B,), so the learner can average it per task: on a flat task-major batch (per-sample task ids)
or vmapped over a task-split batch (one task id per slice).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agents.sac.networks import sample_tanh_gaussian


def critic_loss(critic_params, batch, key, target_critic_params, actor_params, log_alpha, *,
                actor, critic, gamma):
    """Squared error, summed over both critics, to the soft TD target
    r + gamma * (1 - terminated) * (min Q_target - alpha_task * log pi).

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
    return jnp.sum((q - target) ** 2, axis=0), {"q_mean": q.mean()}


def actor_loss(actor_params, batch, key, critic_params, log_alpha, *, actor, critic):
    """alpha_task * log pi(a|s) - min Q(s, a), a ~ pi; returns log pi for the alpha step."""
    mean, log_std = actor.apply(actor_params, batch["obs"], batch["task_id"])
    action, log_prob = sample_tanh_gaussian(key, mean, log_std)
    q = critic.apply(critic_params, batch["obs"], action, batch["task_id"]).min(axis=0)
    alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))[batch["task_id"]]
    return alpha * log_prob - q, {"entropy": -log_prob.mean(), "log_prob": log_prob}


def alpha_loss(log_alpha, log_prob, task_id, target_entropy):
    """-(log alpha_task * (log pi + target_entropy)), averaged over the batch (MOORE's form)."""
    return -jnp.mean(log_alpha[task_id] * jax.lax.stop_gradient(log_prob + target_entropy))
