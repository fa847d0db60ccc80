"""Grids: expansion (stable names, overrides, duplicates refused), skip/resume logic, bad
specs as one-line errors, and a tiny grid end to end on the local backend."""

import json
import subprocess
import sys

import pytest

import launch
from tests.conftest import ROOT
from training import grid as grid_lib
from training.errors import UsageError

SMOKE = ROOT / "experiments" / "smoke.toml"


def _spec(tmp_path, text, name="g.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expansion_names_are_stable_and_overrides_applied(tmp_path):
    path = _spec(tmp_path, '''
name = "grid1"
presets = ["mt10_moore", "mt10_mtsac"]
seeds = [3, 1]
[overrides]
"train.total_steps_per_task" = 1000
"network.hidden_sizes" = [64, 64]
[variants.v1]
"env.reward_version" = "v1"
[variants.long]
"env.max_episode_steps" = 500
"eval.deterministic" = false
''')
    runs = grid_lib.expand(grid_lib.load_spec(path), tmp_path / "out")
    names = [r.name for r in runs]
    assert names == ["mt10_moore-v1-s3", "mt10_moore-v1-s1", "mt10_moore-long-s3",
                     "mt10_moore-long-s1", "mt10_mtsac-v1-s3", "mt10_mtsac-v1-s1",
                     "mt10_mtsac-long-s3", "mt10_mtsac-long-s1"]
    assert names == [r.name for r in grid_lib.expand(grid_lib.load_spec(path), "elsewhere")]
    first = runs[0].config
    assert first.seed == 3 and first.preset == "mt10_moore"
    assert first.train.total_steps_per_task == 1000 and first.network.hidden_sizes == (64, 64)
    assert first.env.reward_version == "v1" and runs[2].config.eval.deterministic is False
    assert runs[0].run_dir == tmp_path / "out" / "grid1" / "mt10_moore-v1-s3"


def test_duplicate_runs_are_refused(tmp_path):
    same_preset = _spec(tmp_path, 'presets = ["demo", "demo"]\n', "a.toml")
    with pytest.raises(UsageError, match="duplicate run demo-s0"):
        grid_lib.expand(grid_lib.load_spec(same_preset))
    # A variant that changes nothing gives the same configuration under another name.
    same_config = _spec(tmp_path, 'presets = ["demo"]\n[variants.a]\n"seed" = 0\n'
                        '[variants.b]\n"env.reward_version" = "v2"\n', "b.toml")
    with pytest.raises(UsageError, match="same configuration"):
        grid_lib.expand(grid_lib.load_spec(same_config))


@pytest.mark.parametrize("text, message", [
    ('presets = ["no_such_preset"]\n', "unknown preset 'no_such_preset'"),
    ('presets = [\n', "not valid TOML"),
    ('presets = []\n', "'presets' must be a non-empty list"),
    ('presets = ["demo"]\nseeds = 0\n', "'seeds' must be >= 1"),
    ('presets = ["demo"]\nseedz = 3\n', "unknown key(s) seedz"),
    ('presets = ["demo"]\n[overrides]\n"network.arch" = "nope"\n', "unknown network.arch 'nope'"),
])
def test_bad_specs_exit_2_with_one_line(tmp_path, capsys, text, message):
    path = _spec(tmp_path, text)
    assert launch.main(["grid", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_spec_and_unknown_backend(tmp_path, capsys):
    assert launch.main(["status", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert launch.main(["grid", str(SMOKE), "--backend", "lsf"]) == 2
    assert "unknown backend 'lsf'; valid: local, slurm" in capsys.readouterr().err


def test_status_distinguishes_done_partial_new(tmp_path, monkeypatch):
    runs = grid_lib.expand(grid_lib.load_spec(SMOKE), tmp_path)
    done, partial = runs
    (done.run_dir).mkdir(parents=True)
    (done.run_dir / "final.json").write_text("{}")
    (partial.run_dir / "checkpoints" / "300").mkdir(parents=True)
    assert [grid_lib.run_status(r) for r in runs] == ["done", "partial"]
    calls = []

    class FakeTrainer:
        def __init__(self, cfg, run, show_progress):
            calls.append(run)

        def train(self, resume):
            calls.append(resume)
            return {}

    import training.loop

    monkeypatch.setattr(training.loop, "Trainer", FakeTrainer)
    from training import run_dir as run_lib

    run_lib.create_at(tmp_path / "tmp-config-only", partial.config)
    (partial.run_dir / "config.json").write_text(
        (tmp_path / "tmp-config-only" / "config.json").read_text())
    assert grid_lib.execute(done) is None and calls == []  # finished: skipped
    grid_lib.execute(partial)
    assert calls == [partial.run_dir, True]  # interrupted: resumed


def test_tiny_grid_end_to_end_on_the_local_backend(tmp_path):
    cmd = [sys.executable, str(ROOT / "launch.py"), "grid", str(SMOKE), "--out", str(tmp_path),
           "--max-parallel", "2"]
    overrides = ["--out", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for seed in (0, 1):
        run = tmp_path / "smoke" / f"demo-s{seed}"
        final = json.loads((run / "final.json").read_text())
        assert final["step"] == 600 and set(final["per_task"]) == {"reach-v3", "drawer-close-v3"}
        assert (tmp_path / "smoke" / "logs" / f"demo-s{seed}.log").is_file()
    assert "2 runs: 2 done" in result.stdout
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 of 2 runs to do" in again.stdout
    status = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", str(SMOKE),
                             *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "demo-s1" in status.stdout and "2 runs: 2 done, 0 partial, 0 new" in status.stdout
