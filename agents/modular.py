"""Task-conditioned sharing architectures: PaCo, CARE and Soft Modularization.

All three follow the project interface `net.apply(params, obs, task_id) -> (B, out_dim)` with
obs (B, D) float32 and task_id (B,) int32. Parallel copies (PaCo's parameter sets, CARE's
encoders, Soft Modules' modules) are stacked parameters evaluated with `nn.vmap` and mixed with
one einsum; the only Python loops run over layers.

Mixing / routing weights are sown for logging; get them with

    out, state = net.apply(params, obs, task_id, mutable=["intermediates"])
    state["intermediates"]["routing"]  # a 1-tuple holding the array (flax `sow` semantics)

  PaCo:        "compositional_weights"  (B, K)     the task's vector w_tau.
  CARE:        "attention"              (B, k)     softmax weights over the encoders.
  SoftModular: "routing"                (B, L-1, n, n)  row j of matrix l: module j of layer
                                                   l+1's weights over the modules of layer l;
               "output_routing"         (B, n)     weights over the last layer's modules.

Initialisation follows each method's public code, not `agents.networks.Linear`: none of the
three references uses PyTorch's default Linear init (details in each class). Hence the layers
here are `nn.Dense` with explicit initialisers instead of `Linear` / `MLP`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.networks import per_sample
from training.errors import UsageError

Initializer = Callable[..., jax.Array]

PACO_VECTOR_NAME = "compositional_vectors"
"""PaCo's task vectors live at `params["params"][PACO_VECTOR_NAME]`, shape (num_tasks, K)."""

_zeros = nn.initializers.zeros
# Uniform(+-1/sqrt(fan_in)): PyTorch's Linear kernel default, alf's variance_scaling_init with
# gain sqrt(1/3), mode fan_in, uniform.
_uniform_fan_in = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _uniform(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Uniform(+-3e-3) for weights and biases: the "last layer" init of the rlkit family (Soft-Module's
# `uniform_init`, PaCo's critic output layer).
_small_uniform = _uniform(3e-3)


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


def _stacked_dense(
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


# --------------------------------------------------------------------------------------------
# PaCo
# --------------------------------------------------------------------------------------------


def _standard_normal(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype)


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
        phi = self.param(PACO_VECTOR_NAME, _standard_normal, (self.num_tasks, self.num_param_sets))
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
                self.num_param_sets, size, _small_uniform if last else _uniform_fan_in,
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
        bias = self.param("bias", _zeros, (self.num_sets, self.features))
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


# --------------------------------------------------------------------------------------------
# CARE
# --------------------------------------------------------------------------------------------


class CARE(nn.Module):
    """Contextual Attention-based REpresentation learning (Sodhani et al., ICML 2021), as in
    facebookresearch/mtrl (docs_src/source/pages/tutorials/baseline.rst, "CARE" command).

        c    = ContextEncoder(relu(E[task]))                   task encoding, 50-d
        a    = softmax(AttentionMLP(c) / temperature)          (k,), depends on the task only
        e_i  = Encoder_i(obs),  i = 1..k                       50-d each
        out  = Trunk(concat(sum_i a_i e_i, c))                 hidden_sizes, then out_dim

    Sizes (mtrl config/agent/components/metaworld_multitask.yaml task_encoder_cfg.model_cfg
    and metaworld_encoder.yaml `moe` with `agent.encoder_feature_dim: 50` from
    config/agent/state_sac.yaml):
    - `embedding_dim=50`, `context_sizes=(50, 50, 50)`: mtrl TaskEncoder (embedding_dim 50,
      build_mlp(hidden_dim=50, num_layers=2, output_dim=50): two hidden layers + output).
    - `encoder_sizes=(50, 50)`: moe_layer.FeedForward(num_layers=2, hidden_features=50,
      out_features=feature_dim=50), i.e. obs -> 50 -> ReLU -> 50, output linear.
    - `attention_hidden=(50, 50)`, `temperature=1.0`: encoder.moe.task_id_to_encoder_id_cfg
      .attention (hidden_dim 50, num_layers 2, soft attention), then -> k logits.
    - Trunk: mtrl Actor/Critic build_mlp(hidden_dim=400, num_layers=3) = hidden_sizes
      (400, 400, 400) then the output layer, on the 100-d concatenation.
    Init (mtrl/agent/utils.py `weight_init`, applied to every component): xavier_uniform
    kernels (per expert for the stacked encoders) and zero biases; the task embedding table
    keeps torch nn.Embedding's N(0, 1) (weight_init does not touch nn.Embedding).

    Deviations:
    - mtrl's CARE feeds the task encoder a frozen RoBERTa embedding of the task description
      (pretrained_embedding_cfg.should_use=True: 768-d -> ReLU -> Linear(2*50) -> ReLU ->
      Linear(50) -> ReLU). No sentence-embedding model with its weights inside a PyPI package
      is available here, so we use mtrl's other path (should_use=False): a learned N(0, 1)
      embedding of the task id followed by ReLU. The attention is therefore computed from a
      learned task embedding, not from a language description.
    - mtrl shares one task encoder between actor and critic, trains it from the critic loss
      only (losses_to_train), ties the actor's encoders to the critic's and detaches them in
      the actor update. Those are training-loop choices; here every network owns its task
      encoder and encoders, and a caller wanting mtrl's scheme must stop gradients itself.
    - mtrl's attention config spells `should_detach_task-encoding`, so the detach flag read by
      AttentionBasedExperts is missing (None under hydra 1.0 / omegaconf 2.0) and the
      attention is NOT detached from the task encoding; we match that (no stop_gradient).
    - mtrl normalises the mixture by sum(a) (= 1 for softmax); omitted.
    """

    num_tasks: int
    out_dim: int
    hidden_sizes: Sequence[int]
    num_encoders: int
    embedding_dim: int = 50
    context_sizes: Sequence[int] = (50, 50, 50)
    encoder_sizes: Sequence[int] = (50, 50)
    attention_hidden: Sequence[int] = (50, 50)
    temperature: float = 1.0

    @nn.compact
    def __call__(self, obs, task_id):
        task_id = per_sample(task_id, obs)
        xavier = nn.initializers.xavier_uniform()
        table = self.param(
            "task_embedding", _standard_normal, (self.num_tasks, self.embedding_dim)
        )
        context = _DenseStack(self.context_sizes, xavier, _zeros, name="context_encoder")(
            nn.relu(jnp.take(table, task_id, axis=0))
        )
        logits = _DenseStack(
            (*self.attention_hidden, self.num_encoders), xavier, _zeros, name="attention_mlp"
        )(context)
        attention = jax.nn.softmax(logits / self.temperature, axis=-1)
        self.sow("intermediates", "attention", attention)
        encoders = nn.vmap(
            _DenseStack,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=-2,
            axis_size=self.num_encoders,
        )(self.encoder_sizes, xavier, _zeros, name="encoders")
        encoding = jnp.einsum("bk,bkh->bh", attention, encoders(obs))
        features = jnp.concatenate([encoding, context], axis=-1)
        return _DenseStack(
            (*self.hidden_sizes, self.out_dim), xavier, _zeros, name="trunk"
        )(features)


# --------------------------------------------------------------------------------------------
# Soft Modularization
# --------------------------------------------------------------------------------------------

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
            return nn.Dense(size, kernel_init=_small_uniform, bias_init=_small_uniform,
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

        h = _stacked_dense(n, self.module_hidden, hid_k, hid_b, in_axes=None,
                           name="modules_0")(base)  # (B, n, module_hidden)
        for layer in range(1, self.module_layers):
            mixed = nn.relu(jnp.einsum("...ji,...ih->...jh", routing[..., layer - 1, :, :], h))
            h = _stacked_dense(n, self.module_hidden, hid_k, hid_b, in_axes=-2,
                               name=f"modules_{layer}")(mixed)
        out = nn.relu(jnp.einsum("...i,...ih->...h", output_routing, h))
        return nn.Dense(self.out_dim, kernel_init=_small_uniform, bias_init=_small_uniform,
                        name="output")(out)
