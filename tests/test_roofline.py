"""bench/roofline.py: FLOPs of a step with nested scans, its products, the ceiling."""

import jax
import jax.numpy as jnp
import pytest

from bench.roofline import Dot, Roofline, compiled_flops, step_dots, step_flops


def _model(w, x):
    """Two products per step, a scan of 3 steps inside a scan of 4: 12 steps."""
    def inner(h, _):
        return jnp.tanh(h @ w) @ w.T, None

    def outer(h, _):
        return jax.lax.scan(inner, h, None, length=3)[0], None

    return jax.lax.scan(outer, x, None, length=4)[0]


def test_dot_flops_count_batch_and_free_dimensions():
    dot = Dot((2, 5, 7), (2, 7, 3), (((2,), (1,)), ((0,), (0,))), "float32", None, None)
    assert dot.flops == 2 * 2 * 5 * 3 * 7


def test_step_dots_and_flops_count_every_scan_iteration():
    w, x = jnp.ones((16, 24)), jnp.ones((8, 16))
    dots = step_dots(_model, w, x)
    assert sum(dots.values()) == 2 * 12
    matmul = sum(d.flops * n for d, n in dots.items())
    assert matmul == 12 * 2 * (2 * 8 * 16 * 24)
    # XLA counts each scan body once; step_flops counts it as often as it runs
    once = compiled_flops(jax.jit(_model).lower(w, x).compile())
    assert once < matmul / 4
    full = step_flops(_model, w, x)
    assert matmul <= full < 1.2 * matmul


def test_roofline_cells():
    roof = Roofline(flops=2e9, matmul_flops=1.9e9, ceiling=100e9)
    assert roof.achieved(0.04) == pytest.approx(50e9)
    assert roof.cells(0.04) == "2.00 | 95% | 50.0 | 100 | 50%"


def test_measured_ceiling_is_a_rate():
    roof = Roofline.measure(lambda a, b: a @ b, jnp.ones((64, 64)), jnp.ones((64, 64)))
    assert roof.matmul_flops == 2 * 64 ** 3
    assert roof.flops == pytest.approx(roof.matmul_flops, rel=0.05)
    assert 1e8 < roof.ceiling < 1e15
