"""The MiniGrid PPO loop: N seeds trained together on the device, or one seed on `minigrid`.

On-device backend (`env.backend jax`): each seed's whole PPO iteration (rollout in our JAX
envs, GAE, epochs of minibatch updates) is `agents/ppo/learner.py`'s pure `train_updates`; it
is vmapped over the seeds and jitted, and one call runs a chunk of iterations. The Python
loop here only runs between chunks: tensorboardX logging, per-task evaluation on fresh env
instances (16 episodes per task, stochastic by default, MOORE's protocol), checkpoints.

Each seed is its own run directory (config.json with its seed, eval.jsonl, tb/, checkpoints/
holding that seed's slice of the state), so reports and grids see ordinary runs; training
them in one process is only how they were computed. A seed trained alone and in a batch
follows the same random streams (its keys derive from its own seed only).

Reference backend (`env.backend gym`): the same agent and update (`learn`), with the rollout
stepped on the host through `minigrid`'s gymnasium envs, one seed per process. Its
checkpoints hold the learner but not the Python envs: a resumed run restarts its envs from
fresh episodes (seeded by the run's seed and step), so it is deterministic but not identical
to an uninterrupted run. The on-device backend resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from agents.ppo.learner import PPOState, Rollout, make_ppo
from envs.minigrid import ACTION_NAMES
from envs.minigrid.multitask import GymMultiTask, count_episode_step, task_names
from training import run_dir as run_lib
from training.checkpoint import Checkpointer
from training.config import Config, diff
from training.errors import TrainingDiverged, UsageError
from training.memory import GIB, call_bytes, free_bytes
from training.runner import Runner
from training.sharding import learner_device


def run_ppo(cfg: Config):
    """The PPO agent of a run's config (its schedules span the run's PPO iterations)."""
    return make_ppo(cfg.ppo, cfg.network, task_names(cfg.env.suite, cfg.env.tasks),
                    total_updates=cfg.train.total_steps_per_task // cfg.ppo.steps_per_task)


def seed_keys(seed: int):
    """(init key, evaluation key base) of one seed: a function of the seed alone."""
    return jax.random.split(jax.random.PRNGKey(seed))


def eval_key(seed: int, step: int):
    return jax.random.fold_in(seed_keys(seed)[1], step)


def over_seeds(fn, count: int):
    """`fn` mapped over a leading seed axis of length `count` (all arguments and results).

    One seed is run unbatched: on the CPU, `jax.vmap` over an axis of one made a MiniGrid PPO
    iteration 25 % slower (MT3 MOORE, 2.48 s against 1.98 s, timed side by side with training
    paused; BENCHMARKS.md), while at two seeds and more the vmapped iteration costs about what
    the unbatched ones do."""
    if count != 1:
        return jax.vmap(fn)

    def single(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return single


def steps_per_chunk(cfg: Config) -> int:
    """Env steps per task between two host visits: every evaluation and checkpoint falls on a
    chunk boundary."""
    t = cfg.train
    return math.gcd(t.eval_every, t.checkpoint_every, t.total_steps_per_task)


@functools.lru_cache(maxsize=2)
def _compile_chunk(cfg: Config, num_seeds: int):
    ppo = run_ppo(cfg)
    keys = jax.ShapeDtypeStruct((num_seeds, 2), jnp.uint32)
    # Compiled for the learner's device: an ahead-of-time executable runs where it was placed.
    on_device = jax.sharding.SingleDeviceSharding(learner_device(cfg.train.learner_device))
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device),
                         jax.eval_shape(jax.vmap(ppo.init), keys))
    chunk = functools.partial(ppo.train_updates,
                              num_updates=steps_per_chunk(cfg) // cfg.ppo.steps_per_task)
    return jax.jit(over_seeds(chunk, num_seeds), donate_argnums=0).lower(state).compile()


def compiled_chunk(cfg: Config, num_seeds: int):
    """The on-device training chunk of `num_seeds` seeds of `cfg`, compiled ahead of the run
    (state -> (state, metrics), the state donated). Cached, so that the memory check and the
    trainer share one compilation; the seed does not change the program."""
    return _compile_chunk(dataclasses.replace(cfg, seed=0), num_seeds)


def _memory(cfgs: list[Config]):
    """(bytes one training chunk of these seeds needs, bytes free, the device), or None on the
    gym backend or where either figure is unknown."""
    if cfgs[0].env.backend == "gym":
        return None
    device = learner_device(cfgs[0].train.learner_device)
    need, free = call_bytes(compiled_chunk(cfgs[0], len(cfgs))), free_bytes(device)
    return None if need is None or free is None else (need, free, device)


def seeds_that_fit(cfgs: list[Config]) -> int:
    """How many of these seeds one process can train together: all of them where they fit or
    the figures are unknown, else as many as the free memory holds at their need per seed
    (XLA's plan grows about linearly with the seeds: 2.9 GiB per MT7 MOORE seed at 1 and 3;
    a fixed part would make a smaller batch need more per seed, so check the batch again)."""
    found = _memory(cfgs)
    return len(cfgs) if found is None else _fitting(found[0], found[1], len(cfgs))


def _fitting(need: int, free: int, count: int) -> int:
    return count if need <= free else int(free // (need / count))


def check_memory(cfgs: list[Config]) -> str | None:
    """Refuse to start seeds whose compiled training chunk needs more memory than the device
    has free (UsageError naming both and how many seeds would fit); -> a line giving both,
    or None on the gym backend or where either figure is unknown."""
    found = _memory(cfgs)
    if found is None:
        return None
    (need, free, device), count = found, len(cfgs)
    per_seed = need / count
    seeds = f"{count} seed{'s' if count > 1 else ''}"
    if need > free:
        fits = _fitting(need, free, count)
        advice = (f"train at most {fits} per process (--num-seeds {fits}, or {fits} run "
                  f"directories to --resume)" if fits else
                  "lower --ppo.steps_per_task or use a device with more memory")
        raise UsageError(f"the training chunk of {seeds} of '{cfgs[0].preset}' needs "
                         f"{need / GIB:.1f} GiB ({per_seed / GIB:.1f} GiB per seed) but the "
                         f"{device.platform} device has {free / GIB:.1f} GiB free; {advice}")
    return (f"memory: the training chunk of {seeds} needs {need / GIB:.1f} GiB "
            f"({per_seed / GIB:.1f} GiB per seed); {free / GIB:.1f} GiB free on the "
            f"{device.platform} device")


def evaluation_record(suite: str, deterministic: bool, names, step: int, updates: int, returns,
                      successes, timeouts) -> dict:
    """eval.jsonl's record (the Meta-World loop's format) from (T, episodes) arrays, plus each
    task's timeout fraction (episodes cut at max_steps; the rest of the failures ended in a
    terminal state such as lava)."""
    returns, successes = np.asarray(returns, np.float64), np.asarray(successes, bool)
    timeouts = np.asarray(timeouts, bool)
    per_task = {name: {"success": float(successes[t].mean()), "return": float(returns[t].mean()),
                       "timeout": float(timeouts[t].mean()), "episodes": int(returns.shape[1])}
                for t, name in enumerate(names)}
    return {"step": step, "suite": suite, "updates": updates,
            "deterministic": deterministic, "mean_success": float(successes.mean()),
            "mean_return": float(returns.mean()), "per_task": per_task}


class PPOTrainer(Runner):
    """Trains the runs `runs` (configs `cfgs`, equal except for the seed) side by side, by
    training/runner.py's lifecycle."""

    def __init__(self, cfgs: list[Config], runs: list[Path], show_progress: bool = True):
        if not cfgs or len(cfgs) != len(runs):
            raise UsageError("PPOTrainer needs one config per run")
        for cfg in cfgs[1:]:
            changed = [k for k in diff(cfgs[0], cfg) if k != "seed"]
            if changed:
                raise UsageError(f"runs trained together must differ only in the seed; "
                                 f"they differ in {', '.join(changed)}")
        seeds = [c.seed for c in cfgs]
        if len(set(seeds)) != len(seeds):
            raise UsageError(f"runs trained together need distinct seeds, got {seeds}")
        super().__init__(cfgs[0], runs, cfgs[0].train.total_steps_per_task, show_progress,
                         f"{cfgs[0].preset} x{len(runs)} seeds")
        self.seeds = seeds
        self.names = task_names(self.cfg.env.suite, self.cfg.env.tasks)
        self.ppo = run_ppo(self.cfg)
        self.steps_per_chunk = steps_per_chunk(self.cfg)
        self.updates_per_chunk = self.steps_per_chunk // self.cfg.ppo.steps_per_task
        self._evaluate_seeds = jax.jit(over_seeds(functools.partial(
            self.ppo.evaluate, episodes=self.cfg.eval.episodes,
            deterministic=self.cfg.eval.deterministic), len(seeds)))
        self._learn = jax.jit(self.ppo.learn, donate_argnums=0)
        self._sample = jax.jit(self.ppo.sample)
        self._policy = jax.jit(self.ppo.policy, static_argnums=3)
        self._gym = None

    @classmethod
    def for_runs(cls, cfgs, runs, show_progress):
        check_memory(cfgs)  # a grid job too is refused before it trains, not killed mid-run
        return cls(cfgs, runs, show_progress=show_progress)

    # ---- state -----------------------------------------------------------------------------

    def fresh(self):
        keys = jnp.stack([seed_keys(s)[0] for s in self.seeds])
        self.state = jax.jit(jax.vmap(self.ppo.init))(keys)
        self.step = 0

    def load(self, restored):
        self.fresh()  # the template
        self.step = restored[0][1]["env_steps"]
        slices = [serialization.from_state_dict(self._slice(i), tree["state"])
                  for i, (tree, _) in enumerate(restored)]
        self.state = jax.tree.map(lambda *xs: jnp.stack(xs), *slices)

    def _slice(self, i: int):
        return _index(self.state, i)

    def snapshot(self):
        host = jax.device_get(self.state)
        return [({"state": serialization.to_state_dict(_index(host, i))},
                 {"env_steps": self.step, "updates": self.step // self.cfg.ppo.steps_per_task})
                for i in range(len(self.runs))]

    # ---- the runner's hooks ------------------------------------------------------------------

    def start(self, writers):
        if self.cfg.env.backend == "gym":
            self._start_gym()
        else:  # held for the run: the memory check's compilation, not a cache lookup per chunk
            self._train = compiled_chunk(self.cfg, len(self.runs))

    def train_chunk(self, writers):
        start = time.perf_counter()
        metrics = self._gym_chunk() if self._gym is not None else self._device_chunk()
        self.step += self.steps_per_chunk
        self._log(writers, metrics, time.perf_counter() - start)

    def close(self):
        if self._gym is not None:
            self._gym.close()

    def _device_chunk(self) -> dict:
        self.state, metrics = self._train(self.state)
        return jax.device_get(metrics)

    def _log(self, writers, metrics: dict, elapsed: float) -> None:
        """Check for divergence, then write each run's chunk means to its tensorboard."""
        for name in ("value_loss", "policy_loss"):
            if not np.all(np.isfinite(metrics[name])):
                last = self.checkpointers[0].latest_step()
                raise TrainingDiverged(f"non-finite {name} in the chunk ending at step "
                                       f"{self.step}; last good checkpoint: step {last}")
        steps_per_s = self.steps_per_chunk * len(self.names) * len(self.runs) / max(elapsed,
                                                                                    1e-9)
        for i, w in enumerate(writers):
            for name in ("value_loss", "policy_loss", "entropy", "approx_kl", "clip_fraction",
                         "value_mean"):
                w.add_scalar(f"train/{name}", float(np.mean(metrics[name][i])), self.step)
            episodes = metrics["episodes"][i].sum(0)
            returns = metrics["return_sum"][i].sum(0) / np.maximum(episodes, 1)
            success = metrics["success_sum"][i].sum(0) / np.maximum(episodes, 1)
            task_entropy = metrics["task_entropy"][i].mean(0)
            for t, task in enumerate(self.names):
                w.add_scalar(f"train_return/{task}", float(returns[t]), self.step)
                w.add_scalar(f"train_success/{task}", float(success[t]), self.step)
                w.add_scalar(f"train_entropy/{task}", float(task_entropy[t]), self.step)
            w.add_scalar("train/mean_success", float(success.mean()), self.step)
            w.add_scalar("perf/env_steps_per_s", steps_per_s, self.step)

    def evaluate(self, writers) -> list[dict]:
        """Every seed's evaluation on fresh envs."""
        keys = jnp.stack([eval_key(s, self.step) for s in self.seeds])
        if self.cfg.env.backend == "gym":
            outcomes = gym_evaluate(self._policy, self._slice(0).learner.actor_params,
                                    self.names, keys[0], self.cfg.eval.episodes,
                                    self.cfg.eval.deterministic)
            returns, successes, timeouts = (x[None] for x in outcomes)
        else:
            returns, successes, timeouts = jax.device_get(
                self._evaluate_seeds(self.state.learner.actor_params, keys))
        updates = self.step // self.cfg.ppo.steps_per_task
        return [evaluation_record(self.cfg.env.suite, self.cfg.eval.deterministic, self.names,
                                  self.step, updates, returns[i], successes[i], timeouts[i])
                for i in range(len(self.runs))]

    # ---- the reference backend (minigrid on the host) ----------------------------------------

    def _start_gym(self) -> None:
        """The host envs of the gym backend, seeded by the run's seed and the step they start
        at (a resumed run starts them anew), and their running episode returns."""
        p = self.cfg.ppo
        self._gym = GymMultiTask(self.names, p.envs_per_task,
                                 seed=self.seeds[0] * 1_000_003 + self.step)
        self._gym_obs = self._gym.reset()
        self._gym_return = np.zeros(self._gym_obs.shape[:2])
        self._gym_key = jax.random.fold_in(seed_keys(self.seeds[0])[0], self.step + 1)

    def _gym_chunk(self) -> dict:
        env = self._gym
        length = self.cfg.ppo.steps_per_task // self.cfg.ppo.envs_per_task
        learner = self._slice(0).learner
        all_metrics = []
        for _ in range(self.updates_per_chunk):
            data = {k: [] for k in Rollout._fields}
            ep_return = self._gym_return
            finished = np.zeros((3, len(self.names)))
            for _ in range(length):
                self._gym_key, k_act = jax.random.split(self._gym_key)
                action, log_prob = (np.asarray(x) for x in self._sample(
                    learner.actor_params, jnp.asarray(self._gym_obs), k_act))
                obs, reward, terminated, truncated, final_obs = env.step(action)
                done = terminated | truncated
                for k, v in zip(Rollout._fields, (self._gym_obs, action, log_prob, reward,
                                                  terminated, done, final_obs), strict=True):
                    data[k].append(v)
                ep_return = ep_return + reward
                finished += np.stack([done.sum(1), np.where(done, ep_return, 0).sum(1),
                                      (done & (ep_return > 0)).sum(1)])
                ep_return = np.where(done, 0.0, ep_return)
                self._gym_obs = obs
            self._gym_return = ep_return
            rollout = Rollout(*(jnp.asarray(np.stack(data[k])) for k in Rollout._fields))
            learner, metrics = self._learn(learner, rollout)
            metrics = jax.device_get(metrics)
            metrics.update(episodes=finished[0], return_sum=finished[1], success_sum=finished[2])
            all_metrics.append(metrics)
        self.state = jax.tree.map(lambda full, new: full.at[0].set(new), self.state,
                                  PPOState(learner, self._slice(0).env))
        return {k: np.stack([m[k] for m in all_metrics])[None] for k in all_metrics[0]}


def _index(tree, i: int):
    """Seed i's slice of a seed-batched tree."""
    return jax.tree.map(lambda x: x[i], tree)


def gym_evaluate(policy, actor_params, names, key, episodes: int, deterministic: bool):
    """`episodes` fresh minigrid episodes per task, side by side, each run once.
    `policy` is the jitted `PPO.policy`. -> (returns, successes, timeouts), each
    (T, episodes), as `PPO.evaluate`."""
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    env = GymMultiTask(names, episodes, seed=seed)
    obs = env.reset()
    shape = (len(names), episodes)
    ret, success, alive = np.zeros(shape), np.zeros(shape, bool), np.ones(shape, bool)
    timeout = np.zeros(shape, bool)
    while alive.any():
        key, k_act = jax.random.split(key)
        action = np.asarray(policy(actor_params, jnp.asarray(obs), k_act, deterministic))
        obs, reward, terminated, truncated, _ = env.step(action)
        ret, success, timeout, alive = count_episode_step(ret, success, timeout, alive, reward,
                                                          terminated, truncated)
    env.close()
    return ret, success, timeout


def reevaluate(cfg: Config, run: Path, step: int | None, episodes: int | None,
               deterministic: bool, behaviour: bool = False) -> dict:
    """Evaluate a saved checkpoint of a PPO run on fresh envs (the run's backend); the record
    goes to reeval.jsonl. With the run's episodes and mode it reproduces that step's record.

    `behaviour` adds the record's "behaviour": per task, the policy's entropy, the fraction of
    steps that moved the agent and each action's share (`PPO.evaluate`'s `with_behaviour`),
    over the evaluated episodes; on a gym-backend run, over as many episodes on the on-device
    envs, since the host envs do not expose them ("behaviour_episodes" says which)."""
    tree, meta = Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints).restore(step)
    names = task_names(cfg.env.suite, cfg.env.tasks)
    ppo = run_ppo(cfg)
    template = jax.jit(ppo.init)(seed_keys(cfg.seed)[0])
    params = serialization.from_state_dict(template, tree["state"]).learner.actor_params
    episodes = episodes or cfg.eval.episodes
    key = eval_key(cfg.seed, meta["env_steps"])
    on_device = jax.jit(functools.partial(ppo.evaluate, episodes=episodes,
                                          deterministic=deterministic,
                                          with_behaviour=behaviour))
    if cfg.env.backend == "gym":
        outcomes = gym_evaluate(jax.jit(ppo.policy, static_argnums=3), params, names, key,
                                episodes, deterministic)
        found = jax.device_get(on_device(params, key)[3]) if behaviour else None
    else:
        outcomes = jax.device_get(on_device(params, key))
        outcomes, found = outcomes[:3], (outcomes[3] if behaviour else None)
    record = evaluation_record(cfg.env.suite, deterministic, names, meta["env_steps"],
                               meta["updates"], *outcomes)
    if behaviour:
        record["behaviour_episodes"] = ("the evaluated episodes" if cfg.env.backend == "jax"
                                        else "on-device episodes, not the evaluated ones")
        record["behaviour"] = {task: {
            "entropy": float(found["entropy"][t]),
            "moved": None if np.isnan(found["moved"][t]) else float(found["moved"][t]),
            "actions": dict(zip(ACTION_NAMES, map(float, found["actions"][t]), strict=True))}
            for t, task in enumerate(names)}
    run_lib.append_eval(run, record, "reeval.jsonl")
    return record


def format_behaviour(record: dict) -> str:
    """A record's "behaviour" as a table: a row per task, action shares in columns."""
    behaviour = record["behaviour"]
    width = max(len(t) for t in behaviour) + 2
    lines = [f"{'task':<{width}}{'entropy':>8}{'moved':>7}"
             + "".join(f"{a:>8}" for a in ACTION_NAMES)]
    for task, r in behaviour.items():
        moved = "-" if r["moved"] is None else f"{r['moved']:.2f}"
        lines.append(f"{task:<{width}}{r['entropy']:>8.2f}{moved:>7}"
                     + "".join(f"{r['actions'][a]:>8.2f}" for a in ACTION_NAMES))
    return "\n".join(lines)
