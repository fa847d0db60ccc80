"""Every benchmark script keeps running: each one's --smoke mode (every section at tiny sizes)
finishes, prints its tables, and leaves the repository as it was; --smoke --write is refused.
They run side by side (compilation is mostly single-threaded), to keep the suite short."""

import subprocess
import sys

from tests.conftest import ROOT

# script -> header lines its tables must print (one per section)
TABLES = {
    "bench_archs.py": ["| preset | arch | trainable params | updates/s |"],
    "bench_sac.py": ["| agent | suite | size | JAX (jitted scan) | PyTorch (eager) | JAX / "
                     "PyTorch | GFLOP / step | matmul share | GFLOP/s | ceiling GFLOP/s | of "
                     "ceiling |",
                     "| mtsac | mt50 | smoke",
                     "| agent | envs | actor | raw env | update | loop | loop / (env + update) |",
                     "| mtsac | async | async |"],
    "bench_ppo.py": ["| preset | arch (experts), tasks | backend | seeds | s / iteration |",
                     "| vs gym | GFLOP / step | matmul share |"],
    "bench_dt.py": ["| size | params (both) | JAX ms / step | JAX tokens/s |",
                    "| JAX / PyTorch | JAX GFLOP / step | matmul share | GFLOP/s | ceiling "
                    "GFLOP/s | of ceiling | PyTorch of ceiling |",
                    "| size | JAX ms / call | JAX calls/s |"],
    "bench_minigrid.py": ["| env | reference single | reference vector (16) | ours N=8 |"],
    "device_check.py": ["### 1. devices", "backend cpu", "### 2. sac learner",
                        "matmul precision highest", "### 3. sac loop", "### 4. checkpoint",
                        "re-evaluation here and in a CPU-only process give the same record",
                        "### 5. ppo seeds",
                        "| seeds | s / iteration | env steps/s | GFLOP / step |",
                        "### 6. dt training", "| model | batch | tokens/s | GFLOP / step |"],
}


def _status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True).stdout


# Two lanes side by side, each script after the other within its lane: device_check.py's
# smoke sections reuse programs of bench_sac.py's and bench_ppo.py's smoke runs, which the
# persistent compilation cache then holds.
LANES = (("bench_sac.py", "bench_dt.py", "device_check.py"),
         ("bench_ppo.py", "bench_archs.py", "bench_minigrid.py"))


def _lane(names) -> str:
    """A shell command running the lane's scripts in turn, each output framed by its name."""
    return " && ".join(f"echo '@@ {name}' && {sys.executable} bench/{name} --smoke"
                       for name in names)


def test_every_benchmark_runs_in_smoke_mode_and_writes_nothing():
    assert sorted(n for lane in LANES for n in lane) == sorted(TABLES)
    before = _status()
    procs = [subprocess.Popen(["bash", "-c", _lane(lane)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for lane in LANES]
    outputs = {}
    for proc in procs:
        text = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, text[-3000:]
        for part in text.split("@@ ")[1:]:
            name, output = part.split("\n", 1)
            outputs[name] = output
    assert sorted(outputs) == sorted(TABLES)
    for name, headers in TABLES.items():
        for header in headers:
            assert header in outputs[name], (name, header)
    assert _status() == before  # no BENCHMARKS.md update, no files left behind


def test_smoke_refuses_write():
    result = subprocess.run([sys.executable, "bench/bench_minigrid.py", "--smoke", "--write"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --smoke figures are not measurements; drop --write"
