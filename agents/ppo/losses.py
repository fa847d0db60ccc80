"""PPO's advantage estimation and losses, as in MOORE's mtppo.py (itself mushroom-rl's PPO
with per-task advantage normalisation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(values, next_values, rewards, terminated, done, gamma: float, lam: float):
    """Generalised advantage estimation over a rollout, time on the leading axis.

    delta_t = r_t + gamma * V(s'_t) * (1 - terminated_t) - V(s_t), with s'_t the step's own
    next observation (before any reset), so a time-limit truncation bootstraps and only a true
    termination does not; A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}, and the last
    step of the rollout is delta alone (MOORE's compute_gae). -> (advantages, value targets).
    """
    deltas = rewards + gamma * next_values * (1.0 - terminated) - values

    def backward(next_adv, xs):
        delta, d = xs
        adv = delta + gamma * lam * (1.0 - d) * next_adv
        return adv, adv

    _, adv = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, done.astype(deltas.dtype)),
                          reverse=True)
    return adv, adv + values


ADVANTAGE_NORMALISATIONS = ("task", "batch", "none")


def normalise_advantages(adv: jax.Array, mode: str, task_axis: int) -> jax.Array:
    """Zero mean, unit std (numpy's std, + 1e-8): "task" within each task, as MOORE does;
    "batch" over the whole rollout, all tasks together (single-task PPO's habit); "none"
    leaves the advantages as they are."""
    if mode == "none":
        return adv
    if mode == "batch":
        axes = tuple(range(adv.ndim))
    else:
        axes = tuple(a for a in range(adv.ndim) if a != task_axis % adv.ndim)
    mean = adv.mean(axes, keepdims=True)
    std = adv.std(axes, keepdims=True)
    return (adv - mean) / (std + 1e-8)


def entropy(log_probs: jax.Array) -> jax.Array:
    """Entropy (nats) of the categorical distributions given by `log_probs` (..., A)."""
    return -jnp.sum(jnp.exp(log_probs) * log_probs, -1)


def policy_loss(logits, actions, old_log_prob, advantages, clip: float, entropy_coef: float):
    """Clipped surrogate minus the entropy bonus, averaged over samples. -> (loss, aux).

    `logits` (..., N, A): aux's `task_entropy` is the mean entropy over the sample axis N, so
    per task for task-major (T, N, A) minibatches, where a change on one task shows that the
    mean over tasks would hide."""
    log_probs = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_probs, actions[..., None], -1)[..., 0]
    ratio = jnp.exp(log_prob - old_log_prob)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip, 1 + clip) * advantages)
    spread = entropy(log_probs)
    loss = -surrogate.mean() - entropy_coef * spread.mean()
    return loss, {"entropy": spread.mean(), "task_entropy": spread.mean(-1), "clip_fraction":
                  (jnp.abs(ratio - 1) > clip).mean(), "approx_kl": (old_log_prob - log_prob).mean()}


def value_loss(values, targets):
    """Mean squared error (MOORE fits its critic with F.mse_loss)."""
    return jnp.mean((values - targets) ** 2)
