"""MiniGrid env steps/s with uniformly random actions: our JAX envs against `minigrid` itself.

For each of the 7 environments of envs/minigrid, in alternating rounds in one process (this
machine is noisy; each figure is the median of the rounds):

- reference, single: `gymnasium.make(id)` wrapped in minigrid's `ImgObsWrapper`, stepped in a
  Python loop with a reset at the end of each episode;
- reference, vector: gymnasium's `SyncVectorEnv` of 16 such envs (same-step autoreset, as ours);
- ours: one jitted `lax.scan` over T steps of `vmap(env.step_autoreset)` over N envs, the
  random actions and reset keys drawn inside, every observation summed into a checksum (so
  that none of the work can be compiled away), timed after a warm-up compile, blocking on the
  result. steps/s = N * T / time.

    python bench/bench_minigrid.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_section  # noqa: E402
from envs.minigrid import ENVS, NUM_ACTIONS  # noqa: E402

VECTOR_ENVS = 16
TARGET = 100.0  # the target: >= 100x the reference backend


def reference_single(gym_id: str, steps: int, seed: int = 0):
    """A zero-argument function stepping one minigrid env `steps` times (random actions,
    reset at episode end)."""
    import gymnasium
    from minigrid.wrappers import ImgObsWrapper

    env = ImgObsWrapper(gymnasium.make(gym_id))
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)

    def run():
        actions = rng.integers(0, NUM_ACTIONS, steps)
        for action in actions:
            _, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                env.reset()

    return run


def reference_vector(gym_id: str, steps: int, seed: int = 0):
    """A zero-argument function stepping a SyncVectorEnv of VECTOR_ENVS minigrid envs `steps`
    times (VECTOR_ENVS * steps env steps)."""
    import gymnasium
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from minigrid.wrappers import ImgObsWrapper

    envs = SyncVectorEnv([lambda: ImgObsWrapper(gymnasium.make(gym_id))] * VECTOR_ENVS,
                         autoreset_mode=AutoresetMode.SAME_STEP)
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)

    def run():
        for actions in rng.integers(0, NUM_ACTIONS, (steps, VECTOR_ENVS)):
            envs.step(actions)

    return run


def ours(env, num_envs: int, steps: int, seed: int = 0):
    """A zero-argument function running one jitted scan of `steps` steps of `num_envs` envs
    (compiled on creation)."""
    step = jax.vmap(env.step_autoreset)

    def rollout(state, key, checksum):
        def body(carry, _):
            state, key, checksum = carry
            key, k_action, k_reset = jax.random.split(key, 3)
            actions = jax.random.randint(k_action, (num_envs,), 0, NUM_ACTIONS)
            state, obs, reward, terminated, truncated, _ = step(
                state, actions, jax.random.split(k_reset, num_envs))
            checksum = (checksum + obs.sum(dtype=jnp.int32) + reward.sum()
                        + terminated.sum() + truncated.sum())
            return (state, key, checksum), None

        carry, _ = jax.lax.scan(body, (state, key, checksum), None, length=steps)
        return carry

    rollout = jax.jit(rollout, donate_argnums=0)
    key, k_init = jax.random.split(jax.random.PRNGKey(seed))
    state, _ = jax.vmap(env.reset)(jax.random.split(k_init, num_envs))
    holder = {"carry": (state, key, jnp.float32(0))}

    def run():
        holder["carry"] = rollout(*holder["carry"])
        jax.block_until_ready(holder["carry"])

    run()  # compile
    return run


def median_rounds(runs, rounds):
    """Median seconds of each run, over `rounds` rounds calling them in turn."""
    times = [[] for _ in runs]
    for _ in range(rounds):
        for run, ts in zip(runs, times, strict=True):
            t = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]


def fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.1f} k"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke run)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--envs", default=",".join(ENVS), help="comma-separated env names")
    args = parser.parse_args()
    if args.quick:
        single_steps, vector_steps, sizes, scan_steps, rounds = 300, 20, (64, 256), 16, 1
    else:
        single_steps, vector_steps, sizes, scan_steps, rounds = 4000, 250, (1024, 4096), 128, 3

    import gymnasium
    import minigrid

    start = time.perf_counter()
    device = jax.devices()[0]
    out = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {device.device_kind} "
           f"({device.platform}), jax {jax.__version__}; reference minigrid "
           f"{minigrid.__version__}, gymnasium {gymnasium.__version__}. Uniformly random "
           f"actions; reference single: {single_steps} steps per round, vector: "
           f"{VECTOR_ENVS} envs x {vector_steps} steps; ours: T = {scan_steps} scan steps of "
           f"N envs per call. Env steps/s, median of {rounds} alternating rounds.\n",
           "| env | reference single | reference vector (16) | "
           + " | ".join(f"ours N={n}" for n in sizes)
           + " | ours best / ref single | ours best / ref vector | >= 100x both? |",
           "|---|---|---|" + "---|" * len(sizes) + "---|---|---|"]
    met = []
    for name in args.envs.split(","):
        env = ENVS[name]
        runs = [reference_single(env.gym_id, single_steps),
                reference_vector(env.gym_id, vector_steps)]
        runs += [ours(env, n, scan_steps) for n in sizes]
        times = median_rounds(runs, rounds)
        counts = [single_steps, VECTOR_ENVS * vector_steps] + [n * scan_steps for n in sizes]
        rates = [c / t for c, t in zip(counts, times, strict=True)]
        best = max(rates[2:])
        r_single, r_vector = best / rates[0], best / rates[1]
        ok = min(r_single, r_vector) >= TARGET
        met.append(ok)
        out.append(f"| {name} | " + " | ".join(fmt(r) for r in rates)
                   + f" | {r_single:.0f}x | {r_vector:.0f}x | {'yes' if ok else 'no'} |")
        print(out[-1], flush=True)
    out.append(f"\n>= {TARGET:.0f}x the reference (both modes) on {sum(met)} of {len(met)} "
               f"envs. Script runtime {time.perf_counter() - start:.0f} s.")
    text = "\n".join(out)
    print(text)
    if args.write:
        title = "MiniGrid env stepping vs minigrid (bench/bench_minigrid.py)"
        command = " ".join(["python", "bench/bench_minigrid.py", *sys.argv[1:]])
        write_section("bench_minigrid", title, text, command)


if __name__ == "__main__":
    main()
