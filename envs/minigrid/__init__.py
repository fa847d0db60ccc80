"""MiniGrid on the device: our JAX re-implementation of `minigrid` 3.x environments.

Pure, jittable, vmappable functions that reproduce the `minigrid` package exactly: the
(7, 7, 3) uint8 image that `ImgObsWrapper` returns (view, rotation, occlusion, carried object),
the reward, `terminated` and `truncated` at every step. Layouts drawn by `reset` follow the same
distribution as minigrid's `_gen_grid` (with JAX keys, not minigrid's RNG stream).
`tests/test_minigrid_parity.py` and `python -m envs.minigrid.parity_check` check both.

Environments (`ENVS`, `make(name)`; name or gymnasium id; the same families' other minigrid
registrations, e.g. DoorKey-8x8, LavaCrossingS9N1, MemoryS13Random, are in `VARIANTS`):

    LavaGapS7            MiniGrid-LavaGapS7-v0             7 x 7     max_steps 196
    DoorKey-6x6          MiniGrid-DoorKey-6x6-v0           6 x 6     max_steps 360
    DistShift1           MiniGrid-DistShift1-v0            9 x 7     max_steps 252 (no occlusion)
    SimpleCrossingS9N2   MiniGrid-SimpleCrossingS9N2-v0    9 x 9     max_steps 324
    RedBlueDoors-6x6     MiniGrid-RedBlueDoors-6x6-v0      12 x 6    max_steps 720
    MemoryS11            MiniGrid-MemoryS11-v0             11 x 11   max_steps 605
    MultiRoom-N2-S4      MiniGrid-MultiRoom-N2-S4-v0       25 x 25   max_steps 40

API, per environment (an immutable `GridEnv`; its methods are pure functions):

    state, obs = env.reset(key)
    state, obs, reward, terminated, truncated = env.step(state, action)
    state = env.from_minigrid(reference_env)      # load a minigrid env's current state
    obs = env.observation(state)
    state, obs, reward, terminated, truncated, final_obs = env.step_autoreset(state, action, key)

`action` is minigrid's: 0 left, 1 right, 2 forward, 3 pickup, 4 drop, 5 toggle, 6 done.
`reward` float32 (success: 1 - 0.9 * step_count / max_steps, else 0), `terminated` and
`truncated` (step_count >= max_steps) bool. Like minigrid, `step` does not reset;
`env.step_autoreset(state, action, key)` is `step` followed, where the episode ended, by
`reset(key)` (the new episode's state and observation, the ended step's reward and flags);
`final_obs` is the ended step's own observation, before the reset (= `obs` where the episode
goes on), to bootstrap V(final_obs) on truncation.
Actions outside 0..6 are no-ops (minigrid raises).

State (`core.State`, a `flax.struct` dataclass; one env; leading batch axes under vmap):

    grid        (W, H, 3) uint8   [x, y] -> (object type, colour, state): exactly minigrid's
                                  `Grid.encode()` (empty = (1, 0, 0), walls (2, 5, 0), doors'
                                  state 0 open / 1 closed / 2 locked), indexed x first as there.
    agent_pos   (2,) int32        (x, y)
    agent_dir   () int32          0 right, 1 down, 2 left, 3 up
    carrying    (2,) uint8        (type, colour) of the carried object, (1, 0) = nothing
    step_count  () int32
    max_steps   () int32          minigrid's value for the env (in the state so that reward
                                  and truncation need no per-env constant)
    aux         (4,) int32        env-specific: Memory (success x, y, failure x, y);
                                  RedBlueDoors (red door x, y, blue door x, y); else zeros.

No padding: each env's grid has its own minigrid size, and every env has the same pytree
structure (only W, H differ), so states of one env (or of envs of one size) stack. Envs of
different sizes can be batched by padding grids on the right/bottom with walls (2, 5, 0): minigrid
reads cells outside the grid as walls (`Grid.slice`), as `view_cells` does, and agents never
stand on the border, so observations and steps are unchanged.

Observation: view cell (i, j), i = view column, j = view row (6 = the agent's row, agent at
(3, 6) facing up), is world cell agent + f (6 - j) + r (i - 3), f the direction vector and
r = (-f_y, f_x); outside the grid, a wall. Occlusion is minigrid's `Grid.process_vis` (its
sequential passes along each row as bit operations on 7-bit rows, see `core.occlude`), except for
DistShift, which minigrid builds with see_through_walls=True. Invisible cells are 0; the
agent's cell shows the carried object (or empty).

Layouts: `reset(key)` draws with JAX keys what minigrid's `_gen_grid` draws with its RNG, from
the same distribution: `_rand_int` ranges as minigrid's; `place_obj`/`place_agent` rejection
sampling as a uniform draw over the cells it accepts; shuffles as uniform permutations (or
the uniform subsets and arrangements they amount to); MultiRoom's recursive rejection sampler
by its exact closed form (`multiroom`). All draws of a layout come from one key
split (`core.Draws`; uniform up to a relative bias below 2**-48). The tests check that
minigrid's own `_gen_grid`, fed the draws that explain one of our layouts, rebuilds it
exactly, and compare the layout statistics of both.

Object semantics supported by the engine: walls, floor, doors (locked ones open with a key of
their colour), keys, balls, boxes (toggling removes a box: the envs here put nothing in them,
and a carried box keeps no contents), goal (terminates with the success reward), lava
(terminates with 0).
"""

from __future__ import annotations

from envs.minigrid.core import ACTION_NAMES, NUM_ACTIONS, GridEnv, State
from envs.minigrid.crossing import Crossing
from envs.minigrid.distshift import DistShift
from envs.minigrid.doorkey import DoorKey
from envs.minigrid.lavagap import LavaGap
from envs.minigrid.memory import Memory
from envs.minigrid.multiroom import MultiRoomN2S4
from envs.minigrid.redbluedoors import RedBlueDoors

ENVS: dict[str, GridEnv] = {
    "LavaGapS7": LavaGap(size=7),
    "DoorKey-6x6": DoorKey(size=6),
    "DistShift1": DistShift(strip2_row=2),
    "SimpleCrossingS9N2": Crossing(size=9, num_crossings=2, lava=False),
    "RedBlueDoors-6x6": RedBlueDoors(size=6),
    "MemoryS11": Memory(size=11),
    "MultiRoom-N2-S4": MultiRoomN2S4(),
}


# Every other minigrid registration of the same families, by gymnasium id (checked by
# `python -m envs.minigrid.parity_check --env variants`, lightly by the tests).
VARIANTS: dict[str, GridEnv] = {
    env.gym_id: env
    for env in (
        LavaGap(size=5), LavaGap(size=6),
        DoorKey(size=5), DoorKey(size=8), DoorKey(size=16),
        DistShift(strip2_row=5),
        *(
            Crossing(size=size, num_crossings=n, lava=lava)
            for lava in (False, True)
            for size, n in ((9, 1), (9, 2), (9, 3), (11, 5))
            if (size, n, lava) != (9, 2, False)  # SimpleCrossingS9N2 is in ENVS
        ),
        RedBlueDoors(size=8),
        Memory(size=7), Memory(size=9), Memory(size=13),
        Memory(size=13, random_length=True), Memory(size=17, random_length=True),
    )
}


def make(name: str) -> GridEnv:
    """An environment by short name ("LavaGapS7") or gymnasium id ("MiniGrid-LavaGapS7-v0",
    also those of `VARIANTS`)."""
    if name in ENVS:
        return ENVS[name]
    for env in (*ENVS.values(), *VARIANTS.values()):
        if env.gym_id == name:
            return env
    known = ", ".join([*ENVS, *VARIANTS])
    raise KeyError(f"unknown MiniGrid env {name!r}; known: {known}")


__all__ = ["ACTION_NAMES", "ENVS", "NUM_ACTIONS", "VARIANTS", "GridEnv", "State", "make"]
