"""Named configurations. The paper-sized ones follow MOORE's Meta-World scripts (REFERENCE.md).

Protocols:
- default (Meta-World+): 500-step episodes, 50 deterministic evaluation episodes per task.
- `*_paper`: MOORE paper's protocol, 150-step episodes, 10 stochastic evaluation episodes.
"""

from __future__ import annotations

import dataclasses

from agents.networks import NetworkConfig
from agents.sac.train import SACConfig
from training.config import Config, EnvConfig, EvalConfig, TrainConfig
from training.errors import UsageError

_PAPER_NET = (400, 400, 400)


def _mt(suite: str, arch: str, experts: int, buffer: int) -> Config:
    return Config(
        env=EnvConfig(suite=suite),
        network=NetworkConfig(arch=arch, hidden_sizes=_PAPER_NET, num_experts=experts),
        sac=SACConfig(buffer_size_per_task=buffer),
    )


def _paper_protocol(cfg: Config) -> Config:
    return dataclasses.replace(
        cfg,
        env=dataclasses.replace(cfg.env, max_episode_steps=150),
        eval=EvalConfig(episodes=10, deterministic=False),
    )


# A few minutes on a laptop CPU: small MOORE, 150-step episodes, short warm-up.
DEMO = Config(
    env=EnvConfig(suite="mt10", max_episode_steps=150),
    network=NetworkConfig(arch="moore", hidden_sizes=(128, 128), num_experts=4),
    sac=SACConfig(batch_size_per_task=32, buffer_size_per_task=30_000,
                  critic_warmup=600, actor_warmup=900),
    train=TrainConfig(total_steps_per_task=15_000, chunk_steps=50, eval_every=7_500,
                      checkpoint_every=7_500),
    eval=EvalConfig(episodes=5, deterministic=True),
)

PRESETS: dict[str, Config] = {
    "demo": DEMO,
    "mt10_mtsac": _mt("mt10", "mtmlp", 1, 1_000_000),
    "mt10_mhsac": _mt("mt10", "multihead", 1, 1_000_000),
    "mt10_moe": _mt("mt10", "moe", 4, 1_000_000),
    "mt10_moore": _mt("mt10", "moore", 4, 1_000_000),
    "mt50_mtsac": _mt("mt50", "mtmlp", 1, 100_000),
    "mt50_moore": _mt("mt50", "moore", 6, 100_000),
}
PRESETS["mt10_moore_paper"] = _paper_protocol(PRESETS["mt10_moore"])
PRESETS["mt10_moe_paper"] = _paper_protocol(PRESETS["mt10_moe"])
PRESETS["mt50_moore_paper"] = _paper_protocol(PRESETS["mt50_moore"])

DESCRIPTIONS = {
    "demo": "small MOORE on MT10, a few minutes on a laptop CPU (the default run)",
    "mt10_mtsac": "MTSAC: shared 3x400 MLP with one-hot input, MT10",
    "mt10_mhsac": "multi-head SAC: shared 3x400 MLP, one head per task, MT10",
    "mt10_moe": "MoE: 4 experts of 3x400, task-weighted, no orthogonalisation, MT10",
    "mt10_moore": "MOORE: 4 orthogonal experts of 3x400, MT10 (Meta-World+ protocol)",
    "mt50_mtsac": "MTSAC on MT50",
    "mt50_moore": "MOORE: 6 orthogonal experts, MT50 (Meta-World+ protocol)",
    "mt10_moore_paper": "MOORE, MT10, MOORE paper protocol (150-step episodes, 10 stochastic "
                        "evaluation episodes)",
    "mt10_moe_paper": "MoE, MT10, MOORE paper protocol",
    "mt50_moore_paper": "MOORE, MT50, MOORE paper protocol",
}


def get_preset(name: str, seed: int = 0) -> Config:
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], preset=name, seed=seed)
