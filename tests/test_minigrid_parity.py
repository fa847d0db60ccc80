"""Parity of our JAX MiniGrid (`envs.minigrid`) with the `minigrid` package: observations,
rewards, terminated and truncated at every step of long random runs, layouts that minigrid's own
generator rebuilds exactly, layout distributions, and every action from random engine states.
A longer version: `python -m envs.minigrid.parity_check --env all --seeds 100`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.minigrid import ENVS, VARIANTS, make
from envs.minigrid.core import EMPTY, Draws
from envs.minigrid.parity_check import (
    check_multiroom_table,
    fuzz_engine,
    index,
    layout_distribution,
    our_layouts,
    reference,
    reference_layouts,
    replay_layout,
    step_parity,
)

NAMES = list(ENVS)


@pytest.mark.parametrize("name", NAMES)
def test_steps_match_minigrid(name):
    """4 seeds x 250 random steps, every field at every step (whole grid included); half the
    seeds start 5 steps before max_steps so that truncation is crossed too."""
    env = ENVS[name]
    stats = step_parity(env, seeds=[0, 1, 2, 3], steps=250, late_start=5)
    assert stats.steps == 1000 and stats.grids_compared == 1000
    assert stats.truncations >= 1 and stats.episodes >= 2


@pytest.mark.parametrize("name", NAMES)
def test_our_layouts_are_built_by_minigrids_generator(name):
    env = ENVS[name]
    ours = our_layouts(env, 2000, seed=1)
    ref = reference(env)
    for i in range(150):
        replay_layout(env, index(ours, i), ref)


@pytest.mark.parametrize("name", NAMES)
def test_layout_distribution_matches_minigrid(name):
    env = ENVS[name]
    reports = layout_distribution(env, our_layouts(env, 2000), reference_layouts(env, 1000))
    for report in reports:
        assert report.same_values, report
        assert report.p_value > 1e-4, report
        assert report.tv < 0.1, report


# One of the other registrations of the same families, lightly (each costs a compile in
# CI); all 19 of them: `python -m envs.minigrid.parity_check --env variants`.
SOME_VARIANTS = ["MiniGrid-LavaCrossingS9N1-v0"]


@pytest.mark.parametrize("gym_id", SOME_VARIANTS)
def test_variants_match_minigrid(gym_id):
    env = VARIANTS[gym_id]
    assert step_parity(env, seeds=[0, 1], steps=60, late_start=5).truncations >= 1
    ours = our_layouts(env, 20)
    ref = reference(env)
    for i in range(20):
        replay_layout(env, index(ours, i), ref)


def test_multiroom_attachment_table_matches_minigrid():
    assert check_multiroom_table() == 22 * 21 * 12


@pytest.mark.parametrize("see_through_walls", [False, True])
def test_engine_matches_minigrid_on_random_states(see_through_walls):
    """Random 8x8 grids with every object kind, every action from each state."""
    assert fuzz_engine(150, see_through_walls, seed=10 + see_through_walls) == 150 * 7


def test_unbatched_jit_matches_batched():
    env = make("MiniGrid-DoorKey-6x6-v0")
    keys = jax.random.split(jax.random.key(3), 4)
    batch, batch_obs = jax.jit(jax.vmap(env.reset))(keys)
    actions = np.random.default_rng(0).integers(0, 7, (30, 4))
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    batched_step = jax.jit(jax.vmap(env.step))
    singles = [reset(k) for k in keys]
    for i, (state, obs) in enumerate(singles):
        assert np.array_equal(obs, batch_obs[i]) and np.array_equal(state.grid, batch.grid[i])
    states = [s for s, _ in singles]
    for a in actions:
        batch, obs, reward, terminated, truncated = batched_step(batch, jnp.asarray(a))
        for i in range(4):
            states[i], o, r, te, tr = step(states[i], a[i])
            assert np.array_equal(o, obs[i]) and r == reward[i]
            assert te == terminated[i] and tr == truncated[i]
            assert np.array_equal(states[i].grid, batch.grid[i])
    assert obs.dtype == jnp.uint8 and obs.shape == (4, 7, 7, 3)


# MultiRoom writes its resets into the old grid (`_reset_where`) instead of selecting.
@pytest.mark.parametrize("name", ["LavaGapS7", "MultiRoom-N2-S4"])
def test_step_autoreset(name):
    env = ENVS[name]
    state, _ = env.reset(jax.random.key(0))
    state = state.replace(step_count=jnp.int32(env.max_steps - 40))
    step, auto, reset = jax.jit(env.step), jax.jit(env.step_autoreset), jax.jit(env.reset)
    rng = np.random.default_rng(1)
    ended = 0
    for t in range(150):
        key, action = jax.random.key(t), int(rng.integers(7))
        expected = step(state, action)
        state, obs, reward, terminated, truncated, final_obs = auto(state, action, key)
        assert reward == expected[2] and terminated == expected[3] and truncated == expected[4]
        assert np.array_equal(final_obs, expected[1])
        if terminated or truncated:
            ended += 1
            fresh, fresh_obs = reset(key)
            assert same_state(state, fresh) and np.array_equal(obs, fresh_obs)
            # Truncate the new episode soon too, so that every key stream ends several.
            state = state.replace(step_count=jnp.int32(env.max_steps - 40))
        else:
            assert same_state(state, expected[0]) and np.array_equal(obs, expected[1])
    assert ended >= 2


def same_state(a, b) -> bool:
    leaves = jax.tree_util.tree_leaves
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def test_carried_object_is_shown_at_the_agents_cell():
    env = ENVS["DoorKey-6x6"]
    ref = reference(env)
    ref.reset(seed=5)
    state = env.from_minigrid(ref)
    assert state.carrying[0] == EMPTY
    assert tuple(np.asarray(env.observation(state))[3, 6]) == (EMPTY, 0, 0)
    state = state.replace(carrying=jnp.asarray([5, 4], jnp.uint8))  # a yellow key
    assert tuple(np.asarray(env.observation(state))[3, 6]) == (5, 4, 0)


def test_layout_draws_are_exact_integer_arithmetic():
    """`core.Draws.below` is floor(u span / 2**64) of the 64-bit u its two words make, and
    `weighted` returns the number of bounds floor(2**64 cdf) at or below u (checked against
    Python integers), so both are uniform / weighted up to 2**-64 per value."""
    count, spans, weights = 64, [1, 2, 3, 7, 529, 65535], [5, 0, 3, 1 << 40, 7]
    draws = Draws(jax.random.key(0), count * (len(spans) + 1))
    words = np.asarray(draws._words, dtype=object)
    got = [[int(draws.below(span)) for _ in range(count)] for span in spans]
    picks = [int(draws.weighted(weights)) for _ in range(count)]
    u = [int(hi) << 32 | int(lo) for hi, lo in words]
    for s, span in enumerate(spans):
        assert got[s] == [u[s * count + i] * span >> 64 for i in range(count)]
    cdf = np.cumsum(weights, dtype=object)
    bounds = [(int(c) << 64) // int(cdf[-1]) for c in cdf[:-1]]
    assert picks == [sum(b <= u[len(spans) * count + i] for b in bounds) for i in range(count)]
