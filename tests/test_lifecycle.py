"""What crashes really leave behind, handled once for every algorithm: a locked run, a torn
last line of eval.jsonl, a damaged latest checkpoint, a run stopped before its first
checkpoint, and the messages that say where a run resumes."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import grid as grid_lib
from experiments.presets import get_preset
from tests.conftest import ROOT
from tests.test_training import SMALL_SUITE, TINY
from training import run_dir as run_lib
from training.checkpoint import Checkpointer
from training.errors import UsageError


def _launch(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_a_run_in_training_is_locked_against_a_second_process(tmp_path):
    run = run_lib.create(str(tmp_path), get_preset("demo"))
    with run_lib.locked([run]):
        with pytest.raises(UsageError, match="is being trained by another process"):
            with run_lib.locked([run]):
                pass
        second = _launch("train", "--resume", str(run))
    assert second.returncode == 2
    assert second.stderr.strip() == (f"error: run '{run}' is being trained by another "
                                     "process; wait for it to end or stop it first")
    with run_lib.locked([run]):  # released with the block (and with a killed process)
        pass


def test_resume_drops_a_half_written_last_eval_line_with_a_warning(tmp_path, capsys):
    good = [{"step": 0, "mean_success": 0.0}, {"step": 40, "mean_success": 0.5}]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 80, "mean_su')
    with pytest.raises(UsageError, match="line 3 is not a JSON record"):
        run_lib.read_evals(tmp_path)  # outside a resume, nothing is dropped silently
    run_lib.truncate_evals(tmp_path, 40)
    assert "dropped its half-written last line" in capsys.readouterr().err
    assert run_lib.read_evals(tmp_path) == good
    path.write_text('{"step": 0}\n{"ste\n{"step": 40}\n')  # damage inside is not a torn append
    with pytest.raises(UsageError, match="line 2 is not a JSON record"):
        run_lib.truncate_evals(tmp_path, 40)


def _damage(checkpoint_dir):
    for f in (checkpoint_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\x00garbage" * 4)


def test_restore_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    checkpointer = Checkpointer(tmp_path, keep=3)
    for step in (10, 20, 30):
        checkpointer.save(step, {"x": np.full(3, step, np.float32)}, {"env_steps": step})
    _damage(tmp_path / "30")
    _damage(tmp_path / "20")
    tree, meta = checkpointer.restore()
    assert meta["env_steps"] == 10 and np.all(tree["x"] == 10)
    err = capsys.readouterr().err
    assert f"checkpoints 30, 20 in '{tmp_path}' cannot be read (damaged files); using step 10" \
        in err
    with pytest.raises(UsageError) as bad:
        checkpointer.restore(30)  # a named step is not replaced by another
    assert str(bad.value) == f"corrupt checkpoint '{tmp_path / '30'}': its files cannot be read"
    _damage(tmp_path / "10")
    with pytest.raises(UsageError, match="none of steps 30, 20, 10 can be read"):
        checkpointer.restore()


ARGS = [*TINY, *SMALL_SUITE, "--preset", "demo", "--train.total_steps_per_task", "80",
        "--train.checkpoint_every", "40", "--train.eval_every", "40"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny SAC run trained to the end (checkpoints at 40 and 80)."""
    out = tmp_path_factory.mktemp("finished")
    done = _launch("train", "--out", str(out), *ARGS)
    assert done.returncode == 0, done.stderr
    (run,) = out.iterdir()
    return run


def test_resume_from_an_older_checkpoint_when_the_latest_is_damaged(finished_run, tmp_path):
    """A run killed after writing a damaged last checkpoint resumes from the one before and
    reproduces the uninterrupted run."""
    run = tmp_path / finished_run.name
    shutil.copytree(finished_run, run)
    (run / ".lock").unlink(missing_ok=True)
    (run / "final.json").unlink()  # as if killed while writing the final checkpoint
    _damage(run / "checkpoints" / "80")
    resumed = _launch("train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint 80" in resumed.stderr and "using step 40" in resumed.stderr
    assert f"resuming {run} from step 40" in resumed.stdout
    assert run_lib.read_evals(run) == run_lib.read_evals(finished_run)
    assert json.loads((run / "final.json").read_text())["step"] == 80
    assert (run / "checkpoints" / "80.damaged").is_dir()  # kept, out of the way


def test_a_run_stopped_before_its_first_checkpoint_starts_over(finished_run, tmp_path):
    # What a run killed during its first evaluation leaves: config, a record, events, no
    # checkpoint.
    run = run_lib.create(str(tmp_path), get_preset("demo"))
    (run / "config.json").write_text((finished_run / "config.json").read_text())
    (run / "eval.jsonl").write_text('{"step": 0, "partial": true}\n')
    (run / "tb").mkdir()
    (run / "tb" / "events.out.tfevents.0.killed").write_bytes(b"")
    resumed = _launch("train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{run} stopped before its first checkpoint: starting it over" in resumed.stdout
    assert run_lib.read_evals(run) == run_lib.read_evals(finished_run)
    assert not (run / "tb" / "events.out.tfevents.0.killed").exists()


def test_ctrl_c_names_the_run_to_resume(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "train", "--out",
                             str(tmp_path), *ARGS], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.time() + 120
    while not line.startswith("run directory:") and time.time() < deadline:
        line = proc.stdout.readline()
    run = line.removeprefix("run directory:").strip()
    assert run, "no run directory line"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130
    assert f"resume with `python launch.py train --resume {run}`" in err


def test_a_grid_name_or_variant_cannot_leave_out(tmp_path):
    for text in ('name = "../elsewhere"\npresets = ["demo"]\n',
                 'presets = ["demo"]\n[variants."a/b"]\n"seed" = 1\n'):
        path = tmp_path / "g.toml"
        path.write_text(text)
        with pytest.raises(UsageError, match="must be a plain folder name"):
            grid_lib.load_spec(path)
