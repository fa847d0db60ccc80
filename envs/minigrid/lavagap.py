"""LavaGap (`minigrid.envs.LavaGapEnv`, lava obstacle): MiniGrid-LavaGapS{5,6,7}-v0."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from envs.minigrid.core import (
    GOAL_CELL,
    LAVA_CELL,
    Draws,
    SquareGridEnv,
    State,
    coords,
    fill,
    make_state,
    set_cell,
    walled_grid,
)


@dataclass(frozen=True)
class LavaGap(SquareGridEnv):
    """A lava column with one gap between the agent (1, 1), facing right, and the goal at the
    bottom-right corner. The column x is uniform in [2, size-3], the gap row uniform in
    [1, size-2]. max_steps = 4 * size**2."""

    size: int = 7

    @property
    def gym_id(self) -> str:
        return f"MiniGrid-LavaGapS{self.size}-v0"

    @property
    def max_steps(self) -> int:
        return 4 * self.size**2

    def _layout(self, key: jax.Array) -> State:
        n = self.size
        draws = Draws(key, 2)
        gap_x = draws.randint(2, n - 2)
        gap_y = draws.randint(1, n - 1)
        xs, ys = coords(n, n)
        grid = jnp.asarray(walled_grid(n, n))
        grid = set_cell(grid, n - 2, n - 2, GOAL_CELL)
        lava = (xs == gap_x) & (ys >= 1) & (ys <= n - 2) & (ys != gap_y)
        grid = fill(grid, lava, LAVA_CELL)
        return make_state(grid, (1, 1), 0, self.max_steps)
