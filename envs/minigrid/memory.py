"""Memory (`minigrid.envs.MemoryEnv`): MiniGrid-MemoryS{7,9,11,13}-v0 and
MiniGrid-MemoryS{13,17}Random-v0 (random hallway length)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid.core import (
    BALL,
    GREEN,
    KEY,
    PICKUP,
    TOGGLE,
    WALL_CELL,
    Draws,
    SquareGridEnv,
    State,
    border,
    cell,
    coords,
    empty_grid,
    fill,
    make_state,
    set_cell,
    success_reward,
)


@dataclass(frozen=True)
class Memory(SquareGridEnv):
    """A start room with a green key or ball (uniform) at (1, size//2 - 1), a hallway to the
    right, and at its end a key above and a ball below or the reverse (uniform). The agent
    starts on the middle row at x uniform in [1, hallway_end], facing right. Stepping onto the
    cell next to the object matching the start-room one gives the reward, next to the other
    one 0; both terminate. `pickup` acts as `toggle` (which does nothing here).
    hallway_end = size - 3, or uniform in [4, size-3] with `random_length`.
    max_steps = 5 * size**2.

    aux = (success x, y, failure x, y).
    """

    size: int = 11
    random_length: bool = False

    @property
    def gym_id(self) -> str:
        return f"MiniGrid-MemoryS{self.size}{'Random' if self.random_length else ''}-v0"

    @property
    def max_steps(self) -> int:
        return 5 * self.size**2

    def _layout(self, key: jax.Array) -> State:
        n = self.size
        mid = n // 2
        draws = Draws(key, 4)
        xs, ys = coords(n, n)
        upper, lower = mid - 2, mid + 2
        walls = border(n, n)
        walls[1:5, upper] = walls[1:5, lower] = True  # start room
        walls[4, upper + 1] = walls[4, lower - 1] = True
        grid = fill(jnp.asarray(empty_grid(n, n)), jnp.asarray(walls), WALL_CELL)
        if self.random_length:
            end = draws.randint(4, n - 2)
        else:
            end = jnp.int32(n - 3)
        hallway = (xs >= 5) & (xs < end) & ((ys == upper + 1) | (ys == lower - 1))
        vertical = ((xs == end) & (ys != mid)) | (xs == end + 2)
        grid = fill(grid, hallway | vertical, WALL_CELL)
        agent = jnp.stack([draws.randint(1, end + 1), jnp.int32(mid)])
        # minigrid: start object from [Key, Ball]; the pair from [[Ball, Key], [Key, Ball]].
        start_is_key = draws.below(2) == 0
        top_is_key = draws.below(2) == 1
        key_cell, ball_cell = cell(KEY, GREEN), cell(BALL, GREEN)
        grid = set_cell(grid, 1, mid - 1, jnp.where(start_is_key, key_cell, ball_cell))
        grid = set_cell(grid, end + 1, mid - 2, jnp.where(top_is_key, key_cell, ball_cell))
        grid = set_cell(grid, end + 1, mid + 2, jnp.where(top_is_key, ball_cell, key_cell))
        top_matches = start_is_key == top_is_key
        success_y = jnp.where(top_matches, mid - 1, mid + 1)
        failure_y = jnp.where(top_matches, mid + 1, mid - 1)
        aux = jnp.stack([end + 1, success_y, end + 1, failure_y])
        return make_state(grid, agent, 0, self.max_steps, aux)

    def _pre_action(self, action: jax.Array) -> jax.Array:
        return jnp.where(action == PICKUP, TOGGLE, action)

    def _rules(self, before: State, after: State, action, reward, terminated):
        pos = after.agent_pos
        success = (pos[0] == after.aux[0]) & (pos[1] == after.aux[1])
        failure = (pos[0] == after.aux[2]) & (pos[1] == after.aux[3])
        reward = jnp.where(success, success_reward(after), jnp.where(failure, 0.0, reward))
        return after, reward.astype(jnp.float32), terminated | success | failure

    def _aux_from_minigrid(self, u) -> np.ndarray:
        return np.array([*u.success_pos, *u.failure_pos], np.int32)
