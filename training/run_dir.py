"""A run directory: config, versions, eval.jsonl, tensorboardX events, checkpoints.

    <run>/config.json      full config (training.config.Config as JSON)
    <run>/versions.json    metaworld, mujoco, gymnasium, jax, jaxlib, flax, optax, orbax, git commit
    <run>/eval.jsonl       one JSON object per evaluation (format in README.md)
    <run>/tb/              tensorboardX event files
    <run>/checkpoints/     orbax checkpoints, one folder per env step
    <run>/final.json       the last evaluation, written when the run completes
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from training import config as config_lib
from training.errors import UsageError

PACKAGES = ("metaworld", "mujoco", "gymnasium", "jax", "jaxlib", "flax", "optax",
            "orbax-checkpoint", "numpy")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"] = _git_commit()
    return out


def runtime(cfg: config_lib.Config) -> dict:
    """Where the run computes: JAX's default backend, the learner's device and its kind, the
    device count, and the matmul precision in force (numbers differ between them)."""
    import jax

    from training.sharding import learner_device

    device = learner_device(cfg.train.learner_device)
    return {"jax_backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "learner_device": str(device),
            "matmul_precision": cfg.train.matmul_precision,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def check_output_folder(path: str | Path, option: str = "--out", new: bool = False) -> Path:
    """Refuse an output folder that cannot be made (UsageError naming it): an existing file,
    a parent that is a file, an unwritable place; with `new`, one that already exists. Checked
    before any work, so a bad --out leaves nothing behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} '{path}' is a file, not a folder")
    if new and path.exists():
        raise UsageError(f"{option} '{path}' already exists; choose another or delete it")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} '{path}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} '{path}' is not writable ('{existing}' is read-only to you)")
    return path


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create(out_dir: str, cfg: config_lib.Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{cfg.preset}-s{cfg.seed}-{stamp}"
    run = base
    n = 1
    while run.exists():
        run = base.with_name(f"{base.name}-{n}")
        n += 1
    return create_at(run, cfg)


def create_at(run: Path, cfg: config_lib.Config) -> Path:
    """A run directory at a chosen path (grids name their runs); it must not exist yet."""
    run.mkdir(parents=True)
    write_atomic(run / "config.json", config_lib.dumps(cfg))
    write_atomic(run / "versions.json", json.dumps({**versions(), **runtime(cfg)}, indent=2))
    return run


def load_config(run: Path) -> config_lib.Config:
    path = run / "config.json"
    if not run.is_dir():
        raise UsageError(f"run directory '{run}' does not exist")
    if not path.is_file():
        raise UsageError(f"'{run}' is not a run directory (no config.json)")
    try:
        return config_lib.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"unreadable config '{path}': {e}") from None


def append_eval(run: Path, record: dict, filename: str = "eval.jsonl") -> None:
    """Append one evaluation record (eval.jsonl; re-evaluations go to reeval.jsonl)."""
    with open(run / filename, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def log_eval(writer, record: dict, step: int) -> None:
    """An evaluation record's figures in tensorboard: mean and per-task success and return,
    and the per-task timeout fraction where the record has one (MiniGrid)."""
    writer.add_scalar("eval/mean_success", record["mean_success"], step)
    writer.add_scalar("eval/mean_return", record["mean_return"], step)
    for task, r in record["per_task"].items():
        writer.add_scalar(f"eval_success/{task}", r["success"], step)
        writer.add_scalar(f"eval_return/{task}", r["return"], step)
        if "timeout" in r:
            writer.add_scalar(f"eval_timeout/{task}", r["timeout"], step)
    writer.flush()


def read_evals(run: Path, drop_torn_line: bool = False) -> list[dict]:
    """eval.jsonl's records. With `drop_torn_line`, a last line cut short (a kill during the
    append) is dropped with a warning; any other unreadable line is a UsageError."""
    path = run / "eval.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if drop_torn_line and number == len(lines) and not text.endswith("\n"):
                print(f"warning: '{path}': dropped its half-written last line (the run was "
                      "stopped while appending it)", file=sys.stderr, flush=True)
                break
            raise UsageError(f"'{path}' line {number} is not a JSON record") from None
    return records


def truncate_evals(run: Path, last_step: int) -> None:
    """Keep only evaluations at or before `last_step` (the checkpoint a resume starts from).

    Later ones came from the interrupted stretch, which the resumed run recomputes
    identically, so keeping them would duplicate those records.
    """
    records = [r for r in read_evals(run, drop_torn_line=True) if r["step"] <= last_step]
    write_atomic(run / "eval.jsonl", "".join(json.dumps(r) + "\n" for r in records))


@contextlib.contextmanager
def locked(runs: list[Path]):
    """Hold every run's lock (an flock on the empty file <run>/.lock) for the block: a second
    process that would train one of these runs is refused (UsageError naming it). The
    operating system drops the lock when the process ends, however it ends, so a killed run
    can resume."""
    with contextlib.ExitStack() as stack:
        for run in runs:
            handle = stack.enter_context(open(run / ".lock", "a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"run '{run}' is being trained by another process; wait for "
                                 "it to end or stop it first") from None
        yield


def clear_for_restart(run: Path) -> None:
    """Remove what a run stopped before its first checkpoint wrote (evaluations, tensorboard
    events, mask figures, unfinished checkpoints), keeping config.json and versions.json, so
    that it can start over in its own directory."""
    (run / "eval.jsonl").unlink(missing_ok=True)
    for folder in ("tb", "masks", "checkpoints"):
        shutil.rmtree(run / folder, ignore_errors=True)
