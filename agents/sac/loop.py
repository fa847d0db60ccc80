"""The Meta-World actor-learner loop for off-policy agents.

The actor steps the CPU vector env with a jitted policy on the CPU device; every
`chunk_steps` env steps the chunk of transitions goes to the learner's device in one
transfer, is inserted into the replay buffer, and the learner runs as many gradient steps
inside one jitted `lax.scan` (MOORE's ratio: one gradient step per vector-env step).

- Synchronous mode (default): collect chunk k with the params after update k-1.
- Asynchronous mode: chunk k+1 is collected while update k runs on the device, with the
  params after update k-1 (a policy lag of one chunk). Both modes are deterministic.

Deviation from MOORE's per-step interleaving: within a chunk, transitions are collected
before that chunk's gradient steps, and those steps may sample the whole chunk.

Checkpoints and evaluations happen at episode boundaries, where the env's random state can
be saved exactly, so a resumed run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from agents.nn.masks import MASKED_ARCHS, mask_statistics
from agents.sac.learner import make_learner
from analysis import figures
from envs.metaworld import ACTION_DIM, OBS_DIM, MetaWorldVectorEnv, vector_strategy_for
from training import run_dir as run_lib
from training import sharding
from training.checkpoint import Checkpointer
from training.config import Config
from training.data import replay
from training.errors import TrainingDiverged
from training.evaluation import evaluate
from training.runner import Runner


@dataclass
class Progress:
    env_steps: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0


def make_env(cfg: Config, seed: int) -> MetaWorldVectorEnv:
    return MetaWorldVectorEnv(cfg.env.suite, cfg.env.tasks, seed=seed,
                              reward_version=cfg.env.reward_version,
                              max_episode_steps=cfg.env.max_episode_steps,
                              vector_strategy=vector_strategy_for(cfg.env.vector_strategy))


def jitted_act(learner):
    """jit of (params, obs, key, deterministic) -> (action, next key) for one env step.

    Inputs committed to the CPU device (params, obs, key) make it run there, whatever the
    learner's device is.
    """

    def act(params, obs, key, deterministic):
        key, sub = jax.random.split(key)
        return learner.policy(params, obs, jnp.arange(obs.shape[0]), sub, deterministic), key

    return jax.jit(act)


def eval_actor(act, params, key, deterministic: bool, device):
    """The evaluation's `obs -> actions` function over a jitted_act."""
    params, key = jax.device_put((params, key), device)

    def actor(obs):
        nonlocal key
        action, key = act(params, jax.device_put(obs.astype(np.float32), device), key,
                          deterministic)
        return np.asarray(action)

    return actor


def root_keys(seed: int):
    """The run's (learner, actor, evaluation) keys: everything random derives from the seed."""
    return jax.random.split(jax.random.PRNGKey(seed), 3)


def eval_randomness(seed: int, step: int):
    """(env seed, action key) of the evaluation at `step`: the same for the training run's
    evaluation and for `launch.py eval --run`, so re-evaluating a checkpoint reproduces it."""
    env_seed = int(np.random.SeedSequence([seed, step, 0xE7A1]).generate_state(1)[0])
    return env_seed, jax.random.fold_in(root_keys(seed)[2], step)


class Trainer(Runner):
    """The envs, learner and buffer of one run, trained by training/runner.py's lifecycle."""

    checkpoint_at_start = True  # with the env state, so a run killed early resumes exactly

    def __init__(self, cfg: Config, run: Path, show_progress: bool = True):
        super().__init__(cfg, [run], cfg.train.total_steps_per_task, show_progress, cfg.preset)
        self.run = run
        self.env = make_env(cfg, cfg.seed)
        # Its own instances, same goal set (the benchmark seed), reseeded before each evaluation.
        self.eval_env = make_env(cfg, cfg.seed)
        self.num_tasks = self.env.num_tasks
        # Data parallel over the local devices: None (one device) keeps the plain jit.
        self.mesh = sharding.local_mesh(cfg.train.devices, cfg.train.learner_device)
        # One gradient step per env step: the run's length in updates drives schedules.
        self.learner = make_learner(cfg.sac, cfg.network, self.num_tasks, OBS_DIM, ACTION_DIM,
                                    total_updates=cfg.train.total_steps_per_task,
                                    batch_sharding=sharding.batch_rows(self.mesh))
        self.actor_device = jax.devices("cpu")[0]
        self._insert = sharding.jit(replay.insert, self.mesh, donate_argnums=0)
        self._train_chunk = sharding.jit(self.learner.train_chunk, self.mesh, donate_argnums=0)
        self._act = jitted_act(self.learner)
        self.checkpointer = self.checkpointers[0]

    @property
    def progress(self) -> Progress:
        return Progress(self.step, self.next_eval, self.next_checkpoint)

    # ---- state -----------------------------------------------------------------------------

    def fresh(self):
        learner_key, actor_key, _ = root_keys(self.cfg.seed)
        self.actor_key = jax.device_put(actor_key, self.actor_device)
        self.state = sharding.place(self.learner.init(learner_key), self.mesh)
        self.buffer = sharding.place(
            replay.init_buffer(self.num_tasks, self.cfg.sac.buffer_size_per_task, OBS_DIM,
                               ACTION_DIM, sharding.replicated(self.mesh)), self.mesh)
        self.actor_params = self._to_actor(self.state.actor_params)
        self.step = 0
        self.obs = self.env.reset()
        self._episode_return = np.zeros(self.num_tasks)
        self._episode_success = np.zeros(self.num_tasks, bool)
        self._pending = None  # (step, metrics) of an update not yet checked for NaN

    def load(self, restored):
        ((tree, meta),) = restored
        self.fresh()  # templates for the restored trees
        self.state = sharding.place(serialization.from_state_dict(self.state, tree["learner"]),
                                    self.mesh)
        self.actor_params = self._to_actor(
            serialization.from_state_dict(self.actor_params, tree["actor_params"]))
        if "buffer" in tree:
            self.buffer = None  # free the empty template first: at paper scale it is GBs
            self.buffer = sharding.place(
                replay.from_filled(tree["buffer"], self.cfg.sac.buffer_size_per_task,
                                   meta["buffer_ptr"], sharding.replicated(self.mesh)), self.mesh)
        self.actor_key = jax.device_put(tree["actor_key"], self.actor_device)
        self.step = meta["env_steps"]
        self.obs = self.env.restore(meta["env_rng"])

    def snapshot(self):
        step = self.step
        tree = {
            "learner": sharding.one_copy(serialization.to_state_dict(self.state), self.mesh),
            "actor_params": serialization.to_state_dict(self.actor_params),
            "actor_key": self.actor_key,
        }
        if step > 0:  # orbax cannot store zero-size arrays
            tree["buffer"] = sharding.one_copy(replay.filled(self.buffer), self.mesh)
        meta = {
            "progress": vars(self.progress),
            "env_steps": step,
            "buffer_ptr": int(self.buffer.ptr),
            "env_rng": self.env.rng_checkpoint() if self.env.at_episode_boundary else None,
        }
        return [(tree, meta)]

    def _to_actor(self, params):
        # A host copy: the learner's state is donated to the next update, and on an
        # accelerator the actor must not fetch params from the device on every env step.
        return jax.device_put(jax.device_get(params), self.actor_device)

    # ---- the runner's hooks ------------------------------------------------------------------

    def start(self, writers):
        self._started = (time.perf_counter(), self.step)

    def train_chunk(self, writers):
        (writer,) = writers
        self.run_chunk(writer)
        elapsed = time.perf_counter() - self._started[0]
        writer.add_scalar("perf/env_steps_per_s", (self.step - self._started[1])
                          * self.num_tasks / max(elapsed, 1e-9), self.step)

    def at_boundary(self) -> bool:
        return self.env.at_episode_boundary

    def close(self):
        self.env.close()  # with env.vector_strategy async, their worker processes
        self.eval_env.close()

    def settle(self, writers):
        self._check_and_log(writers[0])

    def run_chunk(self, writer) -> None:
        """One iteration of the loop: collect a chunk, insert it, run its gradient steps."""
        chunk = self.cfg.train.chunk_steps
        transitions = self._collect(chunk, writer)
        size_before = min(self.step, self.buffer.capacity)
        self.buffer = self._insert(self.buffer, transitions)
        self.step += chunk
        if self.cfg.train.async_actor:
            # Params after update k-1 drive chunk k+1 while update k runs.
            self._check_and_log(writer)
            self.actor_params = self._to_actor(self.state.actor_params)
            self._pending = self._update(size_before, chunk)
        else:
            self._pending = self._update(size_before, chunk)
            self._check_and_log(writer)
            self.actor_params = self._to_actor(self.state.actor_params)

    def _collect(self, length, writer):
        n = self.num_tasks
        obs_buf = np.empty((length, n, OBS_DIM), np.float32)
        act_buf = np.empty((length, n, ACTION_DIM), np.float32)
        rew_buf = np.empty((length, n), np.float32)
        next_buf = np.empty((length, n, OBS_DIM), np.float32)
        term_buf = np.empty((length, n), np.float32)
        params = self.actor_params
        episode_return, episode_success = self._episode_return, self._episode_success
        for t in range(length):
            obs = jax.device_put(self.obs.astype(np.float32), self.actor_device)
            action, self.actor_key = self._act(params, obs, self.actor_key, False)
            action = np.asarray(action)
            result = self.env.step(action)
            obs_buf[t] = self.obs
            act_buf[t] = action
            rew_buf[t] = result.reward
            # The true next observation, also on the step a time limit truncates: the
            # critic keeps bootstrapping there, since `terminated` stays False.
            next_buf[t] = result.final_obs
            term_buf[t] = result.terminated
            episode_return += result.reward
            episode_success |= result.success
            if np.any(result.terminated | result.truncated):
                self._log_episodes(writer, episode_return, episode_success, t + 1)
                episode_return[:] = 0.0
                episode_success[:] = False
            self.obs = result.obs
        return {"obs": obs_buf, "action": act_buf, "reward": rew_buf, "next_obs": next_buf,
                "terminated": term_buf}

    def _update(self, size_before, length):
        sac = self.cfg.sac
        sizes = np.minimum(size_before + np.arange(1, length + 1), self.buffer.capacity)
        critic_on = sizes > sac.critic_warmup
        if not critic_on.any():
            return None
        actor_on = sizes > sac.actor_warmup
        # Host arrays: they go straight to the learner's devices, wherever those are.
        self.state, metrics = self._train_chunk(self.state, self.buffer, critic_on, actor_on)
        return self.step, metrics

    def _check_and_log(self, writer):
        """Check the pending update's losses (stop if non-finite), log them, clear the pending."""
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        for name in ("critic_loss", "actor_loss"):
            values = np.asarray(metrics[name])
            if not np.all(np.isfinite(values)):
                last = self.checkpointer.latest_step()
                raise TrainingDiverged(
                    f"non-finite {name} in the update chunk ending at env step {step}; "
                    f"last good checkpoint: {self.checkpointer.directory / str(last)}")
        self._log_metrics(writer, metrics, step)

    def _log_metrics(self, writer, metrics, step):
        for name in ("critic_loss", "actor_loss", "q_mean", "entropy"):
            writer.add_scalar(f"train/{name}", float(np.mean(metrics[name])), step)
        alphas = np.asarray(metrics["alpha"])[-1]
        for task, alpha in zip(self.env.task_names, alphas, strict=True):
            writer.add_scalar(f"alpha/{task}", float(alpha), step)

    def _log_episodes(self, writer, returns, successes, steps_into_chunk):
        step = self.step + steps_into_chunk
        for task, ret, succ in zip(self.env.task_names, returns, successes, strict=True):
            writer.add_scalar(f"train_return/{task}", float(ret), step)
            writer.add_scalar(f"train_success/{task}", float(succ), step)
        writer.add_scalar("train/mean_success", float(np.mean(successes)), step)

    def evaluate(self, writers) -> list[dict]:
        cfg, step = self.cfg, self.step
        env_seed, key = eval_randomness(cfg.seed, step)
        self.eval_env.reseed(env_seed)
        act = eval_actor(self._act, self._to_actor(self.state.actor_params), key,
                         cfg.eval.deterministic, self.actor_device)
        result = evaluate(act, self.eval_env, cfg.eval.episodes)
        record = {"step": step, "suite": cfg.env.suite, "updates": int(self.state.updates),
                  "deterministic": cfg.eval.deterministic, **result}
        if self.cfg.network.arch in MASKED_ARCHS:
            record["masks"] = self._mask_report(writers[0], step)
        return [record]

    def _mask_report(self, writer, step) -> dict:
        """The policy's per-task mask density and pairwise overlap: tensorboardX, a figure
        (<run>/masks/step_<N>.png) and the returned record for eval.jsonl."""
        variables = jax.device_get(self.state.actor_params)
        stats = mask_statistics(variables, self.cfg.network.mask_density)
        density, overlap = np.asarray(stats["density"]), np.asarray(stats["overlap"])
        names = self.env.task_names
        off_diagonal = overlap[~np.eye(len(names), dtype=bool)]
        for task, d in zip(names, density, strict=True):
            writer.add_scalar(f"mask_density/{task}", float(d), step)
        writer.add_scalar("masks/mean_overlap", float(off_diagonal.mean()), step)
        fig = figures.mask_figure(density, overlap, names,
                                  f"{self.cfg.network.arch} policy masks, step {step}")
        writer.add_figure("masks/policy", fig, step, close=False)
        figures.save(fig, self.run / "masks" / f"step_{step}.png")
        return {"density": {t: float(d) for t, d in zip(names, density, strict=True)},
                "mean_overlap": float(off_diagonal.mean()),
                "overlap": np.round(overlap, 4).tolist()}


def reevaluate(cfg: Config, run: Path, step: int | None, episodes: int | None,
               deterministic: bool) -> dict:
    """Evaluate a saved checkpoint of `run` on fresh envs; the record goes to reeval.jsonl."""
    checkpointer = Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints)
    tree, meta = checkpointer.restore(step)
    env = make_env(cfg, cfg.seed)
    learner = make_learner(cfg.sac, cfg.network, env.num_tasks, OBS_DIM, ACTION_DIM)
    template = learner.init(jax.random.PRNGKey(0))
    params = serialization.from_state_dict(template.actor_params, tree["learner"]["actor_params"])
    env_seed, key = eval_randomness(cfg.seed, meta["env_steps"])
    env.reseed(env_seed)
    act = eval_actor(jitted_act(learner), params, key, deterministic, jax.devices("cpu")[0])
    try:
        result = evaluate(act, env, episodes or cfg.eval.episodes)
    finally:
        env.close()
    record = {"step": meta["env_steps"], "suite": cfg.env.suite, "deterministic": deterministic,
              **result}
    run_lib.append_eval(run, record, "reeval.jsonl")
    return record
