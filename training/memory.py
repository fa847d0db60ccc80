"""How much memory a compiled function needs, against how much its device has free.

XLA plans every buffer of a compiled function ahead (`Compiled.memory_analysis`), so a run
can be checked before it starts instead of being killed by the kernel an hour in: on the
CPU, minigrid_mt7_moore's training chunk plans 3.0 GiB of temporaries per seed, and six
seeds in one process held 20 GB of a 24 GB host (the plan matched the measured resident set
to within 10 %, README "MiniGrid").
"""

from __future__ import annotations

from pathlib import Path

GIB = 2**30


def call_bytes(compiled) -> int | None:
    """Bytes one call of `compiled` allocates beyond its inputs (temporaries and the outputs
    that do not reuse a donated input); None where the backend gives no plan."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


def free_bytes(device) -> int | None:
    """Memory `device` can still allocate: an accelerator's allocator limit less what is in
    use; for the CPU, the host's MemAvailable (Linux); None where neither is known."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    if device.platform != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
