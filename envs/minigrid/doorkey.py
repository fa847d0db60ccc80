"""DoorKey (`minigrid.envs.DoorKeyEnv`): MiniGrid-DoorKey-{5x5,6x6,8x8,16x16}-v0."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from envs.minigrid.core import (
    DOOR,
    EMPTY,
    GOAL_CELL,
    KEY,
    LOCKED,
    WALL_CELL,
    YELLOW,
    SquareGridEnv,
    State,
    cell,
    coords,
    fill,
    make_state,
    sample_cell,
    set_cell,
    walled_grid,
)


@dataclass(frozen=True)
class DoorKey(SquareGridEnv):
    """A full-height wall at x = split (uniform in [2, size-3]) with a locked yellow door at
    row uniform in [1, size-3] (minigrid's `_rand_int(1, height - 2)`); the agent (uniform
    direction) and a yellow key are uniform over the distinct free cells left of the wall;
    the goal is at the bottom-right corner. max_steps = 10 * size**2."""

    size: int = 6

    @property
    def gym_id(self) -> str:
        return f"MiniGrid-DoorKey-{self.size}x{self.size}-v0"

    @property
    def max_steps(self) -> int:
        return 10 * self.size**2

    def _layout(self, key: jax.Array) -> State:
        n = self.size
        k_split, k_agent, k_dir, k_door, k_key = jax.random.split(key, 5)
        xs, ys = coords(n, n)
        grid = jnp.asarray(walled_grid(n, n))
        grid = set_cell(grid, n - 2, n - 2, GOAL_CELL)
        split = jax.random.randint(k_split, (), 2, n - 2)
        grid = fill(grid, xs == split, WALL_CELL)
        left = (xs < split) & (grid[..., 0] == EMPTY)
        agent = sample_cell(k_agent, left)
        agent_dir = jax.random.randint(k_dir, (), 0, 4)
        door_y = jax.random.randint(k_door, (), 1, n - 2)
        grid = set_cell(grid, split, door_y, cell(DOOR, YELLOW, LOCKED))
        not_agent = (xs != agent[0]) | (ys != agent[1])
        key_pos = sample_cell(k_key, left & not_agent)
        grid = set_cell(grid, key_pos[0], key_pos[1], cell(KEY, YELLOW))
        return make_state(grid, agent, agent_dir, self.max_steps)
