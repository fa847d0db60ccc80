"""Orbax checkpoints: one folder per env step, written atomically, the last K kept.

A checkpoint holds a tree of arrays (`state`) and a JSON document (`meta`). Orbax writes
into a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact and the partial one is ignored.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orbax.checkpoint as ocp

from training.errors import UsageError

# Orbax logs every save at INFO through absl; the run's own output says what matters.
logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(Path(directory).resolve(), options=options)
        self.directory = Path(directory)

    def save(self, step: int, state: dict, meta: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)),
                           force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, step: int | None = None) -> tuple[dict, dict]:
        """The checkpoint at `step`; by default the newest intact one: a latest checkpoint
        that cannot be read (damaged files) is skipped with a warning naming it and the one
        used instead."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        self.skipped: list[int] = []  # unreadable checkpoints passed over by the last restore
        if step is not None:
            if step not in steps:
                raise UsageError(f"no checkpoint at step {step} in '{self.directory}'; "
                                 f"available: {', '.join(map(str, sorted(steps))) or 'none'}")
            return self._read(step)
        if not steps:
            raise UsageError(f"no checkpoint in '{self.directory}'")
        skipped = []
        for candidate in steps:
            try:
                restored = self._read(candidate)
            except UsageError:
                skipped.append(candidate)
                continue
            if skipped:
                print(f"warning: checkpoint{'s' if len(skipped) > 1 else ''} "
                      f"{', '.join(map(str, skipped))} in '{self.directory}' cannot be read "
                      f"(damaged files); using step {candidate}, the newest intact one",
                      file=sys.stderr, flush=True)
            self.skipped = skipped
            return restored
        raise UsageError(f"corrupt checkpoints in '{self.directory}': none of steps "
                         f"{', '.join(map(str, skipped))} can be read")

    def resume(self, run: Path, unit: str = "steps") -> tuple[dict, dict]:
        """The newest intact checkpoint of `run` to resume from (`restore`), refused when the
        run is already complete; says where the run resumes. `unit` names the step count."""
        tree, meta = self.restore()
        step = meta["updates"] if unit == "updates" else meta["env_steps"]
        if meta.get("complete"):
            raise UsageError(f"run '{run}' is already complete ({step} {unit})")
        if self.skipped and (Path(run) / "final.json").exists():
            raise UsageError(f"run '{run}' is already complete (final.json holds its last "
                             f"evaluation), but its last checkpoint cannot be read")
        for skipped in self.skipped:  # kept for inspection, out of the way of new saves
            damaged = self.directory / str(skipped)
            aside = damaged.with_name(f"{skipped}.damaged")
            damaged.rename(aside)
            print(f"moved the unreadable checkpoint {damaged} to {aside}", file=sys.stderr,
                  flush=True)
        if self.skipped:
            self._manager.reload()
        print(f"resuming {run} from {unit.removesuffix('s')} {step}", flush=True)
        return tree, meta

    def _read(self, step: int) -> tuple[dict, dict]:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                              meta=ocp.args.JsonRestore()))
        except Exception:  # orbax/tensorstore raise many types for damaged files
            raise UsageError(f"corrupt checkpoint '{self.directory / str(step)}': its files "
                             "cannot be read") from None
        return restored["state"], restored["meta"]
