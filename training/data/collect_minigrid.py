"""Source `planner` (MiniGrid): the planning expert of envs/minigrid/expert.py on the
reference `minigrid` envs, with a noise tier (epsilon: the share of steps whose action is
drawn uniformly from the env's 7 actions instead of the planner's):

    expert   epsilon 0.1 on every episode
    medium   epsilon 0.75
    mixed    half the episodes as `expert`, half uniformly random actions (which episode is
             which is drawn per task and episode)

The policy's measured success / mean return (`python -m envs.minigrid.expert --epsilon E`,
seed 0, 200 episodes per task, minigrid 3.2.0; mean episode length in brackets):

    task                 no noise           expert (0.1)       medium (0.75)      uniform random
    DoorKey-6x6          1.00 / 0.970 (12)  1.00 / 0.965 (14)  1.00 / 0.822 (71)  0.05 / 0.021
    DistShift1           1.00 / 0.954 (13)  1.00 / 0.947 (15)  0.75 / 0.587 (52)  0.03 / 0.012
    RedBlueDoors-6x6     1.00 / 0.984 (13)  1.00 / 0.982 (14)  0.97 / 0.875 (76)  0.09 / 0.041
    LavaGapS7            1.00 / 0.952 (10)  0.995 / 0.942 (12) 0.72 / 0.558 (42)  0.04 / 0.018
    MemoryS11            1.00 / 0.986 (10)  1.00 / 0.985 (10)  0.91 / 0.859 (37)  0.30 / 0.210
    SimpleCrossingS9N2   1.00 / 0.955 (16)  1.00 / 0.949 (18)  1.00 / 0.767 (84)  0.05 / 0.017
    MultiRoom-N2-S4      1.00 / 0.846 (7)   1.00 / 0.823 (8)   0.59 / 0.267 (31)  0.04 / 0.014

(No noise: 100 % on every task over 1,000 episodes each too.) Datasets of minigrid_mt7,
seed 0, 200 episodes per task: mean success over tasks 1.00 (expert, 18 k steps),
0.840 (medium, 81 k steps), 0.539 (mixed, 175 k steps: random episodes run to max_steps).
On Memory the planner first looks at the start room's object when it has not been in view
(`Planner.look_at_cue`), so that the observations hold the cue its choice depends on.

The planner replans at every step, so moderate noise mostly lengthens episodes (lower
return, the reward falls with the step count) rather than failing them: epsilon 0.5 still
succeeds 97 % of the time; 0.75 brings the mean success to 85 % (the Meta-World `medium`
tier's 87 %). Failures come from random steps into lava (LavaGap, DistShift), onto
Memory's wrong object, toggling the blue door first, and MultiRoom's 40-step limit.

Observations are what the PPO agents see: the (7, 7, 3) image of `ImgObsWrapper`,
flattened to 147 values (stored as float32; the networks take the raw values). Actions are
minigrid's ints (0 left, 1 right, 2 forward, 3 pickup, 4 drop, 5 toggle, 6 done). Success
of a step: terminated with a positive reward (as the PPO evaluation counts it). Episodes
end at termination or at the env's own `max_steps` (meta `max_steps` per task;
`max_episode_steps` is the largest of them).

Seeds: task `name`'s episode i resets with a seed drawn from (seed, crc32(name), i), and its
noise draws come from (seed, crc32(name)): a task's episodes do not depend on the suite it is
collected in (minigrid_mt3's LavaGapS7 episodes are minigrid_mt7's), and the same command
writes the same dataset.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from training.errors import UsageError
from training.data.offline_data import Episode, write_dataset


@dataclass(frozen=True)
class GridTier:
    epsilon: float  # share of steps with a uniformly random action
    random_fraction: float  # share of episodes with uniformly random actions throughout


TIERS = {"expert": GridTier(0.1, 0.0), "medium": GridTier(0.75, 0.0),
         "mixed": GridTier(0.1, 0.5)}


def check_tier(tier: str) -> GridTier:
    if tier not in TIERS:
        raise UsageError(f"unknown tier '{tier}'; valid: {', '.join(TIERS)}")
    return TIERS[tier]


def episode_seed(seed: int, task: str, index: int) -> int:
    """The `env.reset(seed=...)` of a task's episode `index`."""
    state = np.random.SeedSequence([seed, zlib.crc32(task.encode()), index]).generate_state(1)
    return int(state[0])


def collect_minigrid(out: str, suite: str, tier: str, episodes_per_task: int, seed: int,
                     tasks: tuple[str, ...] = (), show_progress: bool = True):
    """Roll out the planner on every task of `suite` (`tasks` for minigrid_custom);
    write and return the dataset."""
    import gymnasium
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
    from tqdm import tqdm

    from envs.minigrid import NUM_ACTIONS, make
    from envs.minigrid.expert import Planner, rollout
    from envs.minigrid.multitask import task_names
    from training.run_dir import versions

    spec = check_tier(tier)
    if episodes_per_task < 1:
        raise UsageError(f"--episodes must be >= 1, got {episodes_per_task}")
    names = task_names(suite, tasks)
    episodes: list[Episode] = []
    max_steps: dict[str, int] = {}
    started = time.time()
    bar = tqdm(total=episodes_per_task * len(names), unit="episode",
               disable=not show_progress, desc=f"collect {suite} {tier}")
    for t, task in enumerate(names):
        env = gymnasium.make(make(task).gym_id)
        max_steps[task] = int(env.unwrapped.max_steps)
        noise = np.random.SeedSequence([seed, zlib.crc32(task.encode())])
        rng = np.random.default_rng(noise)
        planner = Planner(np.random.default_rng(noise.spawn(1)[0]))
        for i in range(episodes_per_task):
            epsilon = 1.0 if rng.random() < spec.random_fraction else spec.epsilon
            images, actions, rewards, terminated, truncated = rollout(
                env, planner, episode_seed(seed, task, i), epsilon, rng)
            rewards = np.asarray(rewards, np.float32)
            terminated = np.asarray(terminated, bool)
            episodes.append(Episode(
                task=t,
                observations=np.stack(images).reshape(len(images), -1).astype(np.float32),
                actions=np.asarray(actions, np.int64), rewards=rewards,
                terminated=terminated, truncated=np.asarray(truncated, bool),
                success=terminated & (rewards > 0)))
            bar.update(1)
        env.close()
    bar.close()
    meta = {
        "suite": suite, "tasks": list(names), "env": "minigrid",
        "source": {"policy": "envs.minigrid.expert planner (full-state shortest paths)",
                   "tier": tier, "epsilon": spec.epsilon,
                   "random_fraction": spec.random_fraction},
        "seed": seed, "action_dim": NUM_ACTIONS, "observation": "7x7x3 image, flattened",
        "max_steps": max_steps, "max_episode_steps": max(max_steps.values()),
        "versions": {**versions(), "minigrid": metadata.version("minigrid")},
        "collect_seconds": round(time.time() - started, 1),
    }
    return write_dataset(out, meta, episodes)
