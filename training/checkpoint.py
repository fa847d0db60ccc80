"""Orbax checkpoints: one folder per env step, written atomically, the last K kept.

A checkpoint holds a tree of arrays (`state`) and a JSON document (`meta`). Orbax writes
into a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact and the partial one is ignored.
"""

from __future__ import annotations

import logging
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
        step = self.latest_step() if step is None else step
        if step is None:
            raise UsageError(f"no checkpoint in '{self.directory}'")
        if step not in self._manager.all_steps():
            raise UsageError(
                f"no checkpoint at step {step} in '{self.directory}'; "
                f"available: {', '.join(map(str, self._manager.all_steps())) or 'none'}"
            )
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                              meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(
                f"corrupt checkpoint '{self.directory / str(step)}': {first_line}") from None
        return restored["state"], restored["meta"]
