"""Whole-training throughput of MiniGrid PPO: the on-device loop against the host-stepped
`minigrid` backend, same agent, same config, in one process.

Each figure is env steps per second of complete PPO iterations (rollout + GAE + 8 epochs of
minibatch updates + the critic's fit), counted over all tasks and seeds, timed after a
warm-up iteration, median of alternating rounds (this machine is noisy):

- gym: `env.backend gym`, one seed: minigrid's envs stepped on the host, one jitted policy
  call per step, then the jitted update (training/ppo_loop.py's `_gym_chunk`);
- jax xN: `env.backend jax`, N seeds vmapped in one jitted `lax.scan` of whole iterations.

    python bench/bench_ppo.py [--preset minigrid_mt3_moore] [--seeds 1,4] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_minigrid import median_rounds  # noqa: E402
from bench.common import write_section  # noqa: E402
from envs.minigrid.multitask import task_names  # noqa: E402
from experiments.presets import get_preset  # noqa: E402
from training import config as config_lib  # noqa: E402


def gym_run(cfg):
    """A zero-argument function running one PPO iteration on the minigrid backend."""
    from training import run_dir as run_lib
    from training.ppo_loop import PPOTrainer

    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, backend="gym"))
    run = run_lib.create_at(Path(tempfile.mkdtemp()) / "run", cfg)
    trainer = PPOTrainer([cfg], [run], show_progress=False)
    trainer.updates_per_chunk = 1
    trainer._fresh()
    trainer._start_gym()
    trainer._gym_chunk()  # compile
    return trainer._gym_chunk


def jax_run(cfg, seeds: int):
    """A zero-argument function running one PPO iteration of `seeds` seeds on the device."""
    from agents.ppo.train import make_ppo

    ppo = make_ppo(cfg.ppo, cfg.network, task_names(cfg.env.suite, cfg.env.tasks))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    holder = {"state": jax.jit(jax.vmap(ppo.init))(keys)}
    train = jax.jit(jax.vmap(functools.partial(ppo.train_updates, num_updates=1)),
                    donate_argnums=0)

    def run():
        holder["state"], metrics = train(holder["state"])
        jax.block_until_ready(metrics)

    run()  # compile
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="minigrid_mt3_moore")
    parser.add_argument("--seeds", default="1,4", help="seed batch sizes for the jax backend")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="steps_per_task 256 with 8 envs per task, one round (smoke run)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    cfg = get_preset(args.preset)
    rounds = args.rounds
    if args.quick:
        cfg = config_lib.apply_overrides(cfg, {"ppo.steps_per_task": "256",
                                               "ppo.envs_per_task": "8"})
        rounds = 1
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    num_tasks = len(task_names(cfg.env.suite, cfg.env.tasks))
    steps = cfg.ppo.steps_per_task * num_tasks
    runs = [gym_run(cfg)] + [jax_run(cfg, n) for n in seeds]
    times = median_rounds(runs, rounds)
    rates = [steps / times[0]] + [n * steps / t for n, t in zip(seeds, times[1:], strict=True)]
    device = jax.devices()[0]
    p, n = cfg.ppo, cfg.network
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {device.device_kind} "
        f"({device.platform}), jax {jax.__version__}. Preset {args.preset} ({n.arch}, "
        f"{n.num_experts} experts, {num_tasks} tasks): one PPO iteration = "
        f"{p.steps_per_task} steps per task from {p.envs_per_task} env(s) per task, "
        f"{p.epochs} epochs x {p.num_minibatches} minibatches. Env steps/s over all tasks "
        f"and seeds, median of {rounds} alternating rounds.\n",
        "| backend | seeds | s / iteration | env steps/s | vs gym |",
        "|---|---|---|---|---|",
        f"| gym (minigrid on the host) | 1 | {times[0]:.2f} | {rates[0]:,.0f} | 1.00x |",
    ]
    for n_seeds, t, rate in zip(seeds, times[1:], rates[1:], strict=True):
        lines.append(f"| jax (on device) | {n_seeds} | {t:.2f} | {rate:,.0f} | "
                     f"{rate / rates[0]:.2f}x |")
    lines.append(f"\nScript runtime {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = " ".join(["python", "bench/bench_ppo.py", *sys.argv[1:]])
        write_section("bench_ppo", "MiniGrid PPO whole-training throughput (bench/bench_ppo.py)",
                      text, command)
    return np.array(rates)


if __name__ == "__main__":
    main()
