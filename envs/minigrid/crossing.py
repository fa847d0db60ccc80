"""Crossing (`minigrid.envs.CrossingEnv`): MiniGrid-SimpleCrossingS{9N1,9N2,9N3,11N5}-v0
(wall rivers) and MiniGrid-LavaCrossingS{9N1,9N2,9N3,11N5}-v0 (lava rivers)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid.core import (
    EMPTY_CELL,
    GOAL_CELL,
    LAVA_CELL,
    WALL_CELL,
    Draws,
    SquareGridEnv,
    State,
    make_state,
    set_cell,
    walled_grid,
)


@dataclass(frozen=True)
class Crossing(SquareGridEnv):
    """Agent (1, 1) facing right, goal at the bottom-right corner, `num_crossings` rivers
    (full-length rows or columns at even coordinates 2, 4, .., size-3) chosen as a uniform
    random subset, then one opening per river along a random monotone path: minigrid shuffles
    the list of moves (one right-move per vertical river, one down-move per horizontal one)
    and opens, for each move in turn, a uniform cell of the current room's side on the river
    it crosses. max_steps = 4 * size**2."""

    size: int = 9
    num_crossings: int = 2
    lava: bool = False  # False: walls ("SimpleCrossing"), True: lava ("LavaCrossing")

    @property
    def gym_id(self) -> str:
        kind = "LavaCrossing" if self.lava else "SimpleCrossing"
        return f"MiniGrid-{kind}S{self.size}N{self.num_crossings}-v0"

    @property
    def max_steps(self) -> int:
        return 4 * self.size**2

    def river_grids(self) -> np.ndarray:
        """(2 ** (2 * per_dir), size, size, 3) uint8: for every subset of the river
        candidates (bit c: candidate c, the columns x = 2, 4, .. then the rows), the walled
        grid with the goal and those rivers, openings not yet cut."""
        n = self.size
        per_dir = len(range(2, n - 2, 2))
        river = LAVA_CELL if self.lava else WALL_CELL
        grids = np.broadcast_to(walled_grid(n, n), (2 ** (2 * per_dir), n, n, 3)).copy()
        grids[:, n - 2, n - 2] = GOAL_CELL
        for subset in range(len(grids)):
            for c in range(2 * per_dir):
                if not subset >> c & 1:
                    continue
                position = 2 + 2 * (c % per_dir)
                if c < per_dir:
                    grids[subset, position, 1:n - 1] = river
                else:
                    grids[subset, 1:n - 1, position] = river
        return grids

    def _layout(self, key: jax.Array) -> State:
        n, count = self.size, self.num_crossings
        per_dir = len(range(2, n - 2, 2))
        draws = Draws(key, 2 * per_dir + 2 * count)

        # Rivers: minigrid keeps the first `count` of a shuffle of the candidates, vertical
        # rivers (columns x = 2, 4, ..) then horizontal ones (rows): a uniform `count`-subset.
        # Drawn here by selection sampling (each candidate in turn is kept with probability
        # needed / remaining), which yields the kept rivers of each direction in increasing
        # position, with no shuffle or sort. rivers_v / rivers_h: their positions, padded with
        # `far` (the final limit anyway). The grid with those rivers is looked up by the
        # subset's bits in `river_grids` (one gather; writing the rivers as patches was most
        # of a step's cost, and resets run on every step).
        far = n - 1
        slot = jnp.arange(count)
        rivers_v = rivers_h = jnp.full(count, far, jnp.int32)
        num_v = num_h = jnp.int32(0)
        needed = jnp.int32(count)
        subset = jnp.int32(0)
        for c in range(2 * per_dir):
            keep = draws.below(2 * per_dir - c) < needed
            needed = needed - keep
            subset = subset | (keep.astype(jnp.int32) << c)
            position = 2 + 2 * (c % per_dir)
            if c < per_dir:
                rivers_v = jnp.where(keep & (slot == num_v), position, rivers_v)
                num_v = num_v + keep
            else:
                rivers_h = jnp.where(keep & (slot == num_h), position, rivers_h)
                num_h = num_h + keep
        grid = jnp.asarray(self.river_grids())[subset]

        # The path: a uniform arrangement of num_v moves through vertical rivers ("h" in
        # minigrid) and count - num_v through horizontal ones ("v"), drawn move by move (a
        # move is "h" with probability: "h" moves left / moves left).
        limits_v = jnp.concatenate([jnp.zeros(1, jnp.int32), rivers_v, jnp.full(1, far)])
        limits_h = jnp.concatenate([jnp.zeros(1, jnp.int32), rivers_h, jnp.full(1, far)])
        room_i = room_j = jnp.int32(0)
        for k in range(count):
            move_h = draws.below(count - k) < num_v - room_i
            lo = jnp.where(move_h, limits_h[room_j], limits_v[room_i]) + 1
            hi = jnp.where(move_h, limits_h[room_j + 1], limits_v[room_i + 1])
            free = draws.randint(lo, hi)
            x = jnp.where(move_h, limits_v[room_i + 1], free)
            y = jnp.where(move_h, free, limits_h[room_j + 1])
            grid = set_cell(grid, x, y, EMPTY_CELL)
            room_i = room_i + move_h.astype(jnp.int32)
            room_j = room_j + (~move_h).astype(jnp.int32)
        return make_state(grid, (1, 1), 0, self.max_steps)
