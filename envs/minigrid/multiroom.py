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
    EMPTY_CELL,
    GOAL_CELL,
    WALL,
    Draws,
    GridEnv,
    State,
    empty_grid,
    make_state,
    put_patch,
    walled_grid,
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


def sampling_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tables to draw the first room's corner and the attachment with a few uniform draws.

    A corner's weight depends only on f, its number of fitting outcomes (of 12): 1 - (1 -
    f/12)^8, i.e. 12^8 - (12 - f)^8 in integers. So the corner is drawn as f (weight: that
    times the number of corners with that f; f = 0 has weight 0 and is left out), then a
    corner uniform among those with that f; the outcome is uniform among its fitting ones.
    Returns the weight per class, the class sizes, the corners of each class (padded), and
    per corner the number of fitting outcomes and the fitting outcomes in order (padded).
    """
    num_fits = _FITS.sum(axis=1)
    classes = sorted(set(num_fits.tolist()) - {0})
    members = [np.flatnonzero(num_fits == f) for f in classes]
    class_weight = np.array(
        [len(m) * (12**TRIES - (12 - f) ** TRIES) for f, m in zip(classes, members, strict=True)],
        dtype=object,
    )
    class_size = np.array([len(m) for m in members], np.int32)
    class_members = np.zeros((len(classes), class_size.max()), np.int32)
    for c, m in enumerate(members):
        class_members[c, : len(m)] = m
    fitting = np.zeros(_FITS.shape, np.int32)
    for k in range(len(_FITS)):
        outcomes = np.flatnonzero(_FITS[k])
        fitting[k, : len(outcomes)] = outcomes
    return class_weight, class_size, class_members, num_fits.astype(np.int32), fitting


_CLASS_WEIGHT, _CLASS_SIZE, _CLASS_MEMBERS, _NUM_FITS, _FITTING = sampling_tables()
_ROOM_PATCH = walled_grid(ROOM, ROOM)  # a room: its walls around empty cells


@dataclass(frozen=True)
class MultiRoomN2S4(GridEnv):
    """Two 4x4 rooms joined by a closed door; the agent starts in the first, the goal is in
    the second (see the module docstring for the exact distribution)."""

    gym_id = "MiniGrid-MultiRoom-N2-S4-v0"
    width = GRID
    height = GRID
    max_steps = 2 * 20

    def _layout(self, key: jax.Array) -> State:
        return self._draw(key, jnp.asarray(empty_grid(GRID, GRID)), True)

    def _reset_where(self, done: jax.Array, key: jax.Array, state: State) -> State:
        # Selecting between a whole fresh 25x25 grid and the old one takes several passes over
        # both (building, then selecting) on every step, most of the reset's cost. Instead the
        # old grid is cleared where done, and the layout's few non-empty cells are written
        # over it, each only where done.
        grid = jnp.where(done, jnp.asarray(EMPTY_CELL), state.grid)
        fresh = self._draw(key, grid, done)
        return jax.tree_util.tree_map(
            lambda new, old: jnp.where(done, new, old), fresh.replace(grid=state.grid), state
        ).replace(grid=fresh.grid)

    def _draw(self, key: jax.Array, grid: jax.Array, write) -> State:
        """The layout drawn from `key`, its rooms, door and goal written into the empty `grid`
        where `write` holds (elsewhere `grid` is returned unchanged)."""
        draws = Draws(key, 7)
        span = GRID - 2
        # The first room's corner with probability proportional to _WEIGHT (drawn through its
        # class, see `sampling_tables`), then an outcome uniform among its fitting ones.
        group = draws.weighted(_CLASS_WEIGHT)
        first = jnp.asarray(_CLASS_MEMBERS)[group, draws.below(jnp.asarray(_CLASS_SIZE)[group])]
        outcome = jnp.asarray(_FITTING)[first, draws.below(jnp.asarray(_NUM_FITS)[first])]
        door = jnp.asarray(_DOOR)[first, outcome]
        second = jnp.asarray(_CORNER)[first, outcome]
        corner1 = jnp.stack([first // span, first % span])
        # Each room's walls are one 4x4 patch at its corner. The rooms share the door's wall:
        # the second patch keeps the first room's walls there (its inside never meets them).
        room = jnp.asarray(_ROOM_PATCH)
        grid = put_patch(grid, corner1[0], corner1[1], room, write)
        under = jax.lax.dynamic_slice(grid, (second[0], second[1], 0), (ROOM, ROOM, 3))
        second_room = jnp.where(under[..., :1] == WALL, under, room)
        grid = put_patch(grid, second[0], second[1], second_room, write)
        color = draws.below(6).astype(jnp.uint8)
        door_cell = jnp.stack([jnp.uint8(DOOR), color, jnp.uint8(CLOSED)])
        grid = put_patch(grid, door[0], door[1], door_cell[None, None], write)
        # minigrid's place_agent / place_obj over a room's rectangle accept exactly its four
        # inner cells (free, and the rooms' insides are disjoint): draw one of them directly.
        agent = draws.cell_in(corner1[0] + 1, corner1[1] + 1, ROOM - 2, ROOM - 2)
        agent_dir = draws.below(4)
        goal = draws.cell_in(second[0] + 1, second[1] + 1, ROOM - 2, ROOM - 2)
        grid = put_patch(grid, goal[0], goal[1], jnp.asarray(GOAL_CELL)[None, None], write)
        return make_state(grid, agent, agent_dir, self.max_steps)
