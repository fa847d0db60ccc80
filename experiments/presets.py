"""Named configurations. The paper-sized ones follow MOORE's Meta-World scripts (REFERENCE.md).

Protocols:
- default (Meta-World+): 500-step episodes, 50 deterministic evaluation episodes per task.
- `*_paper`: MOORE paper's protocol, 150-step episodes, 10 stochastic evaluation episodes.
"""

from __future__ import annotations

import dataclasses

from agents.dt.networks import DTConfig
from agents.nn.registry import NetworkConfig
from agents.ppo.learner import PPOConfig
from agents.sac.learner import SACConfig
from training.config import Config, EnvConfig, EvalConfig, TrainConfig
from training.errors import UsageError

_PAPER_NET = (400, 400, 400)


def _mt(suite: str, arch: str, experts: int, buffer: int, hidden=_PAPER_NET,
        **network) -> Config:
    return Config(
        env=EnvConfig(suite=suite),
        network=NetworkConfig(arch=arch, hidden_sizes=hidden, num_experts=experts, **network),
        sac=SACConfig(buffer_size_per_task=buffer),
    )


def _with_surgery(cfg: Config, name: str) -> Config:
    return dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, gradient_surgery=name))


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
PRESETS.update({
    # PaCo: K = 5 (MT10), 20 (MT50) parameter sets, 3x400 (paco-mtrl's MT10/MT50 confs).
    "mt10_paco": _mt("mt10", "paco", 5, 1_000_000),
    "mt50_paco": _mt("mt50", "paco", 20, 100_000),
    # CARE: 4 encoders mixed by attention, 3x400 trunk (mtrl's CARE config).
    "mt10_care": _mt("mt10", "care", 4, 1_000_000),
    "mt50_care": _mt("mt50", "care", 4, 100_000),
    # Soft Modularization: 2x400 base, 4 layers x 4 modules of 128 (Soft-Module's
    # meta_config/*/modular_4_4_2_128_reweight.json; its repo also has a 2x2x256 variant).
    "mt10_softmod": _mt("mt10", "softmod", 4, 1_000_000, hidden=(400, 400)),
    "mt50_softmod": _mt("mt50", "softmod", 4, 100_000, hidden=(400, 400)),
    # Task-conditioned masks on MTSAC's 3x400 trunk: half the units per task (unit masks);
    # HarmoDT's initial density 0.8 for weight masks.
    "mt10_unitmask": _mt("mt10", "unitmask", 1, 1_000_000, mask_density=0.5),
    "mt10_weightmask": _mt("mt10", "weightmask", 1, 1_000_000, mask_density=0.8),
    # Gradient surgery on MTSAC, as the PCGrad paper's Meta-World runs.
    "mt10_pcgrad": _with_surgery(_mt("mt10", "mtmlp", 1, 1_000_000), "pcgrad"),
    "mt10_gradnorm": _with_surgery(_mt("mt10", "mtmlp", 1, 1_000_000), "gradnorm"),
    # Parameter-matched baselines: widened to MOORE's trainable parameter count (actor +
    # critics, `python launch.py params`): 805 wide = 1.002x MOORE MT10; 960 = 1.000x MT50.
    "mt10_mhsac_matched": _mt("mt10", "multihead", 1, 1_000_000, hidden=(805, 805, 805)),
    "mt50_mhsac_matched": _mt("mt50", "multihead", 1, 100_000, hidden=(960, 960, 960)),
})
PRESETS["mt10_moore_paper"] = _paper_protocol(PRESETS["mt10_moore"])
PRESETS["mt10_moe_paper"] = _paper_protocol(PRESETS["mt10_moe"])
PRESETS["mt50_moore_paper"] = _paper_protocol(PRESETS["mt50_moore"])



def _minigrid(size: int, arch: str, experts: int) -> Config:
    """MOORE's MiniGrid protocol: PPO (its defaults), CNN experts and 128-unit Tanh heads,
    2e5 env steps per task, 16 stochastic evaluation episodes per task."""
    return Config(
        algo="ppo",
        env=EnvConfig(suite=f"minigrid_mt{size}"),
        network=NetworkConfig(arch=arch, encoder="cnn", hidden_sizes=(128,),
                              num_experts=experts),
        ppo=PPOConfig(),
        train=TrainConfig(total_steps_per_task=200_000, eval_every=20_000,
                          checkpoint_every=20_000),
        eval=EvalConfig(episodes=16, deterministic=False),
    )


# k = 2 / 3 / 4 experts for MT3 / MT5 / MT7 (the MOORE paper); MoE uses the same k; MTPPO is
# MOORE's single CNN with the one-hot after it ("SH" network).
for _size, _k in ((3, 2), (5, 3), (7, 4)):
    PRESETS[f"minigrid_mt{_size}_moore"] = _minigrid(_size, "moore", _k)
    PRESETS[f"minigrid_mt{_size}_moe"] = _minigrid(_size, "moe", _k)
    PRESETS[f"minigrid_mt{_size}_mtppo"] = _minigrid(_size, "mtmlp", 1)



def _offline(suite: str, variant: str) -> Config:
    """The offline table's protocol (HarmoDT): every variant on HarmoDT's backbone (K 20,
    6 layers, 8 heads, d 256) so that they differ only in how the task is given; DT's
    optimiser; batches of 16 windows per task; 500-step episodes, 50 deterministic evaluation
    episodes per task. The data tier is the dataset: --dt.dataset DIR (launch.py collect)."""
    return Config(
        algo="dt",
        env=EnvConfig(suite=suite),
        dt=DTConfig(variant=variant, context_len=20, embed_dim=256, num_layers=6, num_heads=8),
        train=TrainConfig(eval_every=10_000, checkpoint_every=10_000),
        eval=EvalConfig(episodes=50, deterministic=True),
    )


OFFLINE_VARIANTS = {
    "mtbc": "MTBC: the DT network without returns (behaviour cloning)",
    "mtdt": "MTDT: decision transformer with a task one-hot",
    "promptdt": "Prompt-DT: decision transformer with a 5-step trajectory prompt",
    "harmodt": "HarmoDT: Prompt-DT with per-task weight masks (prune-and-regrow)",
}
for _suite in ("mt10", "mt50"):
    for _variant in OFFLINE_VARIANTS:
        PRESETS[f"{_suite}_{_variant}"] = _offline(_suite, _variant)


def _offline_minigrid(size: int, variant: str) -> Config:
    """The offline protocol on MiniGrid (Multi-Game DT is the template for discrete actions):
    actions are embedded by index and trained with cross-entropy, evaluated by argmax. DT's
    own size (K 20, d 128, 3 layers, 1 head: the 7x7x3 views and 7 actions are far smaller
    than Meta-World's HarmoDT backbone needs), the same for every variant; DT's optimiser;
    batches of 16 windows per task. Returns are in [0, 1], so returns-to-go are not scaled
    (rtg_scale 1); the timestep table covers the suite's longest max_steps. 16 deterministic
    evaluation episodes per task (the MiniGrid PPO protocol's count), on the device.
    The data: --dt.dataset DIR (launch.py collect --source minigrid)."""
    from envs.minigrid import make
    from envs.minigrid.multitask import SUITES

    suite = f"minigrid_mt{size}"
    return Config(
        algo="dt",
        env=EnvConfig(suite=suite),
        dt=DTConfig(variant=variant, action_kind="discrete", context_len=20, embed_dim=128,
                    num_layers=3, num_heads=1, rtg_scale=1.0,
                    max_timestep=max(make(name).max_steps for name in SUITES[suite])),
        train=TrainConfig(eval_every=10_000, checkpoint_every=10_000),
        eval=EvalConfig(episodes=16, deterministic=True),
    )


for _size in (3, 5, 7):
    for _variant in OFFLINE_VARIANTS:
        PRESETS[f"minigrid_mt{_size}_{_variant}"] = _offline_minigrid(_size, _variant)

DESCRIPTIONS = {
    "demo": "small MOORE on MT10, a few minutes on a laptop CPU (the default run)",
    "mt10_mtsac": "MTSAC: shared 3x400 MLP with one-hot input, MT10",
    "mt10_mhsac": "multi-head SAC: shared 3x400 MLP, one head per task, MT10",
    "mt10_moe": "MoE: 4 experts of 3x400, task-weighted, no orthogonalisation, MT10",
    "mt10_moore": "MOORE: 4 orthogonal experts of 3x400, MT10 (Meta-World+ protocol)",
    "mt50_mtsac": "MTSAC on MT50",
    "mt50_moore": "MOORE: 6 orthogonal experts, MT50 (Meta-World+ protocol)",
    "mt10_paco": "PaCo: 5 parameter sets mixed by a task vector, with its task reset, MT10",
    "mt50_paco": "PaCo with 20 parameter sets, MT50",
    "mt10_care": "CARE: 4 observation encoders mixed by task attention, MT10",
    "mt50_care": "CARE on MT50",
    "mt10_softmod": "Soft Modularization: 4 layers x 4 modules routed per task, MT10",
    "mt50_softmod": "Soft Modularization on MT50",
    "mt10_unitmask": "task-conditioned unit masks (learned codes, half the units), MT10",
    "mt10_weightmask": "task-conditioned weight masks with prune-and-regrow (density 0.8), "
                       "MT10",
    "mt10_pcgrad": "MTSAC with PCGrad on the per-task gradients, MT10",
    "mt10_gradnorm": "MTSAC with GradNorm on the critic's per-task gradients, MT10",
    "mt10_mhsac_matched": "multi-head SAC widened to 3x805: MOORE's parameter count, MT10",
    "mt50_mhsac_matched": "multi-head SAC widened to 3x960: MOORE's parameter count, MT50",
    "mt10_moore_paper": "MOORE, MT10, MOORE paper protocol (150-step episodes, 10 stochastic "
                        "evaluation episodes)",
    "mt10_moe_paper": "MoE, MT10, MOORE paper protocol",
    "mt50_moore_paper": "MOORE, MT50, MOORE paper protocol",
}
for _size, _k in ((3, 2), (5, 3), (7, 4)):
    DESCRIPTIONS.update({
        f"minigrid_mt{_size}_moore": f"MOORE-PPO: {_k} orthogonal CNN experts, per-task heads, "
                                     f"MiniGrid MT{_size}",
        f"minigrid_mt{_size}_moe": f"MoE-PPO: {_k} CNN experts (no orthogonalisation), "
                                   f"MiniGrid MT{_size}",
        f"minigrid_mt{_size}_mtppo": f"MTPPO: one CNN + task one-hot, MiniGrid MT{_size}",
    })

for _suite in ("mt10", "mt50"):
    for _variant, _text in OFFLINE_VARIANTS.items():
        DESCRIPTIONS[f"{_suite}_{_variant}"] = (f"{_text}, offline {_suite.upper()} "
                                                "(--dt.dataset DIR)")
for _size in (3, 5, 7):
    for _variant, _text in OFFLINE_VARIANTS.items():
        DESCRIPTIONS[f"minigrid_mt{_size}_{_variant}"] = (
            f"{_text}, offline MiniGrid MT{_size}, discrete actions (--dt.dataset DIR)")


def get_preset(name: str, seed: int = 0) -> Config:
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], preset=name, seed=seed)
