"""Multi-task PPO: rollout, GAE, epochs of minibatch updates, all pure functions.

`make_ppo` returns:
- `init(key) -> PPOState` (learner and on-device env state of one seed);
- `train_updates(state, n) -> (state, metrics[n])`: n PPO iterations (rollout + update) in one
  `lax.scan`, no host round trip; `jax.vmap` it over a leading seed axis to train N seeds in
  one call;
- `learn(learner, rollout) -> (learner, metrics)`: the update alone, for a rollout collected
  elsewhere (the host-stepped `minigrid` backend uses this);
- `sample(actor_params, obs, key) -> (actions, log_probs)` (the rollout's policy),
  `policy(actor_params, obs, key, deterministic) -> actions` and
  `evaluate(actor_params, key, episodes, deterministic) -> (returns, successes, timeouts)`,
  per task (with `with_behaviour=True`, also the policy's per-task entropy, action shares and
  fraction of steps that moved the agent).

Defaults are MOORE's MiniGrid PPO (run_minigrid_ppo_mt.py and its run scripts; REFERENCE.md):
Adam 1e-3 for actor and critic, gamma 0.99, GAE 0.95, clip 0.2, entropy 0.01, 8 epochs,
2000 env steps per task per update from one env per task, advantages normalised per task,
and a critic fitted with one full-batch Adam step per update (mushroom-rl's
TorchApproximator.fit with its defaults: one epoch, batch_size 0 = the whole batch).

Deviations, all documented in PPOConfig: minibatches are task-balanced (every minibatch holds
2000 / 8 = 250 samples of each task, where MOORE shuffles all tasks' samples together into
ceil(N / 768)-sized batches), and the env state carries over between updates (MOORE's Core
resets every env at the start of each update's 2000 steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents.nn import masks
from agents.nn.registry import NetworkConfig
from agents.nn.rules import make_arch_training, optimiser_step
from agents.ppo import losses
from agents.ppo.networks import Actor, Critic, per_task_apply
from envs.minigrid.multitask import ACTION_COUNT, OBS_DIM, MultiTaskGrid, count_episode_step
from training.errors import UsageError, check_fields


@dataclass(frozen=True)
class PPOConfig:
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy_coef: float = 0.01
    epochs: int = 8
    # Task-balanced minibatches per epoch: each holds steps_per_task / num_minibatches samples
    # of every task (MOORE: batches of 256 x n_tasks, ceil(2000 / 256) = 8 per epoch).
    num_minibatches: int = 8
    steps_per_task: int = 2000  # env steps per task between updates
    envs_per_task: int = 1  # parallel envs per task (MOORE: 1); rollout length = steps / envs
    # MOORE fits the critic with one full-batch step per update; more epochs / minibatches give
    # the usual PPO critic.
    critic_epochs: int = 1
    critic_minibatches: int = 1
    max_grad_norm: float = 0.0  # global-norm clipping of each update; 0: none (MOORE)
    # "task": advantages normalised within each task (MOORE); "batch": over all tasks
    # together; "none". The alternatives exist to test whether per-task normalisation, which
    # scales a reward-less task's pure critic noise to unit size, is why runs freeze.
    advantage_normalisation: str = "task"


    HELP: ClassVar[dict[str, str]] = {
        "actor_lr": "Adam learning rate of the actor",
        "critic_lr": "Adam learning rate of the critic",
        "gamma": "discount factor",
        "gae_lambda": "GAE lambda",
        "clip": "PPO's ratio clip",
        "entropy_coef": "weight of the entropy bonus",
        "epochs": "actor epochs over each rollout",
        "num_minibatches": "task-balanced actor minibatches per epoch",
        "steps_per_task": "env steps per task between updates",
        "envs_per_task": "parallel envs per task (rollout length = steps / envs)",
        "critic_epochs": "critic epochs over each rollout (MOORE: 1)",
        "critic_minibatches": "critic minibatches per epoch (MOORE: 1, the full batch)",
        "max_grad_norm": "global-norm gradient clipping; 0: none (MOORE)",
        "advantage_normalisation": "task: within each task (MOORE); batch: over all tasks; "
                                   "none",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "advantage_normalisation": losses.ADVANTAGE_NORMALISATIONS}

    def check(self) -> None:
        """The bounds of this section's own fields (UsageError naming the option)."""
        check_fields("ppo", self, positive=("epochs", "num_minibatches", "steps_per_task",
                                            "envs_per_task", "critic_epochs",
                                            "critic_minibatches"),
                     positive_number=("actor_lr", "critic_lr"),
                     unit_interval=("gamma", "gae_lambda"))
        if not self.clip > 0 or self.entropy_coef < 0 or self.max_grad_norm < 0:
            raise UsageError("--ppo.clip must be positive and --ppo.entropy_coef and "
                             f"--ppo.max_grad_norm >= 0, got {self.clip}, {self.entropy_coef}, "
                             f"{self.max_grad_norm}")
        if self.steps_per_task % self.envs_per_task:
            raise UsageError(f"--ppo.envs_per_task ({self.envs_per_task}) must divide "
                             f"--ppo.steps_per_task ({self.steps_per_task})")
        for name in ("num_minibatches", "critic_minibatches"):
            if self.steps_per_task % getattr(self, name):
                raise UsageError(f"--ppo.{name} ({getattr(self, name)}) must divide "
                                 f"--ppo.steps_per_task ({self.steps_per_task})")

class Rollout(NamedTuple):
    """One update's data, time-major (L, T, E, ...)."""

    obs: jax.Array  # uint8 (L, T, E, 147)
    action: jax.Array  # int32
    log_prob: jax.Array
    reward: jax.Array
    terminated: jax.Array  # bool
    done: jax.Array  # bool: terminated or truncated
    final_obs: jax.Array  # uint8: the step's own next observation, before any reset


@struct.dataclass
class Learner:
    actor_params: dict
    critic_params: dict
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    key: jax.Array
    updates: jax.Array  # int32


@struct.dataclass
class EnvCarry:
    states: tuple  # one batched minigrid State per task
    obs: jax.Array  # uint8 (T, E, 147)
    episode_return: jax.Array  # (T, E) return of the running episodes
    key: jax.Array


@struct.dataclass
class PPOState:
    learner: Learner
    env: EnvCarry


class PPO(NamedTuple):
    actor: Actor
    critic: Critic
    env: MultiTaskGrid
    init: Callable
    train_updates: Callable
    learn: Callable
    sample: Callable
    policy: Callable
    evaluate: Callable


def make_ppo(ppo: PPOConfig, network: NetworkConfig, task_names: tuple[str, ...],
             total_updates: int = 1) -> PPO:
    """`total_updates` (PPO iterations in the whole run) drives schedules over training: weight
    masks' prune-and-regrow count."""
    num_tasks = len(task_names)
    env = MultiTaskGrid(task_names, ppo.envs_per_task)
    length = ppo.steps_per_task // ppo.envs_per_task
    actor = Actor(network, num_tasks, ACTION_COUNT)
    critic = Critic(network, num_tasks)

    def optimiser(lr):
        adam = optax.adam(lr)
        return optax.chain(optax.clip_by_global_norm(ppo.max_grad_norm), adam) \
            if ppo.max_grad_norm > 0 else adam

    actor_tx, critic_tx = optimiser(ppo.actor_lr), optimiser(ppo.critic_lr)
    arch = make_arch_training(network)

    def init(key) -> PPOState:
        k_actor, k_critic, k_learn, k_env, k_reset = jax.random.split(key, 5)
        obs = jnp.zeros((1, OBS_DIM), jnp.float32)
        actor_params = actor.init(k_actor, obs, jnp.int32(0))
        critic_params = critic.init(k_critic, obs, jnp.int32(0))
        learner = Learner(actor_params, critic_params, actor_tx.init(actor_params),
                          critic_tx.init(critic_params), k_learn, jnp.int32(0))
        states, first_obs = env.reset(k_reset)
        carry = EnvCarry(states, first_obs, jnp.zeros(first_obs.shape[:2], jnp.float32), k_env)
        return PPOState(learner, carry)

    def choose(logits, key, deterministic: bool):
        return jnp.argmax(logits, -1) if deterministic else jax.random.categorical(key, logits)

    def policy(actor_params, obs, key, deterministic: bool = False):
        return choose(per_task_apply(actor, actor_params, obs), key, deterministic)

    def sample(actor_params, obs, key):
        """A sampled action per env and its log-probability (the rollout's policy)."""
        logits = per_task_apply(actor, actor_params, obs)
        action = jax.random.categorical(key, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)
        return action, log_prob[..., 0]

    def collect(actor_params, carry: EnvCarry):
        """`length` steps of every env; -> (carry, Rollout, episode statistics per task)."""

        def step(c, _):
            states, obs, ep_return, key = c.states, c.obs, c.episode_return, c.key
            key, k_act, k_env = jax.random.split(key, 3)
            action, log_prob = sample(actor_params, obs, k_act)
            states, next_obs, reward, terminated, truncated, final_obs = env.step(
                states, action, k_env)
            done = terminated | truncated
            ep_return = ep_return + reward
            finished = (jnp.where(done, ep_return, 0.0), done, done & (ep_return > 0))
            ep_return = jnp.where(done, 0.0, ep_return)
            data = Rollout(obs, action, log_prob, reward, terminated, done, final_obs)
            return EnvCarry(states, next_obs, ep_return, key), (data, finished)

        carry, (rollout, (ret_sum, ended, succeeded)) = jax.lax.scan(step, carry, None, length)
        count = ended.sum((0, 2))
        stats = {"episodes": count,
                 "return_sum": ret_sum.sum((0, 2)),
                 "success_sum": succeeded.sum((0, 2))}
        return carry, rollout, stats

    def by_task(x):
        """(L, T, E, ...) -> (T, L * E, ...)."""
        x = jnp.swapaxes(x, 0, 1)
        return x.reshape(x.shape[0], -1, *x.shape[3:])

    def minibatch_steps(params, opt_state, tx, loss_fn, data, key, epochs, minibatches):
        """`epochs` passes over task-major `data` (T, N, ...), each in task-balanced
        minibatches (every minibatch takes N / minibatches samples of every task)."""
        n = data[0].shape[1]
        size = n // minibatches

        def epoch(carry, k):
            perm = jax.vmap(lambda kk: jax.random.permutation(kk, n))(
                jax.random.split(k, num_tasks))
            batches = [jnp.take_along_axis(x, perm.reshape(num_tasks, n, *(1,) * (x.ndim - 2)),
                                           1) for x in data]
            batches = [x.reshape(num_tasks, minibatches, size, *x.shape[2:]).swapaxes(0, 1)
                       for x in batches]

            def sgd(c, batch):
                p, o = c
                (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, *batch)
                p, o = optimiser_step(tx, p, grads, o)
                return (p, o), {"loss": loss, **aux}

            return jax.lax.scan(sgd, carry, batches)

        (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state),
                                                    jax.random.split(key, epochs))
        # means over epochs and minibatches; a per-task metric keeps its task axis
        return params, opt_state, jax.tree.map(lambda m: m.mean((0, 1)), metrics)

    def actor_loss(params, obs, action, old_log_prob, adv):
        logits = per_task_apply(actor, params, obs)
        return losses.policy_loss(logits, action, old_log_prob, adv, ppo.clip, ppo.entropy_coef)

    def critic_loss(params, obs, target):
        return losses.value_loss(per_task_apply(critic, params, obs), target), {}

    def task_probe_grads(module, loss_of_output, params, data):
        """Each task's gradient with respect to its effective weights W * m_t (the zero mask
        probe's gradient), from the task's own slice of task-major `data` (T, N, ...)."""
        def one(task, *xs):
            def task_loss(p):
                return loss_of_output(module.apply(p, xs[0].astype(jnp.float32), task), *xs[1:])

            return jax.grad(task_loss)(params)[masks.PROBE]

        return jax.vmap(one)(jnp.arange(num_tasks), *data)

    def actor_output_loss(logits, action, old_log_prob, adv):
        return losses.policy_loss(logits, action, old_log_prob, adv, ppo.clip,
                                  ppo.entropy_coef)[0]

    def regrow(actor_params, critic_params, updates, actor_data, critic_data):
        """Every `mask_update_every` PPO iterations, HarmoDT's prune-and-regrow on every task's
        weight masks (actor and critic), scored by each task's loss on its whole rollout, as
        SAC scores them on its batch."""
        k = masks.regrow_count(updates, total_updates, network.mask_update_max)
        due = (updates % network.mask_update_every == 0) & (k > 0)

        def both(args):
            actor_p, critic_p = args
            out = []
            for module, loss_fn, params, data in (
                    (actor, actor_output_loss, actor_p, actor_data),
                    (critic, losses.value_loss, critic_p, critic_data)):
                grads = task_probe_grads(module, loss_fn, params, data)
                new = masks.regrow_tree(params[masks.MASKS], grads, k, network.mask_update_gamma)
                out.append({**params, masks.MASKS: new})
            return tuple(out)

        return jax.lax.cond(due, both, lambda args: args, (actor_params, critic_params))

    def learn(learner: Learner, rollout: Rollout):
        obs, final_obs = by_task(rollout.obs), by_task(rollout.final_obs)
        values = per_task_apply(critic, learner.critic_params, obs)
        next_values = per_task_apply(critic, learner.critic_params, final_obs)
        # back to time-major for the backward recursion, per env
        shape = rollout.reward.shape  # (L, T, E)
        to_time = lambda x: jnp.swapaxes(x.reshape(shape[1], shape[0], shape[2]), 0, 1)  # noqa: E731
        adv, targets = losses.gae(to_time(values), to_time(next_values), rollout.reward,
                                  rollout.terminated.astype(jnp.float32), rollout.done,
                                  ppo.gamma, ppo.gae_lambda)
        adv = losses.normalise_advantages(adv, ppo.advantage_normalisation, task_axis=1)
        key, k_critic, k_actor = jax.random.split(learner.key, 3)
        critic_params, critic_opt, critic_metrics = minibatch_steps(
            learner.critic_params, learner.critic_opt, critic_tx, critic_loss,
            (obs, by_task(targets)), k_critic, ppo.critic_epochs, ppo.critic_minibatches)
        actor_params, actor_opt, actor_metrics = minibatch_steps(
            learner.actor_params, learner.actor_opt, actor_tx, actor_loss,
            (obs, by_task(rollout.action), by_task(rollout.log_prob), by_task(adv)), k_actor,
            ppo.epochs, ppo.num_minibatches)
        if arch.regrows:
            actor_params, critic_params = regrow(
                actor_params, critic_params, learner.updates + 1,
                (obs, by_task(rollout.action), by_task(rollout.log_prob), by_task(adv)),
                (obs, by_task(targets)))
        metrics = {"value_loss": critic_metrics["loss"], "policy_loss": actor_metrics["loss"],
                   "entropy": actor_metrics["entropy"],
                   "task_entropy": actor_metrics["task_entropy"],
                   "approx_kl": actor_metrics["approx_kl"],
                   "clip_fraction": actor_metrics["clip_fraction"],
                   "value_mean": values.mean()}
        return Learner(actor_params, critic_params, actor_opt, critic_opt, key,
                       learner.updates + 1), metrics

    def one_update(state: PPOState, _):
        carry, rollout, stats = collect(state.learner.actor_params, state.env)
        learner, metrics = learn(state.learner, rollout)
        return PPOState(learner, carry), {**metrics, **stats}

    def train_updates(state: PPOState, num_updates: int):
        return jax.lax.scan(one_update, state, None, num_updates)

    def evaluate(actor_params, key, episodes: int, deterministic: bool = False,
                 with_behaviour: bool = False):
        """`episodes` fresh episodes per task, run side by side on new env instances until each
        has ended once. -> (returns, successes, timeouts), each (T, episodes); a timeout is an
        episode cut at max_steps (truncated), which tells a policy that dithers from one that
        fails by a terminal state (lava), as both return 0.

        `with_behaviour` appends what the policy did in those episodes, per task, over their
        steps: `entropy` of its action distribution (the softmax's, also when `deterministic`
        takes the argmax), `actions` (T, 7), each action's share, and `moved`, the fraction of
        steps that took the agent to another cell, among the steps that did not end an
        episode (an ended step's move is hidden by the auto-reset); NaN where there were
        none. A policy that times out standing still shows as `moved` near 0."""
        eval_env = MultiTaskGrid(task_names, episodes)
        k_reset, key = jax.random.split(key)
        states, obs = eval_env.reset(k_reset)
        horizon = int(eval_env.max_steps.max())

        def step(c, _):
            states, obs, ret, success, timeout, alive, sums, key = c
            key, k_act, k_env = jax.random.split(key, 3)
            logits = per_task_apply(actor, actor_params, obs)
            action = choose(logits, k_act, deterministic)
            position = jnp.stack([s.agent_pos for s in states])
            states, obs, reward, terminated, truncated, _ = eval_env.step(states, action, k_env)
            ended = terminated | truncated
            moved = jnp.any(jnp.stack([s.agent_pos for s in states]) != position, -1)
            entropy = losses.entropy(jax.nn.log_softmax(logits))
            counted = alive.astype(jnp.float32)
            continued = (alive & ~ended).astype(jnp.float32)
            sums = {"steps": sums["steps"] + counted.sum(1),
                    "entropy": sums["entropy"] + (counted * entropy).sum(1),
                    "actions": sums["actions"] + (counted[..., None] * jax.nn.one_hot(
                        action, ACTION_COUNT)).sum(1),
                    "continued": sums["continued"] + continued.sum(1),
                    "moved": sums["moved"] + (continued * moved).sum(1)}
            ret, success, timeout, alive = count_episode_step(
                ret, success, timeout, alive, reward, terminated, truncated)
            return (states, obs, ret, success, timeout, alive, sums, key), None

        zeros = jnp.zeros((num_tasks, episodes))
        no = zeros.astype(bool)
        per_task = jnp.zeros(num_tasks)
        sums = {"steps": per_task, "entropy": per_task, "continued": per_task,
                "moved": per_task, "actions": jnp.zeros((num_tasks, ACTION_COUNT))}
        init = (states, obs, zeros, no, no, ~no, sums, key)
        (_, _, ret, success, timeout, _, sums, _), _ = jax.lax.scan(step, init, None, horizon)
        if not with_behaviour:
            return ret, success, timeout
        behaviour = {"entropy": sums["entropy"] / sums["steps"],
                     "actions": sums["actions"] / sums["steps"][:, None],
                     "moved": jnp.where(sums["continued"] > 0,
                                        sums["moved"] / jnp.maximum(sums["continued"], 1),
                                        jnp.nan)}
        return ret, success, timeout, behaviour

    return PPO(actor, critic, env, init, train_updates, learn, sample, policy, evaluate)
