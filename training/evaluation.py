"""Per-task evaluation on environments of its own (never the training envs).

An episode is a success if Meta-World's `success` flag is set at ANY step; the return is the
sum of rewards over the whole fixed-length episode. Any agent is a function
`act(obs (n_tasks, 39) float64) -> actions (n_tasks, 4)`, so the learned policy and
Meta-World's scripted experts go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from metaworld.policies import ENV_POLICY_MAP

from envs.metaworld import MetaWorldVectorEnv


def evaluate(act: Callable[[np.ndarray], np.ndarray], env: MetaWorldVectorEnv,
             episodes: int) -> dict:
    """Run `episodes` episodes on every task at once; returns per-task success and return."""
    successes = np.zeros((episodes, env.num_tasks), bool)
    returns = np.zeros((episodes, env.num_tasks), np.float64)
    obs = env.reset()
    for episode in range(episodes):
        for _ in range(env.max_episode_steps):
            result = env.step(act(obs))
            successes[episode] |= result.success
            returns[episode] += result.reward
            obs = result.obs
    per_task = {
        task: {
            "success": float(successes[:, i].mean()),
            "return": float(returns[:, i].mean()),
            "episodes": episodes,
        }
        for i, task in enumerate(env.task_names)
    }
    return {
        "mean_success": float(successes.mean()),
        "mean_return": float(returns.mean()),
        "per_task": per_task,
    }


def scripted_agent(task_names: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's own scripted expert for each task (`metaworld.policies`)."""
    experts = [ENV_POLICY_MAP[name]() for name in task_names]

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([expert.get_action(o) for expert, o in zip(experts, obs, strict=True)])

    return act


def format_table(result: dict) -> str:
    """The per-task table printed at the end of a run or an evaluation."""
    width = max(len(t) for t in result["per_task"]) + 2
    # MiniGrid records also hold the fraction of episodes cut at max_steps.
    with_timeout = all("timeout" in r for r in result["per_task"].values())
    # MiniGrid's returns lie in [0, 1], where one decimal would hide the differences that
    # matter; Meta-World's run to the thousands.
    small = max(abs(r["return"]) for r in result["per_task"].values()) < 10
    ret = ".3f" if small else ".1f"
    lines = [f"{'task':<{width}}{'success':>9}{'return':>11}{'episodes':>10}"
             + (f"{'timeout':>9}" if with_timeout else "")]
    for task, r in result["per_task"].items():
        lines.append(f"{task:<{width}}{r['success']:>9.2f}{r['return']:>11{ret}}{r['episodes']:>10}"
                     + (f"{r['timeout']:>9.2f}" if with_timeout else ""))
    lines.append(f"{'mean':<{width}}{result['mean_success']:>9.2f}{result['mean_return']:>11{ret}}")
    return "\n".join(lines)
