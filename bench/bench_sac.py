"""SAC benchmark on MT10 and MT50 at MOORE's sizes (3x400, 128 per task: batch 1280 / 6400).

(a) learner updates/s (one jitted chunk of G gradient steps) for MTSAC and MOORE (4 experts
    on MT10, 6 on MT50);
(b) env-steps/s of the whole MT10 training loop (Trainer.run_chunk, after warm-up) against
    the raw Meta-World stepping rate and the update rate measured in the same process, so
    the loop's own overhead shows as a ratio; with the sub-envs stepped in this process or
    in worker processes (env.vector_strategy sync / async), the actor waiting for the
    learner or not (train.async_actor);
(c) the same update in plain PyTorch (bench/torch_reference.py), side by side, as a ratio.

    python bench/bench_sac.py [--quick | --smoke] [--write]

--write replaces this script's section of BENCHMARKS.md with the figures and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.nn.registry import NetworkConfig  # noqa: E402
from bench.common import (  # noqa: E402
    add_smoke_option,
    filled_buffer,
    refuse_smoke_write,
    timed,
    write_section,
)
from bench.roofline import HEADER as ROOFLINE_HEADER  # noqa: E402
from bench.roofline import NOTE as ROOFLINE_NOTE  # noqa: E402
from bench.roofline import Roofline  # noqa: E402
from envs.metaworld import ACTION_DIM, OBS_DIM, SUITES  # noqa: E402
from experiments.presets import get_preset  # noqa: E402
from training.config import Config, apply_overrides  # noqa: E402

# agent -> network.arch; expert counts are the presets' (MOORE: 4 on MT10, 6 on MT50)
ARCHS = {"mtsac": "mtmlp", "moore": "moore"}
# (suite, hidden sizes, samples per task): MOORE's paper sizes and the demo preset's size.
SIZES = {"paper 3x400, batch 128/task": ("mt10", (400, 400, 400), 128),
         "demo 2x128, batch 32/task": ("mt10", (128, 128), 32),
         "paper 3x400, batch 128/task (6400)": ("mt50", (400, 400, 400), 128)}
SMOKE_SIZES = {"smoke 2x16, batch 8/task": ("mt10", (16, 16), 8),
               "smoke 2x16, batch 8/task (MT50)": ("mt50", (16, 16), 8)}


def bench_learner(cfg: Config, steps: int, repeats: int) -> tuple[float, Roofline]:
    """Gradient steps per second of the jitted chunk, sampling from a filled device buffer,
    and the roofline of one step (its FLOPs and the matmul rate at its own products)."""
    from agents.sac.learner import make_learner

    n = len(SUITES[cfg.env.suite])
    learner = make_learner(cfg.sac, cfg.network, n, OBS_DIM, ACTION_DIM)
    state = learner.init(jax.random.PRNGKey(0))
    buf = filled_buffer(n, 4096, OBS_DIM, ACTION_DIM)
    on = jnp.ones((steps,), bool)
    args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, buf, on, on))
    train_chunk = jax.jit(learner.train_chunk, donate_argnums=0).lower(*args).compile()
    holder = {"state": state}

    def run():
        holder["state"], metrics = train_chunk(holder["state"], buf, on, on)
        jax.block_until_ready(metrics)

    rate = steps / timed(run, repeats)
    return rate, Roofline.of_chunk(learner.train_chunk, args, train_chunk, steps)


_TORCH_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from bench.torch_reference import build_torch_update
update = build_torch_update({arch!r}, num_tasks={num_tasks}, hidden_sizes={hidden!r},
                            num_experts={experts}, batch_size_per_task={per_task})
update()
times = []
for _ in range({repeats}):
    t = time.perf_counter(); update(); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps(1.0 / times[len(times) // 2]))
"""


def bench_torch(cfg: Config, repeats: int) -> float | None:
    """The same update in eager PyTorch, in a child process of this script: in one process,
    the CPU thread pools of JAX and PyTorch spin against each other and slow both."""
    if importlib.util.find_spec("torch") is None:
        return None
    net = cfg.network
    code = _TORCH_CHILD.format(root=str(ROOT), arch=net.arch, hidden=tuple(net.hidden_sizes),
                               experts=net.num_experts, per_task=cfg.sac.batch_size_per_task,
                               repeats=max(repeats, 3) * 3,
                               num_tasks=len(SUITES[cfg.env.suite]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def bench_loop(cfg: Config, chunks: int, rounds: int) -> dict:
    """Seconds per vector-env step of: raw env stepping, the update alone, the whole loop.

    All three use the same Trainer (same env objects, same jitted update, same buffer) and
    are measured in alternation, `rounds` times, and the medians reported, so that machine
    noise hits them alike.
    """
    from agents.sac.loop import Trainer

    length = cfg.train.chunk_steps
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), show_progress=False)
        trainer.fresh()
        writer = _NullWriter()
        while trainer.progress.env_steps <= cfg.sac.actor_warmup:  # past both warm-ups
            trainer.run_chunk(writer)
        actions = np.random.default_rng(0).uniform(-1, 1, (length, trainer.num_tasks, 4))
        on = jnp.ones((length,), bool)
        env_s, update_s, loop_s = [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            for a in actions:
                trainer.env.step(a)
            env_s.append((time.perf_counter() - t) / length)
            t = time.perf_counter()
            trainer.state, metrics = trainer._train_chunk(trainer.state, trainer.buffer, on, on)
            jax.block_until_ready(metrics)
            update_s.append((time.perf_counter() - t) / length)
            t = time.perf_counter()
            for _ in range(chunks):
                trainer.run_chunk(writer)
            trainer._pending = None
            jax.block_until_ready(trainer.state)
            loop_s.append((time.perf_counter() - t) / (chunks * length))
        trainer.close()
    return {"env_step_s": float(np.median(env_s)), "update_s": float(np.median(update_s)),
            "loop_step_s": float(np.median(loop_s))}


class _NullWriter:
    def add_scalar(self, *args, **kwargs):
        pass


def sized_config(name: str, hidden=(400, 400, 400), per_task: int = 128,
                 suite: str = "mt10") -> Config:
    cfg = get_preset(f"{suite}_{name}")
    network = NetworkConfig(arch=ARCHS[name], hidden_sizes=hidden,
                            num_experts=cfg.network.num_experts)
    return dataclasses.replace(cfg, network=network,
                               sac=dataclasses.replace(cfg.sac, batch_size_per_task=per_task))


def machine_line() -> str:
    device = jax.devices()[0]
    return (f"machine: {platform.machine()}, {jax.device_count()} x {device.device_kind} "
            f"({device.platform}), jax {jax.__version__}")


def learner_table(sizes: dict, steps: int, repeats: int, torch: bool = True,
                  precision: str | None = None, agents=tuple(ARCHS)) -> str:
    """(a, c): updates/s of each agent at each size, beside eager PyTorch's."""
    rows = ["| agent | suite | size | JAX (jitted scan) | PyTorch (eager) | JAX / PyTorch | "
            f"{ROOFLINE_HEADER} |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, (suite, hidden, per_task) in sizes.items():
        for name in agents:
            cfg = sized_config(name, hidden, per_task, suite)
            if precision is not None:
                cfg = apply_overrides(cfg, {"train.matmul_precision": precision})
            # MT50 at paper size is ~5x an MT10 update: fewer steps per timed call.
            chunk = 10 * steps if "demo" in size else steps if suite == "mt10" else max(
                1, steps // 4)
            with jax.default_matmul_precision(_precision(cfg)):
                rate, roof = bench_learner(cfg, chunk, repeats)
            torch_rate = bench_torch(cfg, repeats) if torch else None
            ratio = f"{rate / torch_rate:.2f}x" if torch_rate else "n/a"
            torch_txt = f"{torch_rate:.2f}" if torch_rate else "n/a"
            rows.append(f"| {name} | {suite} | {size} | {rate:.2f} | {torch_txt} | {ratio} | "
                        f"{roof.cells(1.0 / rate)} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def _precision(cfg: Config) -> str | None:
    precision = cfg.train.matmul_precision
    return None if precision == "default" else precision


def loop_table(agents, loop_size, smoke: bool = False, quick: bool = False,
               strategies=("sync", "async")) -> str:
    """(b): the whole MT10 loop per env vector strategy and actor mode."""
    rows = ["| agent | envs | actor | raw env | update | loop | loop / (env + update) |",
            "|---|---|---|---|---|---|---|"]
    combos = [(strategy, mode) for strategy in strategies for mode in ("sync", "async")]
    if smoke:  # each strategy and each mode once
        combos = [("sync", "sync"), ("async", "async")]
    for name in agents:
        for strategy, mode in combos:
            cfg = apply_overrides(sized_config(name, *loop_size), {
                "train.async_actor": str(mode == "async"),
                "env.vector_strategy": strategy,
                "sac.critic_warmup": "100", "sac.actor_warmup": "150",
                "sac.buffer_size_per_task": "20000"})
            if smoke:  # two tasks, short warm-ups
                cfg = apply_overrides(cfg, {
                    "env.suite": "custom", "env.tasks": "reach-v3,drawer-close-v3",
                    "sac.critic_warmup": "10", "sac.actor_warmup": "20",
                    "train.chunk_steps": "10", "sac.buffer_size_per_task": "200"})
            r = bench_loop(cfg, chunks=1 if quick or smoke else 2,
                           rounds=1 if smoke else 2 if quick else 3)
            serial = r["env_step_s"] + r["update_s"]
            rows.append(f"| {name} | {strategy} | {mode} | {r['env_step_s'] * 1e3:.2f} | "
                        f"{r['update_s'] * 1e3:.1f} | {r['loop_step_s'] * 1e3:.1f} | "
                        f"{r['loop_step_s'] / serial:.3f} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--parts", default="learner,loop",
                        help="learner (a, c), loop (b) or both (default); --write replaces "
                             "the sections of the parts run")
    add_smoke_option(parser)
    args = parser.parse_args()
    refuse_smoke_write(args)
    parts = args.parts.split(",")
    if not parts or any(p not in ("learner", "loop") for p in parts):
        print(f"error: --parts {args.parts!r}: learner, loop or learner,loop", file=sys.stderr)
        raise SystemExit(2)
    repeats = 1 if args.smoke else 2 if args.quick else 5
    steps = 1 if args.smoke else 5 if args.quick else 20
    sizes = SMOKE_SIZES if args.smoke else SIZES
    loop_size = next(iter(sizes.values()))[1:] if args.smoke else ((400, 400, 400), 128)
    command = " ".join(["python", "bench/bench_sac.py", *sys.argv[1:]])
    if "learner" in parts:
        text = "\n".join([
            machine_line(),
            "\n(a, c) learner updates/s, one jitted chunk of gradient steps vs the same "
            f"update in eager PyTorch, with the update's roofline. {ROOFLINE_NOTE}\n",
            learner_table(sizes, steps, repeats, torch=not args.smoke)])
        print(text)
        if args.write:
            write_section("bench_sac", "SAC learner on MT10 and MT50 (bench/bench_sac.py)",
                          text, command)
    if "loop" in parts:
        text = "\n".join([
            machine_line(),
            "\n(b) whole loop on MT10 at paper size, ms per vector-env step (10 env steps), "
            "medians of alternating rounds; envs: sub-envs stepped in this process (sync) "
            "or in 10 worker processes (async); actor: waits for the update (sync) or "
            "steps while it runs (async)\n",
            loop_table(("mtsac",) if args.smoke else tuple(ARCHS), loop_size,
                       smoke=args.smoke, quick=args.quick)])
        print(text)
        if args.write:
            write_section("bench_sac_loop", "SAC whole training loop on MT10 "
                          "(bench/bench_sac.py --parts loop)", text, command)


if __name__ == "__main__":
    main()
