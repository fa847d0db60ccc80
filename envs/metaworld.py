"""Meta-World MT10 / MT50 / custom task lists as one vector env with one sub-env per task.

Observations are the raw 39 float64s (Meta-World's scripted experts expect them; learners
cast to float32) and the task id is kept apart:
every network takes (observation, task_id), so MOORE's experts never see the one-hot
while MTSAC appends it itself.

Resets are done here rather than by gymnasium's autoreset so that, at an episode
boundary, the random state *before* the reset can be checkpointed; restoring it and
resetting reproduces the run exactly (see `MetaWorldVectorEnv.rng_checkpoint`).
The step API keeps gymnasium's SAME_STEP semantics: on a step that ends an episode the
returned observation is the first one of the next episode and the true last
observation is in `final_obs`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import metaworld
import numpy as np
from gymnasium.utils import seeding
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

from training.errors import UsageError

MT10_TASKS: tuple[str, ...] = tuple(MT10_V3.keys())
MT50_TASKS: tuple[str, ...] = tuple(ALL_V3_ENVIRONMENTS.keys())
SUITES = {"mt10": MT10_TASKS, "mt50": MT50_TASKS}
REWARD_VERSIONS = ("v1", "v2")
# sync: every sub-env steps in this process; async: each in its own process (gymnasium's
# AsyncVectorEnv), stepped in parallel. Same numbers for the same seed. `auto` is resolved by
# `vector_strategy_for`.
VECTOR_STRATEGIES = ("sync", "async")
MAX_PATH_LENGTH = 500  # Meta-World raises if an episode is stepped past this.
OBS_DIM = 39
ACTION_DIM = 4

_CLASS_TO_TASK = {cls.__name__: name for name, cls in ALL_V3_ENVIRONMENTS.items()}


def vector_strategy_for(setting: str) -> str:
    """The strategy of the `env.vector_strategy` setting: `auto` is sync when JAX computes on
    the CPU (the learner then needs the cores the worker processes would take; BENCHMARKS.md,
    bench/bench_sac.py) and async on a GPU or TPU, where the learner leaves the cores to
    MuJoCo."""
    if setting != "auto":
        return setting
    import jax

    return "sync" if jax.default_backend() == "cpu" else "async"


def suite_tasks(suite: str, tasks: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Task names of a suite; `suite='custom'` takes the given list."""
    if suite == "custom":
        if not tasks:
            raise UsageError("suite 'custom' needs a task list (--env.tasks reach-v3,push-v3)")
        for task in tasks:
            if task not in ALL_V3_ENVIRONMENTS:
                raise UsageError(
                    f"unknown Meta-World task '{task}'; valid tasks: {', '.join(MT50_TASKS)}"
                )
        if len(set(tasks)) != len(tasks):
            raise UsageError(f"duplicate task in the custom list: {','.join(tasks)}")
        return tuple(tasks)
    if suite not in SUITES:
        raise UsageError(f"unknown suite '{suite}'; valid suites: {', '.join(SUITES)}, custom")
    if tasks and tuple(tasks) != SUITES[suite]:
        raise UsageError(f"--env.tasks is only for suite 'custom' (got suite '{suite}')")
    return SUITES[suite]


def check_env_args(suite: str, tasks: tuple[str, ...], reward_version: str,
                   max_episode_steps: int) -> tuple[str, ...]:
    """Reject what Meta-World cannot build (a UsageError naming the value); returns the tasks."""
    names = suite_tasks(suite, tasks)
    if reward_version not in REWARD_VERSIONS:
        raise UsageError(
            f"unknown reward_version '{reward_version}'; valid: {', '.join(REWARD_VERSIONS)}"
        )
    if not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
        raise UsageError(f"max_episode_steps must be in [1, {MAX_PATH_LENGTH}] (Meta-World's "
                         f"limit), got {max_episode_steps}")
    return names


@functools.lru_cache(maxsize=64)
def _benchmark(name: str, seed: int):
    """The metaworld benchmark object of MT10/MT50 or of one task (MT1), for a seed: built
    once per process, and kept on disk (`benchmark_cache_dir`) for the next processes. Its
    tasks (goals) are plain data, copied into each env that uses them. (metaworld's own
    constructors; `_init_each_env` is its env factory.)"""
    cached = None
    directory = benchmark_cache_dir()
    if directory is not None:
        cached = directory / f"{name}-seed{seed}.pkl"
        try:
            with open(cached, "rb") as f:
                return pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            pass  # absent or unreadable: built again below, and rewritten
    if name in ("MT10", "MT50"):
        benchmark = getattr(metaworld, name)(seed=seed)
    else:
        benchmark = metaworld.MT1(name, seed=seed)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            partial.write_bytes(pickle.dumps(benchmark))
            os.replace(partial, cached)  # whole or absent, whatever else writes it
        except OSError:
            pass  # a read-only cache folder only costs the rebuild
    return benchmark


def benchmark_cache_dir() -> Path | None:
    """Where benchmark goal sets are kept between processes: $MTRL_CACHE_DIR (default
    ~/.cache/mtrl-jax), in a folder per metaworld and mujoco version, since the goals are
    drawn by resetting the simulated envs. MTRL_CACHE_DIR=off disables it. Drawing them costs
    about 7 s for MT10 and 35 s for MT50 at every start otherwise."""
    root = os.environ.get("MTRL_CACHE_DIR", str(Path.home() / ".cache" / "mtrl-jax"))
    if root.lower() in ("", "off", "0", "none"):
        return None
    import mujoco

    return (Path(root) / f"metaworld-{importlib.metadata.version('metaworld')}-"
                         f"mujoco-{mujoco.__version__}")


@dataclass(frozen=True)
class StepResult:
    obs: np.ndarray  # (n_tasks, 39) float64; reset obs where an episode ended
    reward: np.ndarray  # (n_tasks,) float64
    terminated: np.ndarray  # (n_tasks,) bool
    truncated: np.ndarray  # (n_tasks,) bool
    success: np.ndarray  # (n_tasks,) bool, Meta-World's info['success'] at this step
    final_obs: np.ndarray  # (n_tasks, 39) float64; the true next observation of this step


class MetaWorldVectorEnv:
    """One Meta-World sub-env per task, seeded at construction; stepped in this process
    (`vector_strategy="sync"`) or each in its own process ("async"). Everything after
    construction goes through the vector env's `step`, `reset` and `call`, so both give the
    same numbers and the same checkpoints."""

    def __init__(
        self,
        suite: str,
        tasks: tuple[str, ...] = (),
        seed: int = 0,
        reward_version: str = "v2",
        max_episode_steps: int = MAX_PATH_LENGTH,
        vector_strategy: str = "sync",
    ):
        self.task_names = check_env_args(suite, tasks, reward_version, max_episode_steps)
        if vector_strategy not in VECTOR_STRATEGIES:
            raise UsageError(f"unknown vector_strategy '{vector_strategy}'; valid: "
                             f"{', '.join(VECTOR_STRATEGIES)}")
        self.num_tasks = len(self.task_names)
        self.max_episode_steps = max_episode_steps
        common = dict(
            reward_function_version=reward_version,
            max_episode_steps=max_episode_steps,
            terminate_on_success=False,
            use_one_hot=False,
        )
        autoreset = gym.vector.AutoresetMode.DISABLED
        # What metaworld.make_mt_envs builds (MT10/MT50: the benchmark object fixes the 50
        # goals of every task from `seed`; custom lists: one MT1 benchmark per task, seeded
        # seed + index, since 'Meta-World/custom-mt-envs' treats seed=0 as "unseeded"), from
        # benchmark objects shared within the process: drawing a benchmark's goals resets
        # each task's env 50 times (about 7 s for MT10), and every run builds two vector
        # envs (training and evaluation) from the same benchmarks.
        if suite in SUITES:
            benchmark = _benchmark(suite.upper(), seed)
            makers = [functools.partial(
                metaworld._init_each_env, env_cls=env_cls,
                tasks=[t for t in benchmark.train_tasks if t.env_name == name], seed=seed,
                env_id=idx, num_tasks=len(self.task_names), **common)
                for idx, (name, env_cls) in enumerate(benchmark.train_classes.items())]
        else:
            makers = []
            for idx, name in enumerate(self.task_names):
                benchmark = _benchmark(name, seed + idx)
                makers.append(functools.partial(
                    metaworld._init_each_env, env_cls=benchmark.train_classes[name],
                    tasks=list(benchmark.train_tasks), seed=seed + idx, env_id=idx,
                    num_tasks=len(self.task_names), **common))
        if vector_strategy == "sync":
            self._envs = gym.vector.SyncVectorEnv(makers, autoreset_mode=autoreset)
        else:  # spawned, not forked: a fork of a process running JAX's threads can deadlock
            self._envs = gym.vector.AsyncVectorEnv(makers, autoreset_mode=autoreset,
                                                   context="spawn")
        built = tuple(_CLASS_TO_TASK[name] for name in self._envs.get_attr("task_name"))
        assert built == self.task_names, (built, self.task_names)
        self._episode_step = 0
        self._checkpoint_before_reset = None

    def reset(self) -> np.ndarray:
        self._checkpoint_before_reset = list(self._envs.call("get_checkpoint"))
        obs, _ = self._envs.reset()
        self._episode_step = 0
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self._envs.step(np.asarray(actions, np.float64))
        final_obs = obs
        self._episode_step += 1
        done = np.logical_or(terminated, truncated)
        if done.any():
            # Training runs every sub-env for the same fixed length, so episodes end together.
            if not done.all():
                raise RuntimeError("Meta-World sub-envs ended their episodes out of step")
            next_obs = self.reset()
        else:
            next_obs = final_obs
        return StepResult(
            obs=next_obs,
            reward=np.asarray(reward, np.float64),
            terminated=terminated.astype(bool),
            truncated=truncated.astype(bool),
            success=np.asarray(info["success"], dtype=bool),
            final_obs=final_obs,
        )

    @property
    def at_episode_boundary(self) -> bool:
        return self._episode_step == 0

    def rng_checkpoint(self) -> list:
        """JSON-able random state from just before the current episode's reset.

        Only meaningful at an episode boundary: `restore(ckpt)` then yields the same
        first observation and the same future as the run that saved it.
        """
        if not self.at_episode_boundary or self._checkpoint_before_reset is None:
            raise RuntimeError("env checkpoints are taken at episode boundaries only")
        return self._checkpoint_before_reset

    def restore(self, ckpt: list) -> np.ndarray:
        self._envs.call("load_checkpoint", [tuple(item) for item in ckpt])
        return self.reset()

    def reseed(self, seed: int) -> None:
        """Fresh, deterministic random state for every sub-env (used before each evaluation):
        sub-env i as after `env.unwrapped.seed(SeedSequence([seed, i]))`, which seeds the
        env's generator and its action, observation and goal spaces' alike. Written into
        each sub-env's checkpoint so that it reaches sub-envs in other processes."""
        checkpoints = []
        for idx, (env_id, ckpt) in enumerate(self._envs.call("get_checkpoint")):
            sub_seed = int(np.random.SeedSequence([seed, idx]).generate_state(1)[0])
            state = seeding.np_random(sub_seed)[0].bit_generator.state
            rng = {name: state for name in ("np_random_state", "action_space_rng_state",
                                            "obs_space_rng_state", "goal_space_rng_state")}
            checkpoints.append((env_id, {**ckpt, "env_rng_state": rng}))
        self._envs.call("load_checkpoint", checkpoints)

    @property
    def raw(self) -> gym.vector.VectorEnv:
        """The underlying gymnasium vector env (for metaworld.evaluation parity checks)."""
        return self._envs

    def close(self) -> None:
        self._envs.close()
