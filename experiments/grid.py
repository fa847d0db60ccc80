"""Experiment grids: a spec file (presets x variants x seeds, plus overrides) expanded into
runs with stable names, each run trained, resumed or skipped according to what is on disk.

A spec is TOML (read with the standard library's tomllib):

    name = "moore_mt10"                    # the grid's folder under --out (default: runs)
    presets = ["mt10_moore", "mt10_mtsac"]
    seeds = 10                             # or an explicit list: [0, 1, 2]
    batch_seeds = 1                        # seeds per process (default 1); > 1: PPO, jax envs
    [overrides]                            # applied to every run
    "train.total_steps_per_task" = 2000000
    [variants.v1rewards]                   # optional; each variant is one more axis value
    "env.reward_version" = "v1"
    [slurm]                                # used by --backend slurm (experiments/slurm.py)
    partition = "gpu"
    gpus_per_node = 1
    timeout_min = 1440
    [local]                                # used by --backend local
    cores_per_run = 2

Run names are `<preset>[-<variant>]-s<seed>`: stable across expansions, so a grid launched
again finds its runs, skips the finished ones (final.json present) and resumes the others
from their last checkpoint.

`batch_seeds = N` trains up to N seeds of one preset and variant together, vmapped in one
process (one local subprocess, one Slurm array task): `batches` groups the unfinished runs
whose configs differ only in the seed and that resume from the same point, since the PPO
trainer restores a batch from one common env step. A group whose compiled training chunk
needs more memory than the device has free (XLA's plan, `agents/ppo/loop.check_memory`)
trains in turn in parts that fit.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from training import config as config_lib
from training import run_dir as run_lib
from training.errors import UsageError

_TOP_KEYS = {"name", "presets", "seeds", "batch_seeds", "overrides", "variants", "slurm",
             "local"}


@dataclass(frozen=True)
class GridSpec:
    name: str
    path: Path
    presets: tuple[str, ...]
    seeds: tuple[int, ...]
    batch_seeds: int = 1  # runs (seeds) trained together in one process
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
    if "reference" in unknown:
        raise UsageError(f"'{path}' is a table of published results (read by `launch.py "
                         f"report`), not a grid spec")
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
    batch_seeds = data.get("batch_seeds", 1)
    if not isinstance(batch_seeds, int) or isinstance(batch_seeds, bool) or batch_seeds < 1:
        raise UsageError(f"grid spec '{path}': 'batch_seeds' must be an integer >= 1 (seeds "
                         f"trained together in one process; 1 = one per process), got "
                         f"{batch_seeds!r}")
    for key in ("overrides", "variants", "slurm", "local"):
        if not isinstance(data.get(key, {}), dict):
            raise UsageError(f"grid spec '{path}': '{key}' must be a table")
    _check_local(path, data.get("local", {}))
    for variant, table in data.get("variants", {}).items():
        if not isinstance(table, dict):
            raise UsageError(f"grid spec '{path}': variant '{variant}' must be a table of "
                             "overrides")
    name = str(data.get("name", path.stem))
    for label, value in [("name", name), *((f"variant '{v}'", v) for v in data.get("variants",
                                                                               {}))]:
        if not _plain_name(value):
            raise UsageError(f"grid spec '{path}': {label} must be a plain folder name (letters, "
                             f"digits, '-', '_', '.'; no '/' and not '.' or '..'), got "
                             f"{value!r}")
    return GridSpec(name=name, path=path, presets=tuple(presets),
                    seeds=tuple(seeds), batch_seeds=batch_seeds,
                    overrides=dict(data.get("overrides", {})),
                    variants=dict(data.get("variants", {})), slurm=dict(data.get("slurm", {})),
                    local=dict(data.get("local", {})))


_LOCAL_COUNTS = ("cores_per_run", "runs_per_gpu", "max_parallel")


def _check_local(path: Path, local: dict) -> None:
    from experiments.placement import ACCELERATORS

    unknown = set(local) - {*_LOCAL_COUNTS, "accelerator"}
    if unknown:
        raise UsageError(f"grid spec '{path}': unknown [local] key(s) "
                         f"{', '.join(sorted(unknown))}; valid: accelerator, "
                         f"{', '.join(_LOCAL_COUNTS)}")
    for key in _LOCAL_COUNTS:
        value = local.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"grid spec '{path}': local.{key} must be an integer >= 1, got "
                             f"{value!r}")
    if local.get("accelerator", "auto") not in ACCELERATORS:
        raise UsageError(f"grid spec '{path}': unknown local.accelerator "
                         f"{local['accelerator']!r}; valid: {', '.join(ACCELERATORS)}")


def _plain_name(name: str) -> bool:
    """A name that stays one folder inside --out: it cannot climb out or go elsewhere."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and name not in (".", "..")


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
    _check_batchable(spec.batch_seeds, runs)
    return runs


def _check_batchable(batch_seeds: int, runs: list[GridRun]) -> None:
    """Only PPO on the device trains several seeds in one process (train.check_seed_batch)."""
    if batch_seeds == 1:
        return
    for run in runs:
        cfg = run.config
        why = f"algo {cfg.algo}" if cfg.algo != "ppo" else \
            f"env.backend {cfg.env.backend}" if cfg.env.backend != "jax" else ""
        if why:
            raise UsageError(f"batch_seeds {batch_seeds} needs algo ppo on env.backend jax; "
                             f"run {run.name} uses {why}")


def latest_checkpoint(run: GridRun) -> int | None:
    """The env step of the run's last checkpoint (orbax names its folders by step), or None."""
    checkpoints = run.run_dir / "checkpoints"
    steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] \
        if checkpoints.is_dir() else []
    return max(steps) if steps else None


def run_status(run: GridRun) -> str:
    """'done' (final.json written), 'partial' (a checkpoint to resume from), or 'new'."""
    if (run.run_dir / "final.json").is_file():
        return "done"
    return "partial" if latest_checkpoint(run) is not None else "new"


def batches(runs: list[GridRun], batch_seeds: int) -> list[list[GridRun]]:
    """The runs not done, in groups of at most `batch_seeds` that can train together.

    A group's configs differ only in the seed, and its runs start from the same point (all
    new, or all partial with their last checkpoint at the same step). Runs keep the order of
    `runs`, within and across groups (a group sits where its first run is).
    """
    if batch_seeds < 1:
        raise ValueError(f"batch_seeds must be >= 1, got {batch_seeds}")
    groups: list[tuple[tuple[str, int | None], list[GridRun]]] = []  # (start point, runs)
    for run in runs:
        start = run_status(run), latest_checkpoint(run)
        if start[0] == "done":
            continue
        group = next((g for s, g in groups if len(g) < batch_seeds and s == start and
                      set(config_lib.diff(g[0].config, run.config)) <= {"seed"}), None)
        if group is None:
            group = []
            groups.append((start, group))
        group.append(run)
    return [g for _, g in groups]


def last_eval(run: GridRun) -> dict | None:
    records = run_lib.read_evals(run.run_dir) if run.run_dir.is_dir() else []
    return records[-1] if records else None


def check_config(run: GridRun) -> None:
    """Refuse an existing run directory whose config is not the grid's (placement options,
    config.PLACEMENT, may differ: the grid's apply)."""
    if run.run_dir.exists():
        changed = config_lib.diff(run_lib.load_config(run.run_dir), run.config,
                                  placement=False)
        if changed:
            raise UsageError(f"run '{run.run_dir}' exists with a different config "
                             f"({', '.join(changed)}); move it away or restore the spec")


def _prepare(run: GridRun) -> None:
    """Make the run directory ready to train into (its config already checked).

    A run directory left without a checkpoint (killed before its first save) is trained
    from the start again, so its evaluations are dropped."""
    if not run.run_dir.exists():
        run_lib.create_at(run.run_dir, run.config)
    elif run_status(run) == "new":
        (run.run_dir / "eval.jsonl").unlink(missing_ok=True)


def execute(run: GridRun, show_progress: bool = False) -> dict | None:
    """Train one run to completion in this process (see `execute_group`)."""
    return execute_group([run], show_progress)[0]


def execute_group(runs: list[GridRun], show_progress: bool = False) -> list[dict | None]:
    """Train the runs to completion in this process, together: skip the done ones, resume the
    partial ones; -> each run's last evaluation record (None for a run already done).

    The runs are meant to be one group of `batches`. If they no longer start from one point
    (a job killed between the runs' checkpoint saves), each consistent subgroup trains in
    turn rather than fail: every run still finishes.
    """
    from training.train import seeds_per_process, train_runs

    groups = batches(runs, max(len(runs), 1))
    for run in (run for group in groups for run in group):  # refused before any training
        check_config(run)
    results: dict[str, dict] = {}
    for group in groups:
        resume = run_status(group[0]) == "partial"
        size = _fitting_size([r.config for r in group], seeds_per_process)
        if size < len(group):
            print(f"{len(group)} seeds of {group[0].name.rsplit('-s', 1)[0]} do not fit in "
                  f"memory together; training them {size} at a time", flush=True)
        for part in (group[i:i + size] for i in range(0, len(group), size)):
            for run in part:
                _prepare(run)
            records = train_runs([r.config for r in part], [r.run_dir for r in part],
                                 resume=resume, show_progress=show_progress)
            results.update(zip((r.name for r in part), records, strict=True))
    return [results.get(run.name) for run in runs]


def _fitting_size(cfgs: list, seeds_per_process) -> int:
    """The largest batch of these seeds that its own memory check passes: each estimate is
    checked again at its size, since a fixed cost makes a smaller batch need more per seed.
    1 if none does (train_runs then refuses it with the reason)."""
    size = len(cfgs)
    while size > 1:
        fits = seeds_per_process(cfgs[:size])
        if fits >= size:
            break
        size = max(fits, 1)
    return size


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


def local_slots(spec: GridSpec, max_parallel: int | None = None) -> list:
    """The device slots of a local grid on this machine (experiments/placement.py): one per
    run that may train at once."""
    from experiments import placement

    local = spec.local
    host = placement.detect(local.get("accelerator", "auto"))
    return placement.slots(host, runs_per_gpu=local.get("runs_per_gpu", 1),
                           cores_per_run=local.get("cores_per_run", 2),
                           max_parallel=max_parallel or local.get("max_parallel"))


def slot_plan(spec: GridSpec, runs: list[GridRun], max_parallel: int | None = None) -> str:
    """`grid --dry-run`'s plan: each process to start (a run, or a batch of seeds) and the
    device slot it takes first; later processes take whichever slot frees first."""
    todo = batches(runs, spec.batch_seeds)
    slots = local_slots(spec, max_parallel)
    rows = [f"{len(slots)} slot(s) at a time: {', '.join(dict.fromkeys(s.label for s in slots))}"]
    for i, group in enumerate(todo):
        slot = slots[i].label if i < len(slots) else "next free slot"
        rows.append(f"  {_names(group)}: {slot}")
    return "\n".join(rows)


def log_name(group: list[GridRun]) -> str:
    """The local backend's log file of a group: `<run>.log` for one run, `<first run>+<k>.log`
    for a group of the first run and k more (each launch may group differently)."""
    first = group[0].name
    return f"{first}.log" if len(group) == 1 else f"{first}+{len(group) - 1}.log"


def run_local(spec: GridSpec, runs: list[GridRun], out: str | Path,
              max_parallel: int | None = None) -> dict[str, int]:
    """Run the grid's unfinished runs as subprocesses, several at once; returns each run's
    exit code (a group's code for each of its runs).

    One subprocess per group of `batches` (one run unless `batch_seeds` > 1); its output goes
    to <out>/<grid>/logs/`log_name(group)`. A failed group does not stop the others; launching
    the grid again resumes whatever did not finish."""
    import os
    import subprocess
    import sys
    import time

    pending = batches(runs, spec.batch_seeds)
    todo = sum(len(g) for g in pending)
    slots = local_slots(spec, max_parallel)
    log_dir = Path(out) / spec.name / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    active: dict[int, tuple[list[GridRun], subprocess.Popen, object]] = {}
    codes: dict[str, int] = {}
    processes = f" in {len(pending)} process{'es' * (len(pending) > 1)}" \
        if len(pending) != todo else ""
    print(f"grid {spec.name}: {todo} of {len(runs)} runs to do{processes}, {len(slots)} at a "
          f"time; logs in {log_dir}", flush=True)
    while pending or active:
        for slot in range(len(slots)):
            if slot in active or not pending:
                continue
            group = pending.pop(0)
            env = {**os.environ, **slots[slot].env}
            log = open(log_dir / log_name(group), "a")  # closed when the process ends
            proc = subprocess.Popen(
                [sys.executable, "-m", "experiments.grid", str(spec.path), str(out),
                 *(r.name for r in group)],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            active[slot] = (group, proc, log)
            print(f"  started {_names(group)} on {slots[slot].label}", flush=True)
        time.sleep(0.5)
        for slot, (group, proc, log) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            codes.update((r.name, proc.returncode) for r in group)
            del active[slot]
            state = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            print(f"  {state}: {_names(group)}", flush=True)
    return codes


def _names(group: list[GridRun]) -> str:
    return ", ".join(r.name for r in group)


def _main(argv: list[str]) -> int:
    """Worker entry point of the local backend: train runs of a grid (one group) together."""
    import sys

    spec_path, out, *names = argv
    try:
        spec = load_spec(spec_path)
        by_name = {r.name: r for r in expand(spec, out)}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UsageError(f"grid {spec.name} has no run(s) {', '.join(unknown)}")
        execute_group([by_name[n] for n in names])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
