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
ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(len(ACTION_NAMES))
NUM_ACTIONS = len(ACTION_NAMES)
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


def put_patch(grid: jax.Array, x, y, patch, write=True) -> jax.Array:
    """Write the (a, b, 3) cells `patch` at [x, x + a) x [y, y + b) (x, y may be traced),
    where `write` holds (a traced bool, or True).

    Layouts write their lines and rooms this way rather than as masks over the whole grid,
    where XLA fuses the mask's computation (and the random draws it depends on) into every
    cell: for MultiRoom's 25x25 grid that was several times slower (resets run every step).
    """
    patch = jnp.asarray(patch, jnp.uint8)
    under = jax.lax.dynamic_slice(grid, (x, y, 0), patch.shape)
    return jax.lax.dynamic_update_slice(grid, jnp.where(write, patch, under), (x, y, 0))


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


def _mul_hi(a: jax.Array, b: jax.Array) -> jax.Array:
    """floor(a * b / 2**32) for uint32 a and b < 2**16, without 64-bit integers: with
    a = a1 2**16 + a0, it is floor((a1 b + floor(a0 b / 2**16)) / 2**16), no term overflows."""
    return ((a >> 16) * b + (((a & 0xFFFF) * b) >> 16)) >> 16


class Draws:
    """Uniform random integers for one layout, all from a single PRNG call.

    A layout needs a handful of small uniform draws; one PRNG call for all of them is several
    times cheaper than one call per draw (and than `jax.random.randint`, which costs
    two PRNG calls and integer divisions per draw), and resets run on every step.

    `below(span)` is floor(u span / 2**64) for a uniform 64-bit u (two 32-bit words): uniform
    over [0, span) up to a relative bias below span / 2**64 (< 1e-15 here), the same precision
    as `jax.random.randint`. Spans (and ranges) must be below 2**16; they may be traced.
    """

    def __init__(self, key: jax.Array, count: int):
        # The words are the data of `count` keys split from `key`: each split key is one
        # threefry hash of the key and a counter, two uniform 32-bit words. Under vmap on the
        # CPU that is about 4x cheaper than `jax.random.bits(key, (count, 2))`, which hashes
        # once per 32-bit word (and layouts are drawn on every step).
        self._words = jax.random.key_data(jax.random.split(key, count))[..., :2]
        self._next = 0

    def _take(self) -> tuple[jax.Array, jax.Array]:
        """The next two unused 32-bit words."""
        if self._next == self._words.shape[0]:
            raise ValueError("Draws: all draws used; create it with a larger count")
        self._next += 1
        return self._words[self._next - 1, 0], self._words[self._next - 1, 1]

    def below(self, span) -> jax.Array:
        """An int32 uniform in [0, span)."""
        hi, lo = self._take()
        span = jnp.asarray(span).astype(jnp.uint32)
        # floor((hi 2**32 + lo) span / 2**64) = floor(hi span / 2**32) + the carry out of
        # (hi span mod 2**32) + floor(lo span / 2**32).
        low = hi * span  # wraps: hi span mod 2**32
        carry = (low + _mul_hi(lo, span)) < low
        return (_mul_hi(hi, span) + carry.astype(jnp.uint32)).astype(jnp.int32)

    def randint(self, low, high) -> jax.Array:
        """An int32 uniform in [low, high) (minigrid's `_rand_int(low, high)`)."""
        return jnp.asarray(low, jnp.int32) + self.below(jnp.asarray(high) - low)

    def weighted(self, weights) -> jax.Array:
        """An int32 index i drawn with probability weights[i] / sum(weights), for static
        non-negative integer `weights`: the number of cumulative bounds floor(2**64 cdf) at
        or below a uniform 64-bit u, so each probability is exact up to 2**-64."""
        weights = [int(w) for w in weights]
        total = sum(weights)
        bounds = [(sum(weights[: i + 1]) << 64) // total for i in range(len(weights) - 1)]
        bound_hi = jnp.asarray(np.array([b >> 32 for b in bounds], np.uint32))
        bound_lo = jnp.asarray(np.array([b & 0xFFFFFFFF for b in bounds], np.uint32))
        hi, lo = self._take()
        below = (hi < bound_hi) | ((hi == bound_hi) & (lo < bound_lo))
        return jnp.sum(~below, dtype=jnp.int32)

    def cell_in(self, x0, y0, width, height: int, skip=None) -> jax.Array:
        """A cell (x, y) int32 uniform over the rectangle [x0, x0 + width) x [y0, y0 + height)
        (`x0`, `y0`, `width` may be traced), or over it less the cell `skip` (which must lie in it).

        This is the distribution of minigrid's `place_obj`/`place_agent` over a region whose
        free cells form such a rectangle: they draw uniformly in a rectangle and retry on
        rejected cells, so they end uniform over the accepted ones.
        """
        count = width * height
        if skip is None:
            flat = self.below(count)
        else:
            skipped = (skip[0] - x0) * height + (skip[1] - y0)
            flat = self.below(count - 1)
            flat = flat + (flat >= skipped)  # the flat indices other than `skipped`, in order
        return jnp.stack([x0 + flat // height, y0 + flat % height]).astype(jnp.int32)


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


def occlude(cells: jax.Array) -> jax.Array:
    """`Grid.process_vis` on the rotated view (agent at (3, 6)): `cells` with the cells it
    hides set to 0 (unseen).

    minigrid walks the rows from the agent's (j = 6) to the farthest (j = 0). In row j it runs
    a left-to-right pass (i = 0..5: if (i, j) is visible and see-through, make (i+1, j),
    (i, j-1) and (i+1, j-1) visible), then a right-to-left pass (i = 6..1: the same towards
    i-1). What a row adds to the row ahead does not feed back into the row, so it is computed
    after both passes, from the visibility each pass saw.

    Each row's visibility is a 7-bit integer (bit i = view column i), so the passes are a few
    integer shifts, ands and ors: the left pass is `v |= (v & clear) << 1` repeated (each
    repetition carries visibility one more cell to the right through see-through cells; 6
    reach the row's end), the right pass the same with `>>`. The same recurrence as minigrid's
    loops, so exact, and far cheaper than boolean (7, 7) matrices per row.

    The rows are a `lax.scan` (a loop) that also writes the occluded image rows: unrolled, XLA
    fuses the recurrence into every consumer of the visible mask and recomputes it for each of
    the 147 image bytes, and it would also recompute the view's gather (and, in
    `step_autoreset`, the fresh layout) in each consumer of the cells; as the loop's input the
    cells are built once.
    """
    n = VIEW
    full = (1 << n) - 1
    column_bit = jnp.left_shift(1, jnp.arange(n, dtype=jnp.int32))  # (7,) [i]

    def one_row(ahead, row_cells):  # row_cells: (7, 3) [i], row j
        c = jnp.sum(jnp.where(see_behind(row_cells), column_bit, 0))  # see-through bits
        left = ahead
        for _ in range(n - 1):
            left = left | ((left & c) << 1)
        left = left & full
        row = left
        for _ in range(n - 1):
            row = row | ((row & c) >> 1)
        # The left pass spreads from a see-through visible cell i <= 5 to i and i+1 in the
        # row ahead, the right pass from one i >= 1 to i-1 and i.
        from_left = left & c & (full >> 1)
        from_right = row & c & (full - 1)
        ahead = from_left | (from_left << 1) | from_right | (from_right >> 1)
        visible = (row & column_bit) != 0
        return ahead, jnp.where(visible[:, None], row_cells, jnp.uint8(UNSEEN))

    start = jnp.int32(1 << (n // 2))  # the agent's cell, (3, 6)
    _, rows = jax.lax.scan(one_row, start, jnp.swapaxes(cells, 0, 1), reverse=True)
    return jnp.swapaxes(rows, 0, 1)


def observation(state: State, see_through_walls: bool = False) -> jax.Array:
    """The (7, 7, 3) uint8 image of `gen_obs()["image"]` (what `ImgObsWrapper` returns)."""
    cells = view_cells(state)
    image = cells if see_through_walls else occlude(cells)
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
        state, reward, terminated, truncated = self._transition(state, action)
        return state, self.observation(state), reward, terminated, truncated

    def observation(self, state: State) -> jax.Array:
        return observation(state, self.see_through_walls)

    def step_autoreset(
        self, state: State, action, key: jax.Array
    ) -> tuple[State, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """(state, obs, reward, terminated, truncated, final_obs): `step`; where the episode
        ended (terminated or truncated), the returned state and observation are those of a
        fresh `reset(key)`, while reward and flags stay the ended step's and `final_obs` is the
        ended step's observation (before the reset; equal to `obs` elsewhere), for bootstrapping
        V(final_obs) on truncation.

        The observation is computed once, of the state returned, not once for the stepped
        state and once for the fresh one. `final_obs` is a second observation: unused, XLA
        drops it (dead code), so callers that ignore it do not pay for it.
        """
        stepped, reward, terminated, truncated = self._transition(state, action)
        state = self._reset_where(terminated | truncated, key, stepped)
        obs = self.observation(state)
        return state, obs, reward, terminated, truncated, self.observation(stepped)

    def _transition(self, state: State, action) -> tuple[State, jax.Array, jax.Array, jax.Array]:
        """`step` without the observation: (state, reward, terminated, truncated)."""
        action = self._pre_action(jnp.asarray(action, jnp.int32))
        new, reward, terminated = core_step(state, action)
        new, reward, terminated = self._rules(state, new, action, reward, terminated)
        return new, reward, terminated, new.step_count >= new.max_steps

    def _layout(self, key: jax.Array) -> State:
        raise NotImplementedError

    def _reset_where(self, done: jax.Array, key: jax.Array, state: State) -> State:
        """`state`, or where `done` a fresh `_layout(key)`. (Every env draws a layout on every
        step: under vmap a branch would run both sides anyway.)"""
        fresh = self._layout(key)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(done, new, old), fresh, state)

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
