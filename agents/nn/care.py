"""CARE (Sodhani et al., 2021): k observation encoders mixed by softmax attention from a
task encoding, concatenated with it, then the trunk."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.layers import (
    _DenseStack,
    per_sample,
    standard_normal_init,
    zeros_init,
)


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
            "task_embedding", standard_normal_init, (self.num_tasks, self.embedding_dim)
        )
        context = _DenseStack(self.context_sizes, xavier, zeros_init, name="context_encoder")(
            nn.relu(jnp.take(table, task_id, axis=0))
        )
        logits = _DenseStack(
            (*self.attention_hidden, self.num_encoders), xavier, zeros_init, name="attention_mlp"
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
        )(self.encoder_sizes, xavier, zeros_init, name="encoders")
        encoding = jnp.einsum("bk,bkh->bh", attention, encoders(obs))
        features = jnp.concatenate([encoding, context], axis=-1)
        return _DenseStack(
            (*self.hidden_sizes, self.out_dim), xavier, zeros_init, name="trunk"
        )(features)
