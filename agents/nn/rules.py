"""What some architectures add to any algorithm's gradient step, behind one small interface.

- PaCo masks a diverging task out of the shared update and resets its compositional vector.
- Weight masks are changed by prune-and-regrow, never by the optimiser (the algorithm calls
  `masks.regrow_tree` on its schedule when `regrows` is set; SAC and PPO do).
- Every learner's optimiser step is `optimiser_step`: only the `params` collection trains.
Every other architecture needs nothing: all tasks kept, parameters untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from agents.nn.registry import NetworkConfig


class ArchTraining(NamedTuple):
    keep_tasks: Callable  # per-task losses (T,) -> (T,) weights of the tasks in the update
    after_step: Callable  # (variables, per-task losses, key) -> variables
    regrows: bool  # weight masks: call prune-and-regrow on the algorithm's schedule
    # Weight masks and PaCo give each task its own effective weights: a forward pass over one
    # task's samples costs one matmul per layer, a mixed batch costs one per task.
    one_task_per_pass: bool


def keep_all(losses):
    return jnp.ones_like(losses)


def _unchanged(variables, losses, key):
    del losses, key
    return variables


def make_arch_training(cfg: NetworkConfig) -> ArchTraining:
    if cfg.arch == "paco":
        from agents.nn.paco import PACO_VECTOR_NAME, paco_reset

        threshold = cfg.paco_reset_threshold

        def keep(losses):
            return (losses <= threshold).astype(losses.dtype)

        def reset_leaf(path, leaf, diverged, key):
            if getattr(path[-1], "key", None) != PACO_VECTOR_NAME:
                return leaf
            # (*lead, T, K): lead is e.g. the twin-critic axis; each copy resets on its own.
            flat = leaf.reshape(-1, *leaf.shape[-2:])
            keys = jax.random.split(key, flat.shape[0])
            new = jax.vmap(lambda phi, k: paco_reset(
                {PACO_VECTOR_NAME: phi}, diverged, k)[PACO_VECTOR_NAME])(flat, keys)
            return new.reshape(leaf.shape)

        def reset(variables, losses, key):
            diverged = jax.lax.stop_gradient(losses) > threshold
            params = jax.tree_util.tree_map_with_path(
                lambda p, x: reset_leaf(p, x, diverged, key), variables["params"])
            return {**variables, "params": params}

        # One task per pass: each task's K parameter sets are mixed once, then one matmul.
        return ArchTraining(keep, reset, regrows=False, one_task_per_pass=True)
    masked = cfg.arch == "weightmask"
    return ArchTraining(keep_all, _unchanged, regrows=masked, one_task_per_pass=masked)


def optimiser_step(tx: optax.GradientTransformation, params, grads, opt_state, **extra_args):
    """The one optimiser step every learner takes: only `params` is trained (masks and mask
    probes keep their values exactly), then `tx` and its update. -> (params, opt_state).
    `extra_args` reach transforms that take them (gradient surgery's per-task losses)."""
    grads = trainable_only(grads) if isinstance(grads, dict) and "params" in grads else grads
    updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
    return optax.apply_updates(params, updates), opt_state


def trainable_only(grads: dict) -> dict:
    """Zero the gradients of every collection but `params` (masks, mask probes): Adam then
    leaves those entries exactly where they are."""
    return {k: v if k == "params" else jax.tree.map(jnp.zeros_like, v) for k, v in grads.items()}


def polyak(new: dict, target: dict, tau: float) -> dict:
    """Soft target update of `params`; other collections (masks) are copied, so a target
    network always computes with its online network's current masks."""
    return {k: optax.incremental_update(v, target[k], tau) if k == "params" else v
            for k, v in new.items()}
