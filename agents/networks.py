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

Encoders (`NetworkConfig.encoder`): `mlp` (flat observations; `hidden_sizes` are the trunk's or
each expert's layers, heads are linear) or `cnn`, MOORE's MiniGrid networks
(moore/utils/networks_ppo.py): observations are flattened (7, 7, 3) images; the trunk or each
expert is Conv(16, 2x2)-ReLU-Conv(32, 2x2)-ReLU-Conv(64, 2x2) -> 1024 features, and
`hidden_sizes` are the Tanh hidden layers of the output head(s) (MOORE: 128). With `cnn`:
`mtmlp` = one CNN (Tanh) + one-hot -> head (MOORE's "SH" network, MTPPO); `multihead` = one
CNN (Tanh) -> per-task heads; `moe` / `moore` = k CNN experts mixed as above, per-task heads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from training.errors import UsageError

ARCHITECTURES = ("mtmlp", "multihead", "moe", "moore", "paco", "care", "softmod", "unitmask",
                 "weightmask")
ENCODERS = ("mlp", "cnn")
CNN_ARCHS = ("mtmlp", "multihead", "moe", "moore")
MINIGRID_IMAGE = (7, 7, 3)

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
    """One head per task, applied to each sample with its own task's head: Linear(in -> out),
    or with `hidden` sizes, Linear-Tanh stacks before it (MOORE's MiniGrid heads).

    Kernels start Xavier-uniform (MOORE's SAC heads) or, with `torch_init`, as PyTorch's
    nn.Linear default (MOORE's PPO networks set no init)."""

    num_tasks: int
    features: int
    hidden: Sequence[int] = ()
    torch_init: bool = False

    @nn.compact
    def __call__(self, x, task_id):
        sizes = (*self.hidden, self.features)
        for i, size in enumerate(sizes):
            fan_in = x.shape[-1]
            kernel = self.param(f"kernel{i}" if i else "kernel",
                                _stacked_torch if self.torch_init else _stacked_xavier,
                                (self.num_tasks, fan_in, size))
            bias = self.param(f"bias{i}" if i else "bias", _torch_bias_init(fan_in),
                              (self.num_tasks, size))
            if jnp.ndim(task_id) == 0:
                # One task for the whole batch (learners vmap over a task-split batch): index
                # its head, one matmul instead of one per task.
                x = x @ kernel[task_id] + bias[task_id]
            else:
                # Gathering a (B, in, out) weight tensor would cost B x the head size in
                # memory; an einsum over the one-hot selects each sample's head instead.
                one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=x.dtype)
                per_task = jnp.einsum("bi,tio->bto", x, kernel) + bias
                x = jnp.einsum("bt,bto->bo", one_hot, per_task)
            if i < len(sizes) - 1:
                x = jnp.tanh(x)
        return x


class MinigridCNN(nn.Module):
    """MOORE's MiniGrid image encoder: three 2x2 VALID convs (16, 32, 64), ReLU between,
    flattened to 4 * 4 * 64 = 1024 features. Input: raw uint8 values as floats, flattened
    (B, 147) and reshaped here, as MOORE feeds `state.float()` with no scaling.

    Each conv is computed as its im2col matmul (the four shifted views concatenated, times the
    (2, 2, in, out) kernel reshaped): the same function as `nn.Conv`, but XLA on the CPU runs
    these tiny convolutions, and their gradients, several times faster as one matmul."""

    @nn.compact
    def __call__(self, obs):
        x = obs.reshape(*obs.shape[:-1], *MINIGRID_IMAGE)
        for i, channels in enumerate((16, 32, 64)):
            fan_in = x.shape[-1] * 4
            kernel = self.param(f"conv{i}_kernel", _torch_kernel_init,
                                (2, 2, x.shape[-1], channels))
            bias = self.param(f"conv{i}_bias", _torch_bias_init(fan_in), (channels,))
            x = conv2x2(x, kernel) + bias
            if i < 2:
                x = nn.relu(x)
        return x.reshape(*x.shape[:-3], -1)


def conv2x2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID 2x2 cross-correlation of (..., H, W, C) with a (2, 2, C, O) kernel."""
    h, w = x.shape[-3] - 1, x.shape[-2] - 1
    patches = jnp.concatenate([x[..., dh:dh + h, dw:dw + w, :] for dh in (0, 1) for dw in (0, 1)],
                              axis=-1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def _stacked_torch(key, shape):
    """PyTorch's nn.Linear default per task head: uniform in +-1/sqrt(fan_in)."""
    init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", batch_axis=(0,))
    return init(key, shape, jnp.float32)


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
    # One split, not k indexings: the gradient of each index is a zero-padded copy of the
    # whole (..., k, d) array, and summing those took 40 % of a MOORE MT7 update on the CPU
    # (the split's gradient is one concatenation).
    columns = [c[..., 0, :] for c in jnp.split(vectors, vectors.shape[-2], axis=-2)]
    basis = []
    for column in columns:
        v = column
        for u in basis:
            v = v - jnp.sum(column * u, axis=-1, keepdims=True) * u
        v = v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps)
        basis.append(v)
    return jnp.stack(basis, axis=-2)


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
        stacked = functools.partial(nn.vmap, variable_axes={"params": 0},
                                    split_rngs={"params": True}, in_axes=None, out_axes=-2,
                                    axis_size=self.num_experts)
        if self.encoder == "cnn":
            experts, head_hidden = stacked(MinigridCNN)(), self.hidden_sizes
        else:
            experts, head_hidden = stacked(MLP)(self.hidden_sizes, activate_final=False), ()
        expert_out = experts(obs)  # (B, k, H)
        if self.orthogonal:
            expert_out = gram_schmidt(expert_out)
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)
        # MOORE's SAC networks initialise the task weights Xavier-uniform; its PPO networks
        # keep PyTorch's default.
        cnn = self.encoder == "cnn"
        weights = Linear(
            self.num_experts,
            use_bias=False,
            kernel_init=_torch_kernel_init if cnn else nn.initializers.xavier_uniform(),
            name="task_weights",
        )(one_hot)
        features = jnp.tanh(jnp.einsum("bk,bkh->bh", weights, expert_out))
        return TaskHeads(self.num_tasks, self.out_dim, head_hidden, torch_init=cnn)(
            features, head_task)


@dataclass(frozen=True)
class NetworkConfig:
    arch: str = "moore"
    # mlp: hidden_sizes are the trunk's / each expert's ReLU layers. cnn (MiniGrid images):
    # MOORE's CNN trunk / experts, and hidden_sizes are the heads' Tanh layers.
    encoder: str = "mlp"
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


    HELP: ClassVar[dict[str, str]] = {
        "arch": "shared-policy architecture (README: Shared-policy architectures)",
        "encoder": "mlp: vector observations; cnn: MOORE's MiniGrid image encoder",
        "hidden_sizes": "mlp: trunk / expert layer widths; cnn: the heads' hidden widths",
        "num_experts": "parallel copies the tasks mix: MoE/MOORE experts, CARE encoders, "
                       "PaCo parameter sets, Soft Modules modules per layer",
        "module_layers": "Soft Modularization: routed layers",
        "module_hidden": "Soft Modularization: width of each module",
        "mask_density": "unitmask / weightmask: fraction of units / weights a task keeps",
        "mask_code_dim": "unitmask: size of each task's learned code",
        "mask_update_every": "weightmask: gradient steps (PPO: iterations) between "
                             "prune-and-regrow rounds",
        "mask_update_max": "weightmask: most weights per layer dropped and regrown in a round",
        "mask_update_gamma": "weightmask: weight of gradient agreement in the prune score",
        "paco_reset_threshold": "PaCo: a task whose critic loss passes this is masked out "
                                "and its vector reset",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"arch": ARCHITECTURES, "encoder": ENCODERS}

def make_network(cfg: NetworkConfig, num_tasks: int, out_dim: int) -> nn.Module:
    """The module for `cfg.arch`; call it as `net.apply(params, obs, task_id)`."""
    if cfg.arch not in ARCHITECTURES:
        raise UsageError(f"unknown network.arch '{cfg.arch}'; valid: {', '.join(ARCHITECTURES)}")
    if cfg.encoder not in ENCODERS:
        raise UsageError(f"unknown network.encoder '{cfg.encoder}'; valid: {', '.join(ENCODERS)}")
    if cfg.encoder == "cnn" and cfg.arch not in CNN_ARCHS:
        raise UsageError(f"network.encoder cnn supports network.arch {', '.join(CNN_ARCHS)}; "
                         f"got '{cfg.arch}'")
    if not cfg.hidden_sizes or min(cfg.hidden_sizes) <= 0:
        raise UsageError(f"network.hidden_sizes must be positive, got {cfg.hidden_sizes}")
    sizes = tuple(cfg.hidden_sizes)
    if cfg.arch in ("mtmlp", "multihead"):
        return OneHotMLP(num_tasks, out_dim, sizes, multi_head=cfg.arch == "multihead",
                         encoder=cfg.encoder)
    if cfg.num_experts < 1:
        raise UsageError(f"network.num_experts must be >= 1, got {cfg.num_experts}")
    if cfg.arch in ("moe", "moore"):
        return MixtureOfExperts(num_tasks, out_dim, sizes, cfg.num_experts, cfg.arch == "moore",
                                cfg.encoder)
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
