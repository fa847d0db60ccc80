"""Experiment grids: a spec file (presets x variants x seeds, plus overrides) expanded into
runs with stable names, each run trained, resumed or skipped according to what is on disk.

A spec is TOML (read with the standard library's tomllib):

    name = "moore_mt10"                    # the grid's folder under --out (default: runs)
    presets = ["mt10_moore", "mt10_mtsac"]
    seeds = 10                             # or an explicit list: [0, 1, 2]
    [overrides]                            # applied to every run
    "train.total_steps_per_task" = 2000000
    [variants.v1rewards]                   # optional; each variant is one more axis value
    "env.reward_version" = "v1"
    [slurm]                                # used by --backend slurm (training/slurm.py)
    partition = "gpu"
    gpus_per_node = 1
    timeout_min = 1440
    [local]                                # used by --backend local
    cores_per_run = 2

Run names are `<preset>[-<variant>]-s<seed>`: stable across expansions, so a grid launched
again finds its runs, skips the finished ones (final.json present) and resumes the others
from their last checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from training import config as config_lib
from training import run_dir as run_lib
from training.errors import UsageError

_TOP_KEYS = {"name", "presets", "seeds", "overrides", "variants", "slurm", "local"}


@dataclass(frozen=True)
class GridSpec:
    name: str
    path: Path
    presets: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # variant name -> overrides; {} = none
    slurm: dict = field(default_factory=dict)
    local: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GridRun:
    name: str
    config: config_lib.Config
    run_dir: Path


def load_spec(path: str | Path) -> GridSpec:
    """Parse and check a spec; any problem is a one-line UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"grid spec '{path}' does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"grid spec '{path}' is not valid TOML: {e}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise UsageError(f"grid spec '{path}': unknown key(s) {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(sorted(_TOP_KEYS))}")
    presets = data.get("presets")
    if not isinstance(presets, list) or not presets or not all(
            isinstance(p, str) for p in presets):
        raise UsageError(f"grid spec '{path}': 'presets' must be a non-empty list of names")
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise UsageError(f"grid spec '{path}': 'seeds' must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and s >= 0 for s in seeds):
        raise UsageError(f"grid spec '{path}': 'seeds' must be a count or a non-empty list of "
                         "non-negative integers")
    for key in ("overrides", "variants", "slurm", "local"):
        if not isinstance(data.get(key, {}), dict):
            raise UsageError(f"grid spec '{path}': '{key}' must be a table")
    for variant, table in data.get("variants", {}).items():
        if not isinstance(table, dict):
            raise UsageError(f"grid spec '{path}': variant '{variant}' must be a table of "
                             "overrides")
    return GridSpec(name=str(data.get("name", path.stem)), path=path, presets=tuple(presets),
                    seeds=tuple(seeds), overrides=dict(data.get("overrides", {})),
                    variants=dict(data.get("variants", {})), slurm=dict(data.get("slurm", {})),
                    local=dict(data.get("local", {})))


def expand(spec: GridSpec, out: str | Path = "runs") -> list[GridRun]:
    """Every run of the grid, validated; duplicates (same name or same config) are refused."""
    from experiments.presets import get_preset

    variants = spec.variants or {"": {}}
    runs, names, configs = [], set(), {}
    for preset in spec.presets:
        for variant, variant_overrides in variants.items():
            for seed in spec.seeds:
                name = f"{preset}{'-' + variant if variant else ''}-s{seed}"
                overrides = {k: config_lib.format_value(v) for k, v in
                             {**spec.overrides, **variant_overrides}.items()}
                cfg = config_lib.apply_overrides(get_preset(preset, seed=seed), overrides)
                try:
                    config_lib.validate(cfg)
                except UsageError as e:
                    raise UsageError(f"grid run {name}: {e}") from None
                if name in names:
                    raise UsageError(f"grid spec '{spec.path}': duplicate run {name}")
                key = config_lib.dumps(dataclasses.replace(cfg, preset=""))
                if key in configs:
                    raise UsageError(f"grid spec '{spec.path}': runs {configs[key]} and {name} "
                                     "have the same configuration")
                names.add(name)
                configs[key] = name
                runs.append(GridRun(name, cfg, Path(out) / spec.name / name))
    if not runs:
        raise UsageError(f"grid spec '{spec.path}' expands to no runs")
    return runs


def run_status(run: GridRun) -> str:
    """'done' (final.json written), 'partial' (a checkpoint to resume from), or 'new'."""
    if (run.run_dir / "final.json").is_file():
        return "done"
    checkpoints = run.run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return "partial"
    return "new"


def last_eval(run: GridRun) -> dict | None:
    records = run_lib.read_evals(run.run_dir) if run.run_dir.is_dir() else []
    return records[-1] if records else None


def execute(run: GridRun, show_progress: bool = False) -> dict | None:
    """Train the run to completion in this process: skip if done, resume if partial.

    A run directory left without a checkpoint (killed before its first save) is trained
    from the start again; its config must equal the grid's.
    """
    status = run_status(run)
    if status == "done":
        return None
    if run.run_dir.exists():
        saved = run_lib.load_config(run.run_dir)
        changed = config_lib.diff(saved, run.config)
        if changed:
            raise UsageError(f"run '{run.run_dir}' exists with a different config "
                             f"({', '.join(changed)}); move it away or restore the spec")
        if status == "new":
            (run.run_dir / "eval.jsonl").unlink(missing_ok=True)
    else:
        run_lib.create_at(run.run_dir, run.config)
    from training.train import train_runs

    return train_runs([run.config], [run.run_dir], resume=status == "partial",
                      show_progress=show_progress)[0]


def status_table(runs: list[GridRun]) -> str:
    rows = [f"{'run':<40} {'status':<8} {'step':>9} {'mean success':>13}"]
    counts = {"done": 0, "partial": 0, "new": 0}
    for run in runs:
        status = run_status(run)
        counts[status] += 1
        record = last_eval(run)
        step = str(record["step"]) if record else "-"
        success = f"{record['mean_success']:.3f}" if record else "-"
        rows.append(f"{run.name:<40} {status:<8} {step:>9} {success:>13}")
    rows.append(f"{len(runs)} runs: {counts['done']} done, {counts['partial']} partial, "
                f"{counts['new']} new")
    return "\n".join(rows)


def local_parallelism(spec: GridSpec, max_parallel: int | None = None) -> tuple[int, list]:
    """How many runs at once, and the device assignment of each slot.

    One process per GPU when there are GPUs (each sees only its own); otherwise the cores
    divided by `local.cores_per_run` (default 2: a JAX learner and MuJoCo per run)."""
    import os
    import shutil
    import subprocess

    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                     timeout=30).stdout
            gpus = [str(i) for i, line in enumerate(listing.splitlines())
                    if line.startswith("GPU")]
        except (OSError, subprocess.SubprocessError):
            gpus = []
    if max_parallel is None:
        max_parallel = spec.local.get("max_parallel")
    if gpus:
        slots = max_parallel or len(gpus)
        return slots, [gpus[i % len(gpus)] for i in range(slots)]
    cores_per_run = int(spec.local.get("cores_per_run", 2))
    slots = max_parallel or max(1, (os.cpu_count() or 1) // max(cores_per_run, 1))
    return slots, [None] * slots


def run_local(spec: GridSpec, runs: list[GridRun], out: str | Path,
              max_parallel: int | None = None) -> dict[str, int]:
    """Run the grid's unfinished runs as subprocesses, several at once; returns exit codes.

    Each run's output goes to <out>/<grid>/logs/<run>.log. A failed run does not stop the
    others; launching the grid again resumes whatever did not finish."""
    import os
    import subprocess
    import sys
    import time

    pending = [r for r in runs if run_status(r) != "done"]
    slots, devices = local_parallelism(spec, max_parallel)
    log_dir = Path(out) / spec.name / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    active: dict[int, tuple[GridRun, subprocess.Popen, object]] = {}
    codes: dict[str, int] = {}
    print(f"grid {spec.name}: {len(pending)} of {len(runs)} runs to do, {slots} at a time; "
          f"logs in {log_dir}", flush=True)
    while pending or active:
        for slot in range(slots):
            if slot in active or not pending:
                continue
            run = pending.pop(0)
            env = dict(os.environ)
            if devices[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices[slot]
            log = open(log_dir / f"{run.name}.log", "a")  # closed when the run ends
            proc = subprocess.Popen(
                [sys.executable, "-m", "training.grid", str(spec.path), str(out), run.name],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            active[slot] = (run, proc, log)
            print(f"  started {run.name}", flush=True)
        time.sleep(0.5)
        for slot, (run, proc, log) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            codes[run.name] = proc.returncode
            del active[slot]
            state = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            print(f"  {state}: {run.name}", flush=True)
    return codes


def _main(argv: list[str]) -> int:
    """Worker entry point of the local backend: train one run of a grid."""
    import sys

    spec_path, out, name = argv
    try:
        spec = load_spec(spec_path)
        (run,) = [r for r in expand(spec, out) if r.name == name]
        execute(run)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
