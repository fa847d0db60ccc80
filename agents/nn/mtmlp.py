"""`mtmlp` (MTSAC's network) and `multihead`: one shared MLP on concat(obs, one_hot(task)),
with one output layer or one head per task. With the CNN encoder, MOORE's MiniGrid "SH"
(one-hot after the CNN) and "MH" networks."""

from __future__ import annotations

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
)


class OneHotMLP(nn.Module):
    """Shared MLP on concat(obs, one_hot(task)); one output layer (MTSAC) or one per task.
    With the CNN encoder, MOORE's MiniGrid "SH" (one-hot after the CNN) and "MH" networks."""

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    multi_head: bool
    encoder: str = "mlp"

    @nn.compact
    def __call__(self, obs, task_id):
        cnn = self.encoder == "cnn"
        heads = TaskHeads(self.num_tasks, self.out_dim, self.hidden_sizes if cnn else (),
                          torch_init=cnn)
        head_task, task_id = task_id, per_sample(task_id, obs)
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)
        if self.encoder == "cnn":
            x = jnp.tanh(MinigridCNN()(obs))
            if self.multi_head:
                return heads(x, head_task)
            x = jnp.concatenate([x, one_hot], -1)
            for size in self.hidden_sizes:
                x = jnp.tanh(Linear(size)(x))
            return Linear(self.out_dim)(x)
        x = jnp.concatenate([obs, one_hot], -1)
        x = MLP(self.hidden_sizes, activate_final=True)(x)
        if self.multi_head:
            return heads(x, head_task)
        return Linear(self.out_dim)(x)
