"""Combining per-task gradients into one update: PCGrad and GradNorm.

A multi-task loss is usually the mean of the task losses, so one backward pass yields the mean
of the task gradients. When tasks conflict (their gradients point in opposing directions) or
differ in scale, that mean is dominated by a few tasks. The methods here instead look at every
task's gradient separately and combine them:

- `pcgrad`:   PCGrad (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning").
              Where two task gradients conflict (negative dot product), each is projected onto
              the normal plane of the other before they are combined.
- `gradnorm`: GradNorm (Chen et al., ICML 2018). Learns per-task loss weights so that every
              task's weighted gradient norm tracks its relative training rate.

`per_task_value_and_grad` produces the per-task gradients (every leaf with a leading task axis
T) in one vmapped backward pass; the combiners are optax transformations that map such a
pytree to a params-shaped one. `make_combiner` builds one by name; all of them take the same
`update(updates, state, params, task_losses=...)` call so callers need not tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from training.errors import UsageError

COMBINERS = ("none", "pcgrad", "gradnorm")

_HIGHEST = jax.lax.Precision.HIGHEST  # GPUs default to TF32 for f32 matmuls: too coarse here


def per_task_value_and_grad(loss_fn: Callable, params, task_batch, *args, args_in_axes=None):
    """Each task's loss, aux and gradient of its own loss, from one vmapped backward pass.

    `loss_fn(params, batch_t, *args) -> (loss, aux)` sees one task's slice of `task_batch`
    (whose leaves have a leading task axis T). `args_in_axes` gives `in_axes` for `args`
    (a tuple, one entry per arg: 0 for per-task, None for shared); None shares them all.
    Returns `(losses (T,), aux, grads)`, aux and every grads leaf with a leading axis T.
    """
    if args_in_axes is None:
        args_in_axes = (None,) * len(args)
    grad_fn = jax.vmap(jax.value_and_grad(loss_fn, has_aux=True),
                       in_axes=(None, 0, *args_in_axes))
    (losses, aux), grads = grad_fn(params, task_batch, *args)
    return losses, aux, grads


def _task_gram(task_grads) -> jax.Array:
    """(T, T) dot products of the task gradients, each flattened over all leaves."""
    def leaf_gram(g):
        flat = g.reshape(g.shape[0], -1).astype(jnp.float32)
        return jnp.einsum("id,jd->ij", flat, flat, precision=_HIGHEST)

    return sum(leaf_gram(g) for g in jax.tree.leaves(task_grads))


def _weighted_task_sum(task_grads, weights: jax.Array):
    """sum_i weights[i] * g_i, leaf by leaf: a params-shaped pytree."""
    return jax.tree.map(
        lambda g: jnp.tensordot(weights.astype(jnp.float32), g.astype(jnp.float32), axes=1,
                                precision=_HIGHEST).astype(g.dtype),
        task_grads)


def _num_tasks(task_grads) -> int:
    return jax.tree.leaves(task_grads)[0].shape[0]


def mean_over_tasks() -> optax.GradientTransformationExtraArgs:
    """The plain multi-task gradient: the mean over the task axis (the "none" combiner)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: jnp.mean(g, axis=0), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class PCGradState(NamedTuple):
    key: jax.Array  # draws the projection orders; advanced every update


def pcgrad(seed: int = 0) -> optax.GradientTransformationExtraArgs:
    """PCGrad (Yu et al. 2020, Algorithm 1) on per-task gradients (leaves with a task axis T).

    Each task gradient is one vector over all leaves. For each task i, the other tasks j are
    visited in a random order (a fresh permutation per task per call, drawn from the key in the
    state, so runs are reproducible and the state checkpoints); where g_i^PC . g_j < 0,
    g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j, always against the original g_j. Zero gradients
    are never projected onto.

    Deviation: the paper sums the projected gradients; we take their mean, so that with no
    conflicts the result equals the gradient of the mean task loss (the "none" combiner).
    Extra args (`task_losses`) are accepted and ignored.
    """

    def init(params):
        del params
        return PCGradState(key=jax.random.PRNGKey(seed))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        num_tasks = _num_tasks(updates)
        key, k_perm = jax.random.split(state.key)
        orders = jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(
            jax.random.split(k_perm, num_tasks))
        gram = _task_gram(updates)
        sq_norms = jnp.diag(gram)

        # Every g_i^PC stays a linear combination of the original task gradients, so we track
        # its coefficients c_i (g_i^PC = sum_k c_ik g_k) and take dot products through the
        # (T, T) Gram matrix: one pass over the parameters instead of T^2, and no (T, D) copy.
        def project_task(i, order):
            def body(step, coeffs):
                j = order[step]
                dot = coeffs @ gram[:, j]
                conflict = (j != i) & (dot < 0) & (sq_norms[j] > 0)
                scale = jnp.where(conflict, dot / jnp.where(sq_norms[j] > 0, sq_norms[j], 1.0),
                                  0.0)
                return coeffs.at[j].add(-scale)

            return jax.lax.fori_loop(0, num_tasks, body, jax.nn.one_hot(i, num_tasks))

        coeffs = jax.vmap(project_task)(jnp.arange(num_tasks), orders)  # (T, T): rows c_i
        combined = _weighted_task_sum(updates, jnp.mean(coeffs, axis=0))
        return combined, PCGradState(key=key)

    return optax.GradientTransformationExtraArgs(init, update)


class GradNormState(NamedTuple):
    weights: jax.Array  # (T,) task weights, summing to T
    initial_losses: jax.Array  # (T,) L_i(0), recorded at the first update
    count: jax.Array  # int32, updates taken
    adam: optax.OptState  # the Adam state that steps the weights


def gradnorm_weights(state: GradNormState) -> jax.Array:
    """The current task weights (T,), for logging."""
    return state.weights


def gradnorm(num_tasks: int, alpha: float = 1.5, lr: float = 0.025,
             eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """GradNorm (Chen et al. 2018) on per-task gradients; `update(..., task_losses=(T,))`.

    Returns sum_i w_i g_i / T with the current weights, then moves the weights: with
    G_i = w_i |g_i|, r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)) and the targets
    mean(G) * r_i^alpha held constant (as in the paper), one Adam step of size `lr` on
    L_grad = sum_i |G_i - target_i|, whose gradient is dL_grad/dw_i = sign(G_i - target_i) |g_i|;
    then w is clipped to w >= 1e-3 and renormalised to sum to T. Losses must be positive, as
    in the paper.

    Why Adam: the paper (Sec. 3.2) updates w with "standard update rules", and reference
    implementations use Adam at lr = 0.025 (the default here). A plain gradient step would be
    lr * |g_i|, so its size would follow the scale of the task gradients (large in RL) and the
    weights would swing far past the balance; Adam divides by the running RMS of the gradient,
    so a step is about `lr` whatever the gradient scale, shrinking as the sign starts to flip
    around the balance. The Adam state is part of this state (and so of checkpoints).

    Deviations: |g_i| is the norm of task i's gradient over all parameters, not over the last
    shared layer (which is not identifiable for a generic pytree).
    """
    weight_tx = optax.adam(lr)

    def init(params):
        del params
        weights = jnp.ones((num_tasks,), jnp.float32)
        return GradNormState(weights=weights,
                             initial_losses=jnp.ones((num_tasks,), jnp.float32),
                             count=jnp.zeros((), jnp.int32),
                             adam=weight_tx.init(weights))

    def update(updates, state, params=None, *, task_losses, **extra_args):
        del params, extra_args
        task_losses = jnp.asarray(task_losses, jnp.float32)
        combined = _weighted_task_sum(updates, state.weights / num_tasks)

        initial = jnp.where(state.count == 0, task_losses, state.initial_losses)
        norms = jnp.sqrt(jnp.diag(_task_gram(updates)))
        weighted_norms = state.weights * norms
        loss_ratios = task_losses / jnp.maximum(initial, eps)
        rates = loss_ratios / jnp.maximum(jnp.mean(loss_ratios), eps)
        # Clipped so a stray negative loss cannot turn the power into NaN weights.
        targets = jnp.mean(weighted_norms) * jnp.maximum(rates, 0.0) ** alpha
        # Gradient of sum_i |w_i |g_i| - target_i| in w, the targets held constant.
        weight_grads = jnp.sign(weighted_norms - targets) * norms
        steps, adam_state = weight_tx.update(weight_grads, state.adam, state.weights)
        weights = optax.apply_updates(state.weights, steps)
        weights = jnp.maximum(weights, 1e-3)
        weights = weights * num_tasks / jnp.sum(weights)
        return combined, GradNormState(weights=weights, initial_losses=initial,
                                       count=state.count + 1, adam=adam_state)

    return optax.GradientTransformationExtraArgs(init, update)


def make_combiner(name: str, num_tasks: int, seed: int = 0, gradnorm_alpha: float = 1.5,
                  gradnorm_lr: float = 0.025) -> optax.GradientTransformationExtraArgs:
    """The per-task gradient combiner called `name` (one of COMBINERS)."""
    if name == "none":
        return mean_over_tasks()
    if name == "pcgrad":
        return pcgrad(seed)
    if name == "gradnorm":
        return gradnorm(num_tasks, gradnorm_alpha, gradnorm_lr)
    raise UsageError(f"unknown gradient combiner '{name}'; valid: {', '.join(COMBINERS)}")
