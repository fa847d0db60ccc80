import contextlib
import itertools
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests start a training process; sharing compiled executables through JAX's persistent
# cache (inherited by the subprocesses) saves most of their compile time. Set before JAX loads.
CACHE = Path(tempfile.gettempdir()) / "mtrl-test-jax-cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Meta-World goal sets drawn once for the whole suite (envs/metaworld.py), not in the home.
os.environ.setdefault("MTRL_CACHE_DIR", str(Path(tempfile.gettempdir()) / "mtrl-test-cache"))


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a tensorboardX log directory: tag -> [(step, value)] in write order.
    Event files are TFRecords: a uint64 length and its CRC, the Event proto, its CRC."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@contextlib.contextmanager
def interrupted_at_call(cls, method: str, call: int):
    """Inside the block, `cls.method` raises KeyboardInterrupt on its `call`-th call, as a run
    stopped there would; the block must end by that interrupt."""
    original = getattr(cls, method)
    count = itertools.count(1)

    def interrupted(self, *args, **kwargs):
        if next(count) == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    setattr(cls, method, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        setattr(cls, method, original)
