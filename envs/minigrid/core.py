"""The shared MiniGrid engine: state, observation (view, rotation, occlusion), the step rules.

Everything here reproduces `minigrid` 3.x (`minigrid.minigrid_env.MiniGridEnv` and
`minigrid.core.grid.Grid`) as pure JAX functions of one environment; `jax.vmap` them for a batch.
See the package docstring for the state layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Object types, colours, door states and actions: minigrid's integer codes
# (`OBJECT_TO_IDX`, `COLOR_TO_IDX`, `STATE_TO_IDX`, `Actions`).
UNSEEN, EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA, AGENT = range(11)
RED, GREEN, BLUE, PURPLE, YELLOW, GREY = range(6)
OPEN, CLOSED, LOCKED = range(3)
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
NUM_ACTIONS = 7
VIEW = 7  # agent_view_size (every env here uses minigrid's default)

OBJECT_NAMES = (
    "unseen", "empty", "wall", "floor", "door", "key", "ball", "box", "goal", "lava", "agent"
)
COLOR_NAMES = ("red", "green", "blue", "purple", "yellow", "grey")

# DIR_TO_VEC: 0 right (+x), 1 down (+y), 2 left (-x), 3 up (-y).
DIR_TO_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int32)


def cell(obj_type: int, color: int = 0, state: int = 0) -> np.ndarray:
    """The 3-byte encoding of one grid cell, as `WorldObj.encode` gives it."""
    return np.array([obj_type, color, state], np.uint8)


EMPTY_CELL = cell(EMPTY)
WALL_CELL = cell(WALL, GREY)
GOAL_CELL = cell(GOAL, GREEN)
LAVA_CELL = cell(LAVA, RED)
NOTHING = np.array([EMPTY, 0], np.uint8)  # `carrying` when the agent holds nothing


@struct.dataclass
class State:
    """One MiniGrid environment (see the package docstring)."""

    grid: jax.Array  # (W, H, 3) uint8: [x, y] -> (type, colour, state), minigrid's Grid.encode()
    agent_pos: jax.Array  # (2,) int32 (x, y)
    agent_dir: jax.Array  # () int32, 0 right, 1 down, 2 left, 3 up
    carrying: jax.Array  # (2,) uint8 (type, colour); (EMPTY, 0) when nothing is carried
    step_count: jax.Array  # () int32
    max_steps: jax.Array  # () int32
    aux: jax.Array  # (4,) int32, per env (Memory: success/failure cells; RedBlueDoors: doors)


def coords(width: int, height: int) -> tuple[jax.Array, jax.Array]:
    """(W, H) arrays of the x and y of every cell."""
    return jnp.meshgrid(jnp.arange(width), jnp.arange(height), indexing="ij")


def fill(grid: jax.Array, mask: jax.Array, value: np.ndarray) -> jax.Array:
    """Set the cells where `mask` (W, H) holds to the 3-byte `value`."""
    return jnp.where(mask[..., None], jnp.asarray(value, jnp.uint8), grid)


def set_cell(grid: jax.Array, x, y, value) -> jax.Array:
    return grid.at[x, y].set(jnp.asarray(value, jnp.uint8))


def border(width: int, height: int) -> np.ndarray:
    """(W, H) bool mask of the outer ring (`Grid.wall_rect(0, 0, W, H)`)."""
    mask = np.zeros((width, height), bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def empty_grid(width: int, height: int) -> np.ndarray:
    return np.broadcast_to(EMPTY_CELL, (width, height, 3)).copy()


def walled_grid(width: int, height: int) -> np.ndarray:
    """An empty grid inside a ring of walls (minigrid's usual `_gen_grid` start)."""
    grid = empty_grid(width, height)
    grid[border(width, height)] = WALL_CELL
    return grid


def sample_cell(key: jax.Array, mask: jax.Array) -> jax.Array:
    """A cell drawn uniformly among those where `mask` (W, H) holds, as (x, y) int32.

    This is the distribution of minigrid's `place_obj`/`place_agent` rejection sampling: it
    draws uniformly in a rectangle and retries on rejected cells, so it ends uniform over the
    accepted ones.
    """
    width, height = mask.shape
    logits = jnp.where(mask.reshape(-1), 0.0, -jnp.inf)
    flat = jax.random.categorical(key, logits)
    return jnp.stack([flat // height, flat % height]).astype(jnp.int32)


def make_state(grid, agent_pos, agent_dir, max_steps: int, aux=None) -> State:
    return State(
        grid=jnp.asarray(grid, jnp.uint8),
        agent_pos=jnp.asarray(agent_pos, jnp.int32),
        agent_dir=jnp.asarray(agent_dir, jnp.int32),
        carrying=jnp.asarray(NOTHING),
        step_count=jnp.zeros((), jnp.int32),
        max_steps=jnp.asarray(max_steps, jnp.int32),
        aux=jnp.zeros(4, jnp.int32) if aux is None else jnp.asarray(aux, jnp.int32),
    )


# --------------------------------------------------------------------------------------------
# Observation


def view_cells(state: State) -> jax.Array:
    """The (7, 7, 3) cells of the agent's view before occlusion, indexed [view x, view y].

    minigrid slices the grid around the agent (`get_view_exts`), fills cells outside the grid
    with walls and rotates left `agent_dir + 1` times, so the agent sits at view (3, 6) facing
    view-up. In world terms, view cell (i, j) is agent + f * (6 - j) + r * (i - 3), with f the
    forward vector and r = (-f_y, f_x) the right vector.
    """
    width, height = state.grid.shape[:2]
    f = jnp.asarray(DIR_TO_VEC)[state.agent_dir]
    r = jnp.stack([-f[1], f[0]])
    i = jnp.arange(VIEW)[:, None]
    j = jnp.arange(VIEW)[None, :]
    ahead = VIEW - 1 - j
    side = i - VIEW // 2
    wx = state.agent_pos[0] + f[0] * ahead + r[0] * side
    wy = state.agent_pos[1] + f[1] * ahead + r[1] * side
    inside = (wx >= 0) & (wx < width) & (wy >= 0) & (wy < height)
    cells = state.grid[jnp.clip(wx, 0, width - 1), jnp.clip(wy, 0, height - 1)]
    return jnp.where(inside[..., None], cells, jnp.asarray(WALL_CELL))


def see_behind(cells: jax.Array) -> jax.Array:
    """`WorldObj.see_behind`: false for walls and doors that are not open."""
    kind, state = cells[..., 0], cells[..., 2]
    return ~((kind == WALL) | ((kind == DOOR) & (state != OPEN)))


def visibility(cells: jax.Array) -> jax.Array:
    """`Grid.process_vis` on the rotated view, agent at (3, 6): the (7, 7) visible mask.

    minigrid walks the rows from the agent's (j = 6) to the farthest (j = 0). In row j it runs
    a left-to-right pass (i = 0..5: if (i, j) is visible and see-through, make (i+1, j),
    (i, j-1) and (i+1, j-1) visible), then a right-to-left pass (i = 6..1: the same towards
    i-1). The passes are sequential along the row; in closed form, after the left pass cell i
    is visible iff some visible k <= i has only see-through cells in [k, i), and after the
    right pass iff some k >= i visible after the left pass has only see-through cells in
    (i, k]. What a row adds to the row ahead does not feed back into the row, so it is
    computed after both passes, from the visibility each pass saw.
    """
    clear = see_behind(cells)
    n = VIEW
    idx = jnp.arange(n)
    not_after = idx[:, None] <= idx[None, :]  # [k, i]: k <= i
    not_before = idx[:, None] >= idx[None, :]  # [k, i]: k >= i
    none = jnp.zeros(1, bool)
    ahead = jnp.zeros(n, bool).at[n // 2].set(True)
    rows = [None] * n
    for j in range(n - 1, -1, -1):
        c = clear[:, j]
        # blocked[t] = number of cells one cannot see behind among c[0:t]
        blocked = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(~c, dtype=jnp.int32)])
        run_left = blocked[None, :n] == blocked[:n, None]  # [k, i]: c[k:i] all clear (k <= i)
        run_right = blocked[1:, None] == blocked[None, 1:]  # [k, i]: c[i+1:k+1] all clear
        after_left = jnp.any(ahead[:, None] & not_after & run_left, axis=0)
        row = jnp.any(after_left[:, None] & not_before & run_right, axis=0)
        rows[j] = row
        if j > 0:
            # The left pass spreads from cell i < n-1 to i and i+1 ahead, the right pass from
            # cell i > 0 to i-1 and i: both are "from entry k to k and k+1", k = 0..n-2.
            spread = (after_left[:-1] & c[:-1]) | (row[1:] & c[1:])
            ahead = jnp.concatenate([spread, none]) | jnp.concatenate([none, spread])
    return jnp.stack(rows, axis=1)


def observation(state: State, see_through_walls: bool = False) -> jax.Array:
    """The (7, 7, 3) uint8 image of `gen_obs()["image"]` (what `ImgObsWrapper` returns)."""
    cells = view_cells(state)
    if see_through_walls:
        image = cells
    else:
        image = jnp.where(visibility(cells)[..., None], cells, jnp.uint8(UNSEEN))
    # The agent's own cell shows what it carries (or empty): `gen_obs_grid`.
    held = jnp.concatenate([state.carrying, jnp.zeros(1, jnp.uint8)])
    return image.at[VIEW // 2, VIEW - 1].set(held)


# --------------------------------------------------------------------------------------------
# Step


def success_reward(state: State) -> jax.Array:
    """`MiniGridEnv._reward` with the step count already incremented."""
    return 1.0 - 0.9 * (state.step_count.astype(jnp.float32) / state.max_steps)


def core_step(state: State, action: jax.Array) -> tuple[State, jax.Array, jax.Array]:
    """`MiniGridEnv.step` without the observation: (state, reward, terminated).

    Truncation (`step_count >= max_steps`) is left to the caller, after any env-specific rules.
    """
    grid = state.grid
    width, height = grid.shape[:2]
    action = jnp.asarray(action, jnp.int32)
    step_count = state.step_count + 1
    pos, direction = state.agent_pos, state.agent_dir
    fwd = pos + jnp.asarray(DIR_TO_VEC)[direction]
    inside = (fwd[0] >= 0) & (fwd[0] < width) & (fwd[1] >= 0) & (fwd[1] < height)
    fx, fy = jnp.clip(fwd[0], 0, width - 1), jnp.clip(fwd[1], 0, height - 1)
    old = grid[fx, fy]
    here = jnp.where(inside, old, jnp.asarray(WALL_CELL))
    kind, color, door = here[0], here[1], here[2]
    carry_kind, carry_color = state.carrying[0], state.carrying[1]
    empty_handed = carry_kind == EMPTY

    can_overlap = (
        (kind == EMPTY) | (kind == GOAL) | (kind == FLOOR) | (kind == LAVA)
        | ((kind == DOOR) & (door == OPEN))
    )
    can_pickup = (kind == KEY) | (kind == BALL) | (kind == BOX)

    forward = action == FORWARD
    new_pos = jnp.where(forward & can_overlap, fwd, pos)
    at_goal = forward & (kind == GOAL)
    terminated = at_goal | (forward & (kind == LAVA))
    turned = jnp.where(action == RIGHT, (direction + 1) % 4, direction)
    new_dir = jnp.where(action == LEFT, (direction + 3) % 4, turned)

    pickup = (action == PICKUP) & can_pickup & empty_handed
    drop = (action == DROP) & (kind == EMPTY) & ~empty_handed
    toggle = action == TOGGLE
    has_key = (carry_kind == KEY) & (carry_color == color)
    door_after = jnp.where(
        door == LOCKED,
        jnp.where(has_key, OPEN, LOCKED),
        jnp.where(door == OPEN, CLOSED, OPEN),
    ).astype(jnp.uint8)
    new_cell = here
    new_cell = jnp.where(pickup | (toggle & (kind == BOX)), jnp.asarray(EMPTY_CELL), new_cell)
    new_cell = jnp.where(drop, jnp.stack([carry_kind, carry_color, jnp.uint8(0)]), new_cell)
    new_cell = jnp.where(toggle & (kind == DOOR), new_cell.at[2].set(door_after), new_cell)
    grid = grid.at[fx, fy].set(jnp.where(inside, new_cell, old))
    carrying = jnp.where(
        pickup, jnp.stack([kind, color]), jnp.where(drop, jnp.asarray(NOTHING), state.carrying)
    )

    state = state.replace(
        grid=grid, agent_pos=new_pos.astype(jnp.int32), agent_dir=new_dir.astype(jnp.int32),
        carrying=carrying, step_count=step_count,
    )
    reward = jnp.where(at_goal, success_reward(state), 0.0).astype(jnp.float32)
    return state, reward, terminated


# --------------------------------------------------------------------------------------------
# Environments


@dataclass(frozen=True)
class GridEnv:
    """One MiniGrid environment: a layout generator plus the shared step and observation.

    Subclasses set the class attributes and implement `_layout(key) -> State`; those with extra
    rules override `_pre_action` and/or `_rules`.
    """

    gym_id = ""
    width = 0
    height = 0
    max_steps = 0
    see_through_walls = False

    def reset(self, key: jax.Array) -> tuple[State, jax.Array]:
        state = self._layout(key)
        return state, self.observation(state)

    def step(
        self, state: State, action
    ) -> tuple[State, jax.Array, jax.Array, jax.Array, jax.Array]:
        """(state, obs, reward, terminated, truncated), exactly as minigrid's `step`."""
        action = self._pre_action(jnp.asarray(action, jnp.int32))
        new, reward, terminated = core_step(state, action)
        new, reward, terminated = self._rules(state, new, action, reward, terminated)
        truncated = new.step_count >= new.max_steps
        return new, self.observation(new), reward, terminated, truncated

    def observation(self, state: State) -> jax.Array:
        return observation(state, self.see_through_walls)

    def step_autoreset(
        self, state: State, action, key: jax.Array
    ) -> tuple[State, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """(state, obs, reward, terminated, truncated, final_obs): `step`; where the episode
        ended (terminated or truncated), the returned state and observation are those of a
        fresh `reset(key)`, while reward and flags stay the ended step's and `final_obs` is the
        ended step's observation (before the reset; equal to `obs` elsewhere), for bootstrapping
        V(final_obs) on truncation. Unused, `final_obs` costs nothing under jit (dead code).
        """
        state, obs, reward, terminated, truncated = self.step(state, action)
        fresh, fresh_obs = self.reset(key)
        done = terminated | truncated
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(done, new, old), fresh, state)
        return state, jnp.where(done, fresh_obs, obs), reward, terminated, truncated, obs

    def _layout(self, key: jax.Array) -> State:
        raise NotImplementedError

    def _pre_action(self, action: jax.Array) -> jax.Array:
        return action

    def _rules(self, before: State, after: State, action, reward, terminated):
        return after, reward, terminated

    # -- loading a reference env -------------------------------------------------------------

    def from_minigrid(self, env) -> State:
        """Our state from a `minigrid` env (or a gymnasium wrapper around one), after reset or
        any number of steps."""
        u = env.unwrapped
        grid = np.asarray(u.grid.encode(), np.uint8)
        if grid.shape[:2] != (self.width, self.height):
            raise ValueError(f"grid {grid.shape[:2]} is not ({self.width}, {self.height})")
        if u.carrying is None:
            carrying = NOTHING
        else:
            carrying = np.array(u.carrying.encode()[:2], np.uint8)
        return State(
            grid=jnp.asarray(grid),
            agent_pos=jnp.asarray(np.asarray(u.agent_pos, np.int32)),
            agent_dir=jnp.asarray(int(u.agent_dir), jnp.int32),
            carrying=jnp.asarray(carrying),
            step_count=jnp.asarray(int(u.step_count), jnp.int32),
            max_steps=jnp.asarray(int(u.max_steps), jnp.int32),
            aux=jnp.asarray(self._aux_from_minigrid(u), jnp.int32),
        )

    def _aux_from_minigrid(self, u) -> np.ndarray:
        return np.zeros(4, np.int32)


class SquareGridEnv(GridEnv):
    """A GridEnv whose grid is `size` x `size` (subclasses declare the `size` field)."""

    @property
    def width(self) -> int:
        return self.size

    @property
    def height(self) -> int:
        return self.size
