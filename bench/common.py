"""Helpers shared by the benchmark scripts: a filled replay buffer, timing, BENCHMARKS.md."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def filled_buffer(num_tasks: int, capacity: int, obs_dim: int, action_dim: int):
    """A replay buffer full of random transitions (the update's cost does not depend on
    their values)."""
    from training.data import replay

    rng = np.random.default_rng(0)
    chunk = {
        "obs": rng.normal(size=(capacity, num_tasks, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (capacity, num_tasks, action_dim)).astype(np.float32),
        "reward": rng.uniform(0, 10, (capacity, num_tasks)).astype(np.float32),
        "next_obs": rng.normal(size=(capacity, num_tasks, obs_dim)).astype(np.float32),
        "terminated": np.zeros((capacity, num_tasks), np.float32),
    }
    return replay.insert(replay.init_buffer(num_tasks, capacity, obs_dim, action_dim), chunk)


def timed(fn, repeats):
    """Median seconds of `repeats` calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def write_section(script: str, title: str, text: str, command: str) -> None:
    """Replace (or append) `script`'s section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    begin, end = f"<!-- {script}:begin -->", f"<!-- {script}:end -->"
    section = (f"{begin}\n## {title}\n\nCommand: `{command}` "
               f"({time.strftime('%Y-%m-%d')})\n\n{text}\n{end}")
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    path.write_text(current)


def add_smoke_option(parser) -> None:
    """--smoke: every section of the script at tiny sizes, one round, in under a minute, to
    check that it runs (tests/test_bench_smoke.py); its figures mean nothing and are not
    written anywhere."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one round: check that the script runs (under a "
                             "minute); writes nothing")


def refuse_smoke_write(args) -> None:
    if args.smoke and args.write:
        print("error: --smoke figures are not measurements; drop --write", file=sys.stderr)
        raise SystemExit(2)
