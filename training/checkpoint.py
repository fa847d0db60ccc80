"""Orbax checkpoints: one folder per env step, written atomically, the last K kept.

A checkpoint holds a tree of arrays (`state`) and a JSON document (`meta`). Orbax writes
into a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact and the partial one is ignored.

Checkpoints are device-agnostic: arrays are saved as host copies (no device or sharding is
recorded) and always restored as host arrays, which each loop then places on its own devices.
So a checkpoint written on a GPU, a TPU or several devices restores under any other layout.
Checkpoints of older versions recorded each array's device; those restore onto the host too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import jax
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
        # Host copies: orbax would record each jax.Array's device ("cuda:0", "cpu:1") and look
        # it up again on restore, which fails under any other device layout.
        state = jax.device_get(state)
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
            except CheckpointLayoutError:
                raise  # every checkpoint of the run has the same layout: none is damaged
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
        # Arrays an older checkpoint recorded on a device this process does not have (a GPU
        # run restored on a CPU, "cpu:1" with one device) come back on the host instead.
        on_host = jax.sharding.SingleDeviceSharding(_host_device())
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(fallback_sharding=on_host),
                    meta=ocp.args.JsonRestore()))
        except Exception as error:  # orbax/tensorstore raise many types for damaged files
            if _is_layout_mismatch(error):
                raise CheckpointLayoutError(
                    f"checkpoint '{self.directory / str(step)}' was written under a device "
                    f"layout this process cannot map ({_first_line(error)}); its files are "
                    "intact: restore it where it was written, or with the same devices "
                    "visible") from None
            raise UsageError(f"corrupt checkpoint '{self.directory / str(step)}': its files "
                             "cannot be read") from None
        return jax.device_get(restored["state"]), restored["meta"]


def _host_device():
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu: the default backend's first device
        return jax.local_devices()[0]


class CheckpointLayoutError(UsageError):
    """An intact checkpoint whose arrays name devices this process cannot map: not damage,
    so it is never moved aside and never skipped for an older checkpoint."""


def _is_layout_mismatch(error: BaseException) -> bool:
    """Orbax's own words for it; anything else (a damaged `_sharding` file too) is damage."""
    return any("topology mismatch" in str(e).lower() for e in _chain(error))


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
