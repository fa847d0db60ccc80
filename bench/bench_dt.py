"""Decision-transformer training throughput, ours (JAX) against a plain PyTorch DT of the same
architecture and size (bench/torch_dt.py), side by side.

The `mtdt` variant with continuous actions at Meta-World MT10's shapes (state 39, action 4,
10 tasks), K = 20 steps of (R, s, a), so 60 tokens per sample, at two sizes: DT's default
(d 128, 3 layers, 1 head) and HarmoDT's backbone without its masks (d 256, 6 layers, 8 heads).

(a) training: tokens/s of gradient steps (train mode, dropout 0.1, MSE on the actions of the
    valid steps, AdamW lr 1e-4 / weight decay 1e-4 after clipping the gradient norm to 0.25,
    constant learning rate), task-balanced batches (default 260 = 10 tasks x 26). Tokens
    counted are batch x 3K, left padding included (as agents/dt/loop.py counts them).
    JAX: our learner, agents/dt/learner.py's jitted `train_updates`, one update per call, each
    sampling its batch from a random dataset on the device. PyTorch: DT's training step
    (bench/torch_dt.py's `train_step_fn`) on one fixed random batch, every 8th sample
    left-padded; not sampling favours PyTorch by a little. The two losses weigh steps
    slightly differently (ours: the mean over tasks of each task's mean; DT: the mean over all
    valid steps), at the same cost.
(b) evaluation: calls/s with one env per task (10) and a full K-step context, no gradient,
    dropout off; DT evaluation runs one such call per env step. JAX: the learner's `act`
    (append the step to the context on the device, forward, action to the host), jitted as
    agents/dt/loop.py does. PyTorch: the model's forward alone on a same-shape window
    under torch.inference_mode(), without the context bookkeeping that DT's `get_action`
    does on top, so this favours PyTorch.

Both sides are warmed up (JAX compiled) before timing; repetitions alternate JAX, PyTorch,
JAX, ... and the medians are reported, so the noise of this machine hits both alike. PyTorch
(eager, torch.set_num_threads(number of cores)) runs in a child process that waits for each of
its repetitions: in one process the CPU thread pools of JAX and PyTorch slow each other down
(see bench/bench_sac.py). Each side times its own repetition, so pipe traffic is excluded.
The parameter counts of the two models are checked to be equal before timing.

    python bench/bench_dt.py [--sizes dt,harmodt] [--batch 260] [--reps 5] [--write]
    python bench/bench_dt.py --smoke

--write replaces this script's section of BENCHMARKS.md with the figures and the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402  (numpy only: no JAX in the worker)
    add_smoke_option,
    refuse_smoke_write,
    write_section,
)

# Meta-World v2 (envs/metaworld.py's OBS_DIM, ACTION_DIM), MT10. Not imported from there: the
# PyTorch worker process imports this module and must not load JAX.
STATE_DIM, ACTION_DIM, NUM_TASKS = 39, 4, 10
CONTEXT = 20
LR, WEIGHT_DECAY, CLIP, DROPOUT = 1e-4, 1e-4, 0.25, 0.1
MAX_TIMESTEP = 1000  # DTConfig's default
# name: (embed_dim, num_layers, num_heads, label)
SIZES = {"dt": (128, 3, 1, "DT default: d 128, 3 layers, 1 head"),
         "harmodt": (256, 6, 8, "HarmoDT backbone, no masks: d 256, 6 layers, 8 heads")}
TRAIN_REP_S, EVAL_REP_S = 1.0, 0.5  # target seconds per timed repetition, per side


def make_batch(batch: int, seed: int) -> dict:
    """The PyTorch side's fixed batch (numpy): task-balanced random K-step segments, every 8th
    sample left-padded (DT pads segments that run past an episode's end), padding steps 0."""
    if batch % NUM_TASKS:
        raise SystemExit(f"--batch {batch} must be a multiple of the {NUM_TASKS} tasks")
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 500 - CONTEXT, (batch, 1))
    mask = np.ones((batch, CONTEXT), np.int32)
    for i in range(0, batch, 8):
        mask[i, :rng.integers(1, CONTEXT)] = 0
    out = {"returns_to_go": rng.uniform(0, 5, (batch, CONTEXT, 1)).astype(np.float32),
           "states": rng.normal(size=(batch, CONTEXT, STATE_DIM)).astype(np.float32),
           "actions": rng.uniform(-1, 1, (batch, CONTEXT, ACTION_DIM)).astype(np.float32),
           "timesteps": (start + np.arange(CONTEXT)).astype(np.int32),
           "attention_mask": mask}
    for key in ("returns_to_go", "states", "actions", "timesteps"):
        out[key][mask == 0] = 0
    out["task_id"] = np.repeat(np.arange(NUM_TASKS, dtype=np.int32), batch // NUM_TASKS)
    return out


def _reps_for(seconds_one: float, target: float) -> int:
    return max(1, round(target / max(seconds_one, 1e-9)))


# ---------------------------------------------------------------------------------------------
# JAX side
# ---------------------------------------------------------------------------------------------


def synthetic_data(num_tasks: int, episodes_per_task: int = 2, length: int = 500,
                   seed: int = 0):
    """A random offline dataset on the device, as agents/dt/learner.py's `DTData`: every task
    `episodes_per_task` episodes of `length` steps (Meta-World's 500). The update's cost does
    not depend on the values."""
    import jax.numpy as jnp

    from agents.dt.learner import DTData

    rng = np.random.default_rng(seed)
    n = num_tasks * episodes_per_task * length
    first = np.repeat(np.arange(0, n, length), length)  # each step's episode start
    task_size = episodes_per_task * length
    return DTData(
        observations=jnp.asarray(rng.normal(size=(n, STATE_DIM)).astype(np.float32)),
        actions=jnp.asarray(rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32)),
        returns_to_go=jnp.asarray(rng.uniform(0, 5000, n).astype(np.float32)),
        timesteps=jnp.asarray(np.tile(np.arange(length), n // length).astype(np.int32)),
        episode_end=jnp.asarray((first + length).astype(np.int32)),
        task_start=jnp.arange(num_tasks, dtype=jnp.int32) * task_size,
        task_size=jnp.full((num_tasks,), task_size, jnp.int32),
        prompt_start=(jnp.arange(num_tasks, dtype=jnp.int32) * task_size)[:, None],
        prompt_length=jnp.full((num_tasks, 1), length, jnp.int32),
        state_mean=jnp.zeros((num_tasks, STATE_DIM), jnp.float32),
        state_std=jnp.ones((num_tasks, STATE_DIM), jnp.float32))


class JaxSide:
    """Our learner (agents/dt/learner.py, `mtdt`) at one size: timed training steps and
    evaluation steps.

    Training is the learner's own jitted `train_updates`, compiled ahead for one update per
    call (each update samples its task-balanced batch from the dataset on the device, then
    one AdamW step; at these sizes an update takes seconds, so the per-call dispatch is
    noise). Evaluation is the learner's jitted `act`, as agents/dt/loop.py runs it, compiled
    ahead too: append the step to every task's context of the last K steps, one forward,
    action to the host.
    """

    def __init__(self, embed_dim: int, num_layers: int, num_heads: int, batch: int,
                 context: int = CONTEXT):
        import jax
        import jax.numpy as jnp

        from agents.dt import DTConfig
        from agents.dt.learner import count_parameters, make_dt_learner

        if batch % NUM_TASKS:
            raise SystemExit(f"--batch {batch} must be a multiple of the {NUM_TASKS} tasks")
        cfg = DTConfig(variant="mtdt", context_len=context, embed_dim=embed_dim,
                       num_layers=num_layers, num_heads=num_heads, dropout=DROPOUT,
                       max_timestep=MAX_TIMESTEP, batch_per_task=batch // NUM_TASKS,
                       learning_rate=LR, weight_decay=WEIGHT_DECAY, grad_clip=CLIP,
                       warmup_steps=0)  # constant learning rate, as the PyTorch side
        self.learner = make_dt_learner(cfg, STATE_DIM, ACTION_DIM, NUM_TASKS)
        self.data = synthetic_data(NUM_TASKS)
        self.state = jax.jit(self.learner.init)(jax.random.PRNGKey(0))
        self.num_params = count_parameters(self.state.params)

        rng = np.random.default_rng(2)
        self.obs = jnp.asarray(rng.normal(size=(NUM_TASKS, STATE_DIM)).astype(np.float32))
        self.reward = jnp.ones((NUM_TASKS,), jnp.float32)
        self.ctx = self.learner.eval_reset(jnp.full((NUM_TASKS,), 4000.0))
        self._filled = False
        # Both programs compiled once, here: the timed calls and the rooflines share them.
        self._train_args = (self.state, self.data)
        self._update = self.learner.train_updates.lower(*self._train_args, 1).compile()
        self._act_args = (self.state, self.data, None, self.ctx, self.obs, self.reward, 100,
                          False)
        self._act = self.learner.act.lower(*self._act_args).compile()

    def _step(self, t: int, first: bool):
        action, self.ctx = self._act(self.state, self.data, None, self.ctx, self.obs,
                                     self.reward, t, first)
        return np.asarray(action)  # to the host, as for env.step

    def train_roofline(self):
        """The roofline of one training update (bench/roofline.py)."""
        from bench.roofline import Roofline

        return Roofline.of_chunk(lambda s, d: self.learner.train_updates(s, d, 1),
                                 self._train_args, self._update, 1)

    def eval_roofline(self):
        """The roofline of one evaluation call."""
        from bench.roofline import Roofline

        return Roofline.of_chunk(self.learner.act, self._act_args, self._act, 1)

    def train(self, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            self.state, metrics = self._update(self.state, self.data)
        loss = float(metrics["loss"])  # waits for the last update
        elapsed = time.perf_counter() - t
        if not np.isfinite(loss):
            raise RuntimeError(f"JAX loss is {loss}")
        return elapsed

    def eval(self, n: int) -> float:
        if not self._filled:  # fill the context window first, untimed
            for step in range(self.learner.cfg.context_len):
                self._step(step, step == 0)
            self._filled = True
        t = time.perf_counter()
        for _ in range(n):
            self._step(100, False)
        return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# PyTorch side: a worker process driven over a pipe
# ---------------------------------------------------------------------------------------------


def _torch_worker():
    """Serve {"op": "build" | "train" | "eval" | "quit", ...} lines from stdin, one JSON reply
    line each on stdout."""
    import torch

    from bench.torch_dt import make_torch_dt, num_parameters, train_step_fn

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores)
    torch.manual_seed(0)

    def tensors(batch):
        out = {k: torch.from_numpy(v) for k, v in batch.items()}
        out["timesteps"] = out["timesteps"].long()
        out["task_id"] = out["task_id"].long()
        return out

    state: dict = {}
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "quit":
            break
        if op == "build":
            d, layers, heads = msg["dims"]  # the parent's SIZES (--smoke adds one)
            model = make_torch_dt(STATE_DIM, ACTION_DIM, NUM_TASKS, embed_dim=d,
                                  num_layers=layers, num_heads=heads, dropout=DROPOUT,
                                  max_timestep=MAX_TIMESTEP)
            state = {"model": model, "step": train_step_fn(model, lr=LR,
                                                           weight_decay=WEIGHT_DECAY, clip=CLIP),
                     "batch": tensors(make_batch(msg["batch"], seed=1)),
                     "eval_batch": tensors(make_batch(NUM_TASKS, seed=2))}
            reply = {"params": num_parameters(model), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
        elif op == "train":
            step, batch = state["step"], state["batch"]
            t = time.perf_counter()
            for _ in range(msg["n"]):
                loss = step(batch)
            reply = {"seconds": time.perf_counter() - t, "loss": loss}
        elif op == "eval":
            model, e = state["model"], state["eval_batch"]
            model.eval()
            t = time.perf_counter()
            with torch.inference_mode():
                for _ in range(msg["n"]):
                    model(e["returns_to_go"], e["states"], e["actions"], e["timesteps"],
                          e["attention_mask"], e["task_id"])[:, -1].numpy()
            reply = {"seconds": time.perf_counter() - t}
        else:
            raise ValueError(f"unknown op {op}")
        print(json.dumps(reply), flush=True)


class TorchSide:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--torch-worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def call(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"PyTorch worker died (exit code {self.proc.wait()})")
        return json.loads(line)

    def build(self, size: str, batch: int) -> dict:
        return self.call(op="build", dims=SIZES[size][:3], batch=batch)

    def train(self, n: int) -> float:
        reply = self.call(op="train", n=n)
        if not np.isfinite(reply["loss"]):
            raise RuntimeError(f"PyTorch loss is {reply['loss']}")
        return reply["seconds"]

    def eval(self, n: int) -> float:
        return self.call(op="eval", n=n)["seconds"]

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# Side by side
# ---------------------------------------------------------------------------------------------


def alternate(sides: list, what: str, target_s: float, reps: int) -> list[float]:
    """Median seconds per call of `what` ("train" or "eval") for each side, after one warm-up
    call each; each side's repetition runs about `target_s` seconds (at least one call),
    sides alternating."""
    per_call = []
    counts = []
    for side in sides:
        first = getattr(side, what)(1)  # warm-up (JAX: compile)
        # One call per repetition when a call is slow anyway (the HarmoDT size's training
        # step); otherwise time one more call to size the repetitions.
        counts.append(1 if first > 5.0 else _reps_for(getattr(side, what)(1), target_s))
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(reps):
        for side, n, ts in zip(sides, counts, times, strict=True):
            time.sleep(0.05)  # let the other side's threads go idle
            ts.append(getattr(side, what)(n) / n)
    for ts in times:
        per_call.append(statistics.median(ts))
    return per_call


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help=f"comma-separated, of {', '.join(SIZES)} (default all)")
    parser.add_argument("--batch", type=int, default=260,
                        help="training batch, a multiple of the 10 tasks (default 260)")
    parser.add_argument("--reps", type=int, default=5,
                        help="timed repetitions per side, alternating (default 5)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    add_smoke_option(parser)
    args = parser.parse_args()
    if args.torch_worker:
        _torch_worker()
        return
    refuse_smoke_write(args)
    global TRAIN_REP_S, EVAL_REP_S
    if args.smoke:  # one tiny model, one short repetition per side
        SIZES["smoke"] = (16, 1, 1, "smoke: d 16, 1 layer, 1 head")
        args.sizes, args.batch, args.reps = "smoke", 20, 1
        TRAIN_REP_S, EVAL_REP_S = 0.05, 0.05
    sizes = args.sizes.split(",")
    for s in sizes:
        if s not in SIZES:
            raise SystemExit(f"unknown size '{s}'; valid: {', '.join(SIZES)}")

    import jax

    from bench.roofline import HEADER as ROOFLINE_HEADER
    from bench.roofline import NOTE as ROOFLINE_NOTE

    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch_side = TorchSide() if importlib.util.find_spec("torch") else None
    tokens = args.batch * 3 * CONTEXT
    train_rows, eval_rows, torch_info = [], [], None
    try:
        for size in sizes:
            d, layers, heads, label = SIZES[size]
            jax_side = JaxSide(d, layers, heads, args.batch)
            sides = [jax_side]
            if torch_side is not None:
                torch_info = torch_side.build(size, args.batch)
                if torch_info["params"] != jax_side.num_params:
                    raise RuntimeError(f"parameter counts differ: JAX {jax_side.num_params}, "
                                       f"PyTorch {torch_info['params']}")
                sides.append(torch_side)
            train_s = alternate(sides, "train", TRAIN_REP_S, args.reps)
            eval_s = alternate(sides, "eval", EVAL_REP_S, args.reps)
            jt, te = tokens / train_s[0], 1.0 / eval_s[0]
            train_roof, eval_roof = jax_side.train_roofline(), jax_side.eval_roofline()
            if torch_side is not None:
                tt, tte = tokens / train_s[1], 1.0 / eval_s[1]
                train_cells = (f"{_fmt(jt)} | {_fmt(tt)} | {jt / tt:.2f}x")
                eval_cells = (f"{_fmt(te)} | {_fmt(tte)} | {te / tte:.2f}x")
            else:
                train_cells = f"{_fmt(jt)} | n/a | n/a (torch not installed)"
                eval_cells = f"{_fmt(te)} | n/a | n/a (torch not installed)"
            # PyTorch's rate is the same FLOPs over its own step time: the same model
            torch_share = (f"{train_roof.achieved(train_s[1]) / train_roof.ceiling:.0%}"
                           if torch_side is not None else "n/a")
            train_rows.append(f"| {label} | {jax_side.num_params:,} | "
                              f"{train_s[0] * 1e3:,.0f} | {train_cells} | "
                              f"{train_roof.cells(train_s[0])} | {torch_share} |")
            eval_rows.append(f"| {label} | {eval_s[0] * 1e3:.2f} | {eval_cells} | "
                             f"{eval_roof.cells(eval_s[0])} |")
            print(train_rows[-1], flush=True)
            print(eval_rows[-1], flush=True)
            del jax_side
    finally:
        if torch_side is not None:
            torch_side.close()

    device = jax.devices()[0]
    torch_txt = (f"torch {torch_info['torch']} eager, {torch_info['threads']} threads"
                 if torch_info else "torch not installed")
    out = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {device.device_kind} "
           f"({device.platform}), jax {jax.__version__}; {torch_txt} (child process). "
           f"Load average at start {load:.2f}. Variant mtdt, continuous actions, state 39, "
           f"action 4, 10 tasks, K {CONTEXT}. Medians of {args.reps} alternating "
           "repetitions, warm-up (and JAX compile) excluded.",
           f"\n(a) training, batch {args.batch} x {3 * CONTEXT} tokens = {tokens:,} tokens "
           "per step (padding included); dropout 0.1, AdamW lr 1e-4, wd 1e-4, grad-norm clip "
           "0.25, MSE on valid steps. JAX: agents/dt/learner.py's jitted `train_updates`, one "
           "update per call, batch sampled on the device; PyTorch: DT's eager step on a fixed "
           "batch.\n",
           "| size | params (both) | JAX ms / step | JAX tokens/s | PyTorch tokens/s "
           f"| JAX / PyTorch | JAX {ROOFLINE_HEADER} | PyTorch of ceiling |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|",
           *train_rows,
           f"\n(b) evaluation, one env per task ({NUM_TASKS}) x a full {CONTEXT}-step context, no "
           "gradient, dropout off, action to the host each call. JAX: the learner's jitted "
           "`act` (context update + forward); PyTorch: the forward alone.\n",
           "| size | JAX ms / call | JAX calls/s | PyTorch calls/s | JAX / PyTorch | "
           f"JAX {ROOFLINE_HEADER} |",
           "|---|---|---|---|---|---|---|---|---|---|",
           *eval_rows,
           f"\n{ROOFLINE_NOTE} Evaluation: one call. PyTorch's fraction is the same FLOPs "
           "(the same model) over its own step time.",
           f"\nScript runtime {time.perf_counter() - started:.0f} s."]
    if load > (os.cpu_count() or 1):
        out.append(f"\n**Warning: load average {load:.2f} on {os.cpu_count()} cores at start.** "
                   "Eager PyTorch's OpenMP threads wait at every parallel region for a thread "
                   "that another process has descheduled, so on a busy machine its figures "
                   "(and the ratios) are far from those of an idle one; JAX's thread pool "
                   "degrades less. Re-run on an idle machine.")
    text = "\n".join(out)
    print(text)
    if args.write:
        write_section("bench_dt", "Decision transformer training vs PyTorch (bench/bench_dt.py)",
                      text, " ".join(["python", "bench/bench_dt.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
