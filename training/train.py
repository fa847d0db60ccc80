"""Train runs with their algorithm's loop (SAC: agents/sac/loop.py, PPO: agents/ppo/loop.py,
DT: agents/dt/loop.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

from training import run_dir as run_lib
from training.config import Config
from training.errors import UsageError


def check_seed_batch(cfgs: list[Config]) -> None:
    """Several seeds train in one process only with PPO on the device."""
    if len(cfgs) == 1:
        return
    if cfgs[0].algo != "ppo":
        raise UsageError(f"several seeds in one process need algo ppo; '{cfgs[0].preset}' uses "
                         f"{cfgs[0].algo} (launch one process per seed, or a grid)")
    if cfgs[0].env.backend == "gym":
        raise UsageError(f"env.backend gym trains one seed per process; got {len(cfgs)} seeds "
                         "(use env.backend jax to batch seeds)")


def seeds_per_process(cfgs: list[Config]) -> int:
    """How many of these seeds (one config's) fit in one process's device memory, checked
    before training: PPO on the device compiles its chunk and reads XLA's memory plan; the
    other loops train one seed per process."""
    if cfgs[0].algo != "ppo":
        return len(cfgs)
    from agents.ppo.loop import seeds_that_fit

    return seeds_that_fit(cfgs)


def train_runs(cfgs: list[Config], runs: list[Path], resume: bool,
               show_progress: bool) -> list[dict]:
    """Train runs to completion; -> each run's last evaluation record. Several runs (seeds of
    one config) train together only with PPO on the device."""
    check_seed_batch(cfgs)
    configure_jax(cfgs[0])
    with run_lib.locked(runs):
        if resume:
            resume = _has_checkpoints(cfgs, runs)
        print(f"{cfgs[0].preset}: starting; JAX compiles the learner on first use, so expect "
              "a pause (seconds to minutes) before progress shows", flush=True)
        return _train(cfgs, runs, resume, show_progress)


def configure_jax(cfg: Config) -> None:
    """Process-wide JAX settings of a run: its float32 matmul precision, and the transfer
    guards set in the environment (JAX_TRANSFER_GUARD, JAX_TRANSFER_GUARD_DEVICE_TO_DEVICE,
    ...). JAX 0.10 reads those variables as the options' defaults but never hands them to the
    runtime that enforces them, so without this they are silently ignored."""
    import os

    import jax

    precision = cfg.train.matmul_precision
    jax.config.update("jax_default_matmul_precision", None if precision == "default"
                      else precision)
    for name in ("jax_transfer_guard", *(f"jax_transfer_guard_{direction}" for direction in
                                         ("host_to_device", "device_to_device",
                                          "device_to_host"))):
        level = os.environ.get(name.upper())
        if level:
            jax.config.update(name, level)


def _has_checkpoints(cfgs: list[Config], runs: list[Path]) -> bool:
    """Whether runs to resume have checkpoints; runs stopped before their first one start
    over in their own directories (said on stdout)."""
    from training.checkpoint import Checkpointer

    has = [Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints).latest_step()
           is not None for cfg, run in zip(cfgs, runs, strict=True)]
    if all(has):
        return True
    if any(has):
        missing = ", ".join(str(r) for r, h in zip(runs, has, strict=True) if not h)
        raise UsageError(f"runs resumed together must all have a checkpoint; {missing} has "
                         "none (resume it on its own: it starts over)")
    for run in runs:
        run_lib.clear_for_restart(run)
        print(f"{run} stopped before its first checkpoint: starting it over", flush=True)
    return False


# The registry of algorithms: config.algo -> its loop, a training/runner.py Runner. Imported
# on use (they import JAX and build environments).
RUNNERS = {"sac": "agents.sac.loop:Trainer", "ppo": "agents.ppo.loop:PPOTrainer",
           "dt": "agents.dt.loop:DTTrainer"}


def _train(cfgs: list[Config], runs: list[Path], resume: bool,
           show_progress: bool) -> list[dict]:
    import jax

    from training.sharding import learner_device

    module, name = RUNNERS[cfgs[0].algo].split(":")
    runner = getattr(importlib.import_module(module), name)
    # Every array the learner creates or receives from the host lands on its device; SAC's
    # actor puts its own on the CPU device explicitly.
    with jax.default_device(learner_device(cfgs[0].train.learner_device)):
        return runner.for_runs(cfgs, runs, show_progress).train(resume=resume)


def reevaluate(cfg: Config, run: Path, step: int | None, episodes: int | None,
               deterministic: bool, **options) -> dict:
    """Evaluate a saved checkpoint of `run` with its algorithm's `reevaluate` (the module of
    its RUNNERS entry); the record goes to reeval.jsonl."""
    configure_jax(cfg)
    module = importlib.import_module(RUNNERS[cfg.algo].split(":")[0])
    return module.reevaluate(cfg, run, step=step, episodes=episodes,
                             deterministic=deterministic, **options)
