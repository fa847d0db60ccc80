"""Multi-task network architectures behind one interface: `net.apply(params, obs, task_id)`.

Every architecture maps observations (B, D) and integer task ids (B,) to outputs (B, out_dim),
so any of them plugs into any algorithm. Architectures:

- `mtmlp`:     shared MLP on concat(obs, one_hot(task)), one output layer (MTSAC).
- `multihead`: shared MLP on concat(obs, one_hot(task)), one output head per task (MHSAC).
- `moe`:       k expert MLPs on obs, mixed by task weights, tanh, one head per task.
- `moore`:     as `moe`, but the expert outputs are orthonormalised per sample by
               Gram-Schmidt before mixing (Hendawy et al., ICLR 2024).
- `paco`, `care`, `softmod`: PaCo, CARE and Soft Modularization (agents/modular.py).
- `unitmask`, `weightmask`: task-conditioned unit and weight masks (agents/masks.py).

`task_id` is (B,) or a scalar for a batch of one task (the learners vmap their losses over a
task-split batch that way); architectures that do not exploit the scalar form broadcast it.

Experts and heads are stacked parameters evaluated with `nn.vmap` / one einsum, never a
Python loop over experts or tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from training.errors import UsageError

ARCHITECTURES = ("mtmlp", "multihead", "moe", "moore", "paco", "care", "softmod", "unitmask",
                 "weightmask")

# PyTorch's nn.Linear default (used by MOORE's reference code): weights and biases
# uniform in +-1/sqrt(fan_in). Kept so our networks start where the reference ones do.
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    features: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = _torch_kernel_init

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        return nn.Dense(
            self.features,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            bias_init=_torch_bias_init(fan_in),
        )(x)


class MLP(nn.Module):
    """Linear-ReLU stack; the last layer is linear unless `activate_final`."""

    sizes: Sequence[int]
    activate_final: bool = False

    @nn.compact
    def __call__(self, x):
        for i, size in enumerate(self.sizes):
            x = Linear(size)(x)
            if i < len(self.sizes) - 1 or self.activate_final:
                x = nn.relu(x)
        return x


class TaskHeads(nn.Module):
    """One Linear(in -> out) per task, applied to each sample with its own task's head."""

    num_tasks: int
    features: int

    @nn.compact
    def __call__(self, x, task_id):
        fan_in = x.shape[-1]
        kernel = self.param("kernel", _stacked_xavier, (self.num_tasks, fan_in, self.features))
        bias = self.param(
            "bias", _torch_bias_init(fan_in), (self.num_tasks, self.features)
        )
        # Gathering a (B, in, out) weight tensor would cost B x the head size in memory;
        # an einsum over the one-hot selects each sample's head without materialising it.
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=x.dtype)
        per_task = jnp.einsum("bi,tio->bto", x, kernel) + bias
        return jnp.einsum("bt,bto->bo", one_hot, per_task)


def _stacked_xavier(key, shape):
    """Xavier-uniform per task head, as MOORE initialises its heads."""
    num, fan_in, fan_out = shape
    keys = jax.random.split(key, num)
    return jax.vmap(lambda k: nn.initializers.xavier_uniform()(k, (fan_in, fan_out)))(keys)


def per_sample(task_id: jax.Array, obs: jax.Array) -> jax.Array:
    """A task id per sample, from either (B,) ids or one scalar id for the whole batch."""
    return jnp.broadcast_to(task_id, obs.shape[:-1])


def gram_schmidt(vectors: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Orthonormalise (..., k, d) along k, in order.

    u_1 = v_1 / |v_1|;  u_i = normalise(v_i - sum_{j<i} (v_i . u_j) u_j).

    Classical Gram-Schmidt as in MOORE's code; k is a handful of experts, so the sequential
    loop over k is unrolled at trace time while each step is batched over samples.
    Deviation: MOORE divides by the bare norm; the epsilon keeps a degenerate expert
    (zero or dependent output) from producing NaN.
    """
    basis = []
    for i in range(vectors.shape[-2]):
        v = vectors[..., i, :]
        for u in basis:
            v = v - jnp.sum(vectors[..., i, :] * u, axis=-1, keepdims=True) * u
        v = v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps)
        basis.append(v)
    return jnp.stack(basis, axis=-2)


class OneHotMLP(nn.Module):
    """Shared MLP on concat(obs, one_hot(task)); one output layer (MTSAC) or one per task."""

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    multi_head: bool

    @nn.compact
    def __call__(self, obs, task_id):
        task_id = per_sample(task_id, obs)
        x = jnp.concatenate([obs, jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)], -1)
        x = MLP(self.hidden_sizes, activate_final=True)(x)
        if self.multi_head:
            return TaskHeads(self.num_tasks, self.out_dim)(x, task_id)
        return Linear(self.out_dim)(x)


class MixtureOfExperts(nn.Module):
    """k expert MLPs on the observation only; task weights w = Linear(one_hot, no bias), not
    normalised; features tanh(sum_i w_i e_i) with e_i orthonormalised first when `orthogonal`."""

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    num_experts: int
    orthogonal: bool

    @nn.compact
    def __call__(self, obs, task_id):
        task_id = per_sample(task_id, obs)
        experts = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=-2,
            axis_size=self.num_experts,
        )(self.hidden_sizes, activate_final=False)
        expert_out = experts(obs)  # (B, k, H)
        if self.orthogonal:
            expert_out = gram_schmidt(expert_out)
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)
        weights = Linear(
            self.num_experts,
            use_bias=False,
            kernel_init=nn.initializers.xavier_uniform(),
            name="task_weights",
        )(one_hot)
        features = jnp.tanh(jnp.einsum("bk,bkh->bh", weights, expert_out))
        return TaskHeads(self.num_tasks, self.out_dim)(features, task_id)


@dataclass(frozen=True)
class NetworkConfig:
    arch: str = "moore"
    hidden_sizes: tuple[int, ...] = (400, 400, 400)
    # Experts of moe/moore; also CARE's encoders, PaCo's parameter sets and Soft Modules'
    # modules per layer: each is "how many parallel copies the tasks mix".
    num_experts: int = 4
    # Soft Modularization: routed layers of modules and each module's width.
    module_layers: int = 4
    module_hidden: int = 128
    # Task-conditioned masks: fraction of hidden units (unitmask) or of shared weights
    # (weightmask) each task keeps active, and the size of unitmask's per-task code.
    mask_density: float = 0.5
    mask_code_dim: int = 16
    # weightmask prune-and-regrow (HarmoDT): every `mask_update_every` gradient steps each task
    # drops and regrows k weights per layer, k following 0 -> mask_update_max -> 0 (cosine).
    mask_update_every: int = 1000
    mask_update_max: int = 100
    mask_update_gamma: float = 10.0
    # PaCo: a task whose loss exceeds this is masked out of the shared update and its
    # compositional vector is reset.
    paco_reset_threshold: float = 3000.0


def make_network(cfg: NetworkConfig, num_tasks: int, out_dim: int) -> nn.Module:
    """The module for `cfg.arch`; call it as `net.apply(params, obs, task_id)`."""
    if cfg.arch not in ARCHITECTURES:
        raise UsageError(f"unknown network.arch '{cfg.arch}'; valid: {', '.join(ARCHITECTURES)}")
    if not cfg.hidden_sizes or min(cfg.hidden_sizes) <= 0:
        raise UsageError(f"network.hidden_sizes must be positive, got {cfg.hidden_sizes}")
    sizes = tuple(cfg.hidden_sizes)
    if cfg.arch in ("mtmlp", "multihead"):
        return OneHotMLP(num_tasks, out_dim, sizes, multi_head=cfg.arch == "multihead")
    if cfg.num_experts < 1:
        raise UsageError(f"network.num_experts must be >= 1, got {cfg.num_experts}")
    if cfg.arch in ("moe", "moore"):
        return MixtureOfExperts(num_tasks, out_dim, sizes, cfg.num_experts, cfg.arch == "moore")
    if cfg.arch in ("unitmask", "weightmask"):
        from agents import masks

        if not 0.0 < cfg.mask_density <= 1.0:
            raise UsageError(f"network.mask_density must be in (0, 1], got {cfg.mask_density}")
        if cfg.arch == "unitmask":
            if cfg.mask_code_dim < 1:
                raise UsageError(f"network.mask_code_dim must be >= 1, got {cfg.mask_code_dim}")
            return masks.UnitMaskMLP(num_tasks, out_dim, sizes, cfg.mask_density,
                                     cfg.mask_code_dim)
        if cfg.mask_update_every < 1 or cfg.mask_update_max < 0:
            raise UsageError("network.mask_update_every must be >= 1 and mask_update_max >= 0, "
                             f"got {cfg.mask_update_every} and {cfg.mask_update_max}")
        return masks.WeightMaskMLP(num_tasks, out_dim, sizes, cfg.mask_density)
    from agents import modular

    if cfg.arch == "paco":
        return modular.PaCo(num_tasks, out_dim, sizes, cfg.num_experts)
    if cfg.arch == "care":
        return modular.CARE(num_tasks, out_dim, sizes, cfg.num_experts)
    if cfg.module_layers < 2 or cfg.module_hidden < 1:
        raise UsageError("network.module_layers must be >= 2 and network.module_hidden >= 1, "
                         f"got {cfg.module_layers} and {cfg.module_hidden}")
    return modular.SoftModular(num_tasks, out_dim, sizes, cfg.num_experts, cfg.module_layers,
                               cfg.module_hidden)
