"""Updates/s of every shared-policy architecture at its paper size, as a ratio to MTSAC's.

Each architecture's jitted chunk of SAC updates (MT10, batch 128 per task) runs in
alternation with MTSAC's in the same process; the ratio of their median times is the
figure (this machine is noisy, alternation cancels most of it).

    python bench/bench_archs.py [--quick | --smoke] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.param_count import count_parameters  # noqa: E402
from bench.common import (  # noqa: E402
    add_smoke_option,
    filled_buffer,
    refuse_smoke_write,
    write_section,
)
from envs.metaworld import ACTION_DIM, OBS_DIM  # noqa: E402
from experiments.presets import get_preset  # noqa: E402

PRESETS = ("mt10_mtsac", "mt10_mhsac", "mt10_moe", "mt10_moore", "mt10_paco", "mt10_care",
           "mt10_softmod", "mt10_unitmask", "mt10_weightmask", "mt10_pcgrad", "mt10_gradnorm",
           "mt10_mhsac_matched")


def chunk_runner(preset: str, steps: int, smoke: bool = False):
    """A zero-argument function running one jitted chunk of `steps` updates (`smoke`: of a
    tiny network)."""
    from agents.sac.learner import make_learner

    cfg = get_preset(preset)
    if smoke:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network,
                                                                   hidden_sizes=(16, 16)))
    learner = make_learner(cfg.sac, cfg.network, 10, OBS_DIM, ACTION_DIM,
                           total_updates=cfg.train.total_steps_per_task)
    holder = {"state": learner.init(jax.random.PRNGKey(0))}
    buf = filled_buffer(10, 2048, OBS_DIM, ACTION_DIM)
    train_chunk = jax.jit(learner.train_chunk, donate_argnums=0)
    on = jnp.ones((steps,), bool)

    def run():
        holder["state"], metrics = train_chunk(holder["state"], buf, on, on)
        jax.block_until_ready(metrics)

    run()  # compile
    return run


def alternate(run_a, run_b, rounds):
    times_a, times_b = [], []
    for _ in range(rounds):
        for run, times in ((run_a, times_a), (run_b, times_b)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    return float(np.median(times_a)), float(np.median(times_b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--presets", default=None,
                        help="comma-separated presets to compare with mt10_mtsac (default: "
                             "all; --smoke: mt10_weightmask)")
    add_smoke_option(parser)
    args = parser.parse_args()
    refuse_smoke_write(args)
    steps, rounds = (1, 1) if args.smoke else (2, 2) if args.quick else (10, 3)
    presets = args.presets or ("mt10_weightmask" if args.smoke
                               else ",".join(PRESETS[1:]))
    device = jax.devices()[0]
    out = [f"machine: {platform.machine()}, {jax.device_count()} x {device.device_kind} "
           f"({device.platform}), jax {jax.__version__}; {steps} updates per chunk, median of "
           f"{rounds} alternating rounds\n",
           "| preset | arch | trainable params | updates/s | MTSAC updates/s (same rounds) "
           "| time / MTSAC's |",
           "|---|---|---|---|---|---|"]
    reference = chunk_runner("mt10_mtsac", steps, args.smoke)
    for preset in presets.split(","):
        cfg = get_preset(preset)
        counts = count_parameters(cfg)
        params = sum(counts["actor"].values()) + sum(counts["critic"].values())
        run = chunk_runner(preset, steps, args.smoke)
        t_arch, t_ref = alternate(run, reference, rounds)
        surgery = cfg.sac.gradient_surgery
        arch = cfg.network.arch + (f" + {surgery}" if surgery != "none" else "")
        out.append(f"| {preset} | {arch} | {params:,} | {steps / t_arch:.2f} | {steps / t_ref:.2f} "
                   f"| {t_arch / t_ref:.2f}x |")
        print(out[-1], flush=True)
        del run
    text = "\n".join(out)
    print(text)
    if args.write:
        write_section("bench_archs", "Architectures at paper size vs MTSAC (bench/bench_archs.py)",
                      text, " ".join(["python", "bench/bench_archs.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
