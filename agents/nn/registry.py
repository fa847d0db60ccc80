"""The architecture registry: `NetworkConfig` and `make_network(cfg, num_tasks, out_dim)`, the
one place that maps a `network.arch` name to its module (one file each beside this one).

Every architecture maps observations (B, D) and integer task ids (B,) to outputs (B, out_dim),
`net.apply(params, obs, task_id)`, so any of them plugs into any algorithm:

- `mtmlp`, `multihead` (mtmlp.py): shared MLP on concat(obs, one_hot(task)), one output layer
  (MTSAC) or one head per task (MHSAC).
- `moe`, `moore` (moore.py): k expert MLPs on obs mixed by task weights, tanh, per-task heads;
  MOORE orthonormalises the experts' outputs by Gram-Schmidt first (Hendawy et al., ICLR 2024).
- `paco`, `care`, `softmod` (paco.py, care.py, softmod.py).
- `unitmask`, `weightmask` (masks.py): task-conditioned unit and weight masks.

`task_id` is (B,) or a scalar for a batch of one task (the learners vmap their losses over a
task-split batch that way); architectures that do not exploit the scalar form broadcast it.
Experts and heads are stacked parameters evaluated with `nn.vmap` / one einsum, never a Python
loop over experts or tasks.

Encoders (`NetworkConfig.encoder`): `mlp` (flat observations; `hidden_sizes` are the trunk's or
each expert's layers, heads are linear) or `cnn`, MOORE's MiniGrid networks
(moore/utils/networks_ppo.py): observations are flattened (7, 7, 3) images; the trunk or each
expert is Conv(16, 2x2)-ReLU-Conv(32, 2x2)-ReLU-Conv(64, 2x2) -> 1024 features, and
`hidden_sizes` are the Tanh hidden layers of the output head(s) (MOORE: 128). With `cnn`:
`mtmlp` = one CNN (Tanh) + one-hot -> head (MOORE's "SH" network, MTPPO); `multihead` = one
CNN (Tanh) -> per-task heads; `moe` / `moore` = k CNN experts mixed as above, per-task heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn

from agents.nn import moore, mtmlp
from training.errors import UsageError

ARCHITECTURES = ("mtmlp", "multihead", "moe", "moore", "paco", "care", "softmod", "unitmask",
                 "weightmask")
ENCODERS = ("mlp", "cnn")
CNN_ARCHS = ("mtmlp", "multihead", "moe", "moore")


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


    def check(self) -> None:
        """The bounds of this section's own fields; the architecture's own are make_network's."""
        if not self.paco_reset_threshold > 0:
            raise UsageError("--network.paco_reset_threshold must be a positive number, got "
                             f"{self.paco_reset_threshold}")

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
        return mtmlp.OneHotMLP(num_tasks, out_dim, sizes, multi_head=cfg.arch == "multihead",
                         encoder=cfg.encoder)
    if cfg.num_experts < 1:
        raise UsageError(f"network.num_experts must be >= 1, got {cfg.num_experts}")
    if cfg.arch in ("moe", "moore"):
        return moore.MixtureOfExperts(num_tasks, out_dim, sizes, cfg.num_experts,
                                      cfg.arch == "moore", cfg.encoder)
    if cfg.arch in ("unitmask", "weightmask"):
        from agents.nn import masks

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
    from agents.nn import care, paco, softmod

    if cfg.arch == "paco":
        return paco.PaCo(num_tasks, out_dim, sizes, cfg.num_experts)
    if cfg.arch == "care":
        return care.CARE(num_tasks, out_dim, sizes, cfg.num_experts)
    if cfg.module_layers < 2 or cfg.module_hidden < 1:
        raise UsageError("network.module_layers must be >= 2 and network.module_hidden >= 1, "
                         f"got {cfg.module_layers} and {cfg.module_hidden}")
    return softmod.SoftModular(num_tasks, out_dim, sizes, cfg.num_experts, cfg.module_layers,
                               cfg.module_hidden)
