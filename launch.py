#!/usr/bin/env python
"""Train and evaluate multi-task agents on Meta-World (SAC) and MiniGrid (PPO).

    python launch.py                                  # the demo: small MOORE on MT10, a few minutes
    python launch.py train --preset mt10_moore --seed 0 [--section.field value ...]
    python launch.py train --resume runs/<run>        # continue an interrupted run exactly
    python launch.py train --preset minigrid_mt3_moore --num-seeds 10   # 10 seeds in one call
    python launch.py eval --run runs/<run>            # re-evaluate a saved run
    python launch.py eval --agent scripted --suite mt10 --episodes 10 --seed 0
    python launch.py params --preset mt10_moore      # parameter counts per component
    python launch.py collect --suite mt10 --tier expert --episodes 100 --out data/mt10-expert
    python launch.py train --preset mt10_promptdt --dt.dataset data/mt10-expert   # offline
    python launch.py grid experiments/<spec>.toml --backend local|slurm
    python launch.py status experiments/<spec>.toml  # what is done, partial, new
    python launch.py report runs/<grid> [--out DIR] [--metric success|return]  # tables, figures
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from training.errors import UsageError

AGENTS = ("scripted",)
_RUNS_IN_PROGRESS: list[Path] = []  # named by the Ctrl-C message


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'error: ...' and exit code 2, no usage dump."""

    def error(self, message):
        if message.startswith("unrecognized arguments"):
            message += "; see `python launch.py train --help` for every option"
        raise UsageError(message)


def _type_label(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return "LIST"
    if typing.get_origin(hint) is not None:
        return "FLOAT|none"
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "STR"}[hint]


def build_parser(preset: str = "demo") -> argparse.ArgumentParser:
    """The command line; `train` and `params` show `preset`'s values as their defaults."""
    from experiments.presets import DESCRIPTIONS, PRESETS, get_preset
    from training.config import option_table

    preset_lines = "\n".join(f"  {name:<18} {DESCRIPTIONS[name]}" for name in PRESETS)
    parser = _Parser(
        prog="launch.py",
        description="Multi-task RL on Meta-World and MiniGrid. With no command, runs the "
                    "'demo' preset.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets:\n{preset_lines}\n\nRun `python launch.py train --help` for every option.",
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    train = commands.add_parser(
        "train", help="train an agent (a preset plus --section.field overrides)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an agent. Overrides are --section.field value.",
        epilog=f"presets:\n{preset_lines}",
    )
    train.add_argument("--preset", default="demo", help="named configuration (default: demo)")
    train.add_argument("--resume", metavar="DIR", nargs="+",
                       help="continue the run in DIR from its last checkpoint (overrides, if "
                       "given, must equal the run's config); PPO: several DIRs of one seed "
                       "batch resume together")
    train.add_argument("--num-seeds", type=int, default=1, metavar="N",
                       help="PPO on the device: train seeds SEED .. SEED+N-1 together in one "
                       "vmapped call, one run directory each (default: 1)")
    train.add_argument("--out", default="runs", help="parent folder of new runs (default: runs)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    shown = option_table(get_preset(preset))
    _add_options(train, option_table(), shown, preset)

    params = commands.add_parser(
        "params", help="parameter counts of a preset's networks, per component",
        description="Parameter counts of the actor and critic, per component. Takes the same "
                    "--preset and --section.field overrides as train.")
    params.add_argument("--preset", default="demo", help="named configuration (default: demo)")
    _add_options(params, option_table(), shown, preset)

    grid = commands.add_parser(
        "grid", help="launch an experiment grid (presets x variants x seeds) from a spec",
        description="Expand a grid spec (experiments/*.toml) into runs named "
                    "<preset>[-<variant>]-s<seed> under OUT/<grid name>/; finished runs are "
                    "skipped, interrupted ones resumed.")
    grid.add_argument("spec", help="grid spec file (TOML), e.g. experiments/moore_mt10.toml")
    grid.add_argument("--backend", default="local", help="local | slurm (default: local)")
    grid.add_argument("--out", default="runs", help="parent folder of grids (default: runs)")
    grid.add_argument("--max-parallel", type=int, help="local: runs at once (default: "
                      "local.runs_per_gpu per GPU, one on a TPU host, or cores / "
                      "local.cores_per_run)")
    grid.add_argument("--dry-run", action="store_true", help="list the runs and (local) each "
                      "one's device slot; start nothing")

    status = commands.add_parser("status", help="status table of a grid's runs")
    status.add_argument("spec", help="grid spec file (TOML)")
    status.add_argument("--out", default="runs", help="parent folder of grids (default: runs)")

    report = commands.add_parser(
        "report", help="per-task and summary tables (IQM, bootstrap CIs) and figures",
        description="Read eval.jsonl of every run and write tables (Markdown, CSV, LaTeX) and "
                    "figures (PNG).")
    report.add_argument("paths", nargs="+", help="grid folders or run directories")
    report.add_argument("--out", help="output folder (default: <grid>/report or ./report; "
                        "report_return for --metric return)")
    report.add_argument("--metric", default="success",
                        help="per-task score to report: success (default; success rate in %%) "
                             "or return (mean undiscounted episode return)")

    collect = commands.add_parser(
        "collect", help="write a multi-task offline dataset (Minari per task + arrays)",
        description="Collect a multi-task offline dataset. Sources: scripted (Meta-World's "
                    "scripted experts with a noise tier), replay (the replay buffer of a SAC "
                    "run: --run DIR, --half all|first), minigrid (a shortest-path planner on "
                    "minigrid with a noise tier). Format: training/data/offline_data.py.")
    collect.add_argument("--source", default="scripted",
                         help="scripted (default) | replay | minigrid")
    collect.add_argument("--suite", default="mt10", help="scripted: mt10 | mt50 | custom; "
                         "minigrid: minigrid_mt3 | minigrid_mt5 | minigrid_mt7 | minigrid_custom")
    collect.add_argument("--tasks", default="", help="comma-separated tasks for a custom suite")
    collect.add_argument("--tier", default="expert", help="expert | medium | mixed")
    collect.add_argument("--run", metavar="DIR", help="replay: the SAC run directory")
    collect.add_argument("--half", default="all",
                         help="replay: all (near-optimal: the whole replay) | first "
                              "(sub-optimal: its first half)")
    collect.add_argument("--checkpoint", type=int, metavar="STEP",
                         help="replay: checkpoint step to export (default: the latest)")
    collect.add_argument("--episodes", type=int, default=100, help="episodes per task")
    collect.add_argument("--seed", type=int, default=0,
                         help="env seed (the benchmark's goal set) and noise seed")
    collect.add_argument("--reward-version", default="v2", help="v1 | v2")
    collect.add_argument("--max-episode-steps", type=int, default=500)
    collect.add_argument("--out", help="dataset directory to create")
    collect.add_argument("--rebuild-arrays", metavar="DIR",
                         help="regenerate DIR/arrays from its Minari storages instead")
    collect.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = commands.add_parser("eval", help="evaluate a saved run or a scripted agent")
    ev.add_argument("--run", metavar="DIR", help="run directory to re-evaluate")
    ev.add_argument("--checkpoint", type=int, metavar="STEP",
                    help="checkpoint step to evaluate (default: the latest)")
    ev.add_argument("--agent", help=f"evaluate a built-in agent instead: {', '.join(AGENTS)}")
    ev.add_argument("--suite", default="mt10", help="mt10 | mt50 | custom (with --agent)")
    ev.add_argument("--tasks", default="", help="comma-separated tasks for --suite custom")
    ev.add_argument("--episodes", type=int, help="episodes per task (default: the run's, or 10)")
    ev.add_argument("--seed", type=int, default=0, help="env seed (with --agent)")
    ev.add_argument("--max-episode-steps", type=int, default=500, help="(with --agent)")
    ev.add_argument("--behaviour", action="store_true",
                    help="(PPO runs) also print each task's policy entropy, the fraction of "
                         "steps that moved the agent, and the action shares")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--stochastic", action="store_true",
                      help="sample actions (with --run; default: as the run evaluated)")
    mode.add_argument("--deterministic", action="store_true",
                      help="mean actions (with --run; default: as the run evaluated)")
    return parser


def _add_options(parser, table, shown, preset: str) -> None:
    """Every option is accepted (an option of a section the algorithm does not read is then
    refused by name); help lists the preset's own sections, values and choices."""
    algo = next(o.default for o in shown if o.name == "algo")
    options = parser.add_argument_group(f"options of preset '{preset}' (algo {algo}; defaults "
                                        "are the preset's values; --preset P --help shows "
                                        "another preset's)")
    values = {o.name: o for o in shown}
    for option in table:
        if option.name not in values:
            options.add_argument(f"--{option.name}", dest=option.name, default=None,
                                 help=argparse.SUPPRESS)
            continue
        option = values[option.name]
        value = option.default
        shown_value = ",".join(map(str, value)) if isinstance(value, tuple) else value
        choices = f"; one of {', '.join(option.choices)}" if option.choices else ""
        options.add_argument(f"--{option.name}", dest=option.name, default=None,
                             metavar=_type_label(option.hint),
                             help=f"{option.help}{choices} (default: {shown_value!s})"
                             .replace("%", "%%"))


def _overrides(args) -> dict:
    from training.config import TOP_LEVEL

    return {name: value for name, value in vars(args).items()
            if ("." in name or name in TOP_LEVEL) and value is not None}


BACKENDS = ("local", "slurm")


def cmd_grid(args) -> int:
    from experiments import grid as grid_lib
    from training import run_dir as run_lib

    if args.backend not in BACKENDS:
        raise UsageError(f"unknown backend '{args.backend}'; valid: {', '.join(BACKENDS)}")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UsageError(f"--max-parallel must be >= 1, got {args.max_parallel}")
    spec = grid_lib.load_spec(args.spec)
    runs = grid_lib.expand(spec, args.out)
    run_lib.check_output_folder(Path(args.out) / spec.name)
    if args.dry_run:
        print(grid_lib.status_table(runs))
        if args.backend == "local":
            print(grid_lib.slot_plan(spec, runs, args.max_parallel))
        return 0
    if args.backend == "slurm":
        from experiments import slurm

        jobs = slurm.submit(spec, runs)
        print(f"submitted {len(jobs)} array task(s): {', '.join(jobs)}")
        return 0
    codes = grid_lib.run_local(spec, runs, args.out, args.max_parallel)
    print(grid_lib.status_table(runs))
    return 0 if all(code == 0 for code in codes.values()) else 1


def cmd_status(args) -> int:
    from experiments import grid as grid_lib

    print(grid_lib.status_table(grid_lib.expand(grid_lib.load_spec(args.spec), args.out)))
    return 0


def cmd_report(args) -> int:
    from analysis.report import report
    from training.run_dir import check_output_folder

    if args.out is not None:
        check_output_folder(args.out)

    print(report(args.paths, args.out, metric=args.metric))
    return 0


def cmd_params(args) -> int:
    import dataclasses

    from analysis.param_count import count_parameters, format_counts
    from experiments.presets import get_preset
    from training import config as config_lib

    cfg = config_lib.apply_overrides(get_preset(args.preset), _overrides(args))
    if cfg.algo == "dt" and not cfg.dt.dataset:  # sizes do not depend on the data
        cfg = dataclasses.replace(cfg, dt=dataclasses.replace(cfg.dt, dataset="-"))
    config_lib.validate(cfg)
    counts = count_parameters(cfg)
    n, d = cfg.network, cfg.dt
    shape = (f"{d.variant}, d {d.embed_dim}, {d.num_layers} layers, {d.num_heads} heads"
             if cfg.algo == "dt" else
             f"{n.arch}, hidden {','.join(map(str, n.hidden_sizes))}")
    title = f"{args.preset}: {shape}, {cfg.env.suite} ({counts['num_tasks']} tasks)"
    print(format_counts(counts, title))
    return 0


def cmd_train(args) -> int:
    import dataclasses

    from experiments.presets import get_preset
    from training import config as config_lib
    from training import run_dir as run_lib

    overrides = _overrides(args)
    if not args.resume:
        run_lib.check_output_folder(args.out)
    if args.num_seeds < 1:
        raise UsageError(f"--num-seeds must be >= 1, got {args.num_seeds}")
    if args.resume:
        if args.num_seeds != 1:
            raise UsageError("--num-seeds does not apply to --resume (pass every run DIR)")
        runs = [Path(r) for r in args.resume]
        cfgs = []
        for run in runs:
            cfg = run_lib.load_config(run)
            placed = config_lib.apply_overrides(cfg, overrides)
            changed = config_lib.diff(cfg, placed, placement=False)
            if changed:
                raise UsageError(f"--resume {run}: overrides differ from the run's config in: "
                                 f"{', '.join(changed)}")
            cfgs.append(placed)  # config.json keeps the values the run started with
    else:
        cfg = config_lib.apply_overrides(get_preset(args.preset), overrides)
        cfgs = [dataclasses.replace(cfg, seed=cfg.seed + i) for i in range(args.num_seeds)]
    for cfg in cfgs:
        config_lib.validate(cfg)
    from training.train import check_seed_batch, train_runs

    check_seed_batch(cfgs)
    if cfgs[0].algo == "dt":  # a missing, corrupt or mismatched dataset: before any run dir
        from agents.dt.loop import open_dataset

        open_dataset(cfgs[0])
    if cfgs[0].algo == "ppo":  # seeds that cannot fit: refused before any run dir
        from agents.ppo.loop import check_memory

        plan = check_memory(cfgs)
        if plan:
            print(plan, flush=True)
    if not args.resume:
        runs = [run_lib.create(args.out, cfg) for cfg in cfgs]
    _RUNS_IN_PROGRESS[:] = runs
    for run in runs:
        print(f"run directory: {run}", flush=True)
    results = train_runs(cfgs, runs, resume=bool(args.resume),
                         show_progress=not args.no_progress)
    for run, cfg, result in zip(runs, cfgs, results, strict=True):
        done = (f"{result['step']} updates" if cfg.algo == "dt"
                else f"{result['step']} steps per task")
        _print_result(result, f"{run.name}: {cfg.env.suite} after {done}")
    print(f"\nrun files: {', '.join(map(str, runs))} (config.json, eval.jsonl, tb/, "
          "checkpoints/, final.json)")
    return 0


def cmd_collect(args) -> int:
    from training.data.collect import SOURCES, collect_scripted, format_summary
    from training.data.offline_data import load_dataset, rebuild_arrays

    if args.rebuild_arrays:
        rebuild_arrays(args.rebuild_arrays)
        print(f"rebuilt {Path(args.rebuild_arrays) / 'arrays'}")
        return 0
    if args.source not in SOURCES:
        raise UsageError(f"unknown source '{args.source}'; valid: {', '.join(SOURCES)}")
    if not args.out:
        raise UsageError("collect needs --out DIR (the dataset directory to create)")
    from training.run_dir import check_output_folder

    check_output_folder(args.out, new=True)  # before collecting, not after
    tasks = tuple(t for t in args.tasks.split(",") if t)
    progress = not args.no_progress
    if args.source == "replay":
        from training.data.collect_replay import collect_replay

        if not args.run:
            raise UsageError("--source replay needs --run DIR (a SAC run directory)")
        path = collect_replay(args.out, args.run, args.half, args.checkpoint, progress)
    elif args.source == "minigrid":
        from training.data.collect_minigrid import collect_minigrid

        path = collect_minigrid(args.out, args.suite, args.tier, args.episodes, args.seed,
                                tasks, progress)
    else:
        path = collect_scripted(args.out, args.suite, tasks, args.tier, args.episodes,
                                args.seed, args.reward_version, args.max_episode_steps,
                                show_progress=progress)
    meta = load_dataset(path).meta
    seconds = f", {meta['collect_seconds']} s" if "collect_seconds" in meta else ""
    print(f"\n{path}: {meta['total_episodes']} episodes, {meta['total_steps']} steps"
          f"{seconds}\n{format_summary(meta)}")
    return 0


def cmd_eval(args) -> int:
    from training import run_dir as run_lib

    if (args.run is None) == (args.agent is None):
        raise UsageError("eval needs exactly one of --run DIR or --agent "
                         f"{{{','.join(AGENTS)}}}")
    if args.episodes is not None and args.episodes <= 0:
        raise UsageError(f"--episodes must be positive, got {args.episodes}")
    if args.agent is not None:
        if args.behaviour:
            raise UsageError("--behaviour reads a trained policy: use it with --run DIR")
        if args.agent not in AGENTS:
            raise UsageError(f"unknown agent '{args.agent}'; valid agents: {', '.join(AGENTS)}")
        from envs.metaworld import MetaWorldVectorEnv
        from training.evaluation import evaluate, scripted_agent

        tasks = tuple(t for t in args.tasks.split(",") if t)
        env = MetaWorldVectorEnv(args.suite, tasks, seed=args.seed,
                                 max_episode_steps=args.max_episode_steps)
        result = evaluate(scripted_agent(env.task_names), env, args.episodes or 10)
        _print_result(result, f"scripted experts on {args.suite}, seed {args.seed}")
        return 0
    run = Path(args.run)
    cfg = run_lib.load_config(run)
    if args.behaviour and cfg.algo != "ppo":
        raise UsageError(f"--behaviour reads PPO (MiniGrid) policies; {run} is a '{cfg.algo}' "
                         "run")
    from training.train import reevaluate

    deterministic = cfg.eval.deterministic
    if args.stochastic or args.deterministic:
        deterministic = args.deterministic
    extra = {"behaviour": True} if args.behaviour else {}
    result = reevaluate(cfg, run, step=args.checkpoint, episodes=args.episodes,
                        deterministic=deterministic, **extra)
    _print_result(result, f"{run} at step {result['step']}")
    if args.behaviour:
        from agents.ppo.loop import format_behaviour

        print(f"\nbehaviour ({result['behaviour_episodes']}; moved: among the steps that did "
              f"not end an episode)\n{format_behaviour(result)}")
    print(f"\nappended to {run / 'reeval.jsonl'}")
    return 0


def _print_result(result: dict, title: str) -> None:
    from training.evaluation import format_table

    print(f"\n{title}\n{format_table(result)}")


def _preset_named(argv: list[str]) -> str:
    """The --preset of a train or params command line (for its --help), else demo."""
    for i, token in enumerate(argv):
        if token == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--preset="):
            return token.split("=", 1)[1]
    return "demo"


def _refuse_repeats(argv: list[str]) -> None:
    """An option given twice is a mistake in a script or a grid (argparse would keep the
    last silently)."""
    seen = set()
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token.split("=", 1)[0]
            if name in seen:
                raise UsageError(f"option {name} given twice; give each option once")
            seen.add(name)


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _refuse_repeats(argv)
        parser = build_parser(_preset_named(argv))
        args = parser.parse_args(argv or ["train"])
        if args.command is None:
            parser.print_help()
            return 0
        commands = {"train": cmd_train, "eval": cmd_eval, "params": cmd_params,
                    "collect": cmd_collect,
                    "grid": cmd_grid, "status": cmd_status, "report": cmd_report}
        return commands[args.command](args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _RUNS_IN_PROGRESS:
            print("interrupted; resume with `python launch.py train --resume "
                  f"{' '.join(map(str, _RUNS_IN_PROGRESS))}`", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from training.errors import TrainingDiverged

        if isinstance(e, TrainingDiverged):
            print(f"error: training diverged: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
