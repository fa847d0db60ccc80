"""Decision-transformer losses and return-to-go bookkeeping (pure jnp)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def action_loss(pred: jax.Array, actions: jax.Array, mask: jax.Array, kind: str) -> jax.Array:
    """Mean action loss over the valid (mask > 0) steps.

    continuous: pred (B, K, A) tanh'd actions, actions (B, K, A); the squared error averaged
    over action dimensions and valid steps. DT trains with plain MSE: the return token already
    says which behaviour to imitate, so no likelihood model or value term is needed.
    discrete: pred (B, K, A) logits, actions (B, K) int; cross-entropy, as Multi-Game DT
    (actions are classes, so a squared error on indices would impose a false order).
    Padding steps carry no data, so they are left out of both sum and count.
    """
    valid = (mask > 0).astype(pred.dtype)
    if kind == "continuous":
        per_step = jnp.mean((pred - actions) ** 2, axis=-1)
    elif kind == "discrete":
        per_step = optax.softmax_cross_entropy_with_integer_labels(pred, actions)
    else:
        raise ValueError(f"unknown action kind '{kind}'")
    return jnp.sum(per_step * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def returns_to_go(rewards: jax.Array, gamma: float = 1.0) -> jax.Array:
    """R_t = sum_{k >= t} gamma^(k - t) r_k over one episode's rewards (T,) (last axis).

    DT conditions on the undiscounted (gamma = 1) return still to come: it is exactly what the
    agent can be asked for at test time and decremented as rewards arrive.
    """
    rewards = jnp.asarray(rewards)

    def step(carry, r):
        carry = r + gamma * carry
        return carry, carry

    moved = jnp.moveaxis(rewards, -1, 0)
    _, rtg = jax.lax.scan(step, jnp.zeros(moved.shape[1:], moved.dtype), moved, reverse=True)
    return jnp.moveaxis(rtg, 0, -1)


def rtg_after_step(rtg: jax.Array, reward: jax.Array, scale: float) -> jax.Array:
    """The next step's (scaled) return-to-go: the target less the reward just observed.

    `rtg` is in the model's scaled units (return * scale; scale = 1/1000 for Meta-World v2,
    which keeps returns of thousands near the unit range the embeddings expect), so the raw
    reward is scaled too. Decrementing, rather than re-feeding the initial target, tells the
    model how much return is still owed given what it has already collected (DT's evaluation).
    """
    return rtg - reward * scale
