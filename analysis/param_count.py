"""Parameter counts per network and component, for comparisons at matched size.

Counts come from `jax.eval_shape` of the learner's init: nothing is allocated or compiled.
Weight masks are binary state, not trained parameters, and are listed apart.
"""

from __future__ import annotations

import math

import jax

from agents.nn.masks import MASKS
from agents.sac.learner import make_learner
from envs.metaworld import ACTION_DIM, OBS_DIM, suite_tasks
from training.config import Config

# Flax's automatic names of the components, in words.
_READABLE = {
    "VmapMLP_0": "experts",
    "VmapMinigridCNN_0": "CNN experts",
    "MinigridCNN_0": "CNN trunk",
    "task_weights": "task weights",
    "TaskHeads_0": "task heads",
    "MLP_0": "trunk",
    "Linear_0": "output layer",
}


def _size(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _network_root(params: dict) -> dict:
    """Descend through single-child wrappers (the actor/critic module, the twin vmap) to the
    architecture's own parameters."""
    while len(params) == 1 and isinstance(next(iter(params.values())), dict):
        params = next(iter(params.values()))
    return params


def count_parameters(cfg: Config) -> dict:
    """{'actor': {component: n, ...}, 'critic': {...}, 'masks': {...}, 'num_tasks': T}
    (algo dt: one network, 'model')."""
    if cfg.algo == "dt":
        return _count_dt(cfg)
    if cfg.algo == "ppo":
        from agents.ppo.learner import make_ppo
        from envs.minigrid.multitask import task_names

        names = task_names(cfg.env.suite, cfg.env.tasks)
        state = jax.eval_shape(make_ppo(cfg.ppo, cfg.network, names).init,
                               jax.random.PRNGKey(0)).learner
        num_tasks = len(names)
    else:
        num_tasks = len(suite_tasks(cfg.env.suite, cfg.env.tasks))
        learner = make_learner(cfg.sac, cfg.network, num_tasks, OBS_DIM, ACTION_DIM)
        state = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    out = {"num_tasks": num_tasks, "masks": {}, "critic_label": "critic (2 twins)"
           if cfg.algo == "sac" else "critic"}
    for name, variables in (("actor", state.actor_params), ("critic", state.critic_params)):
        root = _network_root(variables["params"])
        out[name] = {_READABLE.get(k, k): _size(v) for k, v in root.items()}
        if MASKS in variables:
            out["masks"][name] = _size(variables[MASKS])
    return out


def _count_dt(cfg: Config) -> dict:
    """Decision transformers (Meta-World's or MiniGrid's observation and action sizes):
    embeddings, each block, the head."""
    from agents.dt.learner import make_dt_learner
    from envs.minigrid import multitask as grid

    if grid.is_minigrid(cfg.env.suite):
        num_tasks = len(grid.task_names(cfg.env.suite, cfg.env.tasks))
        obs_dim, action_dim = grid.OBS_DIM, grid.ACTION_COUNT
    else:
        num_tasks = len(suite_tasks(cfg.env.suite, cfg.env.tasks))
        obs_dim, action_dim = OBS_DIM, ACTION_DIM
    state = jax.eval_shape(make_dt_learner(cfg.dt, obs_dim, action_dim, num_tasks).init,
                           jax.random.PRNGKey(0))
    out = {"num_tasks": num_tasks, "networks": ("model",), "masks": {},
           "model": {k: _size(v) for k, v in state.params.items()}}
    if state.masks:
        out["masks"]["model"] = _size(state.masks)
    return out


def format_counts(counts: dict, title: str) -> str:
    lines = [title, f"{'network':<8} {'component':<28} {'parameters':>12}"]
    total = 0
    for net in counts.get("networks", ("actor", "critic")):
        label = net if net != "critic" else counts.get("critic_label", "critic (2 twins)")
        for component, n in counts[net].items():
            lines.append(f"{net:<8} {component:<28} {n:>12,}")
        subtotal = sum(counts[net].values())
        total += subtotal
        lines.append(f"{net:<8} {'= ' + label + ' total':<28} {subtotal:>12,}")
    lines.append(f"{'all':<8} {'trainable total':<28} {total:>12,}")
    for net, n in counts["masks"].items():
        lines.append(f"{net:<8} {'binary mask entries':<28} {n:>12,}  (not trained)")
    return "\n".join(lines)
