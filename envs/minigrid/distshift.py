"""DistShift (`minigrid.envs.DistShiftEnv`): MiniGrid-DistShift1-v0 (strip2_row 2) and
MiniGrid-DistShift2-v0 (strip2_row 5). Note: minigrid builds it with see_through_walls=True,
so its observation has no occlusion."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid.core import (
    GOAL_CELL,
    LAVA_CELL,
    WALL_CELL,
    GridEnv,
    State,
    border,
    empty_grid,
    make_state,
)


@dataclass(frozen=True)
class DistShift(GridEnv):
    """A fixed 9x7 layout: agent (1, 1) facing right, goal (7, 1), lava at x = 3..5 in row 1
    and in row `strip2_row`. max_steps = 4 * 9 * 7 = 252. No randomness."""

    strip2_row: int = 2
    see_through_walls = True
    width = 9
    height = 7

    @property
    def gym_id(self) -> str:
        return f"MiniGrid-DistShift{1 if self.strip2_row == 2 else 2}-v0"

    @property
    def max_steps(self) -> int:
        return 4 * self.width * self.height

    def _layout(self, key: jax.Array) -> State:
        w, h = self.width, self.height
        grid = empty_grid(w, h)
        grid[border(w, h)] = WALL_CELL
        grid[w - 2, 1] = GOAL_CELL
        for i in range(w - 6):
            grid[3 + i, 1] = LAVA_CELL
            grid[3 + i, self.strip2_row] = LAVA_CELL
        del key
        return make_state(jnp.asarray(np.asarray(grid)), (1, 1), 0, self.max_steps)
