"""MiniGrid multi-task suites (MOORE's MT3 / MT5 / MT7) on the device, and the same suites
through the `minigrid` package (the reference backend).

Batching: the seven environments have different grid sizes (6x6 up to 25x25), so they do not
share one vmap. Each task is vmapped over its own `envs_per_task` copies and the task loop is
unrolled at trace time; the observations (all 7x7x3) are stacked into (tasks, envs, 147).
Padding every grid to MultiRoom's 25x25 would let one vmap cover all tasks, but would make
every task pay for 625 cells per step; per-task batching costs only a longer trace.

Observations are flattened uint8 images (the network reshapes them); the task id is the
leading axis, so a learner can vmap its networks over tasks with a scalar task id each.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid import ENVS, NUM_ACTIONS, VARIANTS, GridEnv, make
from training.errors import UsageError

# The MOORE paper's task sets (run_minigrid_ppo_mt.py's MT_EXP, in its order).
SUITES: dict[str, tuple[str, ...]] = {
    "minigrid_mt3": ("LavaGapS7", "RedBlueDoors-6x6", "MemoryS11"),
    "minigrid_mt5": ("DoorKey-6x6", "LavaGapS7", "RedBlueDoors-6x6", "DistShift1", "MemoryS11"),
    "minigrid_mt7": ("DoorKey-6x6", "DistShift1", "RedBlueDoors-6x6", "LavaGapS7", "MemoryS11",
                     "SimpleCrossingS9N2", "MultiRoom-N2-S4"),
}
OBS_DIM = 7 * 7 * 3
ACTION_COUNT = NUM_ACTIONS


def is_minigrid(suite: str) -> bool:
    return suite.startswith("minigrid")


def task_names(suite: str, tasks: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The suite's environment names; `minigrid_custom` takes them from `tasks` (the short
    names of `envs.minigrid.ENVS` or the gymnasium ids of `VARIANTS`)."""
    if suite == "minigrid_custom":
        valid = ", ".join([*ENVS, *VARIANTS])
        if not tasks:
            raise UsageError("--env.suite minigrid_custom needs --env.tasks (comma-separated "
                             f"MiniGrid envs; valid: {valid})")
        for name in tasks:
            if name not in ENVS and name not in VARIANTS:
                raise UsageError(f"unknown MiniGrid env '{name}' in --env.tasks; valid: {valid}")
        return tuple(tasks)
    if suite not in SUITES:
        raise UsageError(f"unknown MiniGrid suite '{suite}'; valid: "
                         f"{', '.join([*SUITES, 'minigrid_custom'])}")
    return SUITES[suite]


def count_episode_step(ret, success, timeout, alive, reward, terminated, truncated):
    """One step of evaluation episodes run side by side, each counted until it first ends;
    numpy or JAX arrays alike. -> (ret, success, timeout, alive): the return so far, success
    (ended in a terminal state with a reward: the goal), timeout (cut at max_steps), and
    whether the episode is still running. Both backends' evaluations use it."""
    ret = ret + reward * alive
    success = success | (alive & terminated & (reward > 0))
    timeout = timeout | (alive & truncated & ~terminated)
    alive = alive & ~(terminated | truncated)
    return ret, success, timeout, alive


@dataclass(frozen=True)
class MultiTaskGrid:
    """`envs_per_task` copies of each task's JAX environment, stepped together."""

    names: tuple[str, ...]
    envs_per_task: int

    @property
    def envs(self) -> tuple[GridEnv, ...]:
        return tuple(make(name) for name in self.names)

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    @property
    def max_steps(self) -> np.ndarray:
        return np.array([env.max_steps for env in self.envs])

    def reset(self, key: jax.Array):
        """-> (states: one batched State per task, obs (T, E, 147) uint8)."""
        keys = jax.random.split(key, (self.num_tasks, self.envs_per_task))
        states, obs = [], []
        for env, task_keys in zip(self.envs, keys, strict=True):
            s, o = jax.vmap(env.reset)(task_keys)
            states.append(s)
            obs.append(o.reshape(self.envs_per_task, OBS_DIM))
        return tuple(states), jnp.stack(obs)

    def step(self, states, actions: jax.Array, key: jax.Array):
        """Step every env with `actions` (T, E); ended episodes restart from a fresh layout.

        -> (states, obs, reward, terminated, truncated, final_obs); arrays (T, E, ...);
        `final_obs` is the observation before any reset (for bootstrapping on truncation).
        """
        keys = jax.random.split(key, (self.num_tasks, self.envs_per_task))
        out = [jax.vmap(env.step_autoreset)(s, a, k)
               for env, s, a, k in zip(self.envs, states, actions, keys, strict=True)]
        new_states = tuple(o[0] for o in out)

        def stacked(i: int, *shape: int):
            return jnp.stack([o[i].reshape(self.envs_per_task, *shape) for o in out])

        obs, final_obs = stacked(1, OBS_DIM), stacked(5, OBS_DIM)
        reward, terminated, truncated = stacked(2), stacked(3), stacked(4)
        return new_states, obs, reward, terminated, truncated, final_obs


class GymMultiTask:
    """The reference backend: each task's `minigrid` env through gymnasium's SyncVectorEnv
    (`ImgObsWrapper`, next-step autoreset disabled in favour of same-step autoreset so that
    `final_obs` is the ended step's observation, as on the device). Host-side numpy arrays."""

    def __init__(self, names: tuple[str, ...], envs_per_task: int, seed: int):
        import gymnasium
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
        from minigrid.wrappers import ImgObsWrapper

        self.names = names
        self.envs_per_task = envs_per_task
        self.vec = []
        for name in names:
            gym_id = make(name).gym_id
            self.vec.append(gymnasium.vector.SyncVectorEnv(
                [lambda gym_id=gym_id: ImgObsWrapper(gymnasium.make(gym_id))
                 for _ in range(envs_per_task)],
                autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP))
        self.seed = seed

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    def reset(self) -> np.ndarray:
        obs = [v.reset(seed=self.seed + 1000 * t)[0] for t, v in enumerate(self.vec)]
        return np.stack(obs).reshape(self.num_tasks, self.envs_per_task, OBS_DIM)

    def step(self, actions: np.ndarray):
        out = [v.step(a) for v, a in zip(self.vec, actions, strict=True)]
        obs = np.stack([o[0] for o in out]).reshape(self.num_tasks, self.envs_per_task, OBS_DIM)
        reward = np.stack([o[1] for o in out]).astype(np.float32)
        terminated = np.stack([o[2] for o in out])
        truncated = np.stack([o[3] for o in out])
        final_obs = obs.copy()
        for t, o in enumerate(out):
            info = o[4]
            if "final_obs" in info:
                for e in np.flatnonzero(info["_final_obs"]):
                    final_obs[t, e] = np.asarray(info["final_obs"][e]).reshape(OBS_DIM)
        return obs, reward, terminated, truncated, final_obs

    def close(self):
        for v in self.vec:
            v.close()
