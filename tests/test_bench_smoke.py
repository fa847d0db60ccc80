"""Every benchmark script keeps running: each one's --smoke mode (every section at tiny sizes)
finishes, prints its tables, and leaves the repository as it was; --smoke --write is refused.
They run side by side (compilation is mostly single-threaded), to keep the suite short."""

import subprocess
import sys

from tests.conftest import ROOT

# script -> header lines its tables must print (one per section)
TABLES = {
    "bench_archs.py": ["| preset | arch | trainable params | updates/s |"],
    "bench_sac.py": ["| agent | suite | size | JAX (jitted scan) | PyTorch (eager) |",
                     "| mtsac | mt50 | smoke",
                     "| agent | envs | actor | raw env | update | loop | loop / (env + update) |",
                     "| mtsac | async | async |"],
    "bench_ppo.py": ["| preset | arch (experts), tasks | backend | seeds | s / iteration |"],
    "bench_dt.py": ["| size | params (both) | JAX ms / step | JAX tokens/s |",
                    "| size | JAX ms / call | JAX calls/s |"],
    "bench_minigrid.py": ["| env | reference single | reference vector (16) | ours N=8 |"],
    "device_check.py": ["### 1. devices", "backend cpu", "### 2. sac learner",
                        "matmul precision highest", "### 3. sac loop", "### 4. checkpoint",
                        "re-evaluation here and in a CPU-only process give the same record",
                        "### 5. ppo seeds", "### 6. dt training", "| model | batch | tokens/s |"],
}


def _status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True).stdout


def test_every_benchmark_runs_in_smoke_mode_and_writes_nothing():
    before = _status()
    procs = {name: subprocess.Popen([sys.executable, f"bench/{name}", "--smoke"], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in TABLES}
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, outputs[name][-3000:])
        for header in TABLES[name]:
            assert header in outputs[name], (name, header)
    assert _status() == before  # no BENCHMARKS.md update, no files left behind


def test_smoke_refuses_write():
    result = subprocess.run([sys.executable, "bench/bench_minigrid.py", "--smoke", "--write"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --smoke figures are not measurements; drop --write"
