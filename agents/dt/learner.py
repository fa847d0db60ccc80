"""Offline training of the decision-transformer family, as pure functions.

`make_dt_learner(cfg, state_dim, action_dim, num_tasks)` returns

- `init(key) -> DTState`
- `train_updates(state, data, num_updates) -> (state, metrics)`: a `lax.scan` of gradient
  steps. Every step samples its batch on the device from `data` (the whole dataset, copied
  to the device once by `device_data`), so a chunk of thousands of updates is one call with
  no host round trip.
- `eval_prompt(data, key)`, `eval_reset(targets)` and `act(state, data, prompt, ctx, obs,
  reward, timestep, first) -> (action, ctx)`: DT's online evaluation for all tasks at once.
  The context of the last K steps lives on the device; the target return is decreased by
  each reward; observations are normalised by the data's per-task statistics.

Batches are task-balanced: each holds `batch_per_task` windows of every task, sampled as DT
does (a step uniformly among the task's steps, i.e. episodes in proportion to their length;
the window runs from it to at most K steps on, left-padded when the episode ends first).
The loss is computed with the batch split by task and the network vmapped over tasks, one
task id per slice: for HarmoDT this applies each task's masked kernels once per slice rather
than gathering a masked kernel per sample. Task i's loss reaches only the weights its mask
keeps (theta * m_i), so a step trains every task on its own sub-network (HarmoDT).

Optimiser (DT): AdamW (lr 1e-4, weight decay 1e-4) after global-norm clipping at 0.25, with
the learning rate warmed up linearly from 0 over `warmup_steps`. Masks are not parameters:
only prune-and-regrow changes them (every `mask_update_every` updates, scored by each task's
unmasked gradient; agents/nn/masks.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agents.dt.losses import action_loss
from agents.dt.networks import PROMPT_VARIANTS, DTConfig, make_dt
from agents.nn import masks as masks_lib
from agents.nn.rules import optimiser_step


class DTData(NamedTuple):
    """A dataset's arrays on the device, restricted to the run's tasks in the run's order."""

    observations: jax.Array  # (N, S) float32
    actions: jax.Array  # (N, A) float32 or (N,) int32
    returns_to_go: jax.Array  # (N,) float32, unscaled
    timesteps: jax.Array  # (N,) int32
    episode_end: jax.Array  # (N,) int32: one past the step's episode
    task_start: jax.Array  # (T,) int32: the task's steps are [start, start + size)
    task_size: jax.Array  # (T,)
    prompt_start: jax.Array  # (T, E) int32: first step of each task's best episodes
    prompt_length: jax.Array  # (T, E) int32: their lengths
    state_mean: jax.Array  # (T, S) float32: each task's state statistics in the data;
    state_std: jax.Array  # (T, S) `observations` are already normalised by them


class DTState(NamedTuple):
    params: dict
    masks: dict  # HarmoDT's per-task masks ({} for the other variants)
    opt_state: optax.OptState
    key: jax.Array
    updates: jax.Array


class EvalContext(NamedTuple):
    """The last K steps of every task's current episode (left-aligned to the end)."""

    returns_to_go: jax.Array  # (T, K, 1) scaled
    states: jax.Array  # (T, K, S)
    actions: jax.Array  # (T, K, A) or (T, K)
    timesteps: jax.Array  # (T, K)
    mask: jax.Array  # (T, K) 1 valid


def device_data(dataset, task_names: tuple[str, ...], prompt_episodes: int,
                normalize_states: bool = True) -> DTData:
    """Copy the steps of `task_names` (an OfflineDataset, training/data/offline_data.py) to the
    device, tasks in the given order, states normalised by their task's mean and std in the
    data (DT, Prompt-DT and HarmoDT all do; `act` applies the same statistics online).

    A feature constant within a task keeps the scale 1 where DT adds 1e-6 to the std: a
    MiniGrid cell the data never shows changing would otherwise blow up to 1e6 the first
    time the evaluation sees it change."""
    arrays, offsets = dataset.arrays, dataset.task_steps()
    order = [dataset.tasks.index(name) for name in task_names]
    pieces, starts, sizes, prompt_start, prompt_len = [], [], [], [], []
    new_start = 0
    episodes = np.asarray(arrays["episodes"])
    returns = np.asarray(arrays["episode_returns"])
    for t in order:
        lo, hi = int(offsets[t]), int(offsets[t + 1])
        pieces.append((lo, hi))
        starts.append(new_start)
        sizes.append(hi - lo)
        rows = np.flatnonzero(episodes[:, 0] == t)
        best = rows[np.argsort(-returns[rows], kind="stable")[:prompt_episodes]]
        best = np.resize(best, prompt_episodes)  # fewer episodes than asked: repeat them
        prompt_start.append(episodes[best, 1] - lo + new_start)
        prompt_len.append(episodes[best, 2])
        new_start += hi - lo

    def gather(name, dtype):
        return np.concatenate([np.asarray(arrays[name][lo:hi]) for lo, hi in pieces]).astype(dtype)

    observations = gather("observations", np.float32)
    state_dim = observations.shape[-1]
    mean = np.zeros((len(order), state_dim), np.float32)
    std = np.ones((len(order), state_dim), np.float32)
    for i, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        if not normalize_states:
            break
        steps = observations[start:start + size]
        mean[i], task_std = steps.mean(0, dtype=np.float64), steps.std(0, dtype=np.float64)
        std[i] = np.where(task_std > 1e-6, task_std, 1.0)
        observations[start:start + size] = (steps - mean[i]) / std[i]

    shift = np.concatenate([np.full(hi - lo, s - lo) for (lo, hi), s in zip(pieces, starts,
                                                                              strict=True)])
    episode_end = np.concatenate([np.asarray(arrays["episode_end"][lo:hi]) for lo, hi in pieces])
    return DTData(
        observations=jnp.asarray(observations),
        actions=jnp.asarray(gather("actions", arrays["actions"].dtype)),
        returns_to_go=jnp.asarray(gather("returns_to_go", np.float32)),
        timesteps=jnp.asarray(gather("timesteps", np.int32)),
        episode_end=jnp.asarray((episode_end + shift).astype(np.int32)),
        task_start=jnp.asarray(np.array(starts, np.int32)),
        task_size=jnp.asarray(np.array(sizes, np.int32)),
        prompt_start=jnp.asarray(np.array(prompt_start, np.int32)),
        prompt_length=jnp.asarray(np.array(prompt_len, np.int32)),
        state_mean=jnp.asarray(mean),
        state_std=jnp.asarray(std),
    )


def window(data: DTData, start: jax.Array, length: int, end: jax.Array, rtg_scale: float):
    """Steps [start, min(start + length, end)) left-padded to `length`: the model's inputs."""
    valid_count = jnp.minimum(length, end - start)
    shift = length - valid_count
    positions = jnp.arange(length)
    valid = positions >= shift
    index = jnp.where(valid, start + positions - shift, start)

    def take(array):
        values = array[index]
        pad = valid.reshape(-1, *([1] * (values.ndim - 1)))
        return jnp.where(pad, values, jnp.zeros_like(values))

    return {
        "returns_to_go": take(data.returns_to_go)[:, None] * rtg_scale,
        "states": take(data.observations),
        "actions": take(data.actions),
        "timesteps": take(data.timesteps),
        "attention_mask": valid.astype(jnp.int32),
    }


class DTLearner(NamedTuple):
    cfg: DTConfig
    model: object
    init: callable
    train_updates: callable
    sample_batch: callable
    loss: callable
    eval_prompt: callable
    eval_reset: callable
    act: callable


@functools.cache  # one learner per configuration: its jitted functions compile once
def make_dt_learner(cfg: DTConfig, state_dim: int, action_dim: int, num_tasks: int
                    ) -> DTLearner:
    model = make_dt(cfg, state_dim, action_dim, num_tasks)
    uses_prompt = cfg.variant in PROMPT_VARIANTS
    uses_masks = cfg.variant == "harmodt"
    schedule = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule if cfg.warmup_steps > 0 else cfg.learning_rate,
                    weight_decay=cfg.weight_decay))
    k, p = cfg.context_len, cfg.prompt_length
    discrete = cfg.action_kind == "discrete"

    def sample_prompt(data, key, task):
        """The last `prompt_length` steps of one of the task's best episodes (Prompt-DT and
        HarmoDT take the tail, where a Meta-World episode shows the task done)."""
        e = jax.random.randint(key, (), 0, data.prompt_start.shape[1])
        first, size = data.prompt_start[task, e], data.prompt_length[task, e]
        return window(data, first + jnp.maximum(size - p, 0), p, first + size, cfg.rtg_scale)

    def sample_batch(data: DTData, key):
        """(T, b, ...) windows: `batch_per_task` of every task, plus prompts if used."""
        def one_task(task, key):
            k_steps, k_prompt = jax.random.split(key)
            starts = data.task_start[task] + jax.random.randint(
                k_steps, (cfg.batch_per_task,), 0, data.task_size[task])
            main = jax.vmap(lambda s: window(data, s, k, data.episode_end[s], cfg.rtg_scale))(
                starts)
            if uses_prompt:
                main["prompt"] = jax.vmap(lambda kk: sample_prompt(data, kk, task))(
                    jax.random.split(k_prompt, cfg.batch_per_task))
            return main

        tasks = jnp.arange(num_tasks)
        return jax.vmap(one_task)(tasks, jax.random.split(key, num_tasks))

    def variables(params, masks, probe=None):
        out = {"params": params}
        if uses_masks:
            out[masks_lib.MASKS] = masks
            if probe is not None:
                out[masks_lib.PROBE] = probe
        return out

    def task_loss(params, masks, task_batch, task, key, probe=None):
        """One task's mean action loss on its (b, ...) slice."""
        pred = model.apply(
            variables(params, masks, probe), task_batch["returns_to_go"], task_batch["states"],
            task_batch["actions"], task_batch["timesteps"], task_batch["attention_mask"],
            task_id=task, prompt=task_batch.get("prompt"), deterministic=False,
            rngs={"dropout": key})
        return action_loss(pred, task_batch["actions"], task_batch["attention_mask"],
                           cfg.action_kind)

    def loss(params, masks, batch, key):
        """Mean over tasks of each task's loss (tasks weigh equally)."""
        per_task = jax.vmap(task_loss, in_axes=(None, None, 0, 0, 0))(
            params, masks, batch, jnp.arange(num_tasks), jax.random.split(key, num_tasks))
        return per_task.mean(), per_task

    def init(key) -> DTState:
        k_params, k_dropout, k_state = jax.random.split(key, 3)
        states = jnp.zeros((1, k, state_dim), jnp.float32)
        actions = jnp.zeros((1, k), jnp.int32) if discrete else jnp.zeros((1, k, action_dim))
        prompt = None
        if uses_prompt:
            prompt = {"returns_to_go": jnp.zeros((1, p, 1)),
                      "states": jnp.zeros((1, p, state_dim)),
                      # its own length: a prompt may be longer than the context
                      "actions": (jnp.zeros((1, p), jnp.int32) if discrete
                                  else jnp.zeros((1, p, action_dim))),
                      "timesteps": jnp.zeros((1, p), jnp.int32),
                      "attention_mask": jnp.ones((1, p), jnp.int32)}
        var = model.init({"params": k_params, "dropout": k_dropout}, jnp.zeros((1, k, 1)),
                         states, actions, jnp.zeros((1, k), jnp.int32), None,
                         task_id=jnp.int32(0), prompt=prompt)
        params = var["params"]
        masks = var.get(masks_lib.MASKS, {}) if uses_masks else {}
        return DTState(params, masks, tx.init(params), k_state, jnp.int32(0))

    def regrow(params, masks, batch, key, updates):
        k_count = masks_lib.regrow_count(updates, cfg.updates, cfg.mask_update_max)
        probe = jax.tree.map(lambda m: jnp.zeros(m.shape[1:], m.dtype), masks)
        # Each task's gradient with respect to its effective kernels W * m_t, unmasked
        # (the probe is added after masking), from its own slice of the batch.
        grads = jax.vmap(jax.grad(task_loss, argnums=5), in_axes=(None, None, 0, 0, 0, None))(
            params, masks, batch, jnp.arange(num_tasks), jax.random.split(key, num_tasks), probe)
        # HarmoDT ranks each task's whole mask at once (all block kernels together), so k
        # counts entries per task, and weight can move between layers.
        return masks_lib.regrow_tree(masks, grads, k_count, cfg.mask_update_gamma,
                                     scope="network")

    def update(state: DTState, data: DTData):
        key, k_batch, k_loss, k_regrow = jax.random.split(state.key, 4)
        batch = sample_batch(data, k_batch)
        (value, per_task), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, state.masks, batch, k_loss)
        params, opt_state = optimiser_step(tx, state.params, grads, state.opt_state)
        masks = state.masks
        if uses_masks:
            due = (state.updates + 1) % cfg.mask_update_every == 0
            masks = jax.lax.cond(due, regrow, lambda p_, m, *_: m, params, masks, batch,
                                 k_regrow, state.updates + 1)
        metrics = {"loss": value, "task_loss": per_task, "grad_norm": optax.tree.norm(grads)}
        return DTState(params, masks, opt_state, key, state.updates + 1), metrics

    def train_updates(state: DTState, data: DTData, num_updates: int):
        """`num_updates` gradient steps; metrics averaged over them."""
        state, metrics = jax.lax.scan(lambda s, _: update(s, data), state, None,
                                      length=num_updates)
        return state, jax.tree.map(lambda m: m.mean(0), metrics)

    # ---- online evaluation ----------------------------------------------------------------

    def eval_prompt(data: DTData, key):
        """(T, 1, P, ...) one prompt per task, drawn from its best episodes."""
        if not uses_prompt:
            return None
        keys = jax.random.split(key, num_tasks)
        one = jax.vmap(lambda task, kk: sample_prompt(data, kk, task))(jnp.arange(num_tasks), keys)
        return jax.tree.map(lambda x: x[:, None], one)

    def eval_reset(targets: jax.Array) -> EvalContext:
        """An empty context whose next return-to-go is `targets` (T,) (unscaled)."""
        t = targets.shape[0]
        actions = jnp.zeros((t, k), jnp.int32) if discrete else jnp.zeros((t, k, action_dim))
        rtg = jnp.zeros((t, k, 1)).at[:, -1, 0].set(targets * cfg.rtg_scale)
        return EvalContext(rtg, jnp.zeros((t, k, state_dim)), actions,
                           jnp.zeros((t, k), jnp.int32), jnp.zeros((t, k), jnp.int32))

    def act(state: DTState, data: DTData, prompt, ctx: EvalContext, obs, reward, timestep,
            first):
        """Append this step (obs (T, S) raw, normalised here by `data`'s per-task statistics;
        the return still owed) to every task's context and predict its action from the state
        token. `reward` (T,) is the previous step's; on the first step of an episode
        (`first`), the target set by `eval_reset` is used."""
        def roll(x):
            return jnp.roll(x, -1, axis=1)

        obs = (obs - data.state_mean) / data.state_std
        owed = ctx.returns_to_go[:, -1, 0]
        owed = jnp.where(first, owed, owed - reward * cfg.rtg_scale)
        ctx = EvalContext(
            returns_to_go=jnp.where(first, ctx.returns_to_go, roll(ctx.returns_to_go))
            .at[:, -1, 0].set(owed),
            states=jnp.where(first, ctx.states, roll(ctx.states)).at[:, -1].set(obs),
            actions=jnp.where(first, ctx.actions, roll(ctx.actions)).at[:, -1].set(0),
            timesteps=jnp.where(first, ctx.timesteps, roll(ctx.timesteps))
            .at[:, -1].set(timestep),
            mask=jnp.where(first, ctx.mask, roll(ctx.mask)).at[:, -1].set(1))

        def one_task(task, rtg, states, actions, timesteps, mask, task_prompt):
            pred = model.apply(variables(state.params, state.masks), rtg[None], states[None],
                               actions[None], timesteps[None], mask[None], task_id=task,
                               prompt=task_prompt, deterministic=True)
            return pred[0, -1]

        out = jax.vmap(one_task)(jnp.arange(num_tasks), ctx.returns_to_go, ctx.states,
                                 ctx.actions, ctx.timesteps, ctx.mask, prompt)
        action = jnp.argmax(out, -1).astype(jnp.int32) if discrete else out
        return action, ctx._replace(actions=ctx.actions.at[:, -1].set(action))

    return DTLearner(cfg, model, jax.jit(init), jax.jit(train_updates, static_argnums=2),
                     sample_batch, loss, jax.jit(eval_prompt), jax.jit(eval_reset), jax.jit(act))


def count_parameters(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


__all__ = ["DTData", "DTLearner", "DTState", "EvalContext", "device_data", "make_dt_learner",
           "window", "count_parameters"]
