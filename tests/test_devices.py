"""The accelerator path, simulated on the CPU: the learner on device 1 of forced host devices,
the SAC actor on the CPU device 0, implicit device-to-device copies forbidden.

JAX fixes its device count when it starts, so each phase runs in a subprocess
(`python -m tests.test_devices PHASE OUT`): SAC, PPO and DT train tiny runs on two devices
with `train.learner_device 1`, their checkpoints re-evaluate in a one-device process, and the
runs resume from an earlier checkpoint with four devices to the numbers of the uninterrupted
runs. A checkpoint that recorded devices (older versions) restores under another layout.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

ALGOS = ("sac", "ppo", "dt")


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", "JAX_TRANSFER_GUARD_DEVICE_TO_DEVICE": "disallow"}


def _phase(name: str, out: Path, devices: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.test_devices", name, str(out)],
                          cwd=ROOT, env=_env(devices), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / f"{name}.json").read_text())


def test_learner_on_another_device_trains_reevaluates_and_resumes(tmp_path):
    trained = _phase("train", tmp_path, devices=2)
    for algo in ALGOS:
        placed = trained[algo]["placement"]
        assert placed["learner"] == [1], (algo, placed)
        if algo == "sac":  # the actor steps MuJoCo next to the CPU device
            assert placed["buffer"] == [1] and placed["actor"] == [0], placed
        if algo == "dt":
            assert placed["data"] == [1], placed
        assert trained[algo]["versions"]["learner_device"] == "cpu:1"
    reevaluated = _phase("reevaluate", tmp_path, devices=1)
    for algo in ALGOS:  # a one-device process reproduces the run's last evaluation
        assert reevaluated[algo] == _without(trained[algo]["last"], "updates", "masks"), algo
    resumed = _phase("resume", tmp_path, devices=4)
    for algo in ALGOS:
        assert resumed[algo]["placement"]["learner"] == [1], algo
        assert resumed[algo]["last"] == trained[algo]["last"], algo


def _without(record: dict, *keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_placement_options_may_change_on_resume_and_are_bounded():
    from experiments.presets import get_preset
    from training import config as config_lib
    from training.errors import UsageError

    cfg = get_preset("demo")
    moved = config_lib.apply_overrides(cfg, {"train.learner_device": "1"})
    assert config_lib.diff(cfg, moved) == ["train.learner_device"]
    assert config_lib.diff(cfg, moved, placement=False) == []
    for bad, message in (("-1", r"--train.learner_device must be >= 0"),
                         ("1", r"--train.learner_device must be in \[0, 0\] \(this process "
                               r"has 1 cpu device\), got 1")):
        with pytest.raises(UsageError, match=message):
            config_lib.validate(config_lib.apply_overrides(cfg, {"train.learner_device": bad}))


# ---- the subprocess ---------------------------------------------------------------------------

def _configs(out: Path):
    from experiments.presets import get_preset
    from tests.test_offline import tiny_config as tiny_dt
    from tests.test_ppo import tiny_config as tiny_ppo
    from training import config as config_lib
    from training.data.collect import collect_scripted

    sac = config_lib.apply_overrides(get_preset("demo"), {
        "env.suite": "custom", "env.tasks": "reach-v3,drawer-close-v3",
        "network.hidden_sizes": "16,16", "sac.batch_size_per_task": "8",
        "sac.buffer_size_per_task": "2000", "sac.critic_warmup": "40", "sac.actor_warmup": "60",
        "eval.episodes": "1", "train.chunk_steps": "20", "env.max_episode_steps": "40",
        "train.total_steps_per_task": "80", "train.checkpoint_every": "40",
        "train.eval_every": "80", "train.devices": "1"})
    dataset = out / "dataset"
    if not dataset.exists():
        collect_scripted(str(dataset), "custom", ("reach-v3", "push-v3"), "mixed", 2, seed=0,
                         max_episode_steps=50, show_progress=False)
    cfgs = {"sac": sac, "ppo": tiny_ppo(), "dt": tiny_dt(dataset)}
    return {algo: dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                      learner_device=1))
            for algo, cfg in cfgs.items()}


def _devices(*trees) -> list[int]:
    import jax

    return sorted({d.id for tree in trees for leaf in jax.tree.leaves(tree)
                   for d in leaf.devices()})


def _record_placement(placement: dict):
    """Wrap each loop's `snapshot` to note where its arrays live when it checkpoints."""
    from agents.dt.loop import DTTrainer
    from agents.ppo.loop import PPOTrainer
    from agents.sac.loop import Trainer

    def wrap(cls, algo, parts):
        original = cls.snapshot

        def snapshot(self):
            placement[algo] = {name: _devices(*(getattr(self, a) for a in attrs))
                               for name, attrs in parts.items()}
            return original(self)

        cls.snapshot = snapshot

    wrap(Trainer, "sac", {"learner": ("state",), "buffer": ("buffer",),
                          "actor": ("actor_params", "actor_key")})
    wrap(PPOTrainer, "ppo", {"learner": ("state",)})
    wrap(DTTrainer, "dt", {"learner": ("state",), "data": ("data",)})


def _main(phase: str, out: Path) -> None:
    from training import run_dir as run_lib
    from training.train import reevaluate, train_runs

    cfgs = _configs(out)
    placement: dict = {}
    _record_placement(placement)
    result = {}
    for algo, cfg in cfgs.items():
        run = out / algo
        if phase == "train":
            run_lib.create_at(run, cfg)
            (last,) = train_runs([cfg], [run], resume=False, show_progress=False)
            result[algo] = {"last": last, "placement": placement[algo],
                            "versions": json.loads((run / "versions.json").read_text())}
        elif phase == "reevaluate":
            cfg = run_lib.load_config(run)
            record = reevaluate(cfg, run, step=None, episodes=None,
                                deterministic=cfg.eval.deterministic)
            result[algo] = _without(record, "updates", "masks")
        else:  # back to the previous checkpoint, then resume it
            checkpoints = sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                                 if p.name.isdigit())
            shutil.rmtree(run / "checkpoints" / str(checkpoints[-1]))
            (run / "final.json").unlink()
            (last,) = train_runs([run_lib.load_config(run)], [run], resume=True,
                                 show_progress=False)
            result[algo] = {"last": last, "placement": placement[algo]}
    (out / f"{phase}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1], Path(sys.argv[2]))
