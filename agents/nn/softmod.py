"""Soft Modularization (Yang et al., 2020): layers of modules routed by softmax weights
computed from the observation and the task embedding."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.layers import (
    _DenseStack,
    per_sample,
    small_uniform_init,
    stacked_dense,
)
from training.errors import UsageError

# Soft-Module's `basic_init` (torchrl/networks/init.py `_fanin_init`) takes "fan_in" as
# weight.size(0), which for nn.Linear's (out, in) weight is the OUTPUT width: U(+-1/sqrt(out)).
# We reproduce that effective init; biases are the constant 0.1 of `_constant_bias_init`.
_softmodule_hidden_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
_softmodule_hidden_bias = nn.initializers.constant(0.1)


class SoftModular(nn.Module):
    """Soft Modularization (Yang et al., NeurIPS 2020), as `ModularGatedCascadeCondNet` in
    RchalYang/Soft-Module torchrl/networks/nets.py (cond_ob=True, pre_softmax=False,
    add_bn=False, as in its meta_config files).

        f   = Base(obs)              MLP hidden_sizes, last layer linear
        g   = Emb(one_hot(task))     MLP em_hidden + (hidden_sizes[-1],), last layer linear
        e   = Gating(relu(f * g))    num_gating_layers Dense(gating_hidden), last linear
        P_1 = softmax_rows(W_1 relu(e))                                (n x n)
        P_l = softmax_rows(W_l relu(U_l [P_1..P_{l-1}] * e)),  l = 2..L-1
        p   = softmax(W_L relu(U_L [P_1..P_{L-1}] * e))                (n,) for the output
        h_1,j = M_1,j(relu(f));  h_{l+1},j = M_{l+1},j(relu(sum_i P_l[j, i] h_l,i))
        out = Linear(relu(sum_i p_i h_L,i))
    with n = num_modules modules of width module_hidden in each of L = module_layers layers,
    [..] the concatenation of the flattened previous routing matrices and * elementwise.

    Paper vs code: the paper's routing equation conditions p^{l+1} on p^l only and applies the
    routing heads to F(s)·H(z) directly; the code ("Cascade") conditions each routing matrix
    on ALL previous ones and first passes the product through `num_gating_layers` Dense layers.
    We follow the code. The code also softmaxes a final (n,) vector that mixes the last
    layer's modules before the output layer; kept.

    Defaults from meta_config/mt10/modular_4_4_2_128_reweight.json (and ..._2_2_2_256_...):
    hidden_shapes [400, 400], em_hidden_shapes [400], num_gating_layers 2, gating_hidden 256.
    The code requires the embedding's output width to equal the base's; `em_hidden` lists the
    embedding MLP's layers BEFORE that output (reference: (), i.e. one Linear(T, 400)).
    Init (torchrl/networks/init.py): hidden layers, modules and the routing-conditioning
    layers `basic_init` = U(+-1/sqrt(out_features)) (see `_softmodule_hidden_init`) with bias
    0.1; the routing logits layers and the output layer `uniform_init` = U(+-3e-3) for weight
    and bias. module_layers must be >= 2 (the reference breaks for 1).
    """

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    num_modules: int
    module_layers: int
    module_hidden: int
    em_hidden: Sequence[int] = ()
    num_gating_layers: int = 2
    gating_hidden: int = 256

    @nn.compact
    def __call__(self, obs, task_id):
        task_id = per_sample(task_id, obs)
        if self.module_layers < 2:
            raise UsageError(f"SoftModular needs module_layers >= 2, got {self.module_layers}")
        if not self.hidden_sizes:
            raise UsageError("SoftModular needs at least one base hidden layer")
        n = self.num_modules
        hid_k, hid_b = _softmodule_hidden_init, _softmodule_hidden_bias
        base = _DenseStack(self.hidden_sizes, hid_k, hid_b, name="base")(obs)
        one_hot = jax.nn.one_hot(task_id, self.num_tasks, dtype=obs.dtype)
        emb = _DenseStack(
            (*self.em_hidden, self.hidden_sizes[-1]), hid_k, hid_b, name="task_embedding"
        )(one_hot)
        emb = emb * base  # cond_ob: both pre-activation
        base = nn.relu(base)
        if self.num_gating_layers > 0:
            emb = _DenseStack(
                (self.gating_hidden,) * self.num_gating_layers, hid_k, hid_b, name="gating"
            )(nn.relu(emb))

        def routing_logits(x, size, name):
            return nn.Dense(size, kernel_init=small_uniform_init, bias_init=small_uniform_init,
                            name=name)(x)

        batch = obs.shape[:-1]
        first = routing_logits(nn.relu(emb), n * n, "routing_logits_0")
        probs = [jax.nn.softmax(first.reshape(*batch, n, n), axis=-1)]
        for layer in range(1, self.module_layers):
            history = jnp.concatenate([p.reshape(*batch, n * n) for p in probs], axis=-1)
            cond = nn.Dense(emb.shape[-1], kernel_init=hid_k, bias_init=hid_b,
                            name=f"routing_cond_{layer}")(history)
            cond = nn.relu(cond * emb)
            if layer < self.module_layers - 1:
                logits = routing_logits(cond, n * n, f"routing_logits_{layer}")
                probs.append(jax.nn.softmax(logits.reshape(*batch, n, n), axis=-1))
            else:
                output_routing = jax.nn.softmax(routing_logits(cond, n, "routing_logits_out"), -1)
        routing = jnp.stack(probs, axis=-3)  # (B, L-1, n, n)
        self.sow("intermediates", "routing", routing)
        self.sow("intermediates", "output_routing", output_routing)

        h = stacked_dense(n, self.module_hidden, hid_k, hid_b, in_axes=None,
                           name="modules_0")(base)  # (B, n, module_hidden)
        for layer in range(1, self.module_layers):
            mixed = nn.relu(jnp.einsum("...ji,...ih->...jh", routing[..., layer - 1, :, :], h))
            h = stacked_dense(n, self.module_hidden, hid_k, hid_b, in_axes=-2,
                               name=f"modules_{layer}")(mixed)
        out = nn.relu(jnp.einsum("...i,...ih->...h", output_routing, h))
        return nn.Dense(self.out_dim, kernel_init=small_uniform_init, bias_init=small_uniform_init,
                        name="output")(out)
