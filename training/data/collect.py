"""`launch.py collect`: make multi-task offline datasets (format: training/data/offline_data.py).

Source `scripted` (Meta-World): Meta-World's own scripted expert of each task
(`metaworld.policies`), all tasks stepped at once in one vector env, with a noise tier:

    expert   Gaussian action noise std 0.1 on every episode
    medium   Gaussian action noise std 1.0 (measured on MT10, seed 0, 3 episodes per task:
             mean success 87 % against 100 % for expert, mean return 3,000 against 4,000)
    mixed    half the episodes as `expert`, half uniformly random actions (which episode is
             which is drawn per task and episode), a sub-optimal set in which the return
             says which half to imitate

Noisy actions are clipped to Meta-World's [-1, 1]. Episodes are the env's full length (500
steps by default; `terminate_on_success` off, as in training), goals are drawn from the
benchmark's 50 per task (fixed by the env seed) on every reset. Everything is a function of
`--seed`: the same command writes the same dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from training.errors import UsageError
from training.data.offline_data import Episode, write_dataset

# replay: training/data/collect_replay.py; minigrid: training/data/collect_minigrid.py
SOURCES = ("scripted", "replay", "minigrid")


@dataclass(frozen=True)
class Tier:
    noise_std: float
    random_fraction: float  # share of episodes with uniformly random actions


TIERS = {"expert": Tier(0.1, 0.0), "medium": Tier(1.0, 0.0), "mixed": Tier(0.1, 0.5)}


def check_tier(tier: str) -> Tier:
    if tier not in TIERS:
        raise UsageError(f"unknown tier '{tier}'; valid: {', '.join(TIERS)}")
    return TIERS[tier]


def collect_scripted(out: str, suite: str, tasks: tuple[str, ...], tier: str,
                     episodes_per_task: int, seed: int, reward_version: str = "v2",
                     max_episode_steps: int = 500, show_progress: bool = True):
    """Roll out the scripted experts of every task at once; write and return the dataset."""
    from tqdm import tqdm

    from envs.metaworld import MetaWorldVectorEnv
    from training.evaluation import scripted_agent
    from training.run_dir import versions

    spec = check_tier(tier)
    if episodes_per_task < 1:
        raise UsageError(f"--episodes must be >= 1, got {episodes_per_task}")
    env = MetaWorldVectorEnv(suite, tasks, seed=seed, reward_version=reward_version,
                             max_episode_steps=max_episode_steps)
    act = scripted_agent(env.task_names)
    rng = np.random.default_rng(seed)
    num_tasks, horizon = env.num_tasks, env.max_episode_steps
    episodes: list[Episode] = []
    started = time.time()
    obs = env.reset()
    bar = tqdm(total=episodes_per_task * num_tasks * horizon, unit="step", unit_scale=True,
               disable=not show_progress, desc=f"collect {suite} {tier}")
    for _ in range(episodes_per_task):
        random_policy = rng.random(num_tasks) < spec.random_fraction
        observations = np.zeros((horizon + 1, num_tasks, obs.shape[1]))
        actions = np.zeros((horizon, num_tasks, 4))
        rewards = np.zeros((horizon, num_tasks))
        flags = np.zeros((3, horizon, num_tasks), bool)  # terminated, truncated, success
        observations[0] = obs
        for t in range(horizon):
            expert = act(obs) + spec.noise_std * rng.standard_normal((num_tasks, 4))
            uniform = rng.uniform(-1.0, 1.0, (num_tasks, 4))
            action = np.clip(np.where(random_policy[:, None], uniform, expert), -1.0, 1.0)
            result = env.step(action)
            actions[t], rewards[t] = action, result.reward
            flags[:, t] = result.terminated, result.truncated, result.success
            observations[t + 1] = result.final_obs
            obs = result.obs
            bar.update(num_tasks)
        for i in range(num_tasks):
            episodes.append(Episode(i, observations[:, i], actions[:, i], rewards[:, i],
                                    flags[0, :, i], flags[1, :, i], flags[2, :, i]))
    bar.close()
    env.close()
    meta = {
        "suite": suite, "tasks": list(env.task_names), "env": "metaworld",
        "source": {"policy": "metaworld.policies scripted experts", "tier": tier,
                   "noise_std": spec.noise_std, "random_fraction": spec.random_fraction},
        "seed": seed, "reward_version": reward_version, "max_episode_steps": horizon,
        "versions": versions(), "collect_seconds": round(time.time() - started, 1),
    }
    return write_dataset(out, meta, episodes)


def format_summary(meta: dict) -> str:
    """Per-task table of a dataset's statistics (printed after collecting)."""
    rows = meta["per_task"]
    width = max(len(t) for t in rows) + 2
    digits = 3 if meta.get("env") == "minigrid" else 1  # MiniGrid returns lie in [0, 1]
    lines = [f"{'task':<{width}}{'episodes':>9}{'success':>9}{'return':>10}{'min':>9}{'max':>9}"]
    for task, s in rows.items():
        success = "-" if s["success"] is None else f"{s['success']:.2f}"
        lines.append(f"{task:<{width}}{s['episodes']:>9}{success:>9}"
                     f"{s['return_mean']:>10.{digits}f}{s['return_min']:>9.{digits}f}"
                     f"{s['return_max']:>9.{digits}f}")
    return "\n".join(lines)
