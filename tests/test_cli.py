"""Bad input: one line naming the bad value, exit code 2, no traceback, nothing written."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _launch(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "mt11_moore"], "unknown preset 'mt11_moore'; valid presets: demo"),
    (["train", "--train.total_steps_per_task", "0"],
     "--train.total_steps_per_task must be positive"),
    (["train", "--train.total_steps_per_task", "-100"], "must be positive, got -100"),
    (["train", "--env.suite", "mt20"], "unknown suite 'mt20'; valid suites: mt10, mt50, custom"),
    (["train", "--env.suite", "custom", "--env.tasks", "reach-v3,fly-v3"],
     "unknown Meta-World task 'fly-v3'"),
    (["train", "--network.arch", "resnet"], "unknown network.arch 'resnet'; valid: mtmlp"),
    (["train", "--sac.gamma", "abc"], "bad value 'abc' for --sac.gamma"),
    (["train", "--sac.gradient_surgery", "mgda"],
     "unknown sac.gradient_surgery 'mgda'; valid: none, pcgrad, gradnorm"),
    (["train", "--network.arch", "weightmask", "--network.mask_density", "1.5"],
     "network.mask_density must be in (0, 1], got 1.5"),
    (["params", "--preset", "nope"], "unknown preset 'nope'"),
    (["report", "/nonexistent/grid"], "/nonexistent/grid"),
    (["train", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["eval", "--agent", "oracle"], "unknown agent 'oracle'; valid agents: scripted"),
    (["eval", "--agent", "scripted", "--suite", "mt3"], "unknown suite 'mt3'"),
    (["eval", "--agent", "scripted", "--episodes", "0"], "--episodes must be positive"),
    (["eval", "--agent", "scripted", "--behaviour"], "--behaviour reads a trained policy"),
    (["eval", "--run", "/nonexistent/run"], "run directory '/nonexistent/run' does not exist"),
    (["train", "--resume", "/nonexistent/run"], "run directory '/nonexistent/run' does not exist"),
    (["train", "--num-seeds", "2"], "several seeds in one process need algo ppo; 'demo' uses sac"),
    (["train", "--preset", "minigrid_mt3_moore", "--env.backend", "gym", "--num-seeds", "2"],
     "env.backend gym trains one seed per process; got 2 seeds"),
    (["train", "--preset", "minigrid_mt3_moore", "--env.suite", "minigrid_custom",
      "--env.tasks", "LavaGapS9"], "unknown MiniGrid env 'LavaGapS9' in --env.tasks"),
    # XLA plans over 1 TiB for this chunk: refused before it starts
    (["train", "--preset", "minigrid_mt3_mtppo", *(f"--{k}=10000000" for k in (
        "ppo.steps_per_task", "train.total_steps_per_task", "train.eval_every",
        "train.checkpoint_every"))],
     "the training chunk of 1 seed of 'minigrid_mt3_mtppo' needs"),
    (["train", "--preset", "mt10_mtdt"], "algo dt trains from a dataset: pass --dt.dataset DIR"),
    (["train", "--preset", "mt10_mtdt", "--dt.dataset", "/nonexistent/data"],
     "dataset '/nonexistent/data' not found (make one with `python launch.py collect`)"),
    (["collect", "--tier", "perfect", "--out", "/tmp/never"],
     "unknown tier 'perfect'; valid: expert, medium, mixed"),
    (["collect", "--source", "replay", "--out", "/tmp/never"], "--source replay needs --run DIR"),
    # Found before a run directory exists (each used to leave an unresumable one behind).
    (["train", "--seed", "1099511627776"], "--seed must be in [0, 2^32), got 1099511627776"),
    (["train", "--network.encoder", "cnn"], "--network.encoder cnn reads MiniGrid's"),
    (["train", "--train.devices", "99"], "--train.devices must be in [0, 1]"),
    (["train", "--sac.tau", "1.5"], "--sac.tau must be in (0, 1], got 1.5"),
    (["train", "--sac.actor_lr", "nan"], "--sac.actor_lr must be a finite number, got nan"),
    (["train", "--sac.gamma", "0.9", "--sac.gamma", "0.5"], "option --sac.gamma given twice"),
    (["train", "--preset", "minigrid_mt3_moore", "--sac.batch_size_per_task", "-5"],
     "--sac.batch_size_per_task does not apply to algo ppo (preset 'minigrid_mt3_moore')"),
    (["train", "--preset", "minigrid_mt3_moore", "--network.encoder", "mlp",
      "--network.arch", "paco"], "--network.arch paco with algo ppo: PaCo's task reset"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = _launch(*args, "--out", str(tmp_path / "runs")) if args[0] == "train" and \
        "--resume" not in args else _launch(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_help_lists_presets_and_every_option():
    top = _launch("--help")
    assert top.returncode == 0 and "mt10_moore" in top.stdout and "mt50_mtsac" in top.stdout
    train = _launch("train", "--help")
    for option in ("--network.arch", "--sac.batch_size_per_task", "--train.async_actor",
                   "--eval.episodes", "--env.reward_version", "--resume"):
        assert option in train.stdout


def test_help_of_a_preset_shows_its_values_choices_and_own_sections_only():
    ppo = _launch("train", "--preset", "minigrid_mt3_moore", "--help")
    assert ppo.returncode == 0
    text = " ".join(ppo.stdout.split())  # argparse wraps lines
    text = text[text.index("options of preset"):text.index("presets:")]
    assert "options of preset 'minigrid_mt3_moore' (algo ppo" in text
    assert "--network.encoder STR mlp: vector observations; cnn: MOORE's MiniGrid image " \
           "encoder; one of mlp, cnn (default: cnn)" in text
    assert "one of task, batch, none (default: task)" in text
    assert "paco" not in text.split("--network.arch", 1)[1].split("--network.encoder")[0]
    assert "--sac.batch_size_per_task" not in text and "--dt.dataset" not in text
    sac = " ".join(_launch("train", "--preset", "mt10_moore", "--help").stdout.split())
    sac = sac[sac.index("options of preset"):sac.index("presets:")]
    assert "--sac.batch_size_per_task INT transitions sampled from each task's buffer per " \
           "update (default: 128)" in sac and "--ppo.epochs" not in sac


def test_behaviour_needs_a_ppo_run(tmp_path):
    from experiments.presets import get_preset
    from training import run_dir as run_lib

    run = run_lib.create(str(tmp_path), get_preset("demo", 0))
    result = _launch("eval", "--run", str(run), "--behaviour")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: --behaviour reads PPO (MiniGrid) policies; {run} "
                                     "is a 'sac' run")


def test_out_that_is_a_file_is_one_line_in_every_command(tmp_path):
    file = tmp_path / "taken"
    file.write_text("x")
    spec = tmp_path / "g.toml"
    spec.write_text('presets = ["demo"]\nseeds = 1\n')
    for args in (["train", "--out", str(file)], ["grid", str(spec), "--out", str(file)],
                 ["report", str(tmp_path), "--out", str(file)],
                 ["collect", "--out", str(file / "data")]):
        result = _launch(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [
            result.stderr.strip()] and "is a file, not a folder" in result.stderr, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml", "taken"]


def test_collect_refuses_an_existing_out_before_collecting(tmp_path):
    result = _launch("collect", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --out '{tmp_path}' already exists; choose another " \
                                    "or delete it"
