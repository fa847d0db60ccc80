"""Crossing (`minigrid.envs.CrossingEnv`): MiniGrid-SimpleCrossingS{9N1,9N2,9N3,11N5}-v0
(wall rivers) and MiniGrid-LavaCrossingS{9N1,9N2,9N3,11N5}-v0 (lava rivers)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from envs.minigrid.core import (
    EMPTY_CELL,
    GOAL_CELL,
    LAVA_CELL,
    WALL_CELL,
    SquareGridEnv,
    State,
    coords,
    fill,
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

    def _layout(self, key: jax.Array) -> State:
        n, count = self.size, self.num_crossings
        k_rivers, k_path, k_open = jax.random.split(key, 3)
        xs, ys = coords(n, n)
        grid = jnp.asarray(walled_grid(n, n))
        grid = set_cell(grid, n - 2, n - 2, GOAL_CELL)

        # Candidates: vertical rivers (columns) x = 2, 4, .., then horizontal ones (rows).
        per_dir = len(range(2, n - 2, 2))
        chosen = jax.random.permutation(k_rivers, 2 * per_dir)[:count]
        vertical = chosen < per_dir
        position = 2 + 2 * jnp.where(vertical, chosen, chosen - per_dir)
        far = n - 1  # padding: sorts last and is the final limit anyway
        rivers_v = jnp.sort(jnp.where(vertical, position, far))
        rivers_h = jnp.sort(jnp.where(vertical, far, position))
        num_v = jnp.sum(vertical)

        inner = (xs >= 1) & (xs <= n - 2) & (ys >= 1) & (ys <= n - 2)
        on_v = jnp.any(xs[..., None] == jnp.where(vertical, position, -1), axis=-1)
        on_h = jnp.any(ys[..., None] == jnp.where(vertical, -1, position), axis=-1)
        grid = fill(grid, inner & (on_v | on_h), LAVA_CELL if self.lava else WALL_CELL)

        # The path: a uniform arrangement of num_v moves through vertical rivers ("h" in
        # minigrid) and count - num_v through horizontal ones ("v").
        crosses_vertical = jax.random.permutation(k_path, count) < num_v
        limits_v = jnp.concatenate([jnp.zeros(1, jnp.int32), rivers_v, jnp.full(1, far)])
        limits_h = jnp.concatenate([jnp.zeros(1, jnp.int32), rivers_h, jnp.full(1, far)])
        room_i = room_j = jnp.int32(0)
        for k in range(count):
            move_h = crosses_vertical[k]
            k_key = jax.random.fold_in(k_open, k)
            lo = jnp.where(move_h, limits_h[room_j], limits_v[room_i]) + 1
            hi = jnp.where(move_h, limits_h[room_j + 1], limits_v[room_i + 1])
            free = jax.random.randint(k_key, (), lo, hi)
            x = jnp.where(move_h, limits_v[room_i + 1], free)
            y = jnp.where(move_h, free, limits_h[room_j + 1])
            grid = set_cell(grid, x, y, EMPTY_CELL)
            room_i = room_i + move_h.astype(jnp.int32)
            room_j = room_j + (~move_h).astype(jnp.int32)
        return make_state(grid, (1, 1), 0, self.max_steps)
