"""RedBlueDoors (`minigrid.envs.RedBlueDoorEnv`): MiniGrid-RedBlueDoors-{6x6,8x8}-v0."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid.core import (
    BLUE,
    CLOSED,
    DOOR,
    OPEN,
    RED,
    WALL_CELL,
    Draws,
    GridEnv,
    State,
    border,
    cell,
    make_state,
    set_cell,
    success_reward,
    walled_grid,
)


@dataclass(frozen=True)
class RedBlueDoors(GridEnv):
    """A (2 size) x size grid; a size x size walled room in the middle (x from size//2) holds
    the agent, uniform over its free cells with a uniform direction; a closed red door in its
    left wall and a closed blue door in its right wall, each at a row uniform in
    [1, size-2]. Opening blue after red: success (the usual reward); opening blue first:
    terminated with 0. max_steps = 20 * size**2.

    aux = (red door x, y, blue door x, y).
    """

    size: int = 6

    @property
    def gym_id(self) -> str:
        return f"MiniGrid-RedBlueDoors-{self.size}x{self.size}-v0"

    @property
    def width(self) -> int:
        return 2 * self.size

    @property
    def height(self) -> int:
        return self.size

    @property
    def max_steps(self) -> int:
        return 20 * self.size**2

    def _layout(self, key: jax.Array) -> State:
        s, w = self.size, self.width
        draws = Draws(key, 4)
        grid = walled_grid(w, s)
        room = np.zeros((w, s), bool)
        room[s // 2 : s // 2 + s] = border(s, s)
        grid[room] = WALL_CELL
        grid = jnp.asarray(grid)
        # The room's free cells are its inside, the rectangle [s//2 + 1, s//2 + s - 1) x
        # [1, s - 1).
        agent = draws.cell_in(s // 2 + 1, 1, s - 2, s - 2)
        agent_dir = draws.below(4)
        red_x, blue_x = s // 2, s // 2 + s - 1
        red_y = draws.randint(1, s - 1)
        blue_y = draws.randint(1, s - 1)
        grid = set_cell(grid, red_x, red_y, cell(DOOR, RED, CLOSED))
        grid = set_cell(grid, blue_x, blue_y, cell(DOOR, BLUE, CLOSED))
        aux = jnp.stack([red_x, red_y, blue_x, blue_y])
        return make_state(grid, agent, agent_dir, self.max_steps, aux)

    def _rules(self, before: State, after: State, action, reward, terminated):
        def is_open(state: State, which: int) -> jax.Array:
            x, y = state.aux[2 * which], state.aux[2 * which + 1]
            return state.grid[x, y, 2] == OPEN

        red_before, blue_before = is_open(before, 0), is_open(before, 1)
        red_after, blue_after = is_open(after, 0), is_open(after, 1)
        # Blue opened: success if red was open before this step, else failure.
        reward = jnp.where(blue_after, jnp.where(red_before, success_reward(after), 0.0), reward)
        # Red open now and blue was open before (only after closing blue): failure.
        late_red = ~blue_after & red_after & blue_before
        reward = jnp.where(late_red, 0.0, reward).astype(jnp.float32)
        return after, reward, terminated | blue_after | late_red

    def _aux_from_minigrid(self, u) -> np.ndarray:
        found = {}
        for obj in (u.red_door, u.blue_door):
            for x in range(u.width):
                for y in range(u.height):
                    if u.grid.get(x, y) is obj:
                        found[obj.color] = (x, y)
        return np.array([*found["red"], *found["blue"]], np.int32)
