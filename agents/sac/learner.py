"""The SAC learner: state, one gradient step, and a jitted chunk of G steps in one `lax.scan`.

`make_learner` returns pure functions. `train_chunk(state, buffer, critic_on, actor_on)`
samples every batch from the on-device replay buffer inside the scan, so a whole chunk of
updates runs without a host round trip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents import gradient_surgery
from agents.gradient_surgery import COMBINERS
from agents.nn import masks
from agents.nn.registry import NetworkConfig
from agents.nn.rules import keep_all, make_arch_training, optimiser_step, polyak
from agents.sac import losses
from agents.sac.networks import Actor, TwinCritic, sample_tanh_gaussian
from training.data import replay
from training.errors import UsageError, check_fields


@dataclass(frozen=True)
class SACConfig:
    """MOORE's Meta-World SAC defaults (its run scripts and mushroom-rl's SAC)."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None: -action_dim
    batch_size_per_task: int = 128
    buffer_size_per_task: int = 1_000_000
    critic_warmup: int = 1500  # critic updates once every task holds more transitions than this
    actor_warmup: int = 3000  # actor and alpha updates once every task holds more than this
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    # How per-task gradients combine: "none" (mean), "pcgrad" or "gradnorm" (agents/
    # gradient_surgery.py), for the actor and the critic alike.
    gradient_surgery: str = "none"
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025


    HELP: ClassVar[dict[str, str]] = {
        "actor_lr": "Adam learning rate of the actor",
        "critic_lr": "Adam learning rate of the twin critics",
        "alpha_lr": "Adam learning rate of each task's log-alpha",
        "gamma": "discount factor",
        "tau": "Polyak rate of the target critics, in (0, 1]",
        "init_alpha": "initial entropy temperature of every task",
        "target_entropy": "target policy entropy; none: -action_dim",
        "batch_size_per_task": "transitions sampled from each task's buffer per update",
        "buffer_size_per_task": "replay capacity of each task",
        "critic_warmup": "critic updates once every task holds more transitions than this",
        "actor_warmup": "actor and alpha update once every task holds more than this",
        "log_std_min": "lower clamp of the policy's log-std",
        "log_std_max": "upper clamp of the policy's log-std",
        "gradient_surgery": "how per-task gradients combine: none (mean), pcgrad, gradnorm",
        "gradnorm_alpha": "GradNorm's asymmetry alpha",
        "gradnorm_lr": "GradNorm's learning rate of the task weights",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "gradient_surgery": COMBINERS}

    def check(self) -> None:
        """The bounds of this section's own fields (UsageError naming the option)."""
        check_fields("sac", self, positive=("batch_size_per_task", "buffer_size_per_task"),
                     non_negative=("critic_warmup", "actor_warmup"),
                     positive_number=("actor_lr", "critic_lr", "alpha_lr", "tau", "init_alpha",
                                      "gradnorm_lr"),
                     unit_interval=("gamma",))
        if not self.tau <= 1:
            raise UsageError(f"--sac.tau must be in (0, 1], got {self.tau}")
        if not self.log_std_min < self.log_std_max:
            raise UsageError(f"--sac.log_std_min ({self.log_std_min}) must be below "
                             f"--sac.log_std_max ({self.log_std_max})")
        if self.buffer_size_per_task < self.batch_size_per_task:
            raise UsageError("--sac.buffer_size_per_task must be at least "
                             "--sac.batch_size_per_task")

@struct.dataclass
class SACState:
    actor_params: dict
    critic_params: dict
    target_critic_params: dict
    log_alpha: jax.Array  # (num_tasks,)
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    key: jax.Array
    updates: jax.Array  # int32, gradient steps taken


class Learner(NamedTuple):
    actor: Actor
    critic: TwinCritic
    init: Callable  # (key) -> SACState
    update: Callable  # (state, batch, critic_on, actor_on) -> (state, metrics)
    train_chunk: Callable  # (state, buffer, critic_on[G], actor_on[G]) -> (state, metrics[G])
    policy: Callable  # (actor_params, obs, task_id, key, deterministic) -> action


def make_learner(sac: SACConfig, network: NetworkConfig, num_tasks: int, obs_dim: int,
                 action_dim: int, total_updates: int = 1,
                 batch_sharding: jax.sharding.Sharding | None = None) -> Learner:
    """`total_updates` (gradient steps in the whole run) drives schedules over training:
    weight masks' prune-and-regrow count. `batch_sharding` (training/sharding.py) splits each
    sampled batch's rows over devices for data parallelism; None keeps it where it is."""
    actor = Actor(network, num_tasks, action_dim, sac.log_std_min, sac.log_std_max)
    critic = TwinCritic(network, num_tasks)
    per_task_grads = sac.gradient_surgery != "none"

    def optimiser(lr, combiner_name):
        adam = optax.adam(lr)
        if not per_task_grads:
            return optax.with_extra_args_support(adam)
        combiner = gradient_surgery.make_combiner(
            combiner_name, num_tasks, seed=0, gradnorm_alpha=sac.gradnorm_alpha,
            gradnorm_lr=sac.gradnorm_lr)
        return optax.chain(combiner, adam)

    # GradNorm balances loss ratios L_i(t) / L_i(0), which mean nothing for SAC's actor loss
    # (it changes sign); the actor keeps the plain mean and the critic is balanced.
    actor_tx = optimiser(sac.actor_lr, "none" if sac.gradient_surgery == "gradnorm"
                         else sac.gradient_surgery)
    critic_tx = optimiser(sac.critic_lr, sac.gradient_surgery)
    alpha_tx = optax.adam(sac.alpha_lr)
    target_entropy = -float(action_dim) if sac.target_entropy is None else sac.target_entropy
    arch = make_arch_training(network)
    actor_loss = functools.partial(losses.actor_loss, actor=actor, critic=critic)
    critic_loss = functools.partial(losses.critic_loss, actor=actor, critic=critic,
                                    gamma=sac.gamma)

    def init(key):
        k_actor, k_critic, k_state = jax.random.split(key, 3)
        obs = jnp.zeros((1, obs_dim), jnp.float32)
        act = jnp.zeros((1, action_dim), jnp.float32)
        tid = jnp.zeros((1,), jnp.int32)
        actor_params = actor.init(k_actor, obs, tid)
        critic_params = critic.init(k_critic, obs, act, tid)
        log_alpha = jnp.full((num_tasks,), jnp.log(sac.init_alpha), jnp.float32)
        return SACState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=jax.tree.map(jnp.copy, critic_params),  # own buffers: donatable
            log_alpha=log_alpha,
            actor_opt=actor_tx.init(actor_params),
            critic_opt=critic_tx.init(critic_params),
            alpha_opt=alpha_tx.init(log_alpha),
            key=k_state,
            updates=jnp.int32(0),
        )

    def split_by_task(batch):
        """(T * b, ...) task-major batch -> (T, b, ...) with one task id per slice."""
        out = {k: v.reshape(num_tasks, -1, *v.shape[1:]) for k, v in batch.items()}
        out["task_id"] = out["task_id"][:, 0]
        return out

    def regrow(state, actor_params, critic_params, task_batch, k_actor, k_critic,
               log_alpha, critic_on, actor_on):
        """Every `mask_update_every` updates, HarmoDT's prune-and-regrow on every task's
        weight masks, scored by each task's own (unmasked) gradient."""
        k = masks.regrow_count(state.updates, total_updates, network.mask_update_max)
        due = critic_on & (state.updates % network.mask_update_every == 0) & (k > 0)

        def step(params, loss_fn, key, shared):
            _, _, grads = gradient_surgery.per_task_value_and_grad(
                task_mean(loss_fn), params, task_batch, jax.random.split(key, num_tasks),
                *shared,
                args_in_axes=(0, *([None] * len(shared))))
            new_masks = masks.regrow_tree(params[masks.MASKS], grads[masks.PROBE], k,
                                          network.mask_update_gamma)
            return {**params, masks.MASKS: new_masks}

        def both(args):
            actor_p, critic_p = args
            new_actor = step(actor_p, actor_loss, k_actor, (critic_p, log_alpha))
            new_actor = jax.tree.map(lambda n, o: jnp.where(actor_on, n, o), new_actor, actor_p)
            new_critic = step(critic_p, critic_loss, k_critic,
                              (state.target_critic_params, actor_p, log_alpha))
            return new_actor, new_critic

        return jax.lax.cond(due, both, lambda args: args, (actor_params, critic_params))

    def per_task_losses(loss_fn, params, batch, task_batch, key, shared):
        """(T,) mean loss of each task. One forward pass over the flat batch, except for
        architectures that compute one task per pass (weight masks), which vmap the loss
        over the task-split batch."""
        if arch.one_task_per_pass:
            keys = jax.random.split(key, num_tasks)
            per_sample, aux = jax.vmap(loss_fn, in_axes=(None, 0, 0, *([None] * len(shared))))(
                params, task_batch, keys, *shared)
            return per_sample.mean(-1), aux
        per_sample, aux = loss_fn(params, batch, key, *shared)
        return per_sample.reshape(num_tasks, -1).mean(-1), aux

    def task_mean(loss_fn):
        def loss(params, batch_t, key_t, *shared):
            per_sample, aux = loss_fn(params, batch_t, key_t, *shared)
            return per_sample.mean(), aux

        return loss

    def gradient_step(loss_fn, params, tx, opt_state, batch, task_batch, key, shared, keep_tasks):
        """Per-task losses and one optimiser step.

        Tasks are weighted by `keep_tasks(losses)` (PaCo masks out diverging ones). Per-task
        gradients are materialised only when the combiner needs them (PCGrad, GradNorm): a
        vmapped value-and-grad over the task-split batch. Otherwise the gradient of the kept
        tasks' mean loss is taken directly, at the cost of one ordinary backward pass.
        """
        if per_task_grads:
            keys = jax.random.split(key, num_tasks)
            losses_, aux, grads = gradient_surgery.per_task_value_and_grad(
                task_mean(loss_fn), params, task_batch, keys, *shared,
                args_in_axes=(0, *([None] * len(shared))))
            keep = keep_tasks(losses_)
            scale = keep * num_tasks / jnp.maximum(keep.sum(), 1.0)
            grads = jax.tree.map(lambda g: g * scale.reshape(-1, *([1] * (g.ndim - 1))), grads)
        else:
            def mean_loss(p):
                losses_, aux = per_task_losses(loss_fn, p, batch, task_batch, key, shared)
                keep = jax.lax.stop_gradient(keep_tasks(losses_))
                return jnp.sum(keep * losses_) / jnp.maximum(keep.sum(), 1.0), (losses_, aux)

            (_, (losses_, aux)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
        params, opt_state = optimiser_step(tx, params, grads, opt_state, task_losses=losses_)
        return params, opt_state, losses_, aux

    def update(state: SACState, batch, critic_on, actor_on):
        """One SAC step in MOORE's order: actor, alpha, critic, target (each gated by warm-up).

        Losses are computed per task; with a batch of equal task shares their mean is the
        usual multi-task SAC loss.
        """
        key, k_actor, k_critic, k_reset = jax.random.split(state.key, 4)
        task_batch = split_by_task(batch)

        def keep_or(new, old, on):
            return jax.tree.map(lambda n, o: jnp.where(on, n, o), new, old)

        actor_params, actor_opt, actor_losses, actor_info = gradient_step(
            actor_loss, state.actor_params, actor_tx, state.actor_opt, batch, task_batch, k_actor,
            (state.critic_params, state.log_alpha), keep_all)
        actor_params = keep_or(actor_params, state.actor_params, actor_on)
        actor_opt = keep_or(actor_opt, state.actor_opt, actor_on)

        alpha_grads = jax.grad(losses.alpha_loss)(
            state.log_alpha, actor_info["log_prob"].reshape(-1), batch["task_id"],
            target_entropy)
        alpha_updates, alpha_opt = alpha_tx.update(alpha_grads, state.alpha_opt, state.log_alpha)
        log_alpha = keep_or(optax.apply_updates(state.log_alpha, alpha_updates),
                            state.log_alpha, actor_on)
        alpha_opt = keep_or(alpha_opt, state.alpha_opt, actor_on)

        critic_params, critic_opt, critic_losses, critic_info = gradient_step(
            critic_loss, state.critic_params, critic_tx, state.critic_opt, batch, task_batch,
            k_critic, (state.target_critic_params, actor_params, log_alpha), arch.keep_tasks)
        # PaCo judges divergence by each task's critic loss and resets that task in both
        # networks (its code sums all of a task's losses; the TD error is what blows up).
        # The actor's step came first in MOORE's order, so it is not masked in this update.
        actor_params = keep_or(arch.after_step(actor_params, critic_losses, k_reset),
                               actor_params, actor_on)
        critic_params = arch.after_step(critic_params, critic_losses,
                                        jax.random.fold_in(k_reset, 1))
        critic_params = keep_or(critic_params, state.critic_params, critic_on)
        critic_opt = keep_or(critic_opt, state.critic_opt, critic_on)
        if arch.regrows:
            actor_params, critic_params = regrow(
                state, actor_params, critic_params, task_batch, k_actor, k_critic,
                log_alpha, critic_on, actor_on)
        target = keep_or(polyak(critic_params, state.target_critic_params, sac.tau),
                         state.target_critic_params, critic_on)

        new_state = SACState(
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target,
            log_alpha=log_alpha,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
            key=key,
            updates=state.updates + critic_on.astype(jnp.int32),
        )
        metrics = {
            "critic_loss": critic_losses.mean(),
            "q_mean": jnp.mean(critic_info["q_mean"]),
            "actor_loss": actor_losses.mean(),
            "entropy": jnp.mean(actor_info["entropy"]),
            "alpha": jnp.exp(log_alpha),
            "critic_loss_per_task": critic_losses,
        }
        return new_state, metrics

    def train_chunk(state: SACState, buffer: replay.ReplayBuffer, critic_on, actor_on):
        def step(state, flags):
            key, k_batch = jax.random.split(state.key)
            batch = replay.sample(buffer, k_batch, sac.batch_size_per_task)
            if batch_sharding is not None:
                # Contiguous rows per device. The batch is task-major, so when the device
                # count divides the number of tasks each device holds whole tasks and the
                # per-task split (T * b -> T, b) stays on the device; otherwise XLA moves the
                # rows that split needs (the same numbers, a little communication).
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return update(state.replace(key=key), batch, *flags)

        return jax.lax.scan(step, state, (critic_on, actor_on))

    def policy(actor_params, obs, task_id, key, deterministic):
        mean, log_std = actor.apply(actor_params, obs, task_id)
        sampled, _ = sample_tanh_gaussian(key, mean, log_std)
        return jnp.where(deterministic, jnp.tanh(mean), sampled)

    return Learner(actor=actor, critic=critic, init=init, update=update,
                   train_chunk=train_chunk, policy=policy)
