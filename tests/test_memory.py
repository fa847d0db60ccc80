"""Free memory as the memory check reads it: an accelerator's allocator, the host, and the
memory cgroup a Slurm job or a container runs in (v1 and v2 layouts, written here)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from training.memory import _cgroup_available, free_bytes

GIB = 2**30


def _cgroup(tmp_path, membership: str, files: dict[str, str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = tmp_path / "fs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "cgroup").write_text(membership)
    return _cgroup_available(tmp_path / "fs", tmp_path / "cgroup")


def test_cgroup_v2_limit_less_usage_plus_inactive_cache(tmp_path):
    found = _cgroup(tmp_path, "0::/slurm/job_7\n", {
        "slurm/job_7/memory.max": f"{16 * GIB}\n",
        "slurm/job_7/memory.current": f"{10 * GIB}\n",
        "slurm/job_7/memory.stat": f"anon {9 * GIB}\ninactive_file {GIB}\n"})
    assert found == 7 * GIB


def test_cgroup_v1_and_unlimited_groups(tmp_path):
    v1 = {"memory/job/memory.limit_in_bytes": f"{8 * GIB}\n",
          "memory/job/memory.usage_in_bytes": f"{5 * GIB}\n",
          "memory/job/memory.stat": f"cache {GIB}\ntotal_inactive_file {GIB // 2}\n"}
    membership = "4:memory:/job\n3:cpuset:/\n"
    assert _cgroup(tmp_path / "a", membership, v1) == 3 * GIB + GIB // 2
    v1["memory/job/memory.limit_in_bytes"] = "9223372036854771712\n"  # v1's "no limit"
    assert _cgroup(tmp_path / "b", membership, v1) is None
    assert _cgroup(tmp_path / "c", "0::/\n", {"memory.max": "max\n", "memory.current": "1\n",
                                              "memory.stat": ""}) is None
    assert _cgroup(tmp_path / "d", "1:cpu:/\n", {}) is None  # no memory controller


def test_free_bytes_of_an_accelerator_and_of_the_host():
    gpu = SimpleNamespace(platform="gpu", memory_stats=lambda: {
        "bytes_limit": 80 * GIB, "bytes_in_use": 30 * GIB})
    assert free_bytes(gpu) == 50 * GIB
    assert free_bytes(SimpleNamespace(platform="tpu", memory_stats=lambda: None)) is None
    if not sys.platform.startswith("linux"):
        pytest.skip("the host's free memory is read from /proc/meminfo")
    assert free_bytes(SimpleNamespace(platform="cpu")) > 0
