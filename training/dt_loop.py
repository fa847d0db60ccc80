"""The offline loop: a decision transformer trained from a dataset, evaluated online.

The dataset (training/offline_data.py) is checked (tasks, Meta-World and MuJoCo versions,
reward version, episode length) and copied to the device once. Training runs in chunks of
`agents/dt/train.py`'s `train_updates` (a `lax.scan` of updates, each sampling its batch on
the device); between chunks the Python loop logs to tensorboardX, evaluates and
checkpoints. `train.eval_every` and `train.checkpoint_every` count gradient updates here.

Evaluation runs all tasks at once in their own Meta-World vector env (never one task after
another), with the benchmark's goal set of the dataset (its env seed) and a fresh random
state per evaluation. Actions are deterministic (the tanh'd mean the model predicts). Every
task is conditioned on `dt.target_return_scale` x the best return of that task in the data,
decreased by each reward received. The record (eval.jsonl, `step` = updates) is the format
of the online loops, so `launch.py report` reads it unchanged. final.json is the last
checkpoint's evaluation, never the best of training.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tensorboardX import SummaryWriter
from tqdm import tqdm

from agents.dt.train import DTData, make_dt_learner
from envs.metaworld import MetaWorldVectorEnv, suite_tasks
from training import run_dir as run_lib
from training.checkpoint import Checkpointer
from training.config import Config
from training.errors import TrainingDiverged, UsageError
from training.offline_data import ENV_PACKAGES, OfflineDataset, load_dataset


def root_keys(seed: int):
    """(init key, evaluation key base) of a run: functions of its seed alone."""
    return jax.random.split(jax.random.PRNGKey(seed))


def eval_randomness(seed: int, updates: int):
    """(env seed, prompt key) of the evaluation after `updates`: the training run's and
    `launch.py eval --run`'s are the same, so re-evaluating a checkpoint reproduces it."""
    env_seed = int(np.random.SeedSequence([seed, updates, 0xD7]).generate_state(1)[0])
    return env_seed, jax.random.fold_in(root_keys(seed)[1], updates)


def open_dataset(cfg: Config) -> tuple[OfflineDataset, tuple[str, ...]]:
    """The run's dataset, checked against the run's config and the installed packages."""
    from training.run_dir import versions

    names = suite_tasks(cfg.env.suite, cfg.env.tasks)
    installed = versions()
    dataset = load_dataset(cfg.dt.dataset, tasks=names,
                           env_versions={k: installed[k] for k in ENV_PACKAGES
                                         if installed.get(k)},
                           reward_version=cfg.env.reward_version)
    meta = dataset.meta
    if meta.get("env") != "metaworld":
        raise UsageError(f"dataset '{cfg.dt.dataset}' holds {meta.get('env')} data; suite "
                         f"'{cfg.env.suite}' is Meta-World")
    if meta.get("max_episode_steps") != cfg.env.max_episode_steps:
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


class DTTrainer:
    """Owns one offline run: its data on the device, learner, eval env and run directory."""

    def __init__(self, cfg: Config, run: Path, show_progress: bool = True):
        self.cfg, self.run, self.show_progress = cfg, run, show_progress
        dataset, self.names = open_dataset(cfg)
        self.dataset_meta = dataset.meta
        self.learner = make_dt_learner(cfg.dt, dataset.meta["obs_dim"],
                                       dataset.meta["action_dim"], len(self.names))
        self.data: DTData = make_device_data(dataset, self.names, cfg)
        self.targets = target_returns(dataset, self.names, cfg.dt.target_return_scale)
        t, d = cfg.train, cfg.dt
        self.chunk = math.gcd(t.eval_every, t.checkpoint_every, d.updates)
        self.checkpointer = Checkpointer(run / "checkpoints", t.keep_checkpoints)
        self.eval_env = MetaWorldVectorEnv(cfg.env.suite, cfg.env.tasks,
                                           seed=int(dataset.meta["seed"]),
                                           reward_version=cfg.env.reward_version,
                                           max_episode_steps=cfg.env.max_episode_steps)

    def _save(self, complete: bool = False) -> None:
        tree = {"state": serialization.to_state_dict(jax.device_get(self.state))}
        self.checkpointer.save(self.updates, tree, {"updates": self.updates, "env_steps": 0,
                                                    "complete": complete})

    def _restore(self) -> None:
        tree, meta = self.checkpointer.restore()
        if meta.get("complete"):
            raise UsageError(f"run '{self.run}' is already complete ({meta['updates']} "
                             "updates)")
        self.state = serialization.from_state_dict(self.state, tree["state"])
        self.updates = int(meta["updates"])
        run_lib.truncate_evals(self.run, self.updates)

    def train(self, resume: bool = False) -> dict:
        self.state = self.learner.init(root_keys(self.cfg.seed)[0])
        self.updates = 0
        if resume:
            self._restore()
        t, d = self.cfg.train, self.cfg.dt
        writer = SummaryWriter(str(self.run / "tb"),
                               purge_step=self.updates + 1 if resume else None)
        bar = tqdm(total=d.updates, initial=self.updates, unit="update",
                   desc=self.cfg.preset, disable=not self.show_progress, dynamic_ncols=True)
        last = None
        try:
            while self.updates < d.updates:
                start = time.perf_counter()
                metrics = self._chunk()
                self.updates += self.chunk
                self._log(writer, metrics, time.perf_counter() - start)
                bar.update(self.chunk)
                if self.updates % t.eval_every == 0 or self.updates >= d.updates:
                    last = self._evaluate(writer)
                    bar.set_postfix(success=f"{last['mean_success']:.2f}")
                if self.updates % t.checkpoint_every == 0 and self.updates < d.updates:
                    self._save()
            if last is None:  # resumed a run whose last evaluation was the final one
                last = self._evaluate(writer)
            run_lib.write_atomic(self.run / "final.json", json.dumps(last, indent=2))
            self._save(complete=True)
        finally:
            bar.close()
            writer.close()
            self.eval_env.close()
        return last

    def _chunk(self) -> dict:
        self.state, metrics = self.learner.train_updates(self.state, self.data, self.chunk)
        return jax.device_get(metrics)

    def _log(self, writer, metrics: dict, elapsed: float) -> None:
        if not np.isfinite(metrics["loss"]):
            raise TrainingDiverged(f"non-finite loss in the chunk ending at update "
                                   f"{self.updates}; last good checkpoint: update "
                                   f"{self.checkpointer.latest_step()}")
        writer.add_scalar("train/loss", float(metrics["loss"]), self.updates)
        writer.add_scalar("train/grad_norm", float(metrics["grad_norm"]), self.updates)
        for task, value in zip(self.names, metrics["task_loss"], strict=True):
            writer.add_scalar(f"train_loss/{task}", float(value), self.updates)
        tokens = (self.chunk * self.cfg.dt.batch_per_task * len(self.names)
                  * self.cfg.dt.context_len * (2 if self.cfg.dt.variant == "mtbc" else 3))
        writer.add_scalar("perf/updates_per_s", self.chunk / max(elapsed, 1e-9), self.updates)
        writer.add_scalar("perf/tokens_per_s", tokens / max(elapsed, 1e-9), self.updates)

    def _evaluate(self, writer) -> dict:
        record = evaluate_dt(self.cfg, self.learner, self.learner.act, self.state, self.data,
                             self.targets, self.eval_env, self.updates, self.cfg.eval.episodes)
        run_lib.append_eval(self.run, record)
        writer.add_scalar("eval/mean_success", record["mean_success"], self.updates)
        writer.add_scalar("eval/mean_return", record["mean_return"], self.updates)
        for task, r in record["per_task"].items():
            writer.add_scalar(f"eval_success/{task}", r["success"], self.updates)
            writer.add_scalar(f"eval_return/{task}", r["return"], self.updates)
        writer.flush()
        return record


def make_device_data(dataset: OfflineDataset, names, cfg: Config) -> DTData:
    from agents.dt.train import device_data

    return device_data(dataset, names, cfg.dt.prompt_episodes)


def evaluate_dt(cfg: Config, learner, act, state, data: DTData, targets: np.ndarray,
                env: MetaWorldVectorEnv, updates: int, episodes: int) -> dict:
    """`episodes` episodes of every task at once; the record eval.jsonl holds."""
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
            action, ctx = act(state, prompt, ctx, jnp.asarray(obs, jnp.float32),
                              jnp.asarray(reward, jnp.float32), t, t == 0)
            result = env.step(np.asarray(action, np.float64))
            reward = result.reward
            successes[episode] |= result.success
            returns[episode] += result.reward
            obs = result.obs
    per_task = {name: {"success": float(successes[:, i].mean()),
                       "return": float(returns[:, i].mean()), "episodes": episodes}
                for i, name in enumerate(env.task_names)}
    return {"step": updates, "updates": updates, "suite": cfg.env.suite, "deterministic": True,
            "target_returns": [float(x) for x in targets],
            "mean_success": float(successes.mean()), "mean_return": float(returns.mean()),
            "per_task": per_task}


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
    env = MetaWorldVectorEnv(cfg.env.suite, cfg.env.tasks, seed=int(dataset.meta["seed"]),
                             reward_version=cfg.env.reward_version,
                             max_episode_steps=cfg.env.max_episode_steps)
    try:
        record = evaluate_dt(cfg, learner, learner.act, state, data,
                             target_returns(dataset, names, cfg.dt.target_return_scale), env,
                             int(meta["updates"]), episodes or cfg.eval.episodes)
    finally:
        env.close()
    run_lib.append_eval(run, record, "reeval.jsonl")
    return record
