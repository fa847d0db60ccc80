"""Task-conditioned masks over one shared network: unit masks and weight masks.

- `UnitMaskMLP` (CoTASP-style): each task has a learned code c_t; layer l's unit scores are
  c_t @ D_l (D_l a learned dictionary), and the task's binary mask keeps the top
  `density` fraction of units. The mask is hard in the forward pass and trained through a
  straight-through estimator (the gradient of sigmoid(scores)). Tasks with similar codes get
  similar masks, so they share units.
- `WeightMaskMLP` (HarmoDT-style): each task has a binary mask over every shared kernel; task t
  computes with W * m_t, so its loss only updates its active weights and the weights it masks
  out stay as the other tasks trained them. Masks are changed only by `prune_and_regrow`
  (HarmoDT's rule, REFERENCE.md), never by the optimiser.

Deviations, also in README.md:
- CoTASP obtains its sparse code by sparse coding a sentence embedding against a dictionary
  and penalises the code's L1 norm. We learn the code directly per task id and impose the
  sparsity target exactly on the mask (top-k units per layer), so there is no penalty to tune.
- HarmoDT masks transformer blocks with ERK-initialised density 0.8. Here the masked layers are
  the hidden layers of an MLP on concat(obs, one-hot) (MTSAC's trunk) and the output layer is
  shared and unmasked, as HarmoDT leaves its heads unmasked. Each task's initial mask is drawn
  independently with the ERK per-layer densities.

Both modules accept a task id per sample (B,) or one task id for the whole batch (a scalar).
The scalar form lets training run the loss vmapped over a task-split batch, so weight masks
cost one matmul per sample, as a dense layer does; per-sample ids (acting, evaluation) compute
every task's product and select, which is cheap at those batch sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agents.nn.layers import Linear, torch_bias_init, torch_kernel_init

MASKED_ARCHS = ("unitmask", "weightmask")
MASKS = "masks"  # variable collection holding the weight masks (not trained by the optimiser)
PROBE = "mask_probe"  # zero-valued collection whose gradient is dL/d(W * m): regrow scores


def _top_k_mask(scores: jax.Array, keep: int) -> jax.Array:
    """Binary mask of the `keep` highest scores along the last axis."""
    kth = jax.lax.top_k(scores, keep)[0][..., -1:]
    return (scores >= kth).astype(scores.dtype)


def _straight_through_top_k(scores: jax.Array, keep: int) -> jax.Array:
    """`_top_k_mask` in the forward pass; the gradient of sigmoid(scores) in the backward."""
    hard = _top_k_mask(scores, keep)
    soft = jax.nn.sigmoid(scores)
    return hard + soft - jax.lax.stop_gradient(soft)


def units_kept(width: int, density: float) -> int:
    return max(1, int(round(density * width)))


class UnitMaskMLP(nn.Module):
    """MLP on the observation whose hidden units are masked per task (CoTASP-style)."""

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    density: float
    code_dim: int

    def unit_masks(self):
        """Per layer, the (num_tasks, width) binary masks (straight-through)."""
        codes = self.param("task_codes", nn.initializers.normal(1.0),
                           (self.num_tasks, self.code_dim))
        masks = []
        for i, width in enumerate(self.hidden_sizes):
            dictionary = self.param(f"dictionary_{i}", nn.initializers.normal(
                1.0 / np.sqrt(self.code_dim)), (self.code_dim, width))
            masks.append(_straight_through_top_k(codes @ dictionary,
                                                 units_kept(width, self.density)))
        return masks

    @nn.compact
    def __call__(self, obs, task_id):
        masks = self.unit_masks()
        x = obs
        for width, mask in zip(self.hidden_sizes, masks, strict=True):
            x = nn.relu(Linear(width)(x)) * mask[task_id]
        self.sow("intermediates", "unit_masks", jnp.stack([m.mean(-1) for m in masks], -1))
        return Linear(self.out_dim)(x)


def erk_densities(shapes: Sequence[tuple[int, int]], density: float) -> list[float]:
    """Erdos-Renyi-kernel densities: layer l's density is proportional to
    (fan_in + fan_out) / (fan_in * fan_out), scaled so the whole network keeps `density` of its
    weights; layers that would exceed 1 are dense and the rest rescaled."""
    sizes = np.array([a * b for a, b in shapes], float)
    raw = np.array([(a + b) / (a * b) for a, b in shapes], float)
    dense = np.zeros(len(shapes), bool)
    while True:
        budget = density * sizes.sum() - sizes[dense].sum()
        scale = budget / (raw[~dense] * sizes[~dense]).sum()
        out = np.where(dense, 1.0, raw * scale)
        if (out <= 1.0 + 1e-9).all():
            return [float(x) for x in out]
        dense |= out > 1.0


def _random_masks(key, num_tasks, shape, density):
    """Each task keeps exactly round(density * size) weights, chosen uniformly."""
    size = shape[0] * shape[1]
    keep = max(1, int(round(density * size)))
    scores = jax.random.uniform(key, (num_tasks, size))
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return (rank < keep).astype(jnp.float32).reshape(num_tasks, *shape)


class MaskedDense(nn.Module):
    """Dense layer whose kernel is multiplied by the task's binary mask."""

    features: int
    num_tasks: int
    density: float

    @nn.compact
    def __call__(self, x, task_id):
        fan_in = x.shape[-1]
        shape = (fan_in, self.features)
        kernel = self.param("kernel", torch_kernel_init, shape)
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        masks = self.variable(MASKS, "kernel", lambda: _random_masks(
            self.make_rng("params"), self.num_tasks, shape, self.density)).value
        masks = jax.lax.stop_gradient(masks)
        if self.is_initializing() or self.has_variable(PROBE, "kernel"):
            probe = self.variable(PROBE, "kernel", lambda: jnp.zeros(shape)).value
        else:
            probe = 0.0
        if task_id.ndim == 0:
            return x @ (kernel * masks[task_id] + probe) + bias
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=x.dtype)
        per_task = jnp.einsum("bi,tio->bto", x, kernel * masks + probe)
        return jnp.einsum("bt,bto->bo", one_hot, per_task) + bias


class WeightMaskMLP(nn.Module):
    """MLP on concat(obs, one-hot) with a binary mask per task over every hidden kernel."""

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    density: float

    @nn.compact
    def __call__(self, obs, task_id):
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)
        x = jnp.concatenate([obs, jnp.broadcast_to(one_hot, (*obs.shape[:-1], self.num_tasks))],
                            -1)
        widths = [x.shape[-1], *self.hidden_sizes]
        densities = erk_densities(list(zip(widths[:-1], widths[1:], strict=True)), self.density)
        for width, density in zip(self.hidden_sizes, densities, strict=True):
            x = nn.relu(MaskedDense(width, self.num_tasks, density)(x, task_id))
        return Linear(self.out_dim)(x)


def regrow_count(update: jax.Array, total_updates: int, k_max: int) -> jax.Array:
    """HarmoDT's schedule: k rises 0 -> k_max -> 0 over training as a cosine."""
    progress = jnp.clip(update / max(total_updates, 1), 0.0, 1.0)
    return jnp.round(k_max * 0.5 * (1.0 - jnp.cos(2.0 * jnp.pi * progress))).astype(jnp.int32)


def prune_and_regrow(masks: jax.Array, task_grads: jax.Array, k: jax.Array,
                     gamma: float) -> jax.Array:
    """One HarmoDT mask step for one layer.

    masks (T, ...) binary; task_grads (T, ...) each task's gradient with respect to its
    effective weight W * m_t (unmasked, so inactive weights have scores too). For each task,
    among its active weights drop the k with the lowest gamma * (g_mean . g_t) + g_t^2; among
    its inactive weights (not the ones just dropped) regrow the k with the highest
    g_mean . g_t. k is capped per task so the density stays exactly as it was.
    """
    num_tasks = masks.shape[0]
    m = masks.reshape(num_tasks, -1) > 0.5
    g = task_grads.reshape(num_tasks, -1)
    agreement = g.mean(0, keepdims=True) * g
    active = m.sum(-1, keepdims=True)
    k = jnp.minimum(k, jnp.minimum(active, m.shape[-1] - active))

    drop_score = jnp.where(m, gamma * agreement + g**2, jnp.inf)
    drop = m & (_rank(drop_score) < k)
    grow_score = jnp.where(m, -jnp.inf, agreement)  # was inactive before this step
    grow = ~m & (_rank(-grow_score) < k)
    new = (m & ~drop) | grow
    return new.astype(masks.dtype).reshape(masks.shape)


def _rank(scores: jax.Array) -> jax.Array:
    """Ascending rank of every entry along the last axis (ties broken by position)."""
    return jnp.argsort(jnp.argsort(scores, axis=-1, stable=True), axis=-1, stable=True)


def mask_statistics(variables: dict, unit_density: float) -> dict:
    """Per-task density (T,) and pairwise overlap (T, T) of a network's task masks.

    Overlap is intersection over union, pooled over all masked layers. Works for weight masks
    (stored in the MASKS collection) and unit masks (recomputed from the task codes, whose
    density is a config value, `network.mask_density`, not stored with them).
    """
    layers = task_masks(variables, unit_density)
    if not layers:
        return {}
    flat = jnp.concatenate([m.reshape(m.shape[0], -1) for m in layers], axis=-1)
    inter = flat @ flat.T
    counts = flat.sum(-1)
    union = counts[:, None] + counts[None, :] - inter
    return {"density": counts / flat.shape[-1], "overlap": inter / jnp.maximum(union, 1.0)}


def task_masks(variables: dict, unit_density: float) -> list[jax.Array]:
    """Every (T, ...) binary mask of a network: weight masks from their collection, unit masks
    recomputed from each `task_codes` parameter and its dictionaries."""
    found = list(jax.tree.leaves(variables.get(MASKS, {})))
    params = variables.get("params", {})
    for path, codes in _find(params, "task_codes"):
        parent = _get(params, path[:-1])
        i = 0
        while f"dictionary_{i}" in parent:
            dictionary = parent[f"dictionary_{i}"]
            keep = units_kept(dictionary.shape[-1], unit_density)
            found.append(_top_k_mask(codes @ dictionary, keep))
            i += 1
    return found


def _find(tree, name, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == name:
                yield (*path, k), v
            else:
                yield from _find(v, name, (*path, k))


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


REGROW_SCOPES = ("layer", "network")


def regrow_tree(mask_tree, probe_grads, k: jax.Array, gamma: float, scope: str = "layer"):
    """`prune_and_regrow` on every mask of a network.

    Mask leaves are (*lead, T, in, out) (lead: e.g. the twin-critic axis) and the per-task
    probe gradients are (T, *lead, in, out), as `per_task_value_and_grad` returns them.
    scope "layer": k entries per task in every kernel (each kernel keeps its own density);
    "network": each task's masks ranked together, k entries per task in all (HarmoDT's code;
    only the total density is kept, so layers can trade weights; leaves without lead axes).
    """
    if scope not in REGROW_SCOPES:
        raise ValueError(f"regrow scope '{scope}': expected one of {', '.join(REGROW_SCOPES)}")
    if scope == "network":
        leaves, treedef = jax.tree.flatten(mask_tree)
        grads = treedef.flatten_up_to(probe_grads)
        if any(leaf.ndim != 3 for leaf in leaves):
            raise ValueError("network-wide regrow needs (T, in, out) mask leaves")
        num_tasks = leaves[0].shape[0]
        flat = prune_and_regrow(
            jnp.concatenate([m.reshape(num_tasks, -1) for m in leaves], -1),
            jnp.concatenate([g.reshape(num_tasks, -1) for g in grads], -1), k, gamma)
        bounds = np.cumsum([m[0].size for m in leaves])[:-1]
        pieces = jnp.split(flat, bounds, axis=-1)
        return treedef.unflatten([p.reshape(m.shape) for p, m in zip(pieces, leaves,
                                                                     strict=True)])

    def one(mask, grad):
        lead = mask.shape[: mask.ndim - 3]
        grad = jnp.moveaxis(grad, 0, len(lead))
        flat_m = mask.reshape(-1, *mask.shape[-3:])
        flat_g = grad.reshape(-1, *grad.shape[-3:])
        new = jax.vmap(lambda m, g: prune_and_regrow(m, g, k, gamma))(flat_m, flat_g)
        return new.reshape(mask.shape)

    return jax.tree.map(one, mask_tree, probe_grads)
