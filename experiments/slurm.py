"""Run a grid on Slurm through submitit: one job array over the runs that are not done.

Each array task trains one group of runs in-process with `grid.execute_group`: one run, or
with the spec's `batch_seeds = N` up to N seeds of one preset trained together (`grid.batches`).
It skips finished runs, resumes partial ones from their last orbax checkpoint, and starts new
ones. That makes every restart of a task safe:

- preemption or time-out: Slurm signals the task (submitit asks for SIGUSR2 `signal_delay_s`
  seconds before the time limit), submitit's handler calls `GridJob.checkpoint`, which
  resubmits the same call, and requeues the task with `scontrol requeue`. The runs' own
  checkpoints are the state, so nothing else is saved; the requeued task resumes from the
  last one (taken every `train.checkpoint_every` env steps, by a group's runs together).
  Time-outs are requeued at most `max_num_timeout` times; preemptions always.
- a requeue that never reaches Python (node failure, `scontrol requeue`, a cluster whose
  preemption sends only SIGTERM): the job is submitted with `--requeue` and its restart
  also resumes from the last checkpoint.

The spec's `[slurm]` table (all keys optional):

    partition = "gpu"            account = "..."          qos = "..."
    gpus_per_node = 1            cpus_per_task = 8        mem_gb = 64
    timeout_min = 1440           # per attempt; the default is 1440
    array_parallelism = 16       # tasks of the array running at once
    max_num_timeout = 10         # requeues after a time-out (the default is 10)
    nodes = 1                    tasks_per_node = 1       # must be 1 for now (see below)
    signal_delay_s = 120         setup = ["module load cuda"]   constraint = "a100"
    additional_parameters = {}   # raw sbatch options, as below
    reservation = "..."          # any other key: passed to sbatch as --reservation=...

Logs (stdout, stderr, submitit's pickles) go to `<out>/<grid>/slurm_logs/<job id>/`, and
`slurm_logs/jobs.tsv` maps each job id to its run(s), one line per run.
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit

from experiments import grid
from training.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent

# spec key -> (submitit AutoExecutor parameter, expected type, description)
_INT, _NUM, _STR, _STRS = "an integer", "a number", "a string", "a list of strings"
_KNOWN = {
    "timeout_min": ("timeout_min", _INT), "mem_gb": ("mem_gb", _NUM),
    "gpus_per_node": ("gpus_per_node", _INT), "cpus_per_task": ("cpus_per_task", _INT),
    "nodes": ("nodes", _INT), "tasks_per_node": ("tasks_per_node", _INT),
    "partition": ("slurm_partition", _STR), "account": ("slurm_account", _STR),
    "qos": ("slurm_qos", _STR), "array_parallelism": ("slurm_array_parallelism", _INT),
    "signal_delay_s": ("slurm_signal_delay_s", _INT), "constraint": ("slurm_constraint", _STR),
    "exclude": ("slurm_exclude", _STR), "nodelist": ("slurm_nodelist", _STR),
    "gres": ("slurm_gres", _STR), "comment": ("slurm_comment", _STR),
    "mail_type": ("slurm_mail_type", _STR), "mail_user": ("slurm_mail_user", _STR),
    "mem_per_gpu": ("slurm_mem_per_gpu", _STR), "mem_per_cpu": ("slurm_mem_per_cpu", _STR),
    "cpus_per_gpu": ("slurm_cpus_per_gpu", _INT), "gpus_per_task": ("slurm_gpus_per_task", _INT),
    "setup": ("slurm_setup", _STRS), "srun_args": ("slurm_srun_args", _STRS),
}
# These may be 0; the other numbers must be >= 1.
_MIN_ZERO = {"gpus_per_node", "signal_delay_s", "gpus_per_task", "max_num_timeout"}
# sbatch options submitit sets itself: the logs and the requeue depend on them.
_RESERVED = {"output", "error", "array", "signal", "open-mode", "job-name", "wrap", "time"}
DEFAULT_TIMEOUT_MIN = 1440
DEFAULT_MAX_NUM_TIMEOUT = 10


def _check(key: str, value, kind: str):
    ok = {
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _NUM: isinstance(value, int | float) and not isinstance(value, bool)
        and math.isfinite(value),
        _STR: isinstance(value, str),
        _STRS: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if ok and kind in (_INT, _NUM) and value < (0 if key in _MIN_ZERO else 1):
        ok = False
        kind = f"{kind} >= {0 if key in _MIN_ZERO else 1}"
    if not ok:
        raise UsageError(f"[slurm] {key} must be {kind}, got {value!r}")
    return value


def _sbatch_option(key: str, value) -> tuple[str, object] | None:
    """A raw sbatch option (`--key=value`, `--key` for true); false drops it."""
    name = key.replace("_", "-")
    if name in _RESERVED:
        hint = "use timeout_min" if name == "time" else "remove it from the spec"
        raise UsageError(f"[slurm] {key} is set by submitit (logs, array, time limit, requeue "
                         f"signal); {hint}")
    if isinstance(value, bool):
        if name == "requeue" and not value:
            return "no_requeue", True
        return (key, True) if value else None
    if isinstance(value, int | float | str):
        return key, value
    raise UsageError(f"[slurm] {key} must be a string, number or boolean (passed to sbatch as "
                     f"--{name}), got {value!r}")


def _add_option(extra: dict, key: str, value) -> None:
    option = _sbatch_option(key, value)
    if key.replace("-", "_") in ("requeue", "no_requeue"):
        extra.pop("requeue", None)
    if option:
        extra[option[0]] = option[1]


def executor_parameters(slurm: dict) -> tuple[dict, int]:
    """(submitit AutoExecutor.update_parameters kwargs, max_num_timeout) for a [slurm] table.

    Bad types are a one-line UsageError; unknown keys are raw sbatch options.
    """
    params = {"timeout_min": DEFAULT_TIMEOUT_MIN}
    max_num_timeout = DEFAULT_MAX_NUM_TIMEOUT
    extra = {"requeue": True}  # Slurm requeues the task after a node failure or preemption
    for key, value in slurm.items():
        if key.replace("-", "_") in _KNOWN or key.replace("-", "_") == "max_num_timeout":
            key = key.replace("-", "_")  # cpus-per-task, as sbatch spells it
        if key == "max_num_timeout":
            max_num_timeout = _check(key, value, _INT)
        elif key in _KNOWN:
            name, kind = _KNOWN[key]
            params[name] = _check(key, value, kind)
        elif key in ("additional_parameters", "slurm_additional_parameters"):
            if not isinstance(value, dict):
                raise UsageError(f"[slurm] {key} must be a table of sbatch options, got "
                                 f"{value!r}")
            for k, v in value.items():
                _add_option(extra, k, v)
        else:
            _add_option(extra, key, value)
    ranks = params.get("nodes", 1) * params.get("tasks_per_node", 1)
    if ranks > 1:
        # jax.distributed is initialised for such jobs (maybe_initialize_distributed), but the
        # Trainer is one process per run: every rank would train and write the same run.
        raise UsageError(f"[slurm] nodes x tasks_per_node = {ranks}: multi-process runs are "
                         "not supported yet (one run = one process on its local devices); "
                         "use nodes = 1 and tasks_per_node = 1")
    # The job imports this repository (the pickled GridJob), from wherever sbatch ran.
    setup = [f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    params["slurm_setup"] = setup + list(params.get("slurm_setup", []))
    params["slurm_additional_parameters"] = extra
    return params, max_num_timeout


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` when this process is one of several Slurm tasks (several
    nodes or tasks_per_node > 1; JAX reads the coordinator, rank and count from Slurm's
    environment). A no-op, returning False, for a single task or outside Slurm."""
    ntasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1)
    if "SLURM_JOB_ID" not in os.environ or ntasks <= 1:
        return False
    import jax

    if not jax.distributed.is_initialized():
        jax.distributed.initialize()
    return True


def _log(message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}", flush=True)


class GridJob(submitit.helpers.Checkpointable):
    """What one array task runs: `grid.execute_group(runs)`, resumable at any point.

    `checkpoint()` is submitit's hook on preemption/time-out: it returns the same call, to
    run again after the requeue. The run directories' orbax checkpoints hold the training
    state, so the new attempt resumes from the last one; nothing else needs saving.
    """

    def __call__(self, runs: list[grid.GridRun]) -> list[dict | None]:
        maybe_initialize_distributed()
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else \
            os.environ.get("SLURM_JOB_ID", "?")
        attempt = int(os.environ.get("SLURM_RESTART_COUNT") or 0) + 1
        for run in runs:
            what = {"done": "already done, nothing to do",
                    "partial": "resuming from the checkpoint at env step "
                               f"{grid.latest_checkpoint(run)}",
                    "new": "starting from step 0"}[grid.run_status(run)]
            _log(f"job {job}, attempt {attempt}: run {run.name} ({run.run_dir}): {what}")
        results = grid.execute_group(runs, show_progress=False)
        for run, result in zip(runs, results, strict=True):
            if result is not None:
                _log(f"run {run.name} finished at env step {result['step']}: "
                     f"mean success {result['mean_success']:.3f}")
        return results

    def checkpoint(self, runs: list[grid.GridRun]):
        steps = ", ".join(str(grid.latest_checkpoint(r)) for r in runs)
        if len(runs) == 1:
            _log(f"preempted or timed out: requeueing run {runs[0].name}; it resumes from its "
                 f"last checkpoint (env step {steps})")
        else:
            _log(f"preempted or timed out: requeueing runs {', '.join(r.name for r in runs)}; "
                 f"they resume from their last checkpoints (env steps {steps})")
        return submitit.helpers.DelayedSubmission(self, runs)


def _active_jobs(job_name: str) -> list[str]:
    try:
        out = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-n", job_name,
                              "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.split() if out.returncode == 0 else []


def submit(spec: grid.GridSpec, runs: list[grid.GridRun],
           log_dir: Path | None = None) -> list[str]:
    """Submit the runs that are not done as one Slurm job array, one task per group of
    `grid.batches` (one run unless the spec's `batch_seeds` > 1); returns the tasks' job ids
    (`<array id>_<index>`, or a plain id for a single task), [] when every run is done.

    Logs go to `log_dir` (default `<out>/<grid>/slurm_logs`), one folder per job id.
    """
    params, max_num_timeout = executor_parameters(spec.slurm)
    groups = grid.batches([dataclasses.replace(r, run_dir=r.run_dir.resolve()) for r in runs],
                          spec.batch_seeds)
    todo = [run for group in groups for run in group]
    for run in todo:  # what grid.execute_group would refuse in the job, refused now
        grid.check_config(run)
    if not todo:
        print(f"grid {spec.name}: all {len(runs)} runs are done; nothing to submit")
        return []
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UsageError("--backend slurm: sbatch/srun not found; run this on a Slurm "
                         "submission node, or use --backend local")
    job_name = f"grid-{spec.name}"
    active = _active_jobs(job_name)
    if active:
        raise UsageError(f"grid {spec.name} already has Slurm jobs queued or running "
                         f"({', '.join(active)}); wait for them or scancel them first")
    log_dir = Path(log_dir) if log_dir is not None else todo[0].run_dir.parent / "slurm_logs"
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster="slurm",
                                     slurm_max_num_timeout=max_num_timeout)
    try:
        executor.update_parameters(name=job_name, **params)
    except ValueError as e:
        raise UsageError(f"[slurm]: {str(e).splitlines()[0]}") from None
    before = set(log_dir.iterdir())
    try:
        jobs = executor.map_array(GridJob(), groups)
    except submitit.core.utils.FailedJobError as e:
        for path in set(log_dir.iterdir()) - before:  # the refused array's pickles and script
            if path.is_file():
                path.unlink()
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise UsageError(f"sbatch refused the job array: {lines[-1] if lines else e}") \
            from None
    ids = [job.job_id for job in jobs]
    task_runs = [(job_id, run) for job_id, group in zip(ids, groups, strict=True)
                 for run in group]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(log_dir / "jobs.tsv", "a") as f:
        for job_id, run in task_runs:
            f.write(f"{job_id}\t{run.name}\t{run.run_dir}\t{stamp}\n")
    skipped = len(runs) - len(todo)
    tasks = f" in {len(groups)} array task{'s' * (len(groups) > 1)}" \
        if len(groups) != len(todo) else ""
    print(f"grid {spec.name}: submitted {len(todo)} run(s){tasks} as Slurm job "
          f"{ids[0].split('_')[0]}" + (f" ({skipped} done, skipped)" if skipped else ""))
    for job_id, run in task_runs:
        print(f"  {job_id:<14} {run.name}")
    print(f"logs: {log_dir}/<job id>/<job id>_0_log.out (and .err); "
          f"job ids per run in {log_dir / 'jobs.tsv'}")
    sys.stdout.flush()
    return ids
