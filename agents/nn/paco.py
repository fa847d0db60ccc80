"""PaCo (Sun et al., 2022): each layer is a mix of K parameter sets by the task's
compositional vector, and `paco_reset` gives a diverging task a fresh vector (the rule itself is
applied by agents/nn/rules.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.layers import (
    Initializer,
    small_uniform_init,
    standard_normal_init,
    uniform_fan_in_init,
    zeros_init,
)
from training.errors import UsageError

PACO_VECTOR_NAME = "compositional_vectors"
"""PaCo's task vectors live at `params["params"][PACO_VECTOR_NAME]`, shape (num_tasks, K)."""


class PaCo(nn.Module):
    """Parameter-Compositional MTRL (Sun et al., NeurIPS 2022).

    Every layer of the MLP (hidden_sizes, then out_dim) holds K = `num_param_sets` parameter
    sets (W_k, b_k); task tau's compositional vector w_tau mixes them per layer:
        y = sum_k w_tau,k (W_k x + b_k),   ReLU between layers, none after the last.
    The input is the observation only; the task enters through w_tau alone. w = one_hot @ Phi
    with Phi = `params["params"][PACO_VECTOR_NAME]`, (num_tasks, K), no bias, no activation.

    Initialisation, from TToTMooN/paco-mtrl `paco/examples/metaworld_mt10_paco_conf.py` and its
    alf submodule (TToTMooN/alf, branch PaCo_ALF):
    - Phi ~ N(0, 1): `TaskEncodingNetwork` (alf/networks/encoding_networks.py) with
      last_kernel_initializer=None -> torch.nn.init.normal_, use_bias=False, identity output
      (`last_activation = math_ops.identity` in the conf).
    - Parameter sets: the conf sets `CompositionalFC.kernel_identical_init=True`
      (alf/layers.py): all K sets start as one copy of the same draw; biases 0.
      Kernels: the critic's `variance_scaling_init(gain=sqrt(1/3), fan_in, uniform)`, i.e.
      U(+-1/sqrt(fan_in)), and U(+-3e-3) for the output layer (CriticCompositionalNetwork in
      alf/networks/critic_networks.py). Deviation: one init for actor and critic alike; the
      reference actor (ActorDistributionCompositionalNetwork) uses xavier_uniform hidden
      kernels and a truncated-normal output layer with gain 0.3
      (CompositionalNormalProjectionNetwork).
    - Deviation: the reference shares ONE task-encoding network (Phi) between actor and
      critic; here every network owns its Phi.
    """

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    num_param_sets: int
    identical_init: bool = True

    @nn.compact
    def __call__(self, obs, task_id):
        phi = self.param(PACO_VECTOR_NAME, standard_normal_init,
                         (self.num_tasks, self.num_param_sets))
        # One task for the whole batch (the learner's task-split losses): mix the K sets into
        # that task's layer first, one matmul per layer. Mixed tasks: every set, then mix.
        single_task = task_id.ndim == 0
        w = phi[task_id]  # (K,) or (B, K)
        self.sow("intermediates", "compositional_weights", w)
        sizes = (*self.hidden_sizes, self.out_dim)
        x = obs
        for i, size in enumerate(sizes):
            last = i == len(sizes) - 1
            kernel, bias = _CompositionalParams(
                self.num_param_sets, size, small_uniform_init if last else uniform_fan_in_init,
                self.identical_init, name=f"layer_{i}")(x.shape[-1])
            if single_task:
                x = x @ jnp.einsum("k,kio->io", w, kernel) + w @ bias
            else:
                x = jnp.einsum("bk,bko->bo", w, jnp.einsum("bi,kio->bko", x, kernel) + bias)
            if not last:
                x = nn.relu(x)
        return x


class _CompositionalParams(nn.Module):
    """A layer's K parameter sets: kernel (K, in, out), bias (K, out), biases zero.

    `identical_init` (PaCo's `kernel_identical_init`) starts every set as the same draw."""

    num_sets: int
    features: int
    kernel_init: Initializer
    identical_init: bool

    @nn.compact
    def __call__(self, fan_in):
        shape = (fan_in, self.features)

        def init(key, full_shape):
            if self.identical_init:
                return jnp.broadcast_to(self.kernel_init(key, shape), full_shape)
            keys = jax.random.split(key, self.num_sets)
            return jax.vmap(lambda k: self.kernel_init(k, shape))(keys)

        kernel = self.param("kernel", init, (self.num_sets, *shape))
        bias = self.param("bias", zeros_init, (self.num_sets, self.features))
        return kernel, bias


def paco_reset(
    params: Mapping[str, Any],
    diverged: jax.Array,
    key: jax.Array | None = None,
    method: str = "interpolate",
) -> dict:
    """Reset the compositional vectors of diverged tasks, as PaCo does; pure and jit-able.

    Touches only `params["params"][PACO_VECTOR_NAME]` (rows of the diverged tasks); every
    other leaf is returned as is. `params` is the variables dict from `PaCo.init` (a bare
    `params["params"]` dict is accepted too and returned in the same form). `diverged`:
    (num_tasks,) bool.

    What PaCo does (TToTMooN/paco-mtrl `paco/algorithms/paco_mtsac.py`, `after_update`, with
    the conf's `reset_task_method = "interpolate"`): a diverged task's vector becomes a random
    convex combination of the non-diverged tasks' vectors, with coefficients U(0, 1) divided by
    their sum (L1-normalised), drawn independently per diverged task. `method="copy"` (the
    reference's other option) copies one healthy task's vector chosen uniformly at random.
    Neither re-initialises nor takes the plain mean; with `key=None` we use the mean of the
    healthy tasks' vectors (the deterministic stand-in: equal coefficients). Pass a key to
    reproduce the reference. If every task diverged, nothing changes (the reference asserts
    there is at least one healthy task). Like the reference, this does not touch optimiser
    state; the caller masks the diverged tasks' losses (`NetworkConfig.paco_reset_threshold`).
    """
    if method not in ("interpolate", "copy"):
        raise UsageError(f"paco_reset method '{method}'; valid: interpolate, copy")
    wrapped = "params" in params
    inner = params["params"] if wrapped else params
    phi = inner[PACO_VECTOR_NAME]
    num_tasks = phi.shape[0]
    diverged = jnp.asarray(diverged, bool)
    healthy = ~diverged
    if key is None:
        if method == "copy":
            raise UsageError("paco_reset method 'copy' needs a PRNG key")
        coeff = jnp.broadcast_to(healthy.astype(phi.dtype), (num_tasks, num_tasks))
    else:
        u = jax.random.uniform(key, (num_tasks, num_tasks), phi.dtype)
        if method == "interpolate":
            coeff = u * healthy
        else:
            pick = jnp.argmax(jnp.where(healthy, u, -1.0), axis=-1)
            coeff = jax.nn.one_hot(pick, num_tasks, dtype=phi.dtype)
    total = coeff.sum(-1, keepdims=True)
    mixed = (coeff / jnp.maximum(total, jnp.finfo(phi.dtype).tiny)) @ phi
    replace = diverged[:, None] & jnp.any(healthy)
    new_inner = {**inner, PACO_VECTOR_NAME: jnp.where(replace, mixed, phi)}
    return {**params, "params": new_inner} if wrapped else new_inner
