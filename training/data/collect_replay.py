"""Source `replay` (Meta-World): a SAC run's replay buffer as an offline dataset.

The published offline MT50 recipe (HarmoDT and the works it compares with) takes per-task
SAC replay buffers: near-optimal data = the whole replay, from the random first episodes to
the converged policy (`half="all"`), sub-optimal data = its first half (`half="first"`).

What a checkpoint holds (agents/sac/loop.py): `tree["buffer"]` = `replay.filled(buffer)`, the
fields obs, action, reward, next_obs, terminated as (num_tasks, size, ...) float32, each
task's row a ring buffer of capacity `sac.buffer_size_per_task` written at position
`step % capacity` (all tasks step in lockstep, so one pointer serves all), and meta
`env_steps` and `buffer_ptr`. Training episodes all have exactly `env.max_episode_steps`
steps (`terminate_on_success` is off), so env step s is step s % L of episode s // L.

A buffer that has wrapped (env_steps > capacity) no longer holds the run's first
env_steps - capacity steps: the export starts at the first complete episode it still holds
and records in meta (`replay.first_episode`, `replay.missing_episodes`) that the run's
earliest episodes are gone. A trailing incomplete episode (a checkpoint not on an episode
boundary) is left out. Per-step success is not in the replay: episodes have success=None.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from training.errors import UsageError
from training.data.offline_data import Episode, write_dataset

HALVES = ("all", "first")


def replay_episodes(buffer: dict, env_steps: int, ptr: int, capacity: int,
                    episode_length: int) -> tuple[list[Episode], dict]:
    """The complete episodes of a checkpoint's filled buffer, oldest first, task-major
    within each episode index; -> (episodes, info) where info holds first_episode (index of
    the first exported episode in the run), missing_episodes, dropped_partial_steps."""
    obs = np.asarray(buffer["obs"])
    num_tasks, size = obs.shape[:2]
    if size != min(env_steps, capacity):
        raise UsageError(f"replay buffer holds {size} steps per task; a run at env step "
                         f"{env_steps} with capacity {capacity} should hold "
                         f"{min(env_steps, capacity)}")
    if ptr != env_steps % capacity:
        raise UsageError(f"replay buffer pointer {ptr} does not match env step {env_steps} "
                         f"(capacity {capacity})")
    oldest = env_steps - size  # env step held at position oldest % capacity
    # Chronological order: for a wrapped buffer, position ptr holds the oldest step.
    order = np.roll(np.arange(size), -ptr) if env_steps > capacity else np.arange(size)
    first_episode = -(-oldest // episode_length)  # ceil: the first episode fully held
    last_episode = env_steps // episode_length  # exclusive: episodes ending by env_steps
    info = {"first_episode": int(first_episode), "missing_episodes": int(first_episode),
            "dropped_partial_steps": int(env_steps - last_episode * episode_length),
            "retained_steps": int(size), "oldest_retained_step": int(oldest)}
    fields = {k: np.asarray(buffer[k]) for k in ("obs", "action", "reward", "next_obs",
                                                 "terminated")}
    episodes = []
    for e in range(first_episode, last_episode):
        rows = order[e * episode_length - oldest + np.arange(episode_length)]
        for t in range(num_tasks):
            o, nxt = fields["obs"][t, rows], fields["next_obs"][t, rows]
            # Within an episode, each step's next_obs is the following step's obs: a check
            # that positions map to episodes as assumed (episode length, ring order).
            if not np.array_equal(o[1:], nxt[:-1]):
                raise UsageError(f"replay buffer is not made of {episode_length}-step "
                                 f"episodes (episode {e}, task {t}: next_obs does not "
                                 "match the following obs)")
            truncated = np.zeros(episode_length, bool)
            truncated[-1] = True
            terminated = fields["terminated"][t, rows] > 0.5
            truncated &= ~terminated
            episodes.append(Episode(
                task=t, observations=np.concatenate([o, nxt[-1:]]),
                actions=fields["action"][t, rows], rewards=fields["reward"][t, rows],
                terminated=terminated, truncated=truncated, success=None))
    return episodes, info


def collect_replay(out: str, run: str | Path, half: str = "all", step: int | None = None,
                   show_progress: bool = True) -> Path:
    """Export the replay buffer of SAC run `run` (its checkpoint at `step`, default the
    latest) as a dataset at `out`; `half="first"` keeps only the first half (by time) of
    the retained complete episodes. -> the dataset path."""
    from envs.metaworld import check_env_args
    from envs.minigrid.multitask import is_minigrid
    from training.checkpoint import Checkpointer
    from training.run_dir import load_config

    started = time.time()
    if half not in HALVES:
        raise UsageError(f"unknown half '{half}'; valid: {', '.join(HALVES)}")
    run = Path(run)
    cfg = load_config(run)
    if cfg.algo != "sac" or is_minigrid(cfg.env.suite):
        raise UsageError(f"run '{run}' trains {cfg.algo} on '{cfg.env.suite}': only SAC "
                         "(Meta-World) runs have a replay buffer")
    tasks = check_env_args(cfg.env.suite, cfg.env.tasks, cfg.env.reward_version,
                           cfg.env.max_episode_steps)
    tree, ckpt = Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints).restore(step)
    env_steps = int(ckpt["env_steps"])
    if "buffer" not in tree:
        raise UsageError(f"checkpoint at step {env_steps} of '{run}' holds no replay buffer "
                         "(nothing collected yet)")
    capacity, length = cfg.sac.buffer_size_per_task, cfg.env.max_episode_steps
    buffer = tree["buffer"]
    if np.asarray(buffer["obs"]).shape[0] != len(tasks):
        raise UsageError(f"replay buffer of '{run}' has {np.asarray(buffer['obs']).shape[0]} "
                         f"tasks, its config {len(tasks)}")
    episodes, info = replay_episodes(buffer, env_steps, int(ckpt["buffer_ptr"]), capacity,
                                     length)
    per_task_total = len(episodes) // len(tasks)
    if per_task_total == 0:
        raise UsageError(f"checkpoint at step {env_steps} of '{run}' holds no complete "
                         f"{length}-step episode")
    kept = per_task_total if half == "all" else per_task_total // 2
    if kept == 0:
        raise UsageError(f"the first half of {per_task_total} episode(s) per task is empty")
    episodes = episodes[: kept * len(tasks)]
    versions_file = run / "versions.json"
    run_versions = json.loads(versions_file.read_text()) if versions_file.is_file() else {}
    meta = {
        "suite": cfg.env.suite, "tasks": list(tasks), "env": "metaworld",
        "source": {"policy": f"SAC replay buffer ({cfg.preset})", "tier": f"replay-{half}",
                   "half": half, "run": str(run.resolve()), "preset": cfg.preset,
                   "arch": cfg.network.arch, "checkpoint_step": env_steps},
        "seed": cfg.seed, "reward_version": cfg.env.reward_version,
        "max_episode_steps": length,
        "replay": {
            "capacity_per_task": capacity, "env_steps": env_steps,
            "wrapped": env_steps > capacity, **info,
            "episodes_in_buffer": per_task_total, "episodes_exported": kept,
            # Episode indices in the run (0 = the run's first): [first, first + exported).
            "exported_episode_range": [info["first_episode"], info["first_episode"] + kept],
        },
        # The versions the data came from (the run's), not this process's.
        "versions": run_versions,
        "collect_seconds": round(time.time() - started, 1),
    }
    if show_progress and info["missing_episodes"]:
        print(f"note: the buffer has wrapped; the run's first {info['missing_episodes']} "
              "episode(s) per task are gone and not in the dataset")
    return write_dataset(out, meta, episodes)
