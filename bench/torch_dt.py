"""Plain PyTorch decision transformer, the `mtdt` variant of agents/dt/networks.py, for the
JAX-vs-PyTorch training-throughput benchmark (bench/bench_dt.py). Benchmark-only.

Written the way the reference implementations compute it (Chen et al.'s DT and Prompt-DT's
MTDT baseline, both on HuggingFace's GPT2Model), but self-contained, without `transformers`:

- a learned timestep nn.Embedding added to each of the step's tokens, no positional embedding;
- Linear embeddings of the return-to-go, the state and the (continuous) action;
- the task one-hot through a Linear, added to every token (MTDT);
- tokens interleaved (R_1, s_1, a_1, R_2, ...), then LayerNorm and dropout (GPT-2's embd_pdrop);
- GPT-2 pre-LN blocks: x + drop(attn(ln_1(x))), x + drop(mlp(ln_2(x))), with causal
  self-attention (qkv Linear(d, 3d), heads split as GPT-2's `_split_heads`, attention
  dropout, out Linear(d, d)) and an MLP d -> 4d -> d with ReLU (the activation DT's and
  Prompt-DT's GPT2Config set);
- a final LayerNorm, and the action predicted from each s_t token by Linear + tanh.

Equal to ours by construction, so that `load_flax_params` can copy our weights in and the
outputs agree (tests/test_bench_dt.py); where the two could differ:
- Attention is torch's own fused path, `F.scaled_dot_product_attention` with a boolean mask
  (causal AND key-not-padding), which is what a reasonable PyTorch user writes today, rather
  than GPT-2's eager matmul-softmax-matmul with an additive mask. For a left-padding query
  every key is masked; the mask lets such a query see itself (the diagonal) so no row is
  empty (HuggingFace's SDPA path "unmasks" such rows for the same reason). Valid tokens never
  attend to padding, so their outputs are those of the unpadded sequence either way; outputs
  at padding steps differ from ours (ours attends uniformly there) and are never used.
- LayerNorm epsilon is GPT-2's 1e-5, as in our model.
- Initialisation is torch's defaults (nn.Linear, nn.Embedding N(0, 1), LayerNorm 1, 0), not
  GPT-2's N(0, 0.02); throughput does not depend on it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5  # GPT-2's, as agents/dt/networks.py


class Block(nn.Module):
    """GPT-2 block, pre-LayerNorm, dropout on the attention weights and on both residual
    branches."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.ln_1 = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.attn_out = nn.Linear(embed_dim, embed_dim)
        self.ln_2 = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.fc = nn.Linear(embed_dim, 4 * embed_dim)
        self.mlp_out = nn.Linear(4 * embed_dim, embed_dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, T, d); allowed (B, 1, T, T) bool, True where the query may see the key."""
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))  # (B, h, T, c)
        # torch's fused attention kernel, boolean mask; scale 1/sqrt(d/h) by default.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, d)
        x = x + self.resid_drop(self.attn_out(y))
        y = self.mlp_out(F.relu(self.fc(self.ln_2(x))))
        return x + self.resid_drop(y)


class TorchDT(nn.Module):
    """MTDT with continuous actions. forward(returns_to_go (B, K, 1), states (B, K, S),
    actions (B, K, A), timesteps (B, K) int, attention_mask (B, K) (1 valid, 0 left padding),
    task_id (B,) int) -> tanh'd action predictions (B, K, A)."""

    def __init__(self, state_dim: int, action_dim: int, num_tasks: int, *,
                 embed_dim: int = 128, num_layers: int = 3, num_heads: int = 1,
                 dropout: float = 0.1, max_timestep: int = 1000):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
        self.num_tasks, self.max_timestep = num_tasks, max_timestep
        d = embed_dim
        self.embed_timestep = nn.Embedding(max_timestep, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(state_dim, d)
        self.embed_action = nn.Linear(action_dim, d)
        self.embed_task = nn.Linear(num_tasks, d)
        self.embed_ln = nn.LayerNorm(d, eps=LN_EPS)
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, num_heads, dropout) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d, eps=LN_EPS)
        self.predict_action = nn.Linear(d, action_dim)

    def forward(self, returns_to_go, states, actions, timesteps, attention_mask, task_id):
        b, k = states.shape[:2]
        time = self.embed_timestep(timesteps.clamp(0, self.max_timestep - 1))
        tokens = torch.stack([self.embed_return(returns_to_go) + time,
                              self.embed_state(states) + time,
                              self.embed_action(actions) + time], dim=2)  # (B, K, 3, d)
        x = tokens.reshape(b, 3 * k, -1)
        one_hot = F.one_hot(task_id, self.num_tasks).to(x.dtype)
        x = x + self.embed_task(one_hot)[:, None, :]
        x = self.embed_drop(self.embed_ln(x))

        n = 3 * k
        valid = (attention_mask > 0).repeat_interleave(3, dim=1)  # (B, 3K)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        allowed = ((causal & valid[:, None, :]) | eye)[:, None]  # (B, 1, 3K, 3K)
        for block in self.blocks:
            x = block(x, allowed)
        x = self.ln_f(x).reshape(b, k, 3, -1)
        return torch.tanh(self.predict_action(x[:, :, 1]))  # from the s_t tokens


def make_torch_dt(state_dim: int, action_dim: int, num_tasks: int, *, embed_dim: int,
                  num_layers: int, num_heads: int, dropout: float = 0.1,
                  max_timestep: int = 1000) -> TorchDT:
    return TorchDT(state_dim, action_dim, num_tasks, embed_dim=embed_dim,
                   num_layers=num_layers, num_heads=num_heads, dropout=dropout,
                   max_timestep=max_timestep)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step_fn(model: TorchDT, *, lr: float = 1e-4, weight_decay: float = 1e-4,
                  clip: float = 0.25):
    """One training step as DT's trainer: MSE on the actions of the valid steps
    (`pred[mask > 0]`), AdamW (torch's defaults otherwise), gradient-norm clipping.
    Returns step(batch) -> loss (float); `step.optimizer` is the optimiser."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step(batch: dict) -> float:
        model.train()
        pred = model(batch["returns_to_go"], batch["states"], batch["actions"],
                     batch["timesteps"], batch["attention_mask"], batch["task_id"])
        valid = batch["attention_mask"] > 0
        loss = F.mse_loss(pred[valid], batch["actions"][valid])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss.item()

    step.optimizer = optimizer
    return step


def load_flax_params(model: TorchDT, params) -> None:
    """Copy the `params` of our `mtdt` DecisionTransformer (continuous actions) into `model`.
    Flax Dense kernels are (in, out); nn.Linear weights are (out, in)."""

    def t(x):
        return torch.tensor(np.asarray(x), dtype=torch.float32)

    def dense(linear: nn.Linear, tree):
        tree = tree["Dense_0"]
        linear.weight.copy_(t(tree["kernel"]).T)
        linear.bias.copy_(t(tree["bias"]))

    def norm(ln: nn.LayerNorm, tree):
        ln.weight.copy_(t(tree["scale"]))
        ln.bias.copy_(t(tree["bias"]))

    with torch.no_grad():
        emb = params["embed"]
        model.embed_timestep.weight.copy_(t(emb["timestep"]["embedding"]))
        dense(model.embed_return, emb["return"])
        dense(model.embed_state, emb["state"])
        dense(model.embed_action, emb["action"])
        dense(model.embed_task, params["embed_task"])
        norm(model.embed_ln, params["embed_ln"])
        for i, block in enumerate(model.blocks):
            p = params[f"block_{i}"]
            norm(block.ln_1, p["ln_1"])
            norm(block.ln_2, p["ln_2"])
            for name in ("qkv", "attn_out", "fc", "mlp_out"):
                dense(getattr(block, name), p[name]["Linear_0"])
        norm(model.ln_f, params["ln_f"])
        dense(model.predict_action, params["action_head"])
