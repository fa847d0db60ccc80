"""Grids: expansion (stable names, overrides, duplicates refused), skip/resume logic, bad
specs as one-line errors, seed batches (grouping, one training call and one process per
group), and tiny grids end to end on the local backend."""

import dataclasses
import json
import subprocess
import sys

import pytest

import launch
from experiments import grid as grid_lib
from tests.conftest import ROOT
from training import run_dir as run_lib
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
    ('[[reference]]\nsuite = "mt10"\n', "is a table of published results"),
    ('presets = ["demo"]\n[overrides]\n"network.arch" = "nope"\n', "unknown network.arch 'nope'"),
    ('presets = ["demo"]\nbatch_seeds = 0\n', "'batch_seeds' must be an integer >= 1"),
    ('presets = ["demo"]\nbatch_seeds = "4"\n', "1 = one per process), got '4'"),
    ('presets = ["demo"]\nbatch_seeds = true\n', "'batch_seeds' must be an integer >= 1"),
    ('presets = ["demo"]\nbatch_seeds = 2.5\n', "got 2.5"),
    ('presets = ["minigrid_mt3_mtppo", "demo"]\nbatch_seeds = 4\n',
     "batch_seeds 4 needs algo ppo on env.backend jax; run demo-s0 uses algo sac"),
    ('presets = ["minigrid_mt3_mtppo"]\nbatch_seeds = 2\n[overrides]\n"env.backend" = "gym"\n',
     "run minigrid_mt3_mtppo-s0 uses env.backend gym"),
    ('presets = ["demo"]\n[local]\nruns_per_gpu = 0\n', "local.runs_per_gpu must be an integer"),
    ('presets = ["demo"]\n[local]\ngpus = 2\n', "unknown [local] key(s) gpus; valid: accelerator"),
    ('presets = ["demo"]\n[local]\naccelerator = "ipu"\n',
     "unknown local.accelerator 'ipu'; valid: auto, cpu, gpu, tpu"),
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

    class FakeTrainer:  # the SAC loop's place in training/train.py's RUNNERS
        @classmethod
        def for_runs(cls, cfgs, runs, show_progress):
            (run,) = runs
            calls.append(run)
            return cls()

        def train(self, resume):
            calls.append(resume)
            return [{}]

    import agents.sac.loop

    monkeypatch.setattr(agents.sac.loop, "Trainer", FakeTrainer)
    run_lib.create_at(tmp_path / "tmp-config-only", partial.config)
    (partial.run_dir / "config.json").write_text(
        (tmp_path / "tmp-config-only" / "config.json").read_text())
    assert grid_lib.execute(done) is None and calls == []  # finished: skipped
    grid_lib.execute(partial)
    assert calls == [partial.run_dir, True]  # interrupted: resumed


PPO_GRID = """
name = "ppo"
presets = ["minigrid_mt3_moore", "minigrid_mt3_mtppo"]
seeds = 5
batch_seeds = 2
"""


def _ppo_grid(tmp_path, text=PPO_GRID):
    spec = grid_lib.load_spec(_spec(tmp_path, text))
    return spec, grid_lib.expand(spec, tmp_path / "out")


def _mark(run, status, step=None):
    """Put a run on disk as `status`, the way the trainers leave it."""
    run_lib.create_at(run.run_dir, run.config)
    if status == "done":
        (run.run_dir / "final.json").write_text("{}")
    if step is not None:
        (run.run_dir / "checkpoints" / str(step)).mkdir(parents=True)


def test_batches_group_seeds_that_start_from_the_same_point(tmp_path):
    spec, runs = _ppo_grid(tmp_path)
    assert spec.batch_seeds == 2 and grid_lib.load_spec(SMOKE).batch_seeds == 1
    moore = runs[:5]
    _mark(moore[0], "done", 300)
    _mark(moore[1], "partial", 100)
    _mark(moore[2], "partial", 200)
    _mark(moore[3], "partial", 100)
    _mark(moore[4], "new")  # a dir killed before its first checkpoint: still new
    assert [grid_lib.run_status(r) for r in moore] == ["done", "partial", "partial", "partial",
                                                       "new"]
    assert grid_lib.latest_checkpoint(moore[2]) == 200
    assert grid_lib.latest_checkpoint(moore[4]) is None

    def names(groups):
        return [[r.name.removeprefix("minigrid_mt3_") for r in g] for g in groups]

    # Done runs in no group; a group shares preset, status and checkpoint step; at most N.
    assert names(grid_lib.batches(runs, 2)) == [
        ["moore-s1", "moore-s3"], ["moore-s2"], ["moore-s4"],
        ["mtppo-s0", "mtppo-s1"], ["mtppo-s2", "mtppo-s3"], ["mtppo-s4"]]
    assert names(grid_lib.batches(runs, 10)) == [
        ["moore-s1", "moore-s3"], ["moore-s2"], ["moore-s4"],
        ["mtppo-s0", "mtppo-s1", "mtppo-s2", "mtppo-s3", "mtppo-s4"]]
    assert [len(g) for g in grid_lib.batches(runs, 1)] == [1] * 9
    # Interleaved presets: each group keeps the order of the run list.
    assert names(grid_lib.batches([runs[5], runs[4], runs[6], runs[7]], 3)) == [
        ["mtppo-s0", "mtppo-s1", "mtppo-s2"], ["moore-s4"]]
    # Variants are groups of their own (their configs differ in more than the seed).
    _, variants = _ppo_grid(tmp_path, 'presets = ["minigrid_mt3_mtppo"]\nseeds = 2\n'
                            'batch_seeds = 4\n[variants.a]\n"ppo.epochs" = 2\n'
                            '[variants.b]\n"ppo.epochs" = 3\n')
    assert [[r.name for r in g] for g in grid_lib.batches(variants, 4)] == [
        ["minigrid_mt3_mtppo-a-s0", "minigrid_mt3_mtppo-a-s1"],
        ["minigrid_mt3_mtppo-b-s0", "minigrid_mt3_mtppo-b-s1"]]


def _fake_train_runs(monkeypatch, fits=None):
    """Record train_runs' calls instead of training; `fits` seeds fit in memory (all: None)."""
    import training.train

    calls = []

    def train_runs(cfgs, runs, resume, show_progress):
        calls.append(([c.seed for c in cfgs], [r.name for r in runs], resume))
        return [{"step": c.seed} for c in cfgs]

    monkeypatch.setattr(training.train, "train_runs", train_runs)
    monkeypatch.setattr(training.train, "seeds_per_process",
                        lambda cfgs: len(cfgs) if fits is None else min(fits, len(cfgs)))
    return calls


def test_execute_group_trains_a_group_in_one_call(tmp_path, monkeypatch):
    calls = _fake_train_runs(monkeypatch)
    _, runs = _ppo_grid(tmp_path)
    done, new, leftover, partial_a, partial_b = runs[:5]
    _mark(done, "done")
    _mark(leftover, "new")
    (leftover.run_dir / "eval.jsonl").write_text('{"step": 0}\n')  # killed before a checkpoint
    results = grid_lib.execute_group([done, new, leftover])
    assert calls == [([1, 2], [new.name, leftover.name], False)]  # one call, done skipped
    assert results == [None, {"step": 1}, {"step": 2}]
    assert (new.run_dir / "config.json").is_file()
    assert not (leftover.run_dir / "eval.jsonl").exists()

    # Runs that no longer start from one point (killed between their saves) train in turn.
    calls.clear()
    _mark(partial_a, "partial", 64)
    _mark(partial_b, "partial", 32)
    assert grid_lib.execute_group([partial_a, partial_b]) == [{"step": 3}, {"step": 4}]
    assert calls == [([3], [partial_a.name], True), ([4], [partial_b.name], True)]

    # A run dir with another config is refused before anything trains.
    calls.clear()
    other = runs[6]
    epochs = other.config.ppo.epochs + 1
    run_lib.create_at(other.run_dir, dataclasses.replace(
        other.config, ppo=dataclasses.replace(other.config.ppo, epochs=epochs)))
    with pytest.raises(UsageError, match=r"mtppo-s1' exists with a different config \(ppo"):
        grid_lib.execute_group([runs[5], other])
    assert calls == [] and not runs[5].run_dir.exists()


def test_a_group_that_does_not_fit_in_memory_trains_in_parts(tmp_path, monkeypatch, capsys):
    calls = _fake_train_runs(monkeypatch, fits=2)
    _, runs = _ppo_grid(tmp_path)
    mtppo = runs[5:10]
    assert grid_lib.execute_group(mtppo) == [{"step": s} for s in range(5)]
    assert calls == [([0, 1], [r.name for r in mtppo[:2]], False),
                     ([2, 3], [r.name for r in mtppo[2:4]], False),
                     ([4], [mtppo[4].name], False)]
    assert "5 seeds of minigrid_mt3_mtppo do not fit in memory together; training them 2 " \
           "at a time" in capsys.readouterr().out


@pytest.mark.parametrize("free, size", [(8.0, 5), (4.0, 2), (3.9, 1), (2.0, 1)])
def test_a_batch_size_is_checked_again_at_that_size(free, size):
    from agents.ppo.loop import _fitting

    # a chunk needing 2 + n units for n seeds: 5 seeds at 7 units estimate 1.4 per seed, but
    # 2 seeds need 4, not 2.8
    def seeds_per_process(cfgs):
        return _fitting(2 + len(cfgs), free, len(cfgs))

    assert grid_lib._fitting_size(list(range(5)), seeds_per_process) == size


def test_local_worker_and_backend_run_one_process_per_group(tmp_path, monkeypatch, capsys):
    calls = _fake_train_runs(monkeypatch)
    spec, runs = _ppo_grid(tmp_path)
    out = str(tmp_path / "out")
    assert grid_lib._main([str(spec.path), out, runs[0].name, runs[1].name]) == 0
    assert calls == [([0, 1], [runs[0].name, runs[1].name], False)]
    assert grid_lib._main([str(spec.path), out, "nope-s0"]) == 2
    assert "grid ppo has no run(s) nope-s0" in capsys.readouterr().err
    for run in runs[:2]:
        (run.run_dir / "final.json").write_text("{}")

    started = []

    class FakePopen:
        returncode = 0

        def __init__(self, cmd, **kwargs):
            started.append((cmd[3:], kwargs["stdout"].name))

        def poll(self):
            return 0

    import subprocess

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    codes = grid_lib.run_local(spec, runs, out, max_parallel=2)
    logs = tmp_path / "out" / "ppo" / "logs"
    assert started == [
        ([str(spec.path), out, *(r.name for r in runs[2:4])], str(logs / f"{runs[2].name}+1.log")),
        ([str(spec.path), out, runs[4].name], str(logs / f"{runs[4].name}.log")),
        ([str(spec.path), out, *(r.name for r in runs[5:7])], str(logs / f"{runs[5].name}+1.log")),
        ([str(spec.path), out, *(r.name for r in runs[7:9])], str(logs / f"{runs[7].name}+1.log")),
        ([str(spec.path), out, runs[9].name], str(logs / f"{runs[9].name}.log"))]
    assert codes == {r.name: 0 for r in runs[2:]}
    assert "8 of 10 runs to do in 5 processes, 2 at a time" in capsys.readouterr().out


# A PPO grid that trains in seconds (tests/test_ppo.py's tiny config, two short tasks).
TINY_PPO = {"env.suite": "minigrid_custom",
            "env.tasks": ["MiniGrid-LavaGapS5-v0", "MiniGrid-LavaGapS6-v0"],
            "ppo.steps_per_task": 32, "ppo.envs_per_task": 4, "ppo.epochs": 2,
            "ppo.num_minibatches": 2, "train.total_steps_per_task": 64,
            "train.eval_every": 32, "train.checkpoint_every": 32, "eval.episodes": 2}


def test_tiny_ppo_grid_trains_a_seed_batch_in_one_process(tmp_path):
    spec = _spec(tmp_path, 'name = "tinyppo"\npresets = ["minigrid_mt3_mtppo"]\nseeds = 2\n'
                 'batch_seeds = 2\n[overrides]\n' +
                 "".join(f'"{k}" = {json.dumps(v)}\n' for k, v in TINY_PPO.items()))
    cmd = [sys.executable, str(ROOT / "launch.py"), "grid", str(spec), "--out", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 runs to do in 1 process," in result.stdout
    grid_dir = tmp_path / "tinyppo"
    assert [p.name for p in (grid_dir / "logs").iterdir()] == ["minigrid_mt3_mtppo-s0+1.log"]
    for seed in (0, 1):
        run = grid_dir / f"minigrid_mt3_mtppo-s{seed}"
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        steps = [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()]
        assert steps == [0, 32, 64] and json.loads((run / "final.json").read_text())["step"] == 64
    assert "2 runs: 2 done" in result.stdout


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


# ---- device slots of the local backend (experiments/placement.py) ----------------------------

def test_device_slots_on_simulated_hosts():
    from experiments.placement import Host, slots

    def plan(host, environ=None, **local):
        return [(s.label, s.env) for s in slots(host, environ=environ or {}, **local)]

    # CPU-only: cores / cores_per_run, or --max-parallel; nothing set in the environment.
    assert plan(Host("cpu", cores=16), cores_per_run=2) == [("cpu", {})] * 8
    assert plan(Host("cpu", cores=2), cores_per_run=4) == [("cpu", {})]
    assert plan(Host("cpu", cores=16), max_parallel=3) == [("cpu", {})] * 3
    # GPUs: one run per GPU sees only its own and keeps JAX's default memory share.
    assert plan(Host("gpu", ("0", "1"), cores=16)) == [
        ("gpu 0", {"CUDA_VISIBLE_DEVICES": "0"}), ("gpu 1", {"CUDA_VISIBLE_DEVICES": "1"})]
    # Several per GPU: spread over the GPUs first, each with an equal memory share.
    share = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.30"}
    assert plan(Host("gpu", ("0", "1"), cores=16), runs_per_gpu=3) == [
        (f"gpu {g} ({k}/3)", {"CUDA_VISIBLE_DEVICES": g, **share})
        for k in (1, 2, 3) for g in ("0", "1")]
    # ... unless the user chose JAX's allocator settings; and cores bound the slots (a SAC run
    # steps MuJoCo on a core), --max-parallel overrides.
    assert plan(Host("gpu", ("0",), cores=4), {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
                runs_per_gpu=4) == [("gpu 0 (1/4)", {"CUDA_VISIBLE_DEVICES": "0"}),
                                    ("gpu 0 (2/4)", {"CUDA_VISIBLE_DEVICES": "0"})]
    assert len(plan(Host("gpu", ("0",), cores=4), runs_per_gpu=4, max_parallel=4)) == 4
    # A TPU host: one process holds every chip, so one run at a time.
    assert plan(Host("tpu", cores=96), max_parallel=4) == [("tpu (all chips)", {})]


def test_detection_respects_an_existing_cuda_visible_devices(monkeypatch):
    from experiments import placement

    monkeypatch.setattr(placement, "_nvidia_gpus", lambda: ("0", "1", "2", "3"))
    monkeypatch.setattr(placement, "_has_tpu", lambda: False)
    assert placement.detect("auto", {}).gpus == ("0", "1", "2", "3")
    assert placement.detect("auto", {"CUDA_VISIBLE_DEVICES": "2,3"}).gpus == ("2", "3")
    assert placement.detect("auto", {"CUDA_VISIBLE_DEVICES": ""}).kind == "cpu"
    assert placement.detect("cpu", {}).kind == "cpu"
    monkeypatch.setattr(placement, "_nvidia_gpus", lambda: ())
    monkeypatch.setattr(placement, "_has_tpu", lambda: True)
    assert placement.detect("auto", {}).kind == "tpu"


def test_dry_run_shows_each_process_and_its_slot(tmp_path, capsys, monkeypatch):
    from experiments import placement

    monkeypatch.setattr(placement, "detect", lambda accelerator="auto", environ=None:
                        placement.Host("gpu", ("0", "1"), cores=8))
    path = _spec(tmp_path, 'name = "g"\npresets = ["demo"]\nseeds = 3\n[local]\nruns_per_gpu = 2\n')
    assert launch.main(["grid", str(path), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 slot(s) at a time: gpu 0 (1/2), gpu 1 (1/2), gpu 0 (2/2), gpu 1 (2/2)" in out
    assert "demo-s0: gpu 0 (1/2)" in out and "demo-s2: gpu 0 (2/2)" in out
    assert not (tmp_path / "g").exists()  # a dry run writes nothing
