"""`moe` and `moore`: k expert networks on the observation, mixed by task weights; MOORE
(Hendawy et al., ICLR 2024) orthonormalises the experts' outputs by Gram-Schmidt first."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.layers import (
    MLP,
    Linear,
    MinigridCNN,
    TaskHeads,
    per_sample,
    torch_kernel_init,
)


def orthonormalise(columns: Sequence[jax.Array], eps: float = 1e-8) -> list[jax.Array]:
    """Gram-Schmidt over k arrays (..., d), in order:

    u_1 = v_1 / |v_1|;  u_i = normalise(v_i - sum_{j<i} (v_i . u_j) u_j).

    Classical Gram-Schmidt as in MOORE's code; k is a handful of experts, so the sequential
    loop over k is unrolled at trace time while each step is batched over samples.
    Deviation: MOORE divides by the bare norm; the epsilon keeps a degenerate expert
    (zero or dependent output) from producing NaN.
    """
    basis = []
    for column in columns:
        v = column
        for u in basis:
            v = v - jnp.sum(column * u, axis=-1, keepdims=True) * u
        basis.append(v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps))
    return basis


def gram_schmidt(vectors: jax.Array, eps: float = 1e-8) -> jax.Array:
    """`orthonormalise` of (..., k, d) along k."""
    # One split, not k indexings: the gradient of each index is a zero-padded copy of the
    # whole array, and summing those took 40 % of a MOORE MT7 update on the CPU.
    columns = [c[..., 0, :] for c in jnp.split(vectors, vectors.shape[-2], axis=-2)]
    return jnp.stack(orthonormalise(columns, eps), axis=-2)


class MixtureOfExperts(nn.Module):
    """k expert MLPs on the observation only; task weights w = Linear(one_hot, no bias), not
    normalised; features tanh(sum_i w_i e_i) with e_i orthonormalised first when `orthogonal`."""

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    num_experts: int
    orthogonal: bool
    encoder: str = "mlp"

    @nn.compact
    def __call__(self, obs, task_id):
        head_task, task_id = task_id, per_sample(task_id, obs)
        # Experts first, (k, B, H): each expert's output is one contiguous slice, so the
        # Gram-Schmidt steps and the mixing read it without the transposes (forward and
        # backward) that a (B, k, H) layout cost: about 4 % of a MOORE SAC update, measured.
        stacked = functools.partial(nn.vmap, variable_axes={"params": 0},
                                    split_rngs={"params": True}, in_axes=None, out_axes=0,
                                    axis_size=self.num_experts)
        if self.encoder == "cnn":
            experts, head_hidden = stacked(MinigridCNN)(), self.hidden_sizes
        else:
            experts, head_hidden = stacked(MLP)(self.hidden_sizes, activate_final=False), ()
        expert_out = experts(obs)  # (k, B, H)
        columns = [c[0] for c in jnp.split(expert_out, self.num_experts, axis=0)]
        if self.orthogonal:
            columns = orthonormalise(columns)
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)
        # MOORE's SAC networks initialise the task weights Xavier-uniform; its PPO networks
        # keep PyTorch's default.
        cnn = self.encoder == "cnn"
        weights = Linear(
            self.num_experts,
            use_bias=False,
            kernel_init=torch_kernel_init if cnn else nn.initializers.xavier_uniform(),
            name="task_weights",
        )(one_hot)
        # sum_i w_i e_i as k scaled adds: as a dot over k = 4 it ran as a tiny batched
        # product per sample, slowly.
        mixed = weights[..., 0:1] * columns[0]
        for i in range(1, self.num_experts):
            mixed = mixed + weights[..., i:i + 1] * columns[i]
        features = jnp.tanh(mixed)
        return TaskHeads(self.num_tasks, self.out_dim, head_hidden, torch_init=cnn)(
            features, head_task)
