"""The run lifecycle, written once for every algorithm.

`Runner.train` owns what every run does: start fresh or resume from the newest intact
checkpoint (refused when complete, said on stdout), drop the interrupted stretch's
evaluations and tensorboard events, the progress bar, the evaluation and checkpoint cadence,
eval.jsonl and tensorboard records, final.json and the final checkpoint. An algorithm's loop
(agents/<algo>/loop.py) subclasses it and provides the hooks below: its state, one chunk of
training (which checks its metrics are finite and logs them), where a chunk may stop for an
evaluation or a checkpoint, and its evaluation. One Runner trains several runs together only
for PPO's seed batches; every other algorithm trains one run.

Cadence: an evaluation at the first stopping point at or after each multiple of
`train.eval_every` (and at the end), a checkpoint at the first at or after each multiple of
`train.checkpoint_every` (before the end, where the final one is written instead). `step`
counts env steps per task, or, for offline training, gradient updates (`unit`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from training import run_dir as run_lib
from training.checkpoint import Checkpointer
from training.errors import UsageError


class Runner:
    unit = "steps"  # what `step` counts: "steps" (env steps per task) or "updates"
    evaluate_at_start = True  # evaluate the untrained policy (the offline loop does not)
    checkpoint_at_start = False  # a checkpoint before the first chunk (SAC's, to resume from)

    def __init__(self, cfg, runs: list[Path], total: int, show_progress: bool, desc: str):
        self.cfg, self.runs, self.total = cfg, list(runs), total
        self.show_progress, self.desc = show_progress, desc
        self.checkpointers = [Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints)
                              for run in self.runs]
        self.step = 0
        self.next_eval = self.next_checkpoint = 0

    @classmethod
    def for_runs(cls, cfgs: list, runs: list[Path], show_progress: bool) -> Runner:
        """The runner of these runs (one, unless the algorithm trains seed batches)."""
        (cfg,), (run,) = cfgs, runs
        return cls(cfg, run, show_progress=show_progress)

    # ---- what an algorithm provides ------------------------------------------------------------

    def fresh(self) -> None:
        """The initial state (step 0)."""
        raise NotImplementedError

    def load(self, restored: list[tuple[dict, dict]]) -> None:
        """The state of each run's (tree, meta) checkpoint; sets `step`."""
        raise NotImplementedError

    def snapshot(self) -> list[tuple[dict, dict]]:
        """Each run's (tree, meta) to checkpoint at `step` (the runner adds `complete`)."""
        raise NotImplementedError

    def start(self, writers) -> None:
        """Called once the state is fresh or loaded, before the first chunk."""

    def train_chunk(self, writers) -> None:
        """Train one chunk and advance `step`; stop with TrainingDiverged on a non-finite
        loss; log the chunk's metrics."""
        raise NotImplementedError

    def at_boundary(self) -> bool:
        """Whether the run may evaluate and checkpoint here (SAC: at episode boundaries)."""
        return True

    def settle(self, writers) -> None:
        """Finish checking and logging work still in flight (SAC's asynchronous update)."""

    def evaluate(self, writers) -> list[dict]:
        """One evaluation record per run at `step` (eval.jsonl's format)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release environments."""

    # ---- the lifecycle --------------------------------------------------------------------------

    def train(self, resume: bool = False) -> list[dict]:
        """Train every run to the end; -> each run's last evaluation record."""
        t = self.cfg.train
        if resume:
            self._resume()
        else:
            self.fresh()
        # purge_step drops events a killed run logged after its last checkpoint.
        writers = [SummaryWriter(str(run / "tb"), purge_step=self.step + 1 if resume else None)
                   for run in self.runs]
        bar = tqdm(total=self.total, initial=self.step, unit=self.unit.removesuffix("s"),
                   desc=self.desc, disable=not self.show_progress, dynamic_ncols=True)
        last: list[dict | None] = [None] * len(self.runs)
        try:
            self.start(writers)
            if not resume:
                if self.evaluate_at_start:
                    last = self._evaluate(writers, bar)
                if self.checkpoint_at_start:
                    self._save()
                self.next_eval, self.next_checkpoint = t.eval_every, t.checkpoint_every
            while self.step < self.total:
                before = self.step
                self.train_chunk(writers)
                bar.update(self.step - before)
                if not (self.at_boundary() or self.step >= self.total):
                    continue
                self.settle(writers)
                if self.step >= self.next_eval:
                    last = self._evaluate(writers, bar)
                    self.next_eval = _next_multiple(self.step, t.eval_every)
                if self.next_checkpoint <= self.step < self.total:
                    self.next_checkpoint = _next_multiple(self.step, t.checkpoint_every)
                    self._save()
            self.settle(writers)
            if any(r is None or r["step"] != self.step for r in last):
                last = self._evaluate(writers, bar)
            # final.json first: if killed before the final checkpoint, a resume redoes the
            # tail and rewrites the same file.
            for run, record in zip(self.runs, last, strict=True):
                run_lib.write_atomic(run / "final.json", json.dumps(record, indent=2))
            self._save(complete=True)
        finally:
            bar.close()
            for writer in writers:
                writer.close()
            self.close()
        return last

    def _resume(self) -> None:
        restored = [ck.resume(run, self.unit) for ck, run in
                    zip(self.checkpointers, self.runs, strict=True)]
        steps = {_meta_step(meta, self.unit) for _, meta in restored}
        if len(steps) != 1:
            raise UsageError(f"runs resumed together must have their last checkpoint at the "
                             f"same step; got steps {sorted(steps)}")
        self.load(restored)
        t, progress = self.cfg.train, restored[0][1].get("progress")
        # The cadence goes on where it was: the saved one (SAC's checkpoints hold it), else the
        # next multiples, since this step's evaluation and checkpoint were done.
        self.next_eval = (progress["next_eval"] if progress
                          else _next_multiple(self.step, t.eval_every))
        self.next_checkpoint = (progress["next_checkpoint"] if progress
                                else _next_multiple(self.step, t.checkpoint_every))
        for run in self.runs:
            run_lib.truncate_evals(run, self.step)

    def _evaluate(self, writers, bar) -> list[dict]:
        records = self.evaluate(writers)
        for run, writer, record in zip(self.runs, writers, records, strict=True):
            run_lib.append_eval(run, record)
            run_lib.log_eval(writer, record, self.step)
        bar.set_postfix(success=f"{np.mean([r['mean_success'] for r in records]):.2f}")
        return records

    def _save(self, complete: bool = False) -> None:
        for ck, (tree, meta) in zip(self.checkpointers, self.snapshot(), strict=True):
            ck.save(self.step, tree, {**meta, "complete": complete})


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _meta_step(meta: dict, unit: str) -> int:
    return meta["updates"] if unit == "updates" else meta["env_steps"]
