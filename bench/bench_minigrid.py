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

With --ports, instead: ours against the other JAX ports on the envs they share (benchmark-only
installs, see bench/requirements.txt; skipped when not importable): navix (LavaGapS7,
DoorKey-6x6, DistShift1, SimpleCrossingS9N2) and xminigrid (DoorKey-6x6, MemoryS11), each the
same jitted scan of its vmapped step with its own autoreset, random actions, obs checksum. That
table goes in a sub-block of the same BENCHMARKS.md section, kept when the main table is
rewritten (and vice versa).

    python bench/bench_minigrid.py [--quick | --smoke] [--write] [--envs A,B] [--rounds R]
    python bench/bench_minigrid.py --ports [--extra-path DIR] [--write]
"""

from __future__ import annotations

import argparse
import importlib.metadata
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

from bench.common import add_smoke_option, refuse_smoke_write, write_section  # noqa: E402
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
    """A zero-argument function running one jitted scan of `steps` steps of `num_envs` of our
    envs with `step_autoreset` (compiled on creation)."""
    step = jax.vmap(env.step_autoreset)

    def step_batch(state, actions, key):
        state, obs, reward, terminated, truncated, _ = step(
            state, actions, jax.random.split(key, num_envs))
        return state, obs, reward + terminated + truncated

    return _jax_rollout(lambda keys: jax.vmap(env.reset)(keys)[0], step_batch, NUM_ACTIONS,
                        num_envs, steps, seed)


# Our env -> (package, its closest env id). navix: the Random DoorKey (minigrid's DoorKey also
# randomises the agent's start); xminigrid has MemoryS8/S16/..., not S11.
PORTS = {
    "LavaGapS7": [("navix", "Navix-LavaGapS7-v0")],
    "DoorKey-6x6": [("navix", "Navix-DoorKey-Random-6x6-v0"),
                    ("xminigrid", "MiniGrid-DoorKey-6x6")],
    "DistShift1": [("navix", "Navix-DistShift1-v0")],
    "SimpleCrossingS9N2": [("navix", "Navix-SimpleCrossingS9N2-v0")],
    "MemoryS11": [("xminigrid", "MiniGrid-MemoryS16")],
}
PORTS_NOTE = (
    "Configurations: navix with `observation_fn=observations.symbolic_first_person` (7x7x3 "
    "egocentric, closest to minigrid's image; navix's default is the full grid, and it has no "
    "occlusion) and `max_steps` set to minigrid's (navix's `make` defaults to 100); navix's "
    "rewards are its own (1.0 on goal, no step discount), its autoreset is on the step after "
    "the terminal one (that step ignores the action), its DoorKey id is the -Random- one. "
    "xminigrid: its registry defaults (obs 7x7x2 tile/colour ids, 3x3 for Memory, no "
    "occlusion; 6 actions, no 'done'; max_steps per its formulas), `GymAutoResetWrapper` "
    "(same-step, as ours); Memory is MemoryS16 (it has S8/S16, not S11). Random actions over "
    "each package's own action count."
)


def _jax_rollout(reset_batch, step_batch, num_actions: int, num_envs: int, steps: int,
                 seed: int = 0):
    """One jitted scan (compiled on creation) of `steps` steps of `num_envs` envs with uniformly
    random actions, every observation and reward summed into a checksum so that none of the
    work is dead code: reset_batch(keys) -> state; step_batch(state, actions, key) ->
    (state, obs, reward), `key` for the envs' own resets (the ports reset without one)."""
    def rollout(state, key, checksum):
        def body(carry, _):
            state, key, checksum = carry
            key, k_action, k_step = jax.random.split(key, 3)
            actions = jax.random.randint(k_action, (num_envs,), 0, num_actions)
            state, obs, reward = step_batch(state, actions, k_step)
            checksum = checksum + obs.sum(dtype=jnp.int32) + reward.sum()
            return (state, key, checksum), None

        carry, _ = jax.lax.scan(body, (state, key, checksum), None, length=steps)
        return carry

    rollout = jax.jit(rollout, donate_argnums=0)
    key, k_init = jax.random.split(jax.random.PRNGKey(seed))
    state = jax.jit(reset_batch)(jax.random.split(k_init, num_envs))
    holder = {"carry": (state, key, jnp.float32(0))}

    def run():
        holder["carry"] = rollout(*holder["carry"])
        jax.block_until_ready(holder["carry"])

    run()  # compile
    run()  # again, in case the carry's (weak) types out of the first call differ from reset's
    return run


def navix_run(env_id: str, max_steps: int, num_envs: int, steps: int):
    import navix
    from navix import observations

    env = navix.make(env_id, max_steps=max_steps,
                     observation_fn=observations.symbolic_first_person)
    step = jax.vmap(env.step)

    def step_batch(timestep, actions, _key):
        timestep = step(timestep, actions)
        return timestep, timestep.observation, timestep.reward

    return _jax_rollout(jax.vmap(env.reset), step_batch, len(env.action_set), num_envs, steps)


def xminigrid_run(env_id: str, num_envs: int, steps: int):
    import xminigrid
    from xminigrid.wrappers import GymAutoResetWrapper

    env, params = xminigrid.make(env_id)
    env = GymAutoResetWrapper(env)
    step = jax.vmap(env.step, in_axes=(None, 0, 0))

    def step_batch(timestep, actions, _key):
        timestep = step(params, timestep, actions)
        return timestep, timestep.observation, timestep.reward

    def reset_batch(keys):
        return jax.vmap(env.reset, in_axes=(None, 0))(params, keys)

    return _jax_rollout(reset_batch, step_batch, env.num_actions(params), num_envs, steps)


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


PORTS_BEGIN, PORTS_END = "<!-- bench_minigrid_ports:begin -->", "<!-- bench_minigrid_ports:end -->"
SECTION_END = "<!-- bench_minigrid:end -->"


def _ports_block() -> str | None:
    """The ports sub-block currently in BENCHMARKS.md's bench_minigrid section, if any."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    if PORTS_BEGIN not in text:
        return None
    return PORTS_BEGIN + text.split(PORTS_BEGIN, 1)[1].split(PORTS_END, 1)[0] + PORTS_END


def _put_ports_block(block: str) -> None:
    """Replace the ports sub-block, or insert it at the end of the bench_minigrid section."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if PORTS_BEGIN in text:
        head, rest = text.split(PORTS_BEGIN, 1)
        text = head + block + rest.split(PORTS_END, 1)[1]
    elif SECTION_END in text:
        head, rest = text.split(SECTION_END, 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n" + SECTION_END + rest
    else:
        raise SystemExit("BENCHMARKS.md has no bench_minigrid section: run --write without "
                         "--ports first")
    path.write_text(text)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError as err:
        print(f"{name} not installed: skipped ({err})", flush=True)
        return False
    return True


def main_ports(args, sizes, scan_steps, rounds):
    """Ours against navix / xminigrid on the shared envs."""
    start = time.perf_counter()
    available = {pkg: _importable(pkg) for pkg in ("navix", "xminigrid")}
    versions = ", ".join(f"{pkg} {importlib.metadata.version(pkg)}"
                         for pkg, ok in available.items() if ok) or "neither installed"
    device = jax.devices()[0]
    out = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {device.device_kind} "
           f"({device.platform}), jax {jax.__version__}; {versions}. Each: one jitted scan of "
           f"T = {scan_steps} steps of its vmapped step (with its autoreset) over N envs, "
           f"uniformly random actions, obs summed into a checksum. Env steps/s, median of "
           f"{rounds} alternating rounds; load average at start "
           f"{os.getloadavg()[0]:.1f} (other jobs running share the cores).\n\n{PORTS_NOTE}\n",
           "| env | port (its env id) | " + " | ".join(f"port N={n}" for n in sizes) + " | "
           + " | ".join(f"ours N={n}" for n in sizes) + " | ours best / port best |",
           "|---|---|" + "---|" * (2 * len(sizes)) + "---|"]
    names = [n for n in args.envs.split(",") if n in PORTS] if args.envs else list(PORTS)
    for name in names:
        env = ENVS[name]
        ports = [(pkg, env_id) for pkg, env_id in PORTS[name] if available[pkg]]
        if not ports:
            continue
        runs = [ours(env, n, scan_steps) for n in sizes]
        for pkg, env_id in ports:
            if pkg == "navix":
                runs += [navix_run(env_id, int(env.max_steps), n, scan_steps) for n in sizes]
            else:
                runs += [xminigrid_run(env_id, n, scan_steps) for n in sizes]
        times = median_rounds(runs, rounds)
        rates = [n * scan_steps / t for n, t in zip(sizes * (1 + len(ports)), times,
                                                    strict=True)]
        k = len(sizes)
        mine = rates[:k]
        for i, (pkg, env_id) in enumerate(ports):
            theirs = rates[k * (i + 1):k * (i + 2)]
            out.append(f"| {name} | {pkg} ({env_id}) | " + " | ".join(fmt(r) for r in theirs)
                       + " | " + " | ".join(fmt(r) for r in mine)
                       + f" | {max(mine) / max(theirs):.1f}x |")
            print(out[-1], flush=True)
    out.append(f"\nScript runtime {time.perf_counter() - start:.0f} s.")
    text = "\n".join(out)
    print(text)
    if args.write:
        command = " ".join(["python", "bench/bench_minigrid.py", *sys.argv[1:]])
        _put_ports_block(f"{PORTS_BEGIN}\n### Against the other JAX ports (navix, xminigrid)\n\n"
                         f"Command: `{command}` ({time.strftime('%Y-%m-%d')})\n\n{text}\n"
                         f"{PORTS_END}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke run)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--envs", default=None, help="comma-separated env names")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    parser.add_argument("--ports", action="store_true",
                        help="compare with navix / xminigrid (if importable) instead")
    add_smoke_option(parser)
    parser.add_argument("--extra-path", default=None,
                        help="directory prepended to sys.path (e.g. a pip --target of the "
                             "benchmark-only packages); PYTHONPATH works too")
    args = parser.parse_args()
    refuse_smoke_write(args)
    if args.extra_path:
        sys.path.insert(0, str(Path(args.extra_path).resolve()))
    if args.smoke:
        single_steps, vector_steps, sizes, scan_steps, rounds = 50, 4, (8,), 4, 1
        args.envs = args.envs or "LavaGapS7,DoorKey-6x6"
    elif args.quick:
        single_steps, vector_steps, sizes, scan_steps, rounds = 300, 20, (64, 256), 16, 1
    else:
        single_steps, vector_steps, sizes, scan_steps, rounds = 4000, 250, (1024, 4096), 128, 3
    if args.rounds is not None:
        rounds = args.rounds
    if args.ports:
        main_ports(args, list(sizes), scan_steps, rounds)
        return
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
    for name in (args.envs or ",".join(ENVS)).split(","):
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
        ports = _ports_block()  # keep the ports sub-block of a previous --ports --write
        write_section("bench_minigrid", title, text, command)
        if ports is not None:
            _put_ports_block(ports)


if __name__ == "__main__":
    main()
