"""Whole-training throughput of MiniGrid PPO: the on-device loop against the host-stepped
`minigrid` backend, same agent, same config, in one process.

Each figure is env steps per second of complete PPO iterations (rollout + GAE + 8 epochs of
minibatch updates + the critic's fit), counted over all tasks and seeds, timed after a
warm-up iteration, median of alternating rounds (this machine is noisy):

- gym: `env.backend gym`, one seed: minigrid's envs stepped on the host, one jitted policy
  call per step, then the jitted update (agents/ppo/loop.py's `_gym_chunk`);
- jax xN: `env.backend jax`, N seeds vmapped (one seed: unbatched, as the trainer runs it) in
  one jitted `lax.scan` of whole iterations.

    python bench/bench_ppo.py [--preset minigrid_mt3_moore[,minigrid_mt7_moore,..]] [--seeds 1,4]
                              [--quick | --smoke] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_minigrid import median_rounds  # noqa: E402
from bench.common import add_smoke_option, refuse_smoke_write, write_section  # noqa: E402
from bench.roofline import HEADER as ROOFLINE_HEADER  # noqa: E402
from bench.roofline import NOTE as ROOFLINE_NOTE  # noqa: E402
from envs.minigrid.multitask import task_names  # noqa: E402
from experiments.presets import get_preset  # noqa: E402
from training import config as config_lib  # noqa: E402

SMOKE_PRESET = "minigrid_mt3_mtppo"
SMOKE_OVERRIDES = {  # two small tasks, a tiny iteration
    "env.suite": "minigrid_custom", "env.tasks": "MiniGrid-LavaGapS5-v0,MiniGrid-LavaGapS6-v0",
    "ppo.steps_per_task": "32", "ppo.envs_per_task": "4", "ppo.epochs": "1",
    "ppo.num_minibatches": "1", "train.total_steps_per_task": "32", "train.eval_every": "32",
    "train.checkpoint_every": "32"}


def gym_run(cfg):
    """A zero-argument function running one PPO iteration on the minigrid backend."""
    from agents.ppo.loop import PPOTrainer
    from training import run_dir as run_lib

    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, backend="gym"))
    run = run_lib.create_at(Path(tempfile.mkdtemp()) / "run", cfg)
    trainer = PPOTrainer([cfg], [run], show_progress=False)
    trainer.updates_per_chunk = 1
    trainer.fresh()
    trainer._start_gym()
    trainer._gym_chunk()  # compile
    return trainer._gym_chunk


def one_iteration(cfg):
    """`cfg` with one PPO iteration per training chunk."""
    step = cfg.ppo.steps_per_task
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, total_steps_per_task=step, eval_every=step, checkpoint_every=step))


def jax_run(cfg, seeds: int):
    """A zero-argument function running one PPO iteration of `seeds` seeds on the device: the
    trainer's own compiled chunk, at one iteration per chunk."""
    from agents.ppo.learner import make_ppo
    from agents.ppo.loop import compiled_chunk

    one = one_iteration(cfg)
    ppo = make_ppo(cfg.ppo, cfg.network, task_names(cfg.env.suite, cfg.env.tasks))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    holder = {"state": jax.jit(jax.vmap(ppo.init))(keys)}
    train = compiled_chunk(one, seeds)

    def run():
        holder["state"], metrics = train(holder["state"])
        jax.block_until_ready(metrics)

    run()  # compile
    return run


def jax_roofline(cfg, seeds: int):
    """The roofline of one PPO iteration of `seeds` seeds on the device (bench/roofline.py):
    XLA's FLOPs with every nested scan (rollout steps, epochs, minibatches) counted as many
    times as it runs, and the matmul ceiling at the iteration's own products."""
    from agents.ppo.learner import make_ppo
    from agents.ppo.loop import compiled_chunk, over_seeds
    from bench.roofline import Roofline

    ppo = make_ppo(cfg.ppo, cfg.network, task_names(cfg.env.suite, cfg.env.tasks))
    keys = jax.ShapeDtypeStruct((seeds, 2), jnp.uint32)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                         jax.eval_shape(jax.vmap(ppo.init), keys))
    # jax_run's program (cached): the same iteration, so it is not compiled again
    return Roofline.measure(over_seeds(lambda s: ppo.train_updates(s, 1), seeds), state,
                            compiled=compiled_chunk(one_iteration(cfg), seeds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="minigrid_mt3_moore",
                        help="one preset or a comma-separated list")
    parser.add_argument("--seeds", default="1,4", help="seed batch sizes for the jax backend")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="steps_per_task 256 with 8 envs per task, one round (smoke run)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    add_smoke_option(parser)
    args = parser.parse_args()
    refuse_smoke_write(args)
    rounds = 1 if args.quick or args.smoke else args.rounds
    seeds = [1, 2] if args.smoke else [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    device = jax.devices()[0]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {device.device_kind} "
        f"({device.platform}), jax {jax.__version__}. One PPO iteration = the preset's steps "
        f"per task from its env(s) per task, then its epochs x minibatches of updates. Env "
        f"steps/s over all tasks and seeds, median of {rounds} alternating rounds (per "
        f"preset).\n",
        "| preset | arch (experts), tasks | backend | seeds | s / iteration | env steps/s "
        f"| vs gym | {ROOFLINE_HEADER} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in (SMOKE_PRESET if args.smoke else args.preset).split(","):
        cfg = get_preset(preset)
        if args.quick:
            cfg = config_lib.apply_overrides(cfg, {"ppo.steps_per_task": "256",
                                                   "ppo.envs_per_task": "8"})
        if args.smoke:
            cfg = config_lib.apply_overrides(cfg, SMOKE_OVERRIDES)
        num_tasks = len(task_names(cfg.env.suite, cfg.env.tasks))
        steps = cfg.ppo.steps_per_task * num_tasks
        runs = [gym_run(cfg)] + [jax_run(cfg, n) for n in seeds]
        times = median_rounds(runs, rounds)
        rates = [steps / times[0]] + [n * steps / t for n, t in zip(seeds, times[1:],
                                                                    strict=True)]
        n = cfg.network
        arch = f"{n.arch} ({n.num_experts})" if n.arch in ("moe", "moore") else n.arch
        rows = [("gym (minigrid on the host)", 1)] + [("jax (on device)", k) for k in seeds]
        roofs = [None] + [jax_roofline(cfg, k) for k in seeds]
        for (backend, k), t, rate, roof in zip(rows, times, rates, roofs, strict=True):
            # the gym backend steps its envs on the host: no one program to analyse
            cells = roof.cells(t) if roof else "n/a | n/a | n/a | n/a | n/a"
            lines.append(f"| {preset} | {arch}, {num_tasks} | {backend} | {k} | {t:.2f} | "
                         f"{rate:,.0f} | {rate / rates[0]:.2f}x | {cells} |")
        print("\n".join(lines[-len(rows):]), flush=True)
    lines.append(f"\n{ROOFLINE_NOTE} The step is one whole iteration, env steps included.")
    lines.append(f"\nScript runtime {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = " ".join(["python", "bench/bench_ppo.py", *sys.argv[1:]])
        write_section("bench_ppo", "MiniGrid PPO whole-training throughput (bench/bench_ppo.py)",
                      text, command)


if __name__ == "__main__":
    main()
