"""The offline loop: a decision transformer trained from a dataset, evaluated online.

The dataset (training/data/offline_data.py) is checked (tasks, environment family, the env
packages' versions: Meta-World and MuJoCo, or minigrid; Meta-World's reward version and
episode length, MiniGrid's per-task max_steps) and copied to the device once. Training runs
in chunks of `agents/dt/learner.py`'s `train_updates` (a `lax.scan` of updates, each sampling
its batch on the device); between chunks the Python loop logs to tensorboardX, evaluates and
checkpoints. `train.eval_every` and `train.checkpoint_every` count gradient updates here.

Evaluation runs all tasks at once, never one task after another. Meta-World: each task in
its own Meta-World vector env, with the benchmark's goal set of the dataset (its env seed)
and a fresh random state per evaluation; actions are the tanh'd mean the model predicts.
MiniGrid (`evaluate_dt_minigrid`): `eval.episodes` fresh episodes of every task as parallel
envs of our JAX MiniGrid (envs/minigrid), stepped with the model's argmax action in one
jitted `lax.while_loop` on the device (until every episode has ended; an ended episode stops
counting), success = the episode terminated with a positive reward, as the PPO loop counts
it; `env.backend gym` steps the same batch in `minigrid`'s own envs on the host instead (the
reference backend). Actions are deterministic on both families. Every task is conditioned on
`dt.target_return_scale` x the best return of that task in the data, decreased by each reward
received; the timestep is the step within the episode. The record (eval.jsonl, `step` =
updates) is the format of the online loops, so `launch.py report` reads it unchanged.
final.json is the last checkpoint's evaluation, never the best of training.
"""

from __future__ import annotations

import functools
import math
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from agents.dt.learner import DTData, make_dt_learner
from envs.metaworld import MetaWorldVectorEnv, suite_tasks, vector_strategy_for
from envs.minigrid.multitask import (
    OBS_DIM,
    GymMultiTask,
    MultiTaskGrid,
    count_episode_step,
    is_minigrid,
    task_names,
)
from training import run_dir as run_lib
from training.checkpoint import Checkpointer
from training.config import Config
from training.data.offline_data import ENV_PACKAGES, OfflineDataset, load_dataset
from training.errors import TrainingDiverged, UsageError
from training.runner import Runner


def root_keys(seed: int):
    """(init key, evaluation key base) of a run: functions of its seed alone."""
    return jax.random.split(jax.random.PRNGKey(seed))


def eval_randomness(seed: int, updates: int):
    """(env seed, prompt key) of the evaluation after `updates`: the training run's and
    `launch.py eval --run`'s are the same, so re-evaluating a checkpoint reproduces it."""
    env_seed = int(np.random.SeedSequence([seed, updates, 0xD7]).generate_state(1)[0])
    return env_seed, jax.random.fold_in(root_keys(seed)[1], updates)


def run_tasks(cfg: Config) -> tuple[str, ...]:
    """The run's task names (MiniGrid or Meta-World suite)."""
    if is_minigrid(cfg.env.suite):
        return task_names(cfg.env.suite, cfg.env.tasks)
    return suite_tasks(cfg.env.suite, cfg.env.tasks)


def _env_versions(minigrid: bool) -> dict:
    """{package: installed version} of the packages that define the run's environments:
    minigrid for MiniGrid data (its reference envs produced it; run_dir.versions() does not
    list minigrid), Meta-World and MuJoCo otherwise."""
    if minigrid:
        try:
            return {"minigrid": metadata.version("minigrid")}
        except metadata.PackageNotFoundError:
            return {}
    from training.run_dir import versions

    installed = versions()
    return {k: installed[k] for k in ENV_PACKAGES if k != "minigrid" and installed.get(k)}


def open_dataset(cfg: Config) -> tuple[OfflineDataset, tuple[str, ...]]:
    """The run's dataset, checked against the run's config and the installed packages."""
    minigrid = is_minigrid(cfg.env.suite)
    names = run_tasks(cfg)
    dataset = load_dataset(cfg.dt.dataset, tasks=names, env_versions=_env_versions(minigrid),
                           reward_version=None if minigrid else cfg.env.reward_version)
    meta = dataset.meta
    family = "minigrid" if minigrid else "metaworld"
    if meta.get("env") != family:
        raise UsageError(f"dataset '{cfg.dt.dataset}' holds {meta.get('env')} data; suite "
                         f"'{cfg.env.suite}' is {'MiniGrid' if minigrid else 'Meta-World'}")
    if minigrid:
        from envs.minigrid import make

        for name in names:  # the data's episodes end where the evaluation's do
            have, wanted = meta.get("max_steps", {}).get(name), make(name).max_steps
            if have != wanted:
                raise UsageError(f"dataset '{cfg.dt.dataset}': {name} episodes have max_steps "
                                 f"{have}, the evaluation env's is {wanted}")
    elif (meta.get("suite"), tuple(meta.get("tasks", ()))) != (cfg.env.suite, names):
        # Meta-World draws each task's goals from the whole env list and seed: another suite
        # or task list would evaluate on goals the data never saw.
        raise UsageError(f"dataset '{cfg.dt.dataset}' was collected on suite "
                         f"'{meta.get('suite')}' ({', '.join(meta.get('tasks', ()))}); the run "
                         f"is '{cfg.env.suite}' ({', '.join(names)}): collect one for it")
    elif meta.get("max_episode_steps") != cfg.env.max_episode_steps:
        raise UsageError(f"dataset '{cfg.dt.dataset}' has {meta.get('max_episode_steps')}-step "
                         f"episodes, the run evaluates {cfg.env.max_episode_steps}-step ones "
                         "(--env.max_episode_steps)")
    if meta["action_kind"] != cfg.dt.action_kind:
        raise UsageError(f"dataset actions are {meta['action_kind']}, --dt.action_kind is "
                         f"{cfg.dt.action_kind}")
    return dataset, names


def target_returns(dataset: OfflineDataset, names, scale: float) -> np.ndarray:
    """(T,) each task's best episode return in the data, times `scale`."""
    return np.array([dataset.meta["per_task"][n]["return_max"] * scale for n in names],
                    np.float32)


class DTTrainer(Runner):
    """One offline run: its data on the device, learner and eval env, trained by
    training/runner.py's lifecycle; `step` counts gradient updates."""

    unit = "updates"
    evaluate_at_start = False

    def __init__(self, cfg: Config, run: Path, show_progress: bool = True):
        super().__init__(cfg, [run], cfg.dt.updates, show_progress, cfg.preset)
        self.run = run
        dataset, self.names = open_dataset(cfg)
        self.dataset_meta = dataset.meta
        self.learner = make_dt_learner(cfg.dt, dataset.meta["obs_dim"],
                                       dataset.meta["action_dim"], len(self.names))
        self.data: DTData = make_device_data(dataset, self.names, cfg)
        self.targets = target_returns(dataset, self.names, cfg.dt.target_return_scale)
        t, d = cfg.train, cfg.dt
        self.chunk = math.gcd(t.eval_every, t.checkpoint_every, d.updates)
        self.checkpointer = self.checkpointers[0]
        self.eval_env = make_eval_env(cfg, dataset.meta)

    def fresh(self) -> None:
        self.state = self.learner.init(root_keys(self.cfg.seed)[0])
        self.step = 0

    def load(self, restored) -> None:
        ((tree, meta),) = restored
        self.fresh()  # the template
        self.state = serialization.from_state_dict(self.state, tree["state"])
        self.step = int(meta["updates"])

    def snapshot(self):
        tree = {"state": serialization.to_state_dict(jax.device_get(self.state))}
        return [(tree, {"updates": self.step, "env_steps": 0})]

    def train_chunk(self, writers) -> None:
        start = time.perf_counter()
        metrics = self._chunk()
        self.step += self.chunk
        self._log(writers[0], metrics, time.perf_counter() - start)

    def close(self) -> None:
        if self.eval_env is not None:
            self.eval_env.close()

    def _chunk(self) -> dict:
        self.state, metrics = self.learner.train_updates(self.state, self.data, self.chunk)
        return jax.device_get(metrics)

    def _log(self, writer, metrics: dict, elapsed: float) -> None:
        if not np.isfinite(metrics["loss"]):
            raise TrainingDiverged(f"non-finite loss in the chunk ending at update "
                                   f"{self.step}; last good checkpoint: update "
                                   f"{self.checkpointer.latest_step()}")
        writer.add_scalar("train/loss", float(metrics["loss"]), self.step)
        writer.add_scalar("train/grad_norm", float(metrics["grad_norm"]), self.step)
        for task, value in zip(self.names, metrics["task_loss"], strict=True):
            writer.add_scalar(f"train_loss/{task}", float(value), self.step)
        tokens = (self.chunk * self.cfg.dt.batch_per_task * len(self.names)
                  * self.cfg.dt.context_len * (2 if self.cfg.dt.variant == "mtbc" else 3))
        writer.add_scalar("perf/updates_per_s", self.chunk / max(elapsed, 1e-9), self.step)
        writer.add_scalar("perf/tokens_per_s", tokens / max(elapsed, 1e-9), self.step)

    def evaluate(self, writers) -> list[dict]:
        return [evaluate(self.cfg, self.learner, self.state, self.data, self.targets,
                         self.names, self.eval_env, self.step, self.cfg.eval.episodes)]


def make_device_data(dataset: OfflineDataset, names, cfg: Config) -> DTData:
    from agents.dt.learner import device_data

    return device_data(dataset, names, cfg.dt.prompt_episodes, cfg.dt.normalize_states)


def make_eval_env(cfg: Config, dataset_meta: dict) -> MetaWorldVectorEnv | None:
    """Meta-World: the vector env of the run's tasks with the dataset's goal set. MiniGrid:
    None (its envs are built per evaluation, on the device or, with env.backend gym, on the
    host)."""
    if is_minigrid(cfg.env.suite):
        return None
    return MetaWorldVectorEnv(cfg.env.suite, cfg.env.tasks, seed=int(dataset_meta["seed"]),
                              reward_version=cfg.env.reward_version,
                              max_episode_steps=cfg.env.max_episode_steps,
                              vector_strategy=vector_strategy_for(cfg.env.vector_strategy))


def evaluate(cfg: Config, learner, state, data: DTData, targets: np.ndarray, names,
             env: MetaWorldVectorEnv | None, updates: int, episodes: int) -> dict:
    """The evaluation record of the run's family (`evaluate_dt` or `evaluate_dt_minigrid`)."""
    if is_minigrid(cfg.env.suite):
        return evaluate_dt_minigrid(cfg, learner, state, data, targets, names, updates,
                                    episodes)
    return evaluate_dt(cfg, learner, learner.act, state, data, targets, env, updates, episodes)


def eval_record(cfg: Config, names, updates: int, targets: np.ndarray, returns,
                successes, timeouts=None) -> dict:
    """eval.jsonl's record from (T, episodes) returns and successes, and on MiniGrid each
    task's timeout fraction (episodes cut at max_steps), as the PPO loop records it."""
    returns, successes = np.asarray(returns, np.float64), np.asarray(successes, bool)
    per_task = {}
    for i, name in enumerate(names):
        per_task[name] = {"success": float(successes[i].mean()),
                          "return": float(returns[i].mean())}
        if timeouts is not None:
            per_task[name]["timeout"] = float(np.asarray(timeouts, bool)[i].mean())
        per_task[name]["episodes"] = int(returns.shape[1])
    return {"step": updates, "updates": updates, "suite": cfg.env.suite, "deterministic": True,
            "target_returns": [float(x) for x in targets],
            "mean_success": float(successes.mean()), "mean_return": float(returns.mean()),
            "per_task": per_task}


def evaluate_dt(cfg: Config, learner, act, state, data: DTData, targets: np.ndarray,
                env: MetaWorldVectorEnv, updates: int, episodes: int) -> dict:
    """`episodes` episodes of every Meta-World task at once; the record eval.jsonl holds."""
    env_seed, prompt_key = eval_randomness(cfg.seed, updates)
    env.reseed(env_seed)
    prompt = learner.eval_prompt(data, prompt_key)
    horizon, num_tasks = env.max_episode_steps, env.num_tasks
    successes = np.zeros((episodes, num_tasks), bool)
    returns = np.zeros((episodes, num_tasks))
    obs = env.reset()
    for episode in range(episodes):
        ctx = learner.eval_reset(jnp.asarray(targets))
        reward = np.zeros(num_tasks, np.float32)
        for t in range(horizon):
            action, ctx = act(state, data, prompt, ctx, jnp.asarray(obs, jnp.float32),
                              jnp.asarray(reward, jnp.float32), t, t == 0)
            result = env.step(np.asarray(action, np.float64))
            reward = result.reward
            successes[episode] |= result.success
            returns[episode] += result.reward
            obs = result.obs
    return eval_record(cfg, env.task_names, updates, targets, returns.T, successes.T)


def _episode_contexts(learner, targets: jax.Array, episodes: int):
    """`eval_reset`'s empty contexts, one per task and parallel episode: (T, E, K, ...)."""
    ctx = learner.eval_reset(targets)
    return jax.tree.map(lambda x: jnp.repeat(x[:, None], episodes, axis=1), ctx)


def _batched_act(learner):
    """`act` over (T, E) parallel episodes: contexts, observations and rewards carry the
    episode axis 1; the data statistics, prompt (one per task), step and `first` flag are
    shared."""
    return jax.vmap(learner.act, in_axes=(None, None, None, 1, 1, 1, None, None),
                    out_axes=(1, 1))


@functools.cache  # one compiled evaluation per model configuration, task set and batch
def minigrid_evaluator(dt_cfg, state_dim: int, action_dim: int, names: tuple[str, ...],
                       episodes: int):
    """A jitted `run(state, data, prompt, targets, key) -> (returns, successes, timeouts,
    steps)`: `episodes` fresh episodes of every task of `names` in our JAX MiniGrid, all
    stepped together on the device with the model's argmax actions, until every one has ended
    (or the longest max_steps has passed); the (T, E) outcomes count each episode until its
    end (`count_episode_step`, as the PPO evaluation counts them)."""
    learner = make_dt_learner(dt_cfg, state_dim, action_dim, len(names))
    grid = MultiTaskGrid(names, episodes)
    envs = grid.envs
    horizon = int(grid.max_steps.max())
    act = _batched_act(learner)

    def step_all(env_states, actions):
        # `step`, not `step_autoreset`: an ended episode is never restarted (it stops
        # counting), so drawing fresh layouts at every step would be wasted work.
        out = [jax.vmap(env.step)(s, a) for env, s, a in zip(envs, env_states, actions,
                                                               strict=True)]
        obs = jnp.stack([o[1].reshape(episodes, OBS_DIM) for o in out])
        reward, terminated, truncated = (jnp.stack([o[i] for o in out]) for i in (2, 3, 4))
        return tuple(o[0] for o in out), obs, reward, terminated, truncated

    def run(state, data, prompt, targets, key):
        env_states, obs = grid.reset(key)
        zeros = jnp.zeros((len(names), episodes), jnp.float32)

        def cond(carry):
            return (carry[0] < horizon) & carry[-1].any()

        def body(carry):
            t, env_states, obs, ctx, reward, ret, success, timeout, alive = carry
            # The timestep is the step within the episode: every episode starts at t = 0.
            action, ctx = act(state, data, prompt, ctx, obs.astype(jnp.float32), reward, t,
                              t == 0)
            env_states, obs, reward, terminated, truncated = step_all(env_states, action)
            ret, success, timeout, alive = count_episode_step(
                ret, success, timeout, alive, reward, terminated, truncated)
            return t + 1, env_states, obs, ctx, reward, ret, success, timeout, alive

        no = zeros.astype(bool)
        init = (jnp.int32(0), env_states, obs, _episode_contexts(learner, targets, episodes),
                zeros, zeros, no, no, ~no)
        t, _, _, _, _, ret, success, timeout, _ = jax.lax.while_loop(cond, body, init)
        return ret, success, timeout, t

    return jax.jit(run)


def evaluate_dt_minigrid(cfg: Config, learner, state, data: DTData, targets: np.ndarray,
                         names, updates: int, episodes: int) -> dict:
    """`episodes` fresh episodes of every MiniGrid task at once (see `minigrid_evaluator`;
    `env.backend gym`: `gym_evaluate_dt`); the record eval.jsonl holds."""
    env_seed, prompt_key = eval_randomness(cfg.seed, updates)
    prompt = learner.eval_prompt(data, prompt_key)
    if cfg.env.backend == "gym":
        returns, successes, timeouts = gym_evaluate_dt(learner, state, data, prompt, targets,
                                                       names, episodes, env_seed)
    else:
        run = minigrid_evaluator(learner.cfg, int(data.observations.shape[1]),
                                 _action_dim(learner), tuple(names), episodes)
        returns, successes, timeouts, _ = jax.device_get(run(
            state, data, prompt, jnp.asarray(targets), jax.random.PRNGKey(env_seed)))
    return eval_record(cfg, names, updates, targets, returns, successes, timeouts)


def _action_dim(learner) -> int:
    return int(learner.model.action_dim)


@functools.cache  # compiled once per model configuration, not once per evaluation
def _jitted_batched_act(dt_cfg, state_dim: int, action_dim: int, num_tasks: int):
    return jax.jit(_batched_act(make_dt_learner(dt_cfg, state_dim, action_dim, num_tasks)))


def gym_evaluate_dt(learner, state, data: DTData, prompt, targets: np.ndarray, names,
                    episodes: int, seed: int):
    """The reference backend: the same (T, E) batch of episodes in `minigrid`'s own envs,
    stepped on the host with the jitted batched `act`. -> (returns, successes, timeouts),
    (T, E)."""
    env = GymMultiTask(tuple(names), episodes, seed=seed % (2**31 - 1))
    act = _jitted_batched_act(learner.cfg, int(learner.model.state_dim),
                              _action_dim(learner), len(names))
    try:
        obs = env.reset()
        shape = (len(names), episodes)
        ret, success, alive = np.zeros(shape), np.zeros(shape, bool), np.ones(shape, bool)
        timeout = np.zeros(shape, bool)
        ctx = _episode_contexts(learner, jnp.asarray(targets), episodes)
        reward = np.zeros(shape, np.float32)
        t = 0
        while alive.any():
            action, ctx = act(state, data, prompt, ctx, jnp.asarray(obs, jnp.float32),
                              jnp.asarray(reward), t, t == 0)
            obs, reward, terminated, truncated, _ = env.step(np.asarray(action))
            ret, success, timeout, alive = count_episode_step(
                ret, success, timeout, alive, reward, terminated, truncated)
            t += 1
    finally:
        env.close()
    return ret, success, timeout


def reevaluate(cfg: Config, run: Path, step: int | None, episodes: int | None,
               deterministic: bool = True) -> dict:
    """Evaluate a checkpoint of a DT run (actions are always deterministic); the record
    goes to reeval.jsonl. With the run's episodes it reproduces that evaluation."""
    dataset, names = open_dataset(cfg)
    learner = make_dt_learner(cfg.dt, dataset.meta["obs_dim"], dataset.meta["action_dim"],
                              len(names))
    tree, meta = Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints).restore(step)
    template = learner.init(root_keys(cfg.seed)[0])
    state = serialization.from_state_dict(template, tree["state"])
    data = make_device_data(dataset, names, cfg)
    env = make_eval_env(cfg, dataset.meta)
    try:
        record = evaluate(cfg, learner, state, data,
                          target_returns(dataset, names, cfg.dt.target_return_scale), names,
                          env, int(meta["updates"]), episodes or cfg.eval.episodes)
    finally:
        if env is not None:
            env.close()
    run_lib.append_eval(run, record, "reeval.jsonl")
    return record
