"""The Slurm backend (experiments/slurm.py): [slurm] table checks and the helpers without a
cluster; then, on a real single-node Slurm started on localhost (tests/slurm_harness.py; skipped
when slurm-wlm/munge are missing or cannot start), a tiny grid as a job array, a PPO seed
batch as one array task, and a run preempted mid-training that submitit checkpoints and
requeues, and that resumes from its last orbax checkpoint."""

import dataclasses
import json
import re
import shutil
import subprocess
import time

import pytest
import submitit

from experiments import grid, slurm
from tests.slurm_harness import LocalSlurm, SlurmUnavailable
from tests.test_grid import TINY_PPO
from tests.test_training import TINY
from training import run_dir as run_lib
from training.errors import UsageError

OVERRIDES = {k.removeprefix("--"): v for k, v in zip(TINY[0:-1:2], TINY[1::2], strict=True)}
OVERRIDES.update({"env.suite": "custom", "env.tasks": "reach-v3"})


def _spec(path, name, seeds=1, overrides=(), slurm_table=None, preset="demo", base=OVERRIDES,
          batch_seeds=1):
    table = {"partition": "debug", "cpus_per_task": 1, "timeout_min": 60}
    table.update(slurm_table or {})
    lines = [f'name = "{name}"', f'presets = ["{preset}"]', f"seeds = {seeds}",
             f"batch_seeds = {batch_seeds}", "[overrides]"]
    lines += [f'"{k}" = {json.dumps(v)}' for k, v in {**base, **dict(overrides)}.items()]
    lines += ["[slurm]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    (path / f"{name}.toml").write_text("\n".join(lines) + "\n")
    spec = grid.load_spec(path / f"{name}.toml")
    return spec, grid.expand(spec, path / "out")


# ---- without a cluster -------------------------------------------------------------------------

def test_slurm_table_to_submitit_parameters():
    params, max_timeouts = slurm.executor_parameters({
        "partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32.5,
        "timeout_min": 120, "array_parallelism": 4, "account": "rl", "qos": "high",
        "max_num_timeout": 3, "reservation": "paper", "exclusive": True, "requeue": False,
        "additional_parameters": {"mail-type": "END"}})
    assert max_timeouts == 3
    extra = params.pop("slurm_additional_parameters")
    assert extra == {"reservation": "paper", "exclusive": True, "no_requeue": True,
                     "mail-type": "END"}
    setup = params.pop("slurm_setup")
    assert len(setup) == 1 and "PYTHONPATH=" in setup[0] and str(slurm.ROOT) in setup[0]
    assert params == {"slurm_partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8,
                      "mem_gb": 32.5, "timeout_min": 120, "slurm_array_parallelism": 4,
                      "slurm_account": "rl", "slurm_qos": "high"}
    # Defaults: a day per attempt, 10 requeues after time-outs, --requeue.
    params, max_timeouts = slurm.executor_parameters({})
    assert params["timeout_min"] == 1440 and max_timeouts == 10
    assert params["slurm_additional_parameters"] == {"requeue": True}
    # Every known key maps to a parameter submitit's AutoExecutor accepts for Slurm.
    names = set(submitit.AutoExecutor._valid_parameters()) | {
        "slurm_" + p for p in submitit.SlurmExecutor._valid_parameters()}
    full, _ = slurm.executor_parameters({
        k: v for k, v in [("partition", "p"), ("gpus_per_node", 1), ("cpus_per_task", 1),
                          ("mem_gb", 1), ("nodes", 1), ("tasks_per_node", 1), ("qos", "q"),
                          ("account", "a"), ("array_parallelism", 2), ("signal_delay_s", 60),
                          ("constraint", "c"), ("setup", ["true"]), ("exclude", "n1")]})
    assert set(full) <= names


@pytest.mark.parametrize("table, message", [
    ({"gpus_per_node": "1"}, "[slurm] gpus_per_node must be an integer, got '1'"),
    ({"timeout_min": 0}, "[slurm] timeout_min must be an integer >= 1, got 0"),
    ({"cpus_per_task": 2.5}, "[slurm] cpus_per_task must be an integer, got 2.5"),
    ({"mem_gb": True}, "[slurm] mem_gb must be a number, got True"),
    ({"partition": 3}, "[slurm] partition must be a string, got 3"),
    ({"array_parallelism": -1}, "[slurm] array_parallelism must be an integer >= 1, got -1"),
    ({"setup": "module load cuda"}, "[slurm] setup must be a list of strings"),
    ({"max_num_timeout": -1}, "[slurm] max_num_timeout must be an integer >= 0, got -1"),
    ({"reservation": ["a", "b"]}, "[slurm] reservation must be a string, number or boolean"),
    ({"extra": {"x": 1}}, "[slurm] extra must be a string, number or boolean"),
    ({"additional_parameters": 3}, "[slurm] additional_parameters must be a table"),
    ({"output": "/tmp/x"}, "[slurm] output is set by submitit"),
    ({"additional_parameters": {"job_name": "x"}}, "[slurm] job_name is set by submitit"),
    ({"time": "2:00:00"}, "[slurm] time is set by submitit (logs, array, time limit, requeue "
                          "signal); use timeout_min"),
    ({"cpus-per-task": "8"}, "[slurm] cpus_per_task must be an integer, got '8'"),
    ({"nodes": 2}, "[slurm] nodes x tasks_per_node = 2: multi-process runs are not supported"),
])
def test_bad_slurm_table_is_one_line_usage_error(table, message):
    with pytest.raises(UsageError) as info:
        slurm.executor_parameters(table)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_submit_without_slurm(tmp_path, monkeypatch, capsys):
    spec, runs = _spec(tmp_path, "nosl", seeds=2)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(UsageError, match="sbatch/srun not found; .* --backend local"):
        slurm.submit(spec, runs)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a run that exists with another config
    runs[0].run_dir.parent.mkdir(parents=True)
    run_lib.create_at(runs[0].run_dir, dataclasses.replace(
        runs[0].config, sac=dataclasses.replace(runs[0].config.sac, gamma=0.5)))
    with pytest.raises(UsageError, match=r"demo-s0' exists with a different config \(sac.gamma"):
        slurm.submit(spec, runs)
    shutil.rmtree(runs[0].run_dir)
    for run in runs:  # every run done: nothing to submit, no Slurm needed
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "final.json").write_text("{}")
    assert slurm.submit(spec, runs) == []
    assert "all 2 runs are done; nothing to submit" in capsys.readouterr().out


def test_distributed_init_only_for_several_tasks(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda: calls.append(1))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert slurm.maybe_initialize_distributed() is False  # not in a Slurm job
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert slurm.maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert slurm.maybe_initialize_distributed() is True
    assert slurm.maybe_initialize_distributed() is True and calls == [1]  # once


def test_grid_job_checkpoint_resubmits_itself(tmp_path, capsys):
    _, runs = _spec(tmp_path, "ck", seeds=2)
    job = slurm.GridJob()
    for group in ([runs[0]], runs):
        delayed = job.checkpoint(group)
        assert isinstance(delayed, submitit.helpers.DelayedSubmission)
        assert delayed.function is job and delayed.args == (group,)
        path = tmp_path / "d.pkl"
        delayed.dump(path)
        again = submitit.helpers.DelayedSubmission.load(path)
        assert isinstance(again.function, slurm.GridJob) and again.args[0] == group
    out = capsys.readouterr().out
    assert "requeueing run demo-s0; it resumes from its last checkpoint (env step None)" in out
    assert "requeueing runs demo-s0, demo-s1; they resume from their last checkpoints" in out


def test_grid_job_trains_its_group_in_one_call(tmp_path, monkeypatch, capsys):
    _, runs = _spec(tmp_path, "grp", seeds=3)
    calls = []

    def execute_group(group, show_progress):
        calls.append([r.name for r in group])
        return [None] + [{"step": 80, "mean_success": 0.5}] * (len(group) - 1)

    monkeypatch.setattr(grid, "execute_group", execute_group)
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "final.json").write_text("{}")
    assert slurm.GridJob()(runs)[1:] == [{"step": 80, "mean_success": 0.5}] * 2
    assert calls == [["demo-s0", "demo-s1", "demo-s2"]]
    out = capsys.readouterr().out
    assert "job 42, attempt 1: run demo-s0" in out and "already done, nothing to do" in out
    assert f"run demo-s2 ({runs[2].run_dir}): starting from step 0" in out
    assert "run demo-s1 finished at env step 80: mean success 0.500" in out
    assert "run demo-s0 finished" not in out


def test_submit_one_array_task_per_seed_batch(tmp_path, monkeypatch, capsys):
    """submit's side of batch_seeds, with submitit's executor replaced (no cluster needed)."""
    spec, runs = _spec(tmp_path, "batch", seeds=3)
    spec = dataclasses.replace(spec, batch_seeds=2)  # demo is SAC: grouping only, no training
    submitted = []

    class FakeExecutor:
        def __init__(self, **kwargs):
            pass

        def update_parameters(self, **kwargs):
            pass

        def map_array(self, fn, groups):
            submitted.extend(groups)
            return [type("Job", (), {"job_id": f"7_{i}"}) for i in range(len(groups))]

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    bin_dir = tmp_path / "bin"  # sbatch and srun found; no squeue: no jobs queued
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert slurm.submit(spec, runs) == ["7_0", "7_1"]
    assert [[r.name for r in g] for g in submitted] == [["demo-s0", "demo-s1"], ["demo-s2"]]
    assert all(r.run_dir.is_absolute() for g in submitted for r in g)
    logs = tmp_path / "out" / "batch" / "slurm_logs"
    jobs_tsv = (logs / "jobs.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in jobs_tsv] == [
        ["7_0", "demo-s0"], ["7_0", "demo-s1"], ["7_1", "demo-s2"]]
    out = capsys.readouterr().out
    assert "submitted 3 run(s) in 2 array tasks as Slurm job 7" in out
    assert re.search(r"7_0 +demo-s0\n +7_0 +demo-s1\n +7_1 +demo-s2", out), out


# ---- on a local Slurm cluster ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    local = LocalSlurm()
    try:
        local.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no local Slurm cluster: {e}")
    yield local
    local.stop()


def _log(logs, job_id) -> str:
    path = logs / job_id / f"{job_id}_0_log.out"
    return path.read_text() if path.is_file() else ""


def test_grid_runs_as_a_job_array(cluster, tmp_path, capsys):
    spec, runs = _spec(tmp_path, "tiny", seeds=2, overrides={
        "train.total_steps_per_task": "80", "train.eval_every": "80",
        "train.checkpoint_every": "40"}, slurm_table={"array_parallelism": 2})
    logs = tmp_path / "out" / "tiny" / "slurm_logs"
    with pytest.raises(UsageError, match="sbatch refused the job array: .*[Pp]artition"):
        slurm.submit(dataclasses.replace(spec, slurm={**spec.slurm, "partition": "nope"}), runs)
    assert not [p for p in logs.iterdir() if p.name != "%j"]  # its pickles removed
    ids = slurm.submit(spec, runs)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0", f"{array}_1"]
    out = capsys.readouterr().out
    assert re.search(rf"{array}_0 +demo-s0\n +{array}_1 +demo-s1", out), out
    assert f"logs: {logs.resolve()}/<job id>/<job id>_0_log.out" in out
    records = cluster.wait(ids, timeout=300)
    for job_id, run in zip(ids, runs, strict=True):
        assert records[job_id]["JobState"] == "COMPLETED", _log(logs, job_id) + cluster.logs()
        assert json.loads((run.run_dir / "final.json").read_text())["step"] == 80
        (result,) = submitit.SlurmJob(folder=logs / "%j", job_id=job_id).result()  # its group
        assert result["step"] == 80 and set(result["per_task"]) == {"reach-v3"}
        assert f"run {run.name} ({run.run_dir.resolve()}): starting from step 0" in \
            _log(logs, job_id)
    jobs_tsv = (logs / "jobs.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in jobs_tsv] == [[ids[0], "demo-s0"],
                                                           [ids[1], "demo-s1"]]
    assert slurm.submit(spec, runs) == []  # launched again: every run done, nothing submitted


def test_seed_batch_runs_as_one_array_task(cluster, tmp_path, capsys):
    spec, runs = _spec(tmp_path, "batch", seeds=3, preset="minigrid_mt3_mtppo", base=TINY_PPO,
                       batch_seeds=2)
    logs = tmp_path / "out" / "batch" / "slurm_logs"
    ids = slurm.submit(spec, runs)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0", f"{array}_1"]
    assert re.search(rf"{array}_0 +\S+-s0\n +{array}_0 +\S+-s1\n +{array}_1 +\S+-s2",
                     capsys.readouterr().out)
    records = cluster.wait(ids, timeout=300)
    for job_id, group in ((ids[0], runs[:2]), (ids[1], runs[2:])):
        assert records[job_id]["JobState"] == "COMPLETED", _log(logs, job_id) + cluster.logs()
        results = submitit.SlurmJob(folder=logs / "%j", job_id=job_id).result()
        assert [r["step"] for r in results] == [64] * len(group)
        for run in group:
            assert f"run {run.name} ({run.run_dir.resolve()}): starting from step 0" in \
                _log(logs, job_id)
            assert json.loads((run.run_dir / "final.json").read_text())["step"] == 64
    assert slurm.submit(spec, runs) == []


def _wait_until(condition, what, logs, job_id, cluster, timeout=180):
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, f"no {what} after {timeout}s\n" + _log(logs, job_id) + \
            cluster.logs()
        time.sleep(0.05)
    return value


def test_preempted_run_is_requeued_and_resumes_from_its_checkpoint(cluster, tmp_path):
    """Two interruptions of one run:

    1. Once it has a checkpoint past step 0, SIGUSR2, what Slurm sends before a preemption or
       time-out (submitit's `--signal`), here from `scancel --signal=USR2`: submitit's handler
       calls GridJob.checkpoint, requeues the job itself (`scontrol requeue`) and exits.
    2. As soon as the second attempt starts, `scontrol requeue` from outside, as a preemption
       that only sends SIGTERM or a node failure would: submitit ignores SIGTERM, Slurm kills
       the task and starts it again from the submitted pickle (the job has --requeue).

    Each restart resumes the run from its last orbax checkpoint, and the run finishes."""
    total, every = 1200, 80  # 40-step episodes: checkpoints at 80, 160, ...
    spec, (run,) = _spec(tmp_path, "pre", overrides={
        "train.total_steps_per_task": str(total), "train.eval_every": "200",
        "train.checkpoint_every": str(every)})
    (job_id,) = slurm.submit(spec, [run])
    logs = tmp_path / "out" / "pre" / "slurm_logs"
    seen = _wait_until(lambda: (grid.latest_checkpoint(run) or 0) > 0 and
                       grid.latest_checkpoint(run), "checkpoint past step 0", logs, job_id,
                       cluster)
    signal = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
    assert signal.returncode == 0, f"could not signal the job: {signal.stderr}"
    assert not (run.run_dir / "final.json").exists(), "the run finished before the signal"
    with pytest.raises(UsageError, match=f"already has Slurm jobs queued or running \\({job_id}"):
        slurm.submit(spec, [run])  # no second copy of a run that is still queued

    pattern = r"attempt {}: run demo-s0 .*: resuming from the checkpoint at env step (\d+)"
    first = int(_wait_until(lambda: re.search(pattern.format(2), _log(logs, job_id)),
                            "second attempt", logs, job_id, cluster).group(1))
    assert seen <= first < total  # the checkpoint seen, or a later one
    # At once: submitit ignores the SIGTERM, so the task trains on until Slurm's SIGKILL
    # (slurmd waits max(KillWait, 5 s)); it must not reach the end in that time.
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode == 0, f"could not requeue the job: {requeue.stderr}"

    record = cluster.wait([job_id], timeout=300)[job_id]
    log = _log(logs, job_id)
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "2", log
    assert "attempt 1: run demo-s0" in log and "starting from step 0" in log
    # 1: submitit's own path: the handler, our checkpoint(), its scontrol requeue.
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log, log
    assert "Calling checkpoint method" in log and f"Requeued job {job_id}" in log, log
    assert "preempted or timed out: requeueing run demo-s0" in log
    # 2: SIGTERM ignored, killed and restarted by Slurm, resumed again.
    assert log.count("Calling checkpoint method") == 1 and "attempt 4" not in log, log
    assert f"attempt 3: run demo-s0 ({run.run_dir.resolve()}): already done" not in log, \
        "the run finished before Slurm killed it: this machine outran the test's margins"
    second = re.search(pattern.format(3), log)
    assert second and first <= int(second.group(1)) < total, log
    assert f"run demo-s0 finished at env step {total}" in log
    # One record per evaluation step: nothing evaluated twice, nothing lost.
    steps = [r["step"] for r in run_lib.read_evals(run.run_dir)]
    assert steps == list(range(0, total + 1, 200))
    assert json.loads((run.run_dir / "final.json").read_text())["step"] == total
    (result,) = submitit.SlurmJob(folder=logs / "%j", job_id=job_id).result()
    assert result["step"] == total
