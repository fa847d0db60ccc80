"""SAC benchmark on MT10 at MOORE's sizes (3x400, 128 per task = batch 1280).

(a) learner updates/s (one jitted chunk of G gradient steps) for MTSAC and MOORE;
(b) env-steps/s of the whole training loop (Trainer.run_chunk, after warm-up) against the
    raw Meta-World stepping rate and the update rate measured in the same process, so the
    loop's own overhead shows as a ratio;
(c) the same update in plain PyTorch (bench/torch_reference.py), side by side, as a ratio.

    python bench/bench_sac.py [--quick] [--write]

--write replaces this script's section of BENCHMARKS.md with the figures and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.networks import NetworkConfig  # noqa: E402
from envs.metaworld import ACTION_DIM, OBS_DIM  # noqa: E402
from experiments.presets import get_preset  # noqa: E402
from training import replay  # noqa: E402
from training.config import Config, apply_overrides  # noqa: E402

ARCHS = {"mtsac": ("mtmlp", 1), "moore": ("moore", 4)}


def _timed(fn, repeats):
    """Median seconds of `repeats` calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_learner(cfg: Config, steps: int, repeats: int) -> float:
    """Gradient steps per second of the jitted chunk, sampling from a filled device buffer."""
    from agents.sac.train import make_learner

    n = 10
    learner = make_learner(cfg.sac, cfg.network, n, OBS_DIM, ACTION_DIM)
    state = learner.init(jax.random.PRNGKey(0))
    capacity = 4096
    buf = replay.init_buffer(n, capacity, OBS_DIM, ACTION_DIM)
    rng = np.random.default_rng(0)
    chunk = {
        "obs": rng.normal(size=(capacity, n, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, (capacity, n, ACTION_DIM)).astype(np.float32),
        "reward": rng.uniform(0, 10, (capacity, n)).astype(np.float32),
        "next_obs": rng.normal(size=(capacity, n, OBS_DIM)).astype(np.float32),
        "terminated": np.zeros((capacity, n), np.float32),
    }
    buf = replay.insert(buf, chunk)
    train_chunk = jax.jit(learner.train_chunk, donate_argnums=0)
    on = jnp.ones((steps,), bool)
    holder = {"state": state}

    def run():
        holder["state"], metrics = train_chunk(holder["state"], buf, on, on)
        jax.block_until_ready(metrics)

    return steps / _timed(run, repeats)


def bench_torch(name: str, repeats: int) -> float | None:
    """The same update in eager PyTorch; None when torch is not installed."""
    try:
        from bench.torch_reference import build_torch_update
    except ImportError:
        return None
    arch, experts = ARCHS[name]
    update = build_torch_update(arch, num_tasks=10, hidden_sizes=(400, 400, 400),
                                num_experts=experts, batch_size_per_task=128)
    return 1.0 / _timed(update, repeats)


def bench_loop(cfg: Config, chunks: int) -> dict:
    """Whole-loop env-steps/s after warm-up vs raw env stepping and the update alone."""
    from training.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), show_progress=False)
        trainer._fresh()
        writer = _NullWriter()
        # Raw env stepping, random actions, the same env object.
        actions = np.random.default_rng(0).uniform(-1, 1, (cfg.train.chunk_steps, 10, 4))
        t = time.perf_counter()
        for _ in range(2):
            for a in actions:
                trainer.env.step(a)
        env_step_s = (time.perf_counter() - t) / (2 * len(actions))
        # Past the warm-up so every chunk runs its full gradient steps.
        while trainer.progress.env_steps <= cfg.sac.actor_warmup:
            trainer.run_chunk(writer)
        jax.block_until_ready(trainer.state)
        t = time.perf_counter()
        for _ in range(chunks):
            trainer.run_chunk(writer)
        jax.block_until_ready(trainer.state)
        loop_step_s = (time.perf_counter() - t) / (chunks * cfg.train.chunk_steps)
    return {"env_step_s": env_step_s, "loop_step_s": loop_step_s}


class _NullWriter:
    def add_scalar(self, *args, **kwargs):
        pass


def paper_config(name: str) -> Config:
    arch, experts = ARCHS[name]
    cfg = get_preset(f"mt10_{name}" if name != "mtsac" else "mt10_mtsac")
    return dataclasses.replace(cfg, network=NetworkConfig(arch, (400, 400, 400), experts))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    steps = 5 if args.quick else 20
    rows = []
    out = []
    device = jax.devices()[0]
    out.append(f"machine: {platform.machine()}, {jax.device_count()} x {device.device_kind} "
               f"({device.platform}), jax {jax.__version__}")

    learner_rate = {}
    for name in ARCHS:
        cfg = paper_config(name)
        rate = bench_learner(cfg, steps, repeats)
        learner_rate[name] = rate
        torch_rate = bench_torch(name, repeats)
        ratio = f"{rate / torch_rate:.2f}x" if torch_rate else "n/a (torch not installed)"
        torch_txt = f"{torch_rate:.2f}" if torch_rate else "n/a"
        rows.append(f"| {name} | {rate:.2f} | {torch_txt} | {ratio} |")
        print(rows[-1], flush=True)
    out.append("\n(a, c) learner updates/s, MT10, 3x400, batch 1280 (128 per task)\n")
    out.append("| agent | JAX (jitted scan) | PyTorch (eager) | JAX / PyTorch |")
    out.append("|---|---|---|---|")
    out.extend(rows)

    out.append("\n(b) whole loop, MT10, env-steps per vector step (10 tasks)\n")
    out.append("| agent | mode | raw env ms/step | update ms/step | loop ms/step | "
               "loop / (env + update) | loop / max(env, update) |")
    out.append("|---|---|---|---|---|---|---|")
    chunks = 2 if args.quick else 6
    for name in ARCHS:
        for mode in ("sync", "async"):
            cfg = apply_overrides(paper_config(name), {
                "train.async_actor": str(mode == "async"),
                "sac.critic_warmup": "100", "sac.actor_warmup": "150",
                "sac.buffer_size_per_task": "20000"})
            r = bench_loop(cfg, chunks)
            update_s = 1.0 / learner_rate[name]
            serial = r["env_step_s"] + update_s
            row = (f"| {name} | {mode} | {r['env_step_s'] * 1e3:.2f} | {update_s * 1e3:.1f} | "
                   f"{r['loop_step_s'] * 1e3:.1f} | {r['loop_step_s'] / serial:.3f} | "
                   f"{r['loop_step_s'] / max(r['env_step_s'], update_s):.3f} |")
            out.append(row)
            print(row, flush=True)
    text = "\n".join(out)
    print(text)
    if args.write:
        _write_section(text, " ".join(["python", "bench/bench_sac.py", *sys.argv[1:]]))


def _write_section(text: str, command: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    begin, end = "<!-- bench_sac:begin -->", "<!-- bench_sac:end -->"
    section = (f"{begin}\n## SAC on MT10 (bench/bench_sac.py)\n\nCommand: `{command}` "
               f"({time.strftime('%Y-%m-%d')})\n\n{text}\n{end}")
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    path.write_text(current)


if __name__ == "__main__":
    main()
