"""Decision transformers for multi-task offline RL: MTDT, Prompt-DT, HarmoDT and MTBC.

One module, `DecisionTransformer`, four variants (`DTConfig.variant`):

- `mtdt` (DT, Chen et al. 2021, made multi-task): each step t gives three tokens
  (R_t, s_t, a_t), R_t the return-to-go. Conditioning on the return still to be collected,
  rather than on a value estimate, is what lets DT do offline RL by plain sequence modelling:
  at test time a high target return asks for expert behaviour. The task is given as a one-hot
  through a linear layer added to every token (the MTDT baseline of Prompt-DT / HarmoDT).
- `promptdt` (Xu et al. 2022): no task id; instead a short trajectory segment of the task
  (e.g. one episode x 5 steps of its best trajectory) is prepended. The prompt has its own
  embedding layers: a demonstration plays a different role from the agent's own history, and
  separate embeddings let the model tell the two apart without a segment embedding.
- `harmodt` (Hu et al. 2024): Prompt-DT whose transformer-block kernels are multiplied by a
  binary mask per task (`agents/nn/masks.py`'s MaskedDense, initial density 0.8 spread over the
  layers by ERK). Only the blocks are masked, not embeddings or heads, as in its code: the
  blocks are where task gradients conflict; the small input/output maps stay shared.
- `mtbc`: the MTDT network without return tokens (tokens (s_t, a_t)): behaviour cloning with
  the same architecture, the baseline that shows what return conditioning adds.

The action a_t is predicted from the output at the s_t token, so it sees R_<=t, s_<=t and
a_<t but never a_t. Continuous actions go through tanh (actions are in [-1, 1]) and are
trained with MSE (DT); discrete actions give logits trained with cross-entropy (Multi-Game DT,
the template for MiniGrid).

Transformer: GPT-2 as DT uses it: no positional embedding (the learned embedding of the
environment timestep, added to each of the step's tokens, replaces it, so a left-padded
sequence computes exactly what the unpadded one does), a LayerNorm on the embedded tokens,
pre-LayerNorm blocks of causal self-attention and a 4d ReLU MLP with residual dropout, and a
final LayerNorm.

Deviations from the papers' code:
- Dense layers start as PyTorch's nn.Linear default (as the rest of this code base, and as
  MaskedDense must), not GPT-2's N(0, 0.02).
- No state or return prediction heads: DT's published results train on the action loss only;
  Multi-Game DT's return classification is left to whoever adds its data pipeline.
- Timesteps are clipped to `max_timestep - 1` rather than indexing out of the table.
- The embedding LayerNorm is shared by the prompt tokens and the main tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from agents.nn.layers import Linear
from agents.nn.masks import MASKS, PROBE, MaskedDense, erk_densities
from training.errors import UsageError, check_fields

VARIANTS = ("mtdt", "promptdt", "harmodt", "mtbc")
LN_EPS = 1e-5  # GPT-2's (and so DT's) LayerNorm epsilon; flax's default is 1e-6
ACTION_KINDS = ("continuous", "discrete")
PROMPT_VARIANTS = ("promptdt", "harmodt")
TASK_ID_VARIANTS = ("mtdt", "mtbc", "harmodt")
PROMPT_FIELDS = ("returns_to_go", "states", "actions", "timesteps", "attention_mask")


@dataclass(frozen=True)
class DTConfig:
    """Defaults are DT's (Chen et al., gym): K 20, d 128, 3 layers, 1 head, dropout 0.1.

    `HARMODT` below holds HarmoDT's preset (K 20, 6 layers, 8 heads, d 256). `prompt_length`
    is Prompt-DT's steps per prompt (5); the data pipeline builds prompts of that length.
    `mask_density` is HarmoDT's initial fraction of block weights each task keeps (0.8).
    """

    variant: str = "mtdt"
    action_kind: str = "continuous"
    context_len: int = 20
    embed_dim: int = 128
    num_layers: int = 3
    num_heads: int = 1
    dropout: float = 0.1
    max_timestep: int = 1000  # Meta-World episodes are 500 steps; MiniGrid's at most 720
    prompt_length: int = 5
    mask_density: float = 0.8
    # Training (agents/dt/learner.py, agents/dt/loop.py): DT's optimiser and batches.
    dataset: str = ""  # directory written by `launch.py collect` (required to train)
    batch_per_task: int = 16  # context windows of every task in each batch (Prompt-DT: 16)
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000  # linear learning-rate warm-up from 0
    grad_clip: float = 0.25  # global norm
    updates: int = 100_000  # gradient steps; train.eval_every / checkpoint_every count these
    rtg_scale: float = 1e-3  # returns-to-go are fed as return * rtg_scale (DT: 1/1000;
    # MiniGrid's returns are in [0, 1]: its presets use 1)
    # Evaluation conditions each task on target_return_scale x its best return in the data.
    target_return_scale: float = 1.0
    prompt_episodes: int = 1  # prompts come from each task's best episodes in the data
    # States fed normalised by their task's mean and std in the data (DT, Prompt-DT, HarmoDT).
    normalize_states: bool = True
    # HarmoDT's prune-and-regrow: every mask_update_every updates each task drops and regrows
    # k weights of its whole mask (all block kernels ranked together), k following
    # 0 -> mask_update_max -> 0 (cosine), scores with gamma.
    mask_update_every: int = 1000
    mask_update_max: int = 100
    mask_update_gamma: float = 10.0


    HELP: ClassVar[dict[str, str]] = {
        "variant": "mtdt, promptdt, harmodt (Prompt-DT + weight masks) or mtbc (no returns)",
        "action_kind": "continuous (Meta-World) or discrete (MiniGrid)",
        "context_len": "steps K in the model's context",
        "embed_dim": "token width d",
        "num_layers": "transformer blocks",
        "num_heads": "attention heads (must divide embed_dim)",
        "dropout": "dropout rate in [0, 1)",
        "max_timestep": "size of the timestep table (must cover an episode)",
        "prompt_length": "Prompt-DT: steps per prompt",
        "mask_density": "HarmoDT: initial fraction of block weights each task keeps",
        "dataset": "dataset directory written by `launch.py collect` (required)",
        "batch_per_task": "context windows of every task per batch",
        "learning_rate": "AdamW peak learning rate",
        "weight_decay": "AdamW weight decay",
        "warmup_steps": "linear learning-rate warm-up, in updates",
        "grad_clip": "global-norm gradient clipping; 0: none",
        "updates": "gradient steps in the run (train.eval_every and checkpoint_every count "
                   "these)",
        "rtg_scale": "returns-to-go are fed as return x this",
        "target_return_scale": "evaluation target: this x each task's best return in the data",
        "prompt_episodes": "prompts come from each task's best this-many episodes",
        "normalize_states": "feed states normalised by their task's mean and std",
        "mask_update_every": "HarmoDT: updates between prune-and-regrow rounds",
        "mask_update_max": "HarmoDT: most weights dropped and regrown in a round",
        "mask_update_gamma": "HarmoDT: weight of gradient agreement in the prune score",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"variant": VARIANTS,
                                                     "action_kind": ACTION_KINDS}

    def check(self) -> None:
        """The bounds of this section's own fields (UsageError naming the option); the
        model's own (heads, sizes, variant) are make_dt's."""
        if not self.dataset:
            raise UsageError("algo dt trains from a dataset: pass --dt.dataset DIR (make one "
                             "with `python launch.py collect`)")
        check_fields("dt", self, positive=("batch_per_task", "updates", "prompt_episodes",
                                           "mask_update_every"),
                     non_negative=("warmup_steps", "mask_update_max"),
                     positive_number=("learning_rate", "rtg_scale", "target_return_scale"))
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UsageError(f"--dt.weight_decay and --dt.grad_clip must be >= 0, got "
                             f"{self.weight_decay}, {self.grad_clip}")

HARMODT = DTConfig(variant="harmodt", context_len=20, embed_dim=256, num_layers=6, num_heads=8)


def _uses_returns(cfg: DTConfig) -> bool:
    return cfg.variant != "mtbc"


def block_kernel_shapes(d: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of one block's kernels: qkv, attention output, MLP in, MLP out."""
    return [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]


# Per-sample task ids: MaskedDense's own per-sample path computes every task's product for
# every row, which for (B, tokens, d) inputs and 50 tasks is far too much; vmapping its
# scalar-id path over the batch gathers one masked kernel per sample instead. Variables are
# broadcast, so the parameter tree is the same as the scalar path's.
_PerSampleMaskedDense = nn.vmap(
    MaskedDense, in_axes=(0, 0), out_axes=0,
    variable_axes={"params": None, MASKS: None, PROBE: None},
    split_rngs={"params": False})


class _BlockDense(nn.Module):
    """A block's Dense layer: plain (shared), or masked per task (HarmoDT)."""

    features: int
    num_tasks: int
    density: float | None  # None: not masked

    @nn.compact
    def __call__(self, x, task_id):
        if self.density is None:
            return Linear(self.features)(x)
        if task_id.ndim == 0:
            return MaskedDense(self.features, self.num_tasks, self.density, name="masked")(
                x, task_id)
        return _PerSampleMaskedDense(self.features, self.num_tasks, self.density,
                                     name="masked")(x, task_id)


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which every input bit
    flips each output bit with probability about 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hashed_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits of `shape` from a (2,) uint32 seed: each element's flat index,
    spread by an odd multiplier, through two seeded rounds of `_fmix32`.

    A counter-based hash (like Philox or Threefry, far cheaper): some ten integer operations
    an element, which XLA fuses into the op that uses them, against Threefry-2x32's twenty
    rounds. Good enough for dropout masks; not for anything that needs a cryptographic or
    well-tested generator. Indices are uint32: an array past 2^32 elements would repeat
    its mask."""
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    x = _fmix32(index * jnp.uint32(0x9E3779B9) + seed[0])
    return _fmix32(x ^ seed[1])


class Dropout(nn.Module):
    """Dropout as flax's `nn.Dropout` (keep with probability 1 - rate, scaled by
    1 / (1 - rate)), but its mask comes from `hashed_bits` seeded by two words of the
    module's own `dropout` key, not from Threefry bits of every element: on the CPU that
    drawing was about a sixth of a DT training step (bench/bench_dt.py). Deviation from DT's
    code: the masks differ from those of any other generator (same distribution); the keep
    probability is exact to 2^-32."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        seed = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
        threshold = jnp.uint32(min(round(self.rate * 2.0 ** 32), 2 ** 32 - 1))
        keep = hashed_bits(seed, x.shape) >= threshold
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class Block(nn.Module):
    """GPT-2 block: x + attn(ln(x)), then x + mlp(ln(x)), dropout on each residual branch."""

    embed_dim: int
    num_heads: int
    dropout: float
    num_tasks: int
    densities: tuple[float, float, float, float] | None  # qkv, attn_out, fc, mlp_out

    @nn.compact
    def __call__(self, x, allowed, task_id, deterministic):
        d, h = self.embed_dim, self.num_heads
        dens = self.densities or (None,) * 4
        b, t = x.shape[:2]

        y = nn.LayerNorm(epsilon=LN_EPS, name="ln_1")(x)
        qkv = _BlockDense(3 * d, self.num_tasks, dens[0], name="qkv")(y, task_id)
        # Heads next to the batch, (b, h, t, c): both attention products are then plain
        # batched matmuls; with the heads between the tokens and the channels, XLA copied
        # each operand into that layout, forward and backward (1.3x the attention's time at
        # 8 heads, bench/bench_dt.py's HarmoDT size).
        q, k, v = qkv.reshape(b, t, 3, h, d // h).transpose(2, 0, 3, 1, 4)
        scores = jnp.einsum("bhqc,bhkc->bhqk", q, k) / math.sqrt(d // h)
        # A finite minimum, not -inf: a padding query with no valid key attends uniformly
        # instead of producing NaN (its output is never used).
        scores = jnp.where(allowed[:, None], scores, jnp.finfo(scores.dtype).min)
        probs = Dropout(self.dropout)(jax.nn.softmax(scores, axis=-1), deterministic)
        y = jnp.einsum("bhqk,bhkc->bqhc", probs, v).reshape(b, t, d)
        y = _BlockDense(d, self.num_tasks, dens[1], name="attn_out")(y, task_id)
        x = x + Dropout(self.dropout)(y, deterministic)

        y = nn.LayerNorm(epsilon=LN_EPS, name="ln_2")(x)
        # ReLU: the activation DT's, Prompt-DT's and HarmoDT's GPT-2 configs set (not GELU).
        y = nn.relu(_BlockDense(4 * d, self.num_tasks, dens[2], name="fc")(y, task_id))
        y = _BlockDense(d, self.num_tasks, dens[3], name="mlp_out")(y, task_id)
        return x + Dropout(self.dropout)(y, deterministic)


class StepEmbedding(nn.Module):
    """Embeds each step into its tokens, (R_t, s_t, a_t) or (s_t, a_t), interleaved in time
    order, each plus the step's learned timestep embedding. Returns (B, n * K, d)."""

    embed_dim: int
    action_dim: int
    action_kind: str
    max_timestep: int
    use_returns: bool

    @nn.compact
    def __call__(self, returns_to_go, states, actions, timesteps):
        d = self.embed_dim
        time = nn.Embed(self.max_timestep, d, name="timestep")(
            jnp.clip(timesteps, 0, self.max_timestep - 1))
        if self.action_kind == "discrete":
            # Multi-Game DT / DT-Atari embed the action index (tanh as in DT's Atari code).
            action = jnp.tanh(nn.Embed(self.action_dim, d, name="action")(actions))
        else:
            action = Linear(d, name="action")(actions)
        tokens = [Linear(d, name="state")(states) + time, action + time]
        if self.use_returns:
            tokens.insert(0, Linear(d, name="return")(returns_to_go) + time)
        stacked = jnp.stack(tokens, axis=2)  # (B, K, n, d)
        return stacked.reshape(stacked.shape[0], -1, d)


class DecisionTransformer(nn.Module):
    """See the module docstring. Call with

    returns_to_go (B, K, 1), states (B, K, S), actions (B, K, A) float or (B, K) int,
    timesteps (B, K) int, attention_mask (B, K) (1 valid, 0 left padding; default all valid),
    task_id (B,) int or a scalar (mtdt / mtbc / harmodt), prompt (promptdt / harmodt): a dict
    of the same five fields with length P,
    and get action predictions (B, K, A): tanh'd actions or logits.
    """

    cfg: DTConfig
    state_dim: int
    action_dim: int
    num_tasks: int

    @nn.compact
    def __call__(self, returns_to_go, states, actions, timesteps, attention_mask=None,
                 task_id=None, prompt=None, deterministic: bool = True):
        cfg = self.cfg
        d = cfg.embed_dim
        batch, length = states.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        if task_id is None and cfg.variant in TASK_ID_VARIANTS:
            raise ValueError(f"variant {cfg.variant} needs task_id")
        if (prompt is None) != (cfg.variant not in PROMPT_VARIANTS):
            raise ValueError(f"variant {cfg.variant}: prompt is "
                             f"{'required' if prompt is None else 'not used'}")
        task_id = None if task_id is None else jnp.asarray(task_id, jnp.int32)
        use_returns = _uses_returns(cfg)
        n = 3 if use_returns else 2

        def embedder(name):
            return StepEmbedding(d, self.action_dim, cfg.action_kind, cfg.max_timestep,
                                 use_returns, name=name)

        x = embedder("embed")(returns_to_go, states, actions, timesteps)
        valid = jnp.repeat(attention_mask > 0, n, axis=1)
        if cfg.variant in ("mtdt", "mtbc"):
            one_hot = jax.nn.one_hot(jnp.broadcast_to(task_id, (batch,)), self.num_tasks,
                                     dtype=x.dtype)
            x = x + Linear(d, name="embed_task")(one_hot)[:, None, :]
        prompt_tokens = 0
        if prompt is not None:
            p = embedder("prompt_embed")(prompt["returns_to_go"], prompt["states"],
                                         prompt["actions"], prompt["timesteps"])
            prompt_mask = prompt.get("attention_mask")
            if prompt_mask is None:
                prompt_mask = jnp.ones(p.shape[:2], bool)
            else:
                prompt_mask = jnp.repeat(prompt_mask > 0, n, axis=1)
            prompt_tokens = p.shape[1]
            x = jnp.concatenate([p, x], axis=1)
            valid = jnp.concatenate([prompt_mask, valid], axis=1)
        x = nn.LayerNorm(epsilon=LN_EPS, name="embed_ln")(x)
        x = Dropout(cfg.dropout)(x, deterministic)

        tokens = x.shape[1]
        causal = jnp.tril(jnp.ones((tokens, tokens), bool))
        allowed = causal[None] & valid[:, None, :]  # (B, query, key)
        densities = None
        if cfg.variant == "harmodt":
            densities = erk_densities(block_kernel_shapes(d) * cfg.num_layers, cfg.mask_density)
        for i in range(cfg.num_layers):
            layer_dens = None if densities is None else tuple(densities[4 * i:4 * i + 4])
            x = Block(d, cfg.num_heads, cfg.dropout, self.num_tasks, layer_dens,
                      name=f"block_{i}")(x, allowed, task_id, deterministic)
        x = nn.LayerNorm(epsilon=LN_EPS, name="ln_f")(x)

        steps = x[:, prompt_tokens:].reshape(batch, length, n, d)
        state_out = steps[:, :, n - 2]  # the s_t token: a_t is predicted before it is seen
        out = Linear(self.action_dim, name="action_head")(state_out)
        return jnp.tanh(out) if cfg.action_kind == "continuous" else out


def make_dt(cfg: DTConfig, state_dim: int, action_dim: int, num_tasks: int
            ) -> DecisionTransformer:
    """The decision transformer of `cfg.variant`, after checking the config.

    `action_dim` is the action vector's size (continuous) or the number of actions
    (discrete). HarmoDT keeps its masks in the `masks` collection (and the zero `mask_probe`
    collection whose gradient gives the regrow scores), exactly as agents/nn/masks.py's
    `weightmask` network, so `regrow_tree` and `mask_statistics` apply unchanged.
    """
    if cfg.variant not in VARIANTS:
        raise UsageError(f"unknown dt variant '{cfg.variant}'; valid: {', '.join(VARIANTS)}")
    if cfg.action_kind not in ACTION_KINDS:
        raise UsageError(f"unknown dt action_kind '{cfg.action_kind}'; valid: "
                         f"{', '.join(ACTION_KINDS)}")
    if cfg.embed_dim % cfg.num_heads:
        raise UsageError(f"dt embed_dim {cfg.embed_dim} must be a multiple of num_heads "
                         f"{cfg.num_heads}")
    if min(cfg.context_len, cfg.num_layers, cfg.max_timestep, cfg.prompt_length) < 1:
        raise UsageError("dt context_len, num_layers, max_timestep and prompt_length must be "
                         ">= 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UsageError(f"dt dropout must be in [0, 1), got {cfg.dropout}")
    if not 0.0 < cfg.mask_density <= 1.0:
        raise UsageError(f"dt mask_density must be in (0, 1], got {cfg.mask_density}")
    if min(state_dim, action_dim, num_tasks) < 1:
        raise UsageError("state_dim, action_dim and num_tasks must be >= 1")
    return DecisionTransformer(cfg, state_dim, action_dim, num_tasks)
