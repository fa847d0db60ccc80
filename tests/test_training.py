"""Integration on tiny networks: train, evaluate, checkpoint; SIGKILL + resume is exact;
a NaN loss stops the run with the last checkpoint intact; resume refuses a changed config."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT
from training import run_dir as run_lib
from training.checkpoint import Checkpointer

TINY = ["--network.hidden_sizes", "16,16", "--network.num_experts", "2",
        "--sac.batch_size_per_task", "8", "--sac.buffer_size_per_task", "2000",
        "--sac.critic_warmup", "40", "--sac.actor_warmup", "60", "--eval.episodes", "1",
        "--train.chunk_steps", "20", "--env.max_episode_steps", "40", "--no-progress"]
SMALL_SUITE = ["--env.suite", "custom", "--env.tasks", "reach-v3,drawer-close-v3"]


def _train(out, *args, wait=True):
    cmd = [sys.executable, str(ROOT / "launch.py"), "train", "--out", str(out), *TINY, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _only_run(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


def test_mt10_train_evaluate_checkpoint(tmp_path):
    result = _train(tmp_path, "--preset", "mt10_moore", "--train.total_steps_per_task", "200",
                    "--train.eval_every", "120", "--train.checkpoint_every", "80")
    assert result.returncode == 0, result.stderr
    run = _only_run(tmp_path)
    assert "reach-v3" in result.stdout and "window-close-v3" in result.stdout
    records = run_lib.read_evals(run)
    assert [r["step"] for r in records] == [0, 120, 200]
    last = records[-1]
    assert last["suite"] == "mt10" and len(last["per_task"]) == 10
    for stats in last["per_task"].values():
        assert set(stats) == {"success", "return", "episodes"} and stats["episodes"] == 1
    assert last["updates"] == 200 - 40  # one gradient step per env step after the warm-up
    versions = json.loads((run / "versions.json").read_text())
    for package in ("metaworld", "mujoco", "gymnasium", "jax", "flax", "git_commit"):
        assert package in versions
    assert versions["jax_backend"] == "cpu" and versions["device_count"] >= 1
    assert versions["device_kind"] and versions["matmul_precision"] == "default"
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["arch"] == "moore" and config["preset"] == "mt10_moore"
    assert json.loads((run / "final.json").read_text())["step"] == 200
    assert any((run / "tb").iterdir())
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [160, 200]  # the last two kept (keep_checkpoints=2)

    reeval = subprocess.run([sys.executable, str(ROOT / "launch.py"), "eval", "--run", str(run),
                             "--episodes", "1"], cwd=ROOT, capture_output=True, text=True)
    assert reeval.returncode == 0, reeval.stderr
    assert "drawer-close-v3" in reeval.stdout
    (again,) = [json.loads(line) for line in (run / "reeval.jsonl").read_text().splitlines()]
    # Same checkpoint, same evaluation randomness: the re-evaluation reproduces the record.
    assert again["step"] == 200 and again["per_task"] == last["per_task"]


def _final_params(run: Path):
    tree, meta = Checkpointer(run / "checkpoints", 2).restore()
    return tree["learner"], meta


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkilled_run_resumes_to_identical_numbers(tmp_path, mode):
    args = [*SMALL_SUITE, "--preset", "demo", "--train.total_steps_per_task", "400",
            "--train.eval_every", "160", "--train.checkpoint_every", "80",
            "--train.async_actor", "true" if mode == "async" else "false"]
    reference = _train(tmp_path / "a", *args)
    assert reference.returncode == 0, reference.stderr

    # In async mode the interrupted run also steps its envs in worker processes (the env
    # state checkpointed through `call`): the same numbers as the sync envs' reference.
    envs = ["--env.vector_strategy", "async"] if mode == "async" else []
    proc = _train(tmp_path / "b", *args, *envs, wait=False)
    deadline = time.time() + 300
    ckpt_dir = None
    while time.time() < deadline:  # kill once a mid-run checkpoint exists
        runs = list((tmp_path / "b").glob("*/checkpoints"))
        if runs and any(p.name.isdigit() and int(p.name) >= 160 for p in runs[0].iterdir()):
            ckpt_dir = runs[0]
            break
        time.sleep(0.05)
    assert ckpt_dir is not None and proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = ckpt_dir.parent
    assert not (run / "final.json").exists()
    for _ in range(2):  # resume, and resume again if it was interrupted again
        resumed = subprocess.run([sys.executable, str(ROOT / "launch.py"), "train", "--resume",
                                  str(run), "--no-progress"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        break

    ref_run = _only_run(tmp_path / "a")
    assert run_lib.read_evals(run) == run_lib.read_evals(ref_run)
    ours, meta = _final_params(run)
    theirs, ref_meta = _final_params(ref_run)
    assert meta["env_steps"] == ref_meta["env_steps"] == 400
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    again = subprocess.run([sys.executable, str(ROOT / "launch.py"), "train", "--resume", str(run)],
                           cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "already complete" in again.stderr


def test_resume_refuses_changed_config_and_corrupt_checkpoint(tmp_path):
    result = _train(tmp_path, *SMALL_SUITE, "--preset", "demo", "--train.total_steps_per_task",
                    "80", "--train.checkpoint_every", "40", "--train.eval_every", "80")
    assert result.returncode == 0, result.stderr
    run = _only_run(tmp_path)
    launch = [sys.executable, str(ROOT / "launch.py"), "train", "--resume", str(run)]
    changed = subprocess.run([*launch, "--sac.gamma", "0.5"], cwd=ROOT, capture_output=True,
                             text=True)
    assert changed.returncode == 2
    assert changed.stderr.strip() == (f"error: --resume {run}: overrides differ from the run's "
                                      "config in: sac.gamma")

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    latest = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    for f in (run / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\x00garbage" * 4)
    corrupt = subprocess.run(launch, cwd=ROOT, capture_output=True, text=True)
    assert corrupt.returncode == 2 and "error: " in corrupt.stderr
    assert ("corrupt checkpoint" in corrupt.stderr or "already complete" in corrupt.stderr)
    assert "Traceback" not in corrupt.stderr
    for p, content in before.items():  # nothing else rewritten
        if "checkpoints" not in str(p):
            assert p.read_bytes() == content


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
    from agents.sac.loop import Trainer
    from experiments.presets import get_preset
    from training import config as config_lib
    from training.errors import TrainingDiverged

    cfg = config_lib.apply_overrides(get_preset("demo"), {
        "env.suite": "custom", "env.tasks": "reach-v3,drawer-close-v3",
        "network.hidden_sizes": "16,16", "sac.batch_size_per_task": "8",
        "sac.buffer_size_per_task": "2000", "sac.critic_warmup": "20", "sac.actor_warmup": "20",
        "eval.episodes": "1", "train.chunk_steps": "20", "env.max_episode_steps": "40",
        "train.total_steps_per_task": "400", "train.checkpoint_every": "40",
        "train.eval_every": "400"})
    run = run_lib.create(str(tmp_path), cfg)
    trainer = Trainer(cfg, run, show_progress=False)
    honest = trainer._train_chunk

    def poisoned(state, buffer, critic_on, actor_on):
        state, metrics = honest(state, buffer, critic_on, actor_on)
        if trainer.progress.env_steps > 100:
            metrics = dict(metrics, critic_loss=metrics["critic_loss"] * jnp.nan)
        return state, metrics

    trainer._train_chunk = poisoned
    with pytest.raises(TrainingDiverged, match="non-finite critic_loss .* env step 120"):
        trainer.train()
    tree, meta = Checkpointer(run / "checkpoints", 2).restore()
    assert meta["env_steps"] == 80
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree["learner"]))


# The presets whose training step has its own code path in the learner (PaCo's reset, the
# mask report and prune-and-regrow, per-task gradients). CARE, Soft Modules and PCGrad only
# change the forward pass or the combiner, which tests/test_modular.py and
# tests/test_gradient_surgery.py cover without a training run (the suite's time budget).
SMOKE_PRESETS = ["mt10_paco", "mt10_unitmask", "mt10_weightmask", "mt10_gradnorm"]


@pytest.mark.parametrize("preset", SMOKE_PRESETS)
def test_every_sharing_preset_trains_on_mt10(tmp_path, preset):
    """A short MT10 run per preset, in-process: trains, evaluates every task, and for the mask
    architectures records density and overlap in eval.jsonl and a figure."""
    from agents.sac.loop import Trainer
    from experiments.presets import get_preset
    from training import config as config_lib

    overrides = dict(zip(TINY[0:-1:2], TINY[1::2], strict=True))
    overrides = {k.removeprefix("--"): v for k, v in overrides.items()
                 if k.startswith("--network.hidden") or k.startswith("--sac.")
                 or k.startswith("--train.") or k.startswith("--env.") or k == "--eval.episodes"}
    overrides.update({"train.total_steps_per_task": "80", "train.eval_every": "80",
                      "train.checkpoint_every": "80", "network.mask_update_every": "10"})
    cfg = config_lib.apply_overrides(get_preset(preset), overrides)
    config_lib.validate(cfg)
    run = run_lib.create(tmp_path, cfg)
    (result,) = Trainer(cfg, run, show_progress=False).train()
    assert result["step"] == 80 and len(result["per_task"]) == 10
    records = run_lib.read_evals(run)
    assert [r["step"] for r in records] == [0, 80]
    if cfg.network.arch in ("unitmask", "weightmask"):
        masks = records[-1]["masks"]
        assert len(masks["density"]) == 10 and len(masks["overlap"]) == 10
        np.testing.assert_allclose(list(masks["density"].values()),
                                   cfg.network.mask_density, atol=0.02)
        assert (run / "masks" / "step_80.png").stat().st_size > 0
