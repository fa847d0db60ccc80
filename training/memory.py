"""How much memory a compiled function needs, against how much its device has free.

XLA plans every buffer of a compiled function ahead (`Compiled.memory_analysis`), so a run
can be checked before it starts instead of being killed by the kernel an hour in: on the
CPU, minigrid_mt7_moore's training chunk plans 2.9 GiB of temporaries per seed, and six
seeds in one process held 20 GB of a 24 GB host (the plan matched the measured resident set
to within 10 %, README "MiniGrid").

What is free is read when asked: processes started side by side (a local grid's
`--max-parallel`) each see the same free memory, so only the first to allocate is safe.
"""

from __future__ import annotations

from pathlib import Path

GIB = 2**30
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as about 2**63


def call_bytes(compiled) -> int | None:
    """Bytes one call of `compiled` allocates beyond its inputs (temporaries and the outputs
    that do not reuse a donated input); None where the backend gives no plan."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


def free_bytes(device) -> int | None:
    """Memory `device` can still allocate: an accelerator's allocator limit less what is in
    use; for the CPU, the host's MemAvailable (Linux), or less where this process's memory
    cgroup (a Slurm job's or a container's limit) has less left; None where nothing is known."""
    if device.platform != "cpu":
        stats = device.memory_stats()
        if stats and "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return None
    found = [x for x in (_host_available(), _cgroup_available()) if x is not None]
    return min(found) if found else None


def _host_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup"),
                      membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """The memory cgroup's limit less its usage, not counting inactive page cache (which the
    kernel reclaims before it kills); None without a limited memory cgroup (v1 or v2)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            base, names = root / path.lstrip("/"), ("memory.max", "memory.current")
            cache_key = "inactive_file"
        elif "memory" in controllers.split(","):
            base = root / "memory" / path.lstrip("/")
            names, cache_key = ("memory.limit_in_bytes", "memory.usage_in_bytes"), \
                "total_inactive_file"
        else:
            continue
        try:
            limit, used = ((base / name).read_text().strip() for name in names)
            stat = dict(entry.split() for entry in
                        (base / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= _UNLIMITED:
            continue
        return int(limit) - int(used) + int(stat.get(cache_key, 0))
    return None
