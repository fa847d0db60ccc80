"""Where a local grid's runs compute: one slot per run that may train at once, and the
environment variables that bind the run's process to its device.

- CPU-only host: the cores divided by `local.cores_per_run` (default 2: a JAX learner and
  MuJoCo per run).
- GPU host: `local.runs_per_gpu` runs per GPU (default 1), each seeing only its GPU through
  CUDA_VISIBLE_DEVICES. JAX preallocates 75 % of a GPU's memory to its first process, so
  several runs per GPU each get an equal share (XLA_PYTHON_CLIENT_MEM_FRACTION) unless the
  user set JAX's allocator variables already. GPUs listed in an existing CUDA_VISIBLE_DEVICES
  are the ones used. A SAC run also steps MuJoCo on a CPU core: the slots stop at the cores
  divided by `local.cores_per_run`.
- TPU host: one run at a time; only one process can hold a TPU VM's chips.

`slots` is a pure function of what was detected, so its rules are tested on simulated hosts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ACCELERATORS = ("auto", "cpu", "gpu", "tpu")
# Any of these set by the user decides GPU memory; the grid then sets none of them.
ALLOCATOR_VARIABLES = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                       "XLA_PYTHON_CLIENT_ALLOCATOR")
# Share of a GPU's memory the runs on it take together (the rest: CUDA contexts, cuDNN).
GPU_MEMORY_SHARED = 0.9


@dataclass(frozen=True)
class Host:
    """What a machine offers: its accelerator kind, its GPUs' ids and its CPU cores."""
    kind: str  # cpu | gpu | tpu
    gpus: tuple[str, ...] = ()
    cores: int = 1


@dataclass(frozen=True)
class Slot:
    label: str  # shown by `grid --dry-run` and in the grid's start lines
    env: dict = field(default_factory=dict)  # set in the run's process environment


def detect(accelerator: str = "auto", environ=os.environ) -> Host:
    """The host's accelerator (`auto`: GPUs by nvidia-smi, a TPU by its device files), the
    GPUs an existing CUDA_VISIBLE_DEVICES allows, and the CPU cores."""
    cores = os.cpu_count() or 1
    kind = accelerator
    gpus: tuple[str, ...] = ()
    if accelerator in ("auto", "gpu"):
        gpus = _visible(environ.get("CUDA_VISIBLE_DEVICES"), _nvidia_gpus())
        if accelerator == "auto":
            kind = "gpu" if gpus else ("tpu" if _has_tpu() else "cpu")
    return Host(kind=kind, gpus=gpus, cores=cores)


def slots(host: Host, runs_per_gpu: int = 1, cores_per_run: int = 2,
          max_parallel: int | None = None, environ=os.environ) -> list[Slot]:
    """The device slots of a local grid on `host`, in the order runs take them."""
    by_cores = max(1, host.cores // max(cores_per_run, 1))
    if host.kind == "tpu":
        return [Slot("tpu (all chips)")]
    if host.kind == "gpu" and host.gpus:
        share = {}
        if runs_per_gpu > 1 and not any(v in environ for v in ALLOCATOR_VARIABLES):
            fraction = int(GPU_MEMORY_SHARED / runs_per_gpu * 100) / 100
            share = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.2f}"}
        # Round robin: the first runs spread over the GPUs before any GPU takes a second.
        out = [Slot(f"gpu {gpu}" + (f" ({k + 1}/{runs_per_gpu})" if runs_per_gpu > 1 else ""),
                    {"CUDA_VISIBLE_DEVICES": gpu, **share})
               for k in range(runs_per_gpu) for gpu in host.gpus]
        return out[:max_parallel or by_cores]
    return [Slot("cpu")] * (max_parallel or by_cores)


def _visible(setting: str | None, detected: tuple[str, ...]) -> tuple[str, ...]:
    """The GPUs a process may use: an existing CUDA_VISIBLE_DEVICES wins ("" or "-1": none)."""
    if setting is None:
        return detected
    ids = tuple(x.strip() for x in setting.split(",") if x.strip())
    return () if ids in ((), ("-1",)) else ids


def _nvidia_gpus() -> tuple[str, ...]:
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(line for line in listing.splitlines()
                                                  if line.startswith("GPU")))


def _has_tpu() -> bool:
    """libtpu installed (jax[tpu]) and chips present: TPU VMs expose them as /dev/accel*
    (v2-v4) or numbered VFIO devices (v5e and later)."""
    from importlib.util import find_spec

    if find_spec("libtpu") is None:
        return False
    dev = Path("/dev")
    vfio = dev / "vfio"
    return any(dev.glob("accel*")) or (vfio.is_dir() and any(p.name.isdigit()
                                                             for p in vfio.iterdir()))
