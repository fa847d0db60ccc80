"""DoorKey (`minigrid.envs.DoorKeyEnv`): MiniGrid-DoorKey-{5x5,6x6,8x8,16x16}-v0."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from envs.minigrid.core import (
    DOOR,
    GOAL_CELL,
    KEY,
    LOCKED,
    WALL_CELL,
    YELLOW,
    Draws,
    SquareGridEnv,
    State,
    cell,
    coords,
    fill,
    make_state,
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
        draws = Draws(key, 5)
        xs, _ = coords(n, n)
        grid = jnp.asarray(walled_grid(n, n))
        grid = set_cell(grid, n - 2, n - 2, GOAL_CELL)
        split = draws.randint(2, n - 2)
        grid = fill(grid, xs == split, WALL_CELL)
        # The free cells left of the wall are the rectangle [1, split) x [1, n - 1) (the goal
        # is right of it): the agent is uniform over it, the key over it less the agent.
        agent = draws.cell_in(1, 1, split - 1, n - 2)
        agent_dir = draws.below(4)
        door_y = draws.randint(1, n - 2)
        grid = set_cell(grid, split, door_y, cell(DOOR, YELLOW, LOCKED))
        key_pos = draws.cell_in(1, 1, split - 1, n - 2, skip=agent)
        grid = set_cell(grid, key_pos[0], key_pos[1], cell(KEY, YELLOW))
        return make_state(grid, agent, agent_dir, self.max_steps)
