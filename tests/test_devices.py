"""The accelerator path, simulated on the CPU: the learner from device 1 of forced host
devices on, the SAC actor on the CPU device 0, implicit device-to-device copies forbidden.

JAX fixes its device count when it starts, so each phase runs in a subprocess
(`python -m tests.test_devices PHASE OUT`): SAC, PPO and DT train tiny runs on three devices
with `train.learner_device 1` (SAC data parallel over devices 1 and 2, `train.devices 2`,
its checkpoint holding one copy of the replicated state), their checkpoints re-evaluate in a
one-device process, and the runs resume from an earlier checkpoint with four devices to the
numbers of the uninterrupted runs. A checkpoint that recorded devices (older versions)
restores under another layout.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    trained = _phase("train", tmp_path, devices=3)
    for algo in ALGOS:
        placed = trained[algo]["placement"]
        assert placed["learner"] == ([1, 2] if algo == "sac" else [1]), (algo, placed)
        if algo == "sac":  # the actor steps MuJoCo next to the CPU device
            assert placed["buffer"] == [1, 2] and placed["actor"] == [0], placed
        if algo == "dt":
            assert placed["data"] == [1], placed
        assert trained[algo]["versions"]["learner_device"] == "cpu:1"
    reevaluated = _phase("reevaluate", tmp_path, devices=1)
    for algo in ALGOS:  # a one-device process reproduces the run's last evaluation
        assert reevaluated[algo] == _without(trained[algo]["last"], "updates", "masks"), algo
    # A checkpoint of an older version, which recorded its arrays' devices (cpu:1), restores
    # onto the host of a one-device process.
    np.testing.assert_array_equal(reevaluated["device_tagged"], np.arange(4.0))
    resumed = _phase("resume", tmp_path, devices=4)
    for algo in ALGOS:
        assert resumed[algo]["placement"] == trained[algo]["placement"], algo
        assert resumed[algo]["last"] == trained[algo]["last"], algo


def _without(record: dict, *keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_an_unmappable_layout_is_not_called_corrupt(tmp_path, monkeypatch):
    """An intact checkpoint whose devices cannot be mapped stops the restore with its own
    message: not 'corrupt', no fallback to an older checkpoint, nothing moved aside."""
    from training.checkpoint import Checkpointer
    from training.errors import UsageError

    checkpointer = Checkpointer(tmp_path / "checkpoints", 3)
    for step in (1, 2):
        checkpointer.save(step, {"x": np.ones(2)}, {"env_steps": step})

    def restore(*args, **kwargs):
        raise ValueError("Topology mismatch detected. The checkpoint was saved with a "
                         "different topology than the current one.")

    monkeypatch.setattr(checkpointer._manager, "restore", restore)
    with pytest.raises(UsageError, match=r"was written under a device layout this process "
                                         r"cannot map \(Topology mismatch detected.*intact") as e:
        checkpointer.resume(tmp_path)
    assert "corrupt" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


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
        "train.eval_every": "80", "train.devices": "2"})
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


def _save_device_tagged(directory: Path) -> None:
    """A checkpoint as older versions wrote them: orbax given a jax.Array on device 1."""
    import jax
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False))
    array = jax.device_put(np.arange(4.0, dtype=np.float32), jax.devices()[1])
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"x": array}),
                                            meta=ocp.args.JsonSave({"env_steps": 1})))
    manager.wait_until_finished()
    assert "cpu:1" in next(directory.glob("1/state/_sharding")).read_text()


def _main(phase: str, out: Path) -> None:
    from training import run_dir as run_lib
    from training.checkpoint import Checkpointer
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
            if algo == "sac":
                _save_device_tagged(out / "device_tagged")
        elif phase == "reevaluate":
            if algo == "sac":
                tree, _ = Checkpointer(out / "device_tagged", 1).restore()
                result["device_tagged"] = np.asarray(tree["x"]).tolist()
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
