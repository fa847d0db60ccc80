"""The device check: the one script a person with a GPU or TPU runs first (about 8 minutes on
one H100/H200), in one call. Each section says what the accelerator does with this project:

1. devices and versions (JAX, the backend, each device's kind and memory);
2. SAC learner updates/s at paper size (3x400, 128 samples per task) on MT10 and MT50,
   MTSAC and MOORE (4 / 6 experts), at `default` and `highest` matmul precision;
3. the whole MT10 training loop (MTSAC, paper size; the actor on the CPU next to MuJoCo)
   with the sub-envs in this process (sync) and in worker processes (async), the actor
   waiting for the learner or not;
4. a checkpoint written with the learner on the accelerator, restored and re-evaluated
   here and in a process that sees only the CPU backend: the two records must be equal;
5. PPO iteration time for 1, 8 and 32 vmapped seeds of minigrid_mt7_moore;
6. DT training tokens/s (bench/bench_dt.py's two model sizes).

Every learner row (sections 2, 5, 6) carries its roofline (bench/roofline.py): FLOPs per
step, achieved GFLOP/s and the fraction of the device's matmul rate at the step's own
products, so the GPU table reads like the CPU tables in BENCHMARKS.md.

Sections run in that order under a time budget (`--budget-s`, default 480): a section that
would start after it is listed as skipped, so the call always ends with its figures.
`--write` puts them in BENCHMARKS.md, in a section named after the device.

    python bench/device_check.py [--sections 1,2,...] [--budget-s 480] [--write]
    python bench/device_check.py --smoke      # every section, tiny sizes, on the CPU

The device machine's budget is short: run it once, with --write, and commit BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench_sac  # noqa: E402
from bench.common import add_smoke_option, refuse_smoke_write, write_section  # noqa: E402
from experiments.presets import get_preset  # noqa: E402
from training import config as config_lib  # noqa: E402

SECTIONS = ("devices", "sac learner", "sac loop", "checkpoint", "ppo seeds", "dt training")


def devices_section(smoke: bool) -> str:
    import importlib.metadata as md

    rows = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, python "
            f"{platform.python_version()}",
            f"jax {jax.__version__}, jaxlib {md.version('jaxlib')}, backend "
            f"{jax.default_backend()}"]
    for name in ("jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu"):
        try:
            rows.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    for device in jax.local_devices():
        stats = device.memory_stats() or {}
        memory = (f", {stats['bytes_limit'] / 2**30:.1f} GiB usable"
                  if "bytes_limit" in stats else "")
        rows.append(f"- {device} ({device.device_kind}){memory}")
    return "\n".join(rows)


def sac_learner_section(smoke: bool) -> str:
    sizes = dict(list(bench_sac.SMOKE_SIZES.items())[:1]) if smoke else {
        k: v for k, v in bench_sac.SIZES.items() if k.startswith("paper")}
    steps, repeats = (1, 1) if smoke else (20, 3)
    tables = []
    for precision in ("default", "highest"):
        # smoke: `highest` for one agent only (on a CPU it computes what `default` does)
        agents = ("mtsac",) if smoke and precision == "highest" else tuple(bench_sac.ARCHS)
        tables.append(f"matmul precision {precision}:\n\n" + bench_sac.learner_table(
            sizes, steps, repeats, torch=False, precision=precision, agents=agents))
    return "\n\n".join(tables)


def sac_loop_section(smoke: bool) -> str:
    size = next(iter(bench_sac.SMOKE_SIZES.values()))[1:] if smoke else ((400, 400, 400), 128)
    return ("ms per vector-env step (10 env steps; smoke: 2), medians of alternating rounds\n\n"
            + bench_sac.loop_table(("mtsac",), size, smoke=smoke, quick=True))


def checkpoint_section(smoke: bool) -> str:
    """A tiny SAC run trained here (learner on the default backend's device 0), its last
    checkpoint re-evaluated in this process and in a CPU-only process."""
    from training import run_dir as run_lib
    from training.train import reevaluate, train_runs

    cfg = config_lib.apply_overrides(get_preset("demo"), {
        "env.suite": "custom", "env.tasks": "reach-v3,drawer-close-v3",
        "network.hidden_sizes": "32,32", "sac.batch_size_per_task": "16",
        "sac.buffer_size_per_task": "2000", "sac.critic_warmup": "40",
        "sac.actor_warmup": "60", "eval.episodes": "1", "train.chunk_steps": "20",
        "env.max_episode_steps": "40", "train.total_steps_per_task": "80",
        "train.checkpoint_every": "40", "train.eval_every": "80"})
    if smoke:  # the learner's initial state: no update to compile
        cfg = config_lib.apply_overrides(cfg, {
            "train.total_steps_per_task": "40", "train.eval_every": "40",
            "train.checkpoint_every": "40"})
    with tempfile.TemporaryDirectory() as tmp:
        run = run_lib.create_at(Path(tmp) / "run", cfg)
        (trained,) = train_runs([cfg], [run], resume=False, show_progress=False)
        here = reevaluate(cfg, run, step=None, episodes=None, deterministic=True)
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                "from training import run_dir; from training.train import reevaluate; "
                "run = Path(sys.argv[2]); cfg = run_dir.load_config(run); "
                "print(json.dumps(reevaluate(cfg, run, step=None, episodes=None, "
                "deterministic=True)))")
        cpu = subprocess.run([sys.executable, "-c", code, str(ROOT), str(run)],
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                             text=True, timeout=600)
        if cpu.returncode != 0:
            return f"CPU-only re-evaluation FAILED:\n\n```\n{cpu.stderr[-2000:]}\n```"
        there = json.loads(cpu.stdout.strip().splitlines()[-1])
    same = (here["per_task"] == there["per_task"]
            and here["per_task"] == trained["per_task"])
    return (f"trained on {run_lib.runtime(cfg)['learner_device']}; final evaluation, the "
            f"re-evaluation here and in a CPU-only process give "
            f"{'the same record' if same else 'DIFFERENT records'} (mean return "
            f"{trained['mean_return']:.3f} / {here['mean_return']:.3f} / "
            f"{there['mean_return']:.3f})")


def ppo_section(smoke: bool) -> str:
    from bench.bench_minigrid import median_rounds
    from bench.bench_ppo import SMOKE_OVERRIDES, SMOKE_PRESET, jax_roofline, jax_run
    from bench.roofline import HEADER
    from envs.minigrid.multitask import task_names

    seeds = (1, 2) if smoke else (1, 8, 32)
    # smoke: bench_ppo.py's smoke config, whose compiled chunks the test suite has cached
    cfg = (config_lib.apply_overrides(get_preset(SMOKE_PRESET), SMOKE_OVERRIDES) if smoke
           else get_preset("minigrid_mt7_moore"))
    steps = cfg.ppo.steps_per_task * len(task_names(cfg.env.suite, cfg.env.tasks))
    rows = [f"| preset | seeds | s / iteration | env steps/s | {HEADER} |",
            "|---|---|---|---|---|---|---|---|---|"]
    for count in seeds:  # one at a time: 32 seeds' state must not share memory with 8's
        (seconds,) = median_rounds([jax_run(cfg, count)], 1 if smoke else 3)
        rows.append(f"| {'smoke' if smoke else 'minigrid_mt7_moore'} | {count} | "
                    f"{seconds:.3f} | {count * steps / seconds:,.0f} | "
                    f"{jax_roofline(cfg, count).cells(seconds)} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def dt_section(smoke: bool) -> str:
    from bench.bench_dt import CONTEXT, SIZES, JaxSide
    from bench.roofline import HEADER

    sizes = {"smoke": (16, 1, 1, "smoke: d 16, 1 layer")} if smoke else SIZES
    batch = 20 if smoke else 260
    rows = [f"| model | batch | tokens/s | {HEADER} |", "|---|---|---|---|---|---|---|---|"]
    for embed, layers, heads, label in sizes.values():
        side = JaxSide(embed, layers, heads, batch)
        side.train(2)  # warm-up
        n = 2 if smoke else 20
        seconds = side.train(n)
        rows.append(f"| {label} | {batch} | {n * batch * 3 * CONTEXT / seconds:,.0f} | "
                    f"{side.train_roofline().cells(seconds / n)} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


RUN = {"devices": devices_section, "sac learner": sac_learner_section,
       "sac loop": sac_loop_section, "checkpoint": checkpoint_section,
       "ppo seeds": ppo_section, "dt training": dt_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(str(i + 1) for i in range(len(SECTIONS))),
                        help="comma-separated section numbers: " + ", ".join(
                            f"{i + 1} {name}" for i, name in enumerate(SECTIONS)))
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="no section starts after this many seconds (default 480)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    add_smoke_option(parser)
    args = parser.parse_args()
    refuse_smoke_write(args)
    try:
        chosen = [SECTIONS[int(x) - 1] for x in args.sections.split(",")]
        if any(int(x) < 1 for x in args.sections.split(",")):
            raise IndexError
    except (ValueError, IndexError):
        print(f"error: --sections {args.sections!r}: numbers from 1 to {len(SECTIONS)} "
              f"({', '.join(f'{i + 1} {n}' for i, n in enumerate(SECTIONS))})",
              file=sys.stderr)
        raise SystemExit(2) from None
    start = time.perf_counter()
    device = jax.devices()[0]
    parts = []
    for number, name in enumerate(SECTIONS, 1):
        if name not in chosen:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            parts.append(f"### {number}. {name}\n\nskipped: the time budget ({args.budget_s:.0f}"
                         f" s) was spent")
            print(parts[-1], flush=True)
            continue
        print(f"== {number}. {name} ({elapsed:.0f} s in)", flush=True)
        t = time.perf_counter()
        text = RUN[name](args.smoke)
        parts.append(f"### {number}. {name} ({time.perf_counter() - t:.0f} s)\n\n{text}")
        print(parts[-1], flush=True)
    parts.append(f"Script runtime {time.perf_counter() - start:.0f} s.")
    print(parts[-1])
    text = "\n\n".join(parts)
    if args.write:
        kind = f"{device.device_kind} ({device.platform})"
        write_section(f"device_check {kind}", f"Device check on {kind} (bench/device_check.py)",
                      text, " ".join(["python", "bench/device_check.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
