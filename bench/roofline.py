"""The roofline of a learner step: how many FLOPs it does, how fast this device multiplies
matrices at the shapes the step itself multiplies, and what fraction of that rate it reaches.

A learner made of matrix products cannot run faster than its products would alone, so the
ceiling is the device's matrix-multiply rate at the step's own products: every
`dot_general` of the step's jaxpr (forward and backward), each timed alone at its shape,
dtype and precision, combined as their total FLOPs over their total time. A step at 100 %
spends its whole time at the speed of its own products; what it spends elsewhere
(elementwise work, memory traffic, transposes, dispatch) shows as the remainder.

FLOPs per step come from XLA's cost analysis of the compiled program. XLA counts a
`lax.scan`'s (while loop's) body once, not once per iteration: `step_flops` adds the
remaining iterations of every scan nested inside the step (compiling each body alone), so
pass it the step itself, not a chunk of steps; `compiled_flops` of a chunk that scans one
step G times is one step's FLOPs (plus the chunk's own small work), which the SAC and DT
benchmarks use. A `while_loop` of unknown trip count is counted once.

    python bench/roofline.py            # the matmul rate at a few square sizes
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.extend import core as jcore

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import timed  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Dot:
    """One matrix product of a step: operand shapes, contraction and batch dimensions."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    dimension_numbers: tuple
    dtype: str
    precision: object
    preferred: str | None

    @property
    def flops(self) -> float:
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = self.dimension_numbers
        # out = batch x lhs free x rhs free; each output entry costs `contract` multiply-adds
        contract = math.prod(self.lhs[d] for d in lhs_contract)
        batch = math.prod(self.lhs[d] for d in lhs_batch)
        lhs_free = math.prod(s for d, s in enumerate(self.lhs)
                             if d not in lhs_contract and d not in lhs_batch)
        rhs_free = math.prod(s for d, s in enumerate(self.rhs)
                             if d not in rhs_contract and d not in rhs_batch)
        return 2.0 * batch * lhs_free * rhs_free * contract


def _sub_jaxprs(eqn):
    """(closed jaxpr, multiplicity) of every jaxpr an equation runs: a scan's body `length`
    times, everything else (pjit, cond branches, custom derivatives, while bodies) once."""
    length = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(sub, jcore.ClosedJaxpr):
                yield sub.jaxpr, length
            elif isinstance(sub, jcore.Jaxpr):
                yield sub, length


def step_dots(fn: Callable, *args) -> Counter:
    """Dot -> how many times one call of `fn(*args)` runs it (scan lengths multiplied in)."""
    return _dots(jax.make_jaxpr(fn)(*args).jaxpr)


def _dots(jaxpr) -> Counter:
    counts: Counter = Counter()

    def walk(jaxpr, times):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                lhs, rhs = (v.aval for v in eqn.invars)
                preferred = eqn.params.get("preferred_element_type")
                counts[Dot(tuple(lhs.shape), tuple(rhs.shape),
                           eqn.params["dimension_numbers"], str(lhs.dtype),
                           eqn.params.get("precision"),
                           None if preferred is None else str(preferred))] += times
            for sub, mult in _sub_jaxprs(eqn):
                walk(sub, times * mult)

    walk(jaxpr, 1)
    return counts


def total_flops(dots: Counter) -> float:
    """The FLOPs of all the products, each as often as it runs."""
    return sum(d.flops * n for d, n in dots.items())


def time_dot(dot: Dot, target_flops: float = 4e8, repeats: int = 7) -> float:
    """Seconds of one `dot` alone: the fastest of `repeats` runs of `reps` back-to-back calls
    (dispatched asynchronously, so the per-call overhead overlaps the products). The
    fastest, not the median: the ceiling is what the device can do, and on a shared
    machine the slower runs measure the neighbours."""
    reps = int(min(64, max(1, target_flops // max(dot.flops, 1.0))))
    rng = np.random.default_rng(0)
    lhs = jax.device_put(rng.normal(size=dot.lhs).astype(dot.dtype))
    rhs = jax.device_put(rng.normal(size=dot.rhs).astype(dot.dtype))
    product = jax.jit(lambda a, b: jax.lax.dot_general(
        a, b, dot.dimension_numbers, precision=dot.precision,
        preferred_element_type=dot.preferred))

    def run():
        start = time.perf_counter()
        for _ in range(reps):
            out = product(lhs, rhs)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    run()  # compile
    return min(run() for _ in range(repeats)) / reps


def matmul_ceiling(dots: Counter, share: float = 0.95, most: int = 12,
                   smallest: float = 1e6) -> float:
    """FLOP/s of the step's own products each run alone: their total FLOPs over their total
    time. The largest products are timed, until they hold `share` of the FLOPs (at most
    `most` of them, and after the first none under `smallest` FLOPs): the small rest would
    time dispatch, not multiplication."""
    total = total_flops(dots)
    flops = seconds = 0.0
    for i, (dot, n) in enumerate(sorted(dots.items(), key=lambda dn: -dn[0].flops * dn[1])):
        if i == most or flops >= share * total or (i and dot.flops < smallest):
            break
        flops += dot.flops * n
        seconds += time_dot(dot) * n
    return flops / seconds


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (each scan body once)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"])


def step_flops(fn: Callable, *args, compiled=None) -> float:
    """XLA's FLOPs of one call of `fn(*args)`, each nested scan counted `length` times.

    XLA counts each scan body once: the program's count plus, for every scan in it,
    (length - 1) x its body's true count, plus what the body's own nested scans miss; a
    body is compiled alone only where its scan runs more than once. `compiled`: `fn`'s
    program when the caller has compiled it already."""
    return _flops(jax.make_jaxpr(fn)(*args), compiled)


def _flops(closed, compiled=None) -> float:
    def compile_flops(closed) -> float:
        avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
        return compiled_flops(jax.jit(jcore.jaxpr_as_fun(closed)).lower(*avals).compile())

    def missed(jaxpr) -> float:
        """True FLOPs of `jaxpr` minus XLA's count of it."""
        total = 0.0
        for eqn in scans(jaxpr):
            body = eqn.params["jaxpr"]
            body_missed = missed(body.jaxpr)
            length = eqn.params["length"]
            if length > 1:
                total += (length - 1) * (compile_flops(body) + body_missed)
            total += body_missed
        return total

    def scans(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                yield eqn
            else:
                for sub, _ in _sub_jaxprs(eqn):
                    yield from scans(sub)

    counted = compiled_flops(compiled) if compiled is not None else compile_flops(closed)
    return counted + missed(closed.jaxpr)


@dataclasses.dataclass(frozen=True)
class Roofline:
    """One step's FLOPs, its products' share of them, and the matmul ceiling (FLOP/s)."""

    flops: float
    matmul_flops: float
    ceiling: float

    @classmethod
    def measure(cls, fn: Callable, *args, compiled=None) -> Roofline:
        """The roofline of one call of `fn(*args)` (`compiled`: its program, if at hand)."""
        closed = jax.make_jaxpr(fn)(*args)
        return cls._of(_flops(closed, compiled), _dots(closed.jaxpr))

    @classmethod
    def of_chunk(cls, fn: Callable, args, compiled, steps: int) -> Roofline:
        """The roofline of one step of a chunk `fn(*args)` that scans its step `steps`
        times, from the chunk's `compiled` program (XLA counts the scanned step once)."""
        return cls._of(compiled_flops(compiled), step_dots(fn, *args), per=steps)

    @classmethod
    def _of(cls, flops: float, dots: Counter, per: int = 1) -> Roofline:
        dots = Counter({d: n / per for d, n in dots.items()})
        return cls(flops=flops, matmul_flops=total_flops(dots), ceiling=matmul_ceiling(dots))

    def achieved(self, seconds_per_step: float) -> float:
        return self.flops / seconds_per_step

    def cells(self, seconds_per_step: float) -> str:
        """'GFLOP / step | matmul share | GFLOP/s | ceiling GFLOP/s | % of ceiling'."""
        rate = self.achieved(seconds_per_step)
        return (f"{self.flops / 1e9:.2f} | {self.matmul_flops / self.flops:.0%} | "
                f"{rate / 1e9:.1f} | {self.ceiling / 1e9:.0f} | {rate / self.ceiling:.0%}")


HEADER = "GFLOP / step | matmul share | GFLOP/s | ceiling GFLOP/s | of ceiling"
NOTE = ("Roofline (bench/roofline.py): GFLOP / step is XLA's cost analysis of the compiled "
        "step, every nested scan counted as often as it runs; matmul share the part of them "
        "in matrix products; GFLOP/s achieved; ceiling this device's rate at the step's own "
        "products, each timed alone in this run (the fastest of 7 timings); of ceiling "
        "achieved / ceiling.")


def square_rates(sizes=(256, 512, 1024, 2048)) -> dict[int, float]:
    """FLOP/s of an n x n x n float32 product at each size (the device's plain GEMM rate)."""
    out = {}
    for n in sizes:
        dot = Dot((n, n), (n, n), (((1,), (0,)), ((), ())), "float32", None, None)
        out[n] = dot.flops / time_dot(dot)
    return out


def main():
    device = jax.devices()[0]
    print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}")
    for n, rate in square_rates().items():
        print(f"  {n} x {n} x {n} float32: {rate / 1e9:.0f} GFLOP/s")
    a = np.random.default_rng(0).normal(size=(1024, 1024)).astype(np.float32)
    print(f"  numpy 1024^3: {2 * 1024 ** 3 / timed(lambda: a @ a, 10) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
