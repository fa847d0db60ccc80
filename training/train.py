"""Train runs with their algorithm's loop (SAC: training/loop.py, PPO: training/ppo_loop.py)."""

from __future__ import annotations

from pathlib import Path

from training.config import Config


def train_runs(cfgs: list[Config], runs: list[Path], resume: bool,
               show_progress: bool) -> list[dict]:
    """Train runs to completion; -> each run's last evaluation record. Several runs (seeds of
    one config) train together only with PPO on the device."""
    if cfgs[0].algo == "ppo":
        from training.ppo_loop import PPOTrainer

        return PPOTrainer(cfgs, runs, show_progress=show_progress).train(resume=resume)
    from training.loop import Trainer  # imports JAX and builds envs

    (cfg,), (run,) = cfgs, runs
    return [Trainer(cfg, run, show_progress=show_progress).train(resume=resume)]
