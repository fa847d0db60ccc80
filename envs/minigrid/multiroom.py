"""MultiRoom (`minigrid.envs.MultiRoomEnv`) with two 4x4 rooms: MiniGrid-MultiRoom-N2-S4-v0.

minigrid's generator is a recursive rejection sampler. For two rooms of size 4 (minSz =
maxSz = 4) its distribution can be written down exactly, which is what `_layout` samples:

* The first room's top-left corner t is drawn uniformly in [0, 22]^2 and rejected unless the
  room fits (t_x + 4 <= 25, t_y + 4 < 25).
* Then up to 8 tries to attach the second room: each try picks the exit wall uniformly among
  right / bottom / top (not left, the entry side), a door offset uniformly in {1, 2} along
  it and the second room's offset uniformly in {0, 1} along the door wall: 12 equally likely
  outcomes, kept if the second room fits in the grid (adjacent rooms are never checked for
  overlap). The first fitting try is used; if none of the 8 fits, the whole attempt restarts.
* Hence t has probability proportional to 1 - (1 - p_t)^8, p_t the fraction of the 12
  outcomes that fit, and the outcome is uniform over the fitting ones.
* The door between the rooms is closed, of a uniform colour; the agent is uniform over the
  first room's four inner cells with a uniform direction, the goal uniform over the second's.

The rest of the 25x25 grid is empty floor (type `empty`), as in minigrid. max_steps = 40.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from envs.minigrid.core import (
    CLOSED,
    DOOR,
    GOAL_CELL,
    WALL_CELL,
    GridEnv,
    State,
    coords,
    empty_grid,
    fill,
    make_state,
    set_cell,
)

GRID = 25
ROOM = 4
TRIES = 8


def _fits(x: int, y: int) -> bool:
    """`MultiRoomEnv._placeRoom`'s grid check for a ROOM x ROOM room at (x, y)."""
    return x >= 0 and y >= 0 and x + ROOM <= GRID and y + ROOM < GRID


def attachment_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every first-room corner (the 23 x 23 draws of minigrid, flattened): the weight of
    that corner, and per outcome of one try (12) the door cell, the second room's corner and
    whether it fits."""
    span = GRID - 2  # entryDoorPos = (_rand_int(0, width - 2), _rand_int(0, width - 2))
    weight = np.zeros(span * span)
    door = np.zeros((span * span, 12, 2), np.int32)
    corner = np.zeros((span * span, 12, 2), np.int32)
    fits = np.zeros((span * span, 12), bool)
    for tx in range(span):
        for ty in range(span):
            k = tx * span + ty
            if not _fits(tx, ty):
                continue
            o = 0
            for wall in (0, 1, 3):  # exit wall: right, bottom, top
                for offset in (1, 2):
                    for shift in (0, 1):
                        if wall == 0:  # second room entered from its left wall
                            d = (tx + ROOM - 1, ty + offset)
                            c = (d[0], d[1] - ROOM + 2 + shift)
                        elif wall == 1:  # entered from its top wall
                            d = (tx + offset, ty + ROOM - 1)
                            c = (d[0] - ROOM + 2 + shift, d[1])
                        else:  # entered from its bottom wall
                            d = (tx + offset, ty)
                            c = (d[0] - ROOM + 2 + shift, d[1] - ROOM + 1)
                        door[k, o], corner[k, o], fits[k, o] = d, c, _fits(*c)
                        o += 1
            p = fits[k].mean()
            weight[k] = 1.0 - (1.0 - p) ** TRIES
    return weight, door, corner, fits


_WEIGHT, _DOOR, _CORNER, _FITS = attachment_table()


@dataclass(frozen=True)
class MultiRoomN2S4(GridEnv):
    """Two 4x4 rooms joined by a closed door; the agent starts in the first, the goal is in
    the second (see the module docstring for the exact distribution)."""

    gym_id = "MiniGrid-MultiRoom-N2-S4-v0"
    width = GRID
    height = GRID
    max_steps = 2 * 20

    def _layout(self, key: jax.Array) -> State:
        k_room, k_try, k_color, k_agent, k_dir, k_goal = jax.random.split(key, 6)
        span = GRID - 2
        first = jax.random.categorical(k_room, jnp.log(jnp.asarray(_WEIGHT, jnp.float32)))
        fits = jnp.asarray(_FITS)[first]
        outcome = jax.random.categorical(k_try, jnp.where(fits, 0.0, -jnp.inf))
        door = jnp.asarray(_DOOR)[first, outcome]
        second = jnp.asarray(_CORNER)[first, outcome]
        corner1 = jnp.stack([first // span, first % span])
        xs, ys = coords(GRID, GRID)

        def rect(c):
            return (xs >= c[0]) & (xs < c[0] + ROOM) & (ys >= c[1]) & (ys < c[1] + ROOM)

        def ring(c):
            inner = (xs > c[0]) & (xs < c[0] + ROOM - 1) & (ys > c[1]) & (ys < c[1] + ROOM - 1)
            return rect(c) & ~inner

        grid = jnp.asarray(empty_grid(GRID, GRID))
        grid = fill(grid, ring(corner1) | ring(second), WALL_CELL)
        color = jax.random.randint(k_color, (), 0, 6).astype(jnp.uint8)
        grid = set_cell(grid, door[0], door[1], jnp.stack([jnp.uint8(DOOR), color,
                                                           jnp.uint8(CLOSED)]))
        # minigrid's place_agent / place_obj over a room's rectangle accept exactly its four
        # inner cells (free, and the rooms' insides are disjoint): draw one of them directly.
        def inner_cell(k, corner):
            i = jax.random.randint(k, (), 0, (ROOM - 2) ** 2)
            return corner + 1 + jnp.stack([i % (ROOM - 2), i // (ROOM - 2)])

        agent = inner_cell(k_agent, corner1)
        agent_dir = jax.random.randint(k_dir, (), 0, 4)
        goal = inner_cell(k_goal, second)
        grid = set_cell(grid, goal[0], goal[1], GOAL_CELL)
        return make_state(grid, agent, agent_dir, self.max_steps)

