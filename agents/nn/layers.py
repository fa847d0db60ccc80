"""Building blocks every architecture shares: PyTorch-default initialisers (MOORE's reference
code uses them), Linear / MLP, per-task heads, MOORE's MiniGrid CNN, and the stacked dense
layers and initialisers of the modular architectures (PaCo, CARE, Soft Modularization).

`_DenseStack` keeps its leading underscore: flax names a module's parameters after its class
(`_DenseStack_0`), so the name is part of every saved CARE and Soft Modules checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

MINIGRID_IMAGE = (7, 7, 3)


# PyTorch's nn.Linear default (used by MOORE's reference code): weights and biases
# uniform in +-1/sqrt(fan_in). Kept so our networks start where the reference ones do.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    features: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = torch_kernel_init

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        return nn.Dense(
            self.features,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            bias_init=torch_bias_init(fan_in),
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
                                stacked_torch_init if self.torch_init else stacked_xavier_init,
                                (self.num_tasks, fan_in, size))
            bias = self.param(f"bias{i}" if i else "bias", torch_bias_init(fan_in),
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
            kernel = self.param(f"conv{i}_kernel", torch_kernel_init,
                                (2, 2, x.shape[-1], channels))
            bias = self.param(f"conv{i}_bias", torch_bias_init(fan_in), (channels,))
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


def stacked_torch_init(key, shape):
    """PyTorch's nn.Linear default per task head: uniform in +-1/sqrt(fan_in)."""
    init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", batch_axis=(0,))
    return init(key, shape, jnp.float32)


def stacked_xavier_init(key, shape):
    """Xavier-uniform per task head, as MOORE initialises its heads."""
    num, fan_in, fan_out = shape
    keys = jax.random.split(key, num)
    return jax.vmap(lambda k: nn.initializers.xavier_uniform()(k, (fan_in, fan_out)))(keys)


def per_sample(task_id: jax.Array, obs: jax.Array) -> jax.Array:
    """A task id per sample, from either (B,) ids or one scalar id for the whole batch."""
    return jnp.broadcast_to(task_id, obs.shape[:-1])


Initializer = Callable[..., jax.Array]


zeros_init = nn.initializers.zeros


# Uniform(+-1/sqrt(fan_in)): PyTorch's Linear kernel default, alf's variance_scaling_init with
# gain sqrt(1/3), mode fan_in, uniform.
uniform_fan_in_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def uniform_init(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Uniform(+-3e-3) for weights and biases: the "last layer" init of the rlkit family (Soft-Module's
# `uniform_init`, PaCo's critic output layer).
small_uniform_init = uniform_init(3e-3)


class _DenseStack(nn.Module):
    """Dense-ReLU stack with explicit initialisers; the last layer is linear."""

    sizes: Sequence[int]
    kernel_init: Initializer
    bias_init: Initializer

    @nn.compact
    def __call__(self, x):
        for i, size in enumerate(self.sizes):
            x = nn.Dense(size, kernel_init=self.kernel_init, bias_init=self.bias_init)(x)
            if i < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


def stacked_dense(
    num: int,
    features: int,
    kernel_init: Initializer,
    bias_init: Initializer,
    in_axes: int | None,
    identical_init: bool = False,
    name: str | None = None,
) -> nn.Module:
    """`num` independent Dense layers as one module: kernel (num, in, out), bias (num, out).

    `in_axes=None` feeds every copy the same (B, in) input; `in_axes=-2` gives copy j the slice
    x[..., j, :]. Output (B, num, out). Each copy's kernel is initialised as a single (in, out)
    layer (so fan-in/fan-out are per copy); `identical_init` gives all copies the same values.
    """
    return nn.vmap(
        nn.Dense,
        variable_axes={"params": 0},
        split_rngs={"params": not identical_init},
        in_axes=in_axes,
        out_axes=-2,
        axis_size=num,
    )(features, kernel_init=kernel_init, bias_init=bias_init, name=name)


def standard_normal_init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype)
