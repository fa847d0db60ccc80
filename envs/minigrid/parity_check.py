"""Parity of `envs.minigrid` with the `minigrid` package (the reference).

    python -m envs.minigrid.parity_check --env all --seeds 100 [--steps 2000] [--layouts 5000]
    python -m envs.minigrid.parity_check --env variants --seeds 16 --steps 400 --layouts 1000

Four checks per environment (the test file runs small versions of the same functions):

* steps: one reference env per seed (`gymnasium.make(id)` + `ImgObsWrapper`, `reset(seed)`),
  loaded into our state with `from_minigrid`; then a long random action sequence stepped in
  both, all seeds at once (ours vmapped). At every step the image, reward, terminated,
  truncated, agent position/direction, carried object and step count must agree, and the
  whole grid every `grid_every` steps and at every episode end; when an episode ends the
  reference resets and ours is loaded from it.
* layouts (support): each layout our `reset` draws is rebuilt by the reference's own
  `_gen_grid` fed with the random draws that explain it (a scripted generator that checks
  every draw lies in the range minigrid asks for, and that nothing is left over or missing);
  the reference's result must equal our state exactly.
* layouts (distribution): the marginals of the layout's random choices over our resets and
  over the reference's resets: chi-square two-sample p-value, total-variation distance and
  the same set of values.
* engine fuzz: random grids with every object kind (doors open/closed/locked of two colours,
  keys, balls, boxes, goal, lava, floor, walls), random agent pose, carried object and step
  count; every action from each state, compared field by field with minigrid's `step`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import time
from collections import Counter
from dataclasses import dataclass

import gymnasium as gym
import jax
import jax.numpy as jnp
import minigrid  # noqa: F401  (registers the MiniGrid envs)
import numpy as np
from minigrid.core.grid import Grid
from minigrid.core.world_object import WorldObj
from minigrid.envs import EmptyEnv
from minigrid.wrappers import ImgObsWrapper

from envs.minigrid import ENVS, VARIANTS, make
from envs.minigrid.core import (
    BALL,
    BOX,
    CLOSED,
    COLOR_NAMES,
    DOOR,
    EMPTY,
    FLOOR,
    GOAL,
    KEY,
    LAVA,
    LOCKED,
    OPEN,
    RED,
    WALL,
    YELLOW,
    GridEnv,
    State,
)
from envs.minigrid.crossing import Crossing
from envs.minigrid.distshift import DistShift
from envs.minigrid.doorkey import DoorKey
from envs.minigrid.lavagap import LavaGap
from envs.minigrid.memory import Memory
from envs.minigrid.multiroom import MultiRoomN2S4
from envs.minigrid.redbluedoors import RedBlueDoors

# Random actions, weighted towards moving and toggling so that keys, doors, goals and lava
# are reached often enough: left, right, forward, pickup, drop, toggle, done.
POLICY = np.array([0.17, 0.17, 0.36, 0.1, 0.06, 0.11, 0.03])


def reference(env: GridEnv) -> gym.Env:
    return ImgObsWrapper(gym.make(env.gym_id))


def to_numpy(state: State) -> State:
    return jax.tree_util.tree_map(np.asarray, state)


def stack(states: list[State]) -> State:
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)


def index(batch: State, i: int) -> State:
    return jax.tree_util.tree_map(lambda x: x[i], batch)


def put(batch: State, i: int, state: State) -> None:
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(batch), leaves(state), strict=True):
        a[i] = np.asarray(b)


def _mismatch(env, what, seed, t, action, ours, theirs):
    return AssertionError(
        f"{env.gym_id}: {what} differs (seed {seed}, step {t}, action {action})\n"
        f"ours:\n{np.asarray(ours)!r}\nminigrid:\n{np.asarray(theirs)!r}"
    )


@dataclass
class StepStats:
    steps: int = 0
    episodes: int = 0
    successes: int = 0
    failures: int = 0  # terminated with reward 0 (lava, wrong door / object)
    truncations: int = 0
    pickups: int = 0
    drops: int = 0
    cell_changes: int = 0  # doors toggled, objects picked up / dropped
    grids_compared: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in vars(self).items())


def step_parity(
    env: GridEnv,
    seeds: list[int],
    steps: int,
    policy_seed: int = 0,
    grid_every: int = 1,
    late_start: int = 0,
) -> StepStats:
    """Step ours and the reference side by side; raise AssertionError at the first mismatch.

    `late_start` > 0: the first episode of every other seed starts with step_count =
    max_steps - late_start (set in the reference, then loaded), to reach truncation quickly.
    """
    refs = [reference(env) for _ in seeds]
    first_obs = []
    for k, (ref, seed) in enumerate(zip(refs, seeds, strict=True)):
        obs, _ = ref.reset(seed=seed)
        if late_start and k % 2 == 1:
            ref.unwrapped.step_count = ref.unwrapped.max_steps - late_start
        first_obs.append(obs)
    batch = stack([to_numpy(env.from_minigrid(ref)) for ref in refs])
    observe, step = batched(env, "observation"), batched(env, "step")
    ours = np.asarray(observe(batch))
    for k, seed in enumerate(seeds):
        if not np.array_equal(ours[k], first_obs[k]):
            raise _mismatch(env, "reset image", seed, 0, None, ours[k], first_obs[k])
    rng = np.random.default_rng(policy_seed)
    stats = StepStats()
    for t in range(steps):
        actions = rng.choice(len(POLICY), size=len(seeds), p=POLICY)
        results = [ref.step(int(a)) for ref, a in zip(refs, actions, strict=True)]
        new, obs, reward, terminated, truncated = jax.tree_util.tree_map(
            np.asarray, step(batch, actions)
        )
        new = jax.tree_util.tree_map(np.array, new)  # writable
        reset_obs = {}
        for k, (ref, seed) in enumerate(zip(refs, seeds, strict=True)):
            r_obs, r_reward, r_term, r_trunc, _ = results[k]
            u = ref.unwrapped
            a = int(actions[k])
            checks = (
                ("image", obs[k], r_obs, np.array_equal),
                ("reward", reward[k], np.float64(r_reward), lambda x, y: np.isclose(x, y)),
                ("terminated", terminated[k], r_term, lambda x, y: bool(x) == bool(y)),
                ("truncated", truncated[k], r_trunc, lambda x, y: bool(x) == bool(y)),
                ("agent_pos", new.agent_pos[k], np.asarray(u.agent_pos), np.array_equal),
                ("agent_dir", new.agent_dir[k], u.agent_dir, lambda x, y: int(x) == int(y)),
                ("step_count", new.step_count[k], u.step_count, lambda x, y: int(x) == int(y)),
            )
            for what, x, y, same in checks:
                if not same(x, y):
                    raise _mismatch(env, what, seed, t, a, x, y)
            carried = (EMPTY, 0) if u.carrying is None else u.carrying.encode()[:2]
            if tuple(new.carrying[k]) != tuple(carried):
                raise _mismatch(env, "carrying", seed, t, a, new.carrying[k], carried)
            done = bool(r_term or r_trunc)
            if done or (t + 1) % grid_every == 0:
                if not np.array_equal(new.grid[k], u.grid.encode()):
                    raise _mismatch(env, "grid", seed, t, a, new.grid[k][..., 0].T,
                                    u.grid.encode()[..., 0].T)
                stats.grids_compared += 1
            stats.steps += 1
            stats.pickups += int(batch.carrying[k, 0] == EMPTY and new.carrying[k, 0] != EMPTY)
            stats.drops += int(batch.carrying[k, 0] != EMPTY and new.carrying[k, 0] == EMPTY)
            stats.cell_changes += int(not np.array_equal(batch.grid[k], new.grid[k]))
            if done:
                stats.episodes += 1
                stats.successes += int(r_reward > 0)
                stats.failures += int(r_term and r_reward == 0)
                stats.truncations += int(r_trunc)
                reset_obs[k], _ = ref.reset()
                put(new, k, env.from_minigrid(ref))
        if reset_obs:
            ours = np.asarray(observe(new))
            for k, image in reset_obs.items():
                if not np.array_equal(ours[k], image):
                    raise _mismatch(env, "reset image", seeds[k], t, None, ours[k], image)
        batch = new
    return stats


# --------------------------------------------------------------------------------------------
# Layouts: the random draws that explain a layout, and minigrid's generator replayed on them.


class ScriptedRNG:
    """Stands in for `env.np_random` during minigrid's `_gen_grid`: returns the scripted draws
    in order, checking each is one minigrid could have drawn."""

    def __init__(self, draws: list[tuple[str, object]]):
        self.draws = list(draws)

    def _pop(self, kind: str):
        if not self.draws:
            raise AssertionError(f"minigrid asked for one more draw ({kind}) than the layout has")
        got, value = self.draws.pop(0)
        if got != kind:
            raise AssertionError(f"minigrid asked for a {kind} draw, the script has a {got}")
        return value

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        assert size is None and high is not None and not endpoint
        value = self._pop("int")
        if not low <= value < high:
            raise AssertionError(f"draw {value} outside minigrid's range [{low}, {high})")
        return np.int64(value)

    def shuffle(self, x) -> None:
        order = self._pop("shuffle")
        assert sorted(order) == list(range(len(x))), (order, len(x))
        x[:] = [x[p] for p in order]

    def choice(self, a, size=None, replace=True, p=None):
        assert size is None and p is None
        value = self._pop("choice")
        if value not in a:
            raise AssertionError(f"choice {value} not in {a}")
        return np.int64(value)


def _cells(grid: np.ndarray, kind: int) -> list[tuple[int, int]]:
    xs, ys = np.nonzero(grid[..., 0] == kind)
    return sorted(zip(xs.tolist(), ys.tolist(), strict=True))


def decode_layout(env: GridEnv, s: State) -> tuple[list, dict]:
    """(draws, features) of a freshly reset state: the random draws minigrid's `_gen_grid`
    would make to build this layout, and the layout's random choices by name."""
    grid = np.asarray(s.grid)
    ax, ay = (int(v) for v in s.agent_pos)
    direction = int(s.agent_dir)
    if isinstance(env, LavaGap):
        lava = _cells(grid, LAVA)
        gx = lava[0][0]
        gy = [y for y in range(1, env.size - 1) if grid[gx, y, 0] == EMPTY][0]
        return [("int", gx), ("int", gy)], {"gap_x": gx, "gap_y": gy, "gap": (gx, gy)}
    if isinstance(env, DoorKey):
        (split, door_y), = _cells(grid, DOOR)
        (kx, ky), = _cells(grid, KEY)
        draws = [("int", v) for v in (split, ax, ay, direction, door_y, kx, ky)]
        return draws, {"split": split, "agent": (ax, ay), "dir": direction,
                       "door_y": door_y, "key": (kx, ky)}
    if isinstance(env, DistShift):
        return [], {"layout": grid.tobytes() + bytes([ax, ay, direction])}
    if isinstance(env, Crossing):
        return _decode_crossing(env, grid)
    if isinstance(env, RedBlueDoors):
        rx, ry, bx, by = (int(v) for v in s.aux)
        draws = [("int", v) for v in (ax, ay, direction, ry, by)]
        return draws, {"agent": (ax, ay), "dir": direction, "red_y": ry, "blue_y": by}
    if isinstance(env, Memory):
        mid = env.size // 2
        end = int(s.aux[0]) - 1
        start = 0 if grid[1, mid - 1, 0] == KEY else 1  # index in [Key, Ball]
        pair = 1 if grid[end + 1, mid - 2, 0] == KEY else 0  # in [[Ball, Key], [Key, Ball]]
        draws = [("int", end)] if env.random_length else []
        draws += [("int", ax), ("int", start), ("int", pair)]
        return draws, {"end": end, "agent_x": ax, "start": start, "pair": pair}
    if isinstance(env, MultiRoomN2S4):
        return _decode_multiroom(grid, ax, ay, direction)
    raise TypeError(type(env))


def _decode_crossing(env: Crossing, grid: np.ndarray) -> tuple[list, dict]:
    n = env.size
    obstacle = LAVA if env.lava else WALL
    lines = list(range(2, n - 2, 2))
    inner = slice(1, n - 1)
    rivers_v = [x for x in lines if (grid[x, inner, 0] == obstacle).sum() >= n - 3]
    rivers_h = [y for y in lines if (grid[inner, y, 0] == obstacle).sum() >= n - 3]
    chosen = [lines.index(x) for x in rivers_v] + [len(lines) + lines.index(y) for y in rivers_h]
    rest = [c for c in range(2 * len(lines)) if c not in chosen]
    moves = {}  # time of the move -> (crosses a vertical river, opening coordinate)
    for a, x in enumerate(rivers_v):
        (y,) = [y for y in range(1, n - 1) if grid[x, y, 0] == EMPTY]
        moves[a + sum(h < y for h in rivers_h)] = (True, y)
    for b, y in enumerate(rivers_h):
        (x,) = [x for x in range(1, n - 1) if grid[x, y, 0] == EMPTY]
        moves[b + sum(v < x for v in rivers_v)] = (False, x)
    assert sorted(moves) == list(range(len(chosen))), moves
    path = [moves[k][0] for k in range(len(chosen))]
    h_ids = iter(range(len(rivers_v)))  # minigrid's path list: [h] * len(rivers_v) + [v] * ..
    v_ids = iter(range(len(rivers_v), len(chosen)))
    path_order = [next(h_ids) if p else next(v_ids) for p in path]
    draws = [("shuffle", chosen + rest), ("shuffle", path_order)]
    draws += [("choice", moves[k][1]) for k in range(len(chosen))]
    features = {"rivers": tuple(sorted(chosen)), "path": tuple(path)}
    features.update({f"opening_{k}": moves[k][1] for k in range(len(chosen))})
    return draws, features


def _ring_corner(grid: np.ndarray, x: int, y: int) -> tuple[int, int]:
    """The corner of the 4x4 room whose 2x2 inside holds (x, y)."""
    found = []
    for cx in (x - 2, x - 1):
        for cy in (y - 2, y - 1):
            ring = [(i, j) for i in range(cx, cx + 4) for j in range(cy, cy + 4)
                    if i in (cx, cx + 3) or j in (cy, cy + 3)]
            if all(0 <= i < 25 and 0 <= j < 25 and grid[i, j, 0] in (WALL, DOOR) for i, j in ring):
                found.append((cx, cy))
    assert len(found) == 1, found
    return found[0]


def _decode_multiroom(grid: np.ndarray, ax: int, ay: int, direction: int):
    (dx, dy), = _cells(grid, DOOR)
    (gx, gy), = _cells(grid, GOAL)
    tx, ty = _ring_corner(grid, ax, ay)
    cx, cy = _ring_corner(grid, gx, gy)
    if dx == tx + 3:
        wall, offset, shift = 0, dy - ty, cy
    elif dy == ty + 3:
        wall, offset, shift = 1, dx - tx, cx
    elif dy == ty:
        wall, offset, shift = 3, dx - tx, cx
    else:
        raise AssertionError(f"door {(dx, dy)} not on the right/bottom/top of room {(tx, ty)}")
    color = sorted(COLOR_NAMES).index(COLOR_NAMES[grid[dx, dy, 1]])
    draws = [("int", v) for v in (2, tx, ty, 4, 4, [0, 1, 3].index(wall), offset, 4, 4, shift,
                                  color, ax, ay, direction, gx, gy)]
    features = {
        "room_x": tx, "room_y": ty, "exit_wall": wall, "door_offset": offset,
        "second_shift": (cx - tx, cy - ty), "door_color": int(grid[dx, dy, 1]),
        "agent": (ax - tx, ay - ty), "dir": direction, "goal": (gx - cx, gy - cy),
    }
    return draws, features


def replay_layout(env: GridEnv, state: State, ref: gym.Env | None = None) -> None:
    """Rebuild `state`'s layout with minigrid's own generator; raise if it cannot be."""
    ref = ref or reference(env)
    draws, _ = decode_layout(env, state)
    u = ref.unwrapped
    u._np_random = ScriptedRNG(draws)
    ref.reset()
    if u._np_random.draws:
        raise AssertionError(f"draws left over: {u._np_random.draws}")
    theirs = to_numpy(env.from_minigrid(ref))
    for field in ("grid", "agent_pos", "agent_dir", "carrying", "step_count", "max_steps", "aux"):
        a, b = np.asarray(getattr(state, field)), getattr(theirs, field)
        if not np.array_equal(a, b):
            raise AssertionError(f"{env.gym_id}: replayed layout differs in {field}:\n{a}\n{b}")


def check_multiroom_table() -> int:
    """Check `multiroom.attachment_table` against minigrid's own `_placeRoom`: for every
    first-room corner and every outcome of one try, run minigrid's recursive placement with
    those draws (the same outcome for all 8 tries) and compare whether the second room is
    placed, where, and where its door is. Returns the cases compared."""
    from envs.minigrid import multiroom

    ref = reference(ENVS["MultiRoom-N2-S4"]).unwrapped
    span = multiroom.GRID - 2
    cases = 0
    for tx in range(span):
        for ty in range(span):
            k = tx * span + ty
            for o in range(12):
                wall, offset = (0, 1, 3)[o // 4], 1 + (o // 2) % 2  # the table's order
                door = multiroom._DOOR[k, o]
                corner = multiroom._CORNER[k, o]
                along = corner[1] if wall == 0 else corner[0]
                one_try = [("int", v) for v in ((0, 1, 3).index(wall), offset, 4, 4, along)]
                ref._np_random = ScriptedRNG([("int", 4), ("int", 4)] + one_try * 8)
                rooms = []
                placed = ref._placeRoom(2, roomList=rooms, minSz=4, maxSz=4, entryDoorWall=2,
                                        entryDoorPos=(tx, ty))
                assert placed == multiroom._fits(tx, ty), (tx, ty)
                if not placed:
                    break
                assert (len(rooms) == 2) == bool(multiroom._FITS[k, o]), (tx, ty, o)
                if len(rooms) == 2:
                    assert tuple(rooms[1].top) == tuple(corner), (tx, ty, o)
                    assert tuple(rooms[1].entryDoorPos) == tuple(door), (tx, ty, o)
                cases += 1
    return cases


@functools.cache
def batched(env: GridEnv, method: str):
    """jit(vmap(env.<method>)), made once per env and method."""
    return jax.jit(jax.vmap(getattr(env, method)))


def our_layouts(env: GridEnv, n: int, seed: int = 0) -> State:
    keys = jax.random.split(jax.random.key(seed), n)
    return to_numpy(batched(env, "reset")(keys)[0])


def reference_layouts(env: GridEnv, n: int, seed: int = 0) -> list[State]:
    ref = reference(env)
    ref.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(to_numpy(env.from_minigrid(ref)))
        ref.reset()
    return out


def chi2_pvalue(a: Counter, b: Counter) -> float:
    """Two-sample chi-square test of homogeneity; p-value by the Wilson-Hilferty approximation."""
    keys = sorted(set(a) | set(b), key=repr)
    na, nb = sum(a.values()), sum(b.values())
    stat = 0.0
    for k in keys:
        total = a[k] + b[k]
        ea, eb = total * na / (na + nb), total * nb / (na + nb)
        stat += (a[k] - ea) ** 2 / ea + (b[k] - eb) ** 2 / eb
    df = len(keys) - 1
    if df == 0:
        return 1.0
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def total_variation(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


@dataclass
class FeatureReport:
    name: str
    values: int
    p_value: float
    tv: float
    same_values: bool

    def __str__(self) -> str:
        return (f"{self.name}: {self.values} values, chi2 p {self.p_value:.3g}, "
                f"TV {self.tv:.3f}, same values {self.same_values}")


def layout_distribution(env: GridEnv, ours: State, theirs: list[State]) -> list[FeatureReport]:
    """Per feature of `decode_layout`: our resets against the reference's."""
    n = len(ours.agent_dir)
    a = [decode_layout(env, index(ours, i))[1] for i in range(n)]
    b = [decode_layout(env, s)[1] for s in theirs]
    reports = []
    for name in a[0]:
        ca, cb = Counter(f[name] for f in a), Counter(f[name] for f in b)
        reports.append(FeatureReport(name, len(set(ca) | set(cb)), chi2_pvalue(ca, cb),
                                     total_variation(ca, cb), set(ca) == set(cb)))
    return reports


# --------------------------------------------------------------------------------------------
# Engine fuzz: random grids, every action, against minigrid's step.


@dataclass(frozen=True)
class Sandbox(GridEnv):
    """A bare engine env (no layout, no extra rules) for the fuzz test."""

    width: int = 8
    height: int = 8
    see_through_walls: bool = False
    max_steps: int = 20


def _random_object(rng: np.random.Generator) -> WorldObj | None:
    colors = (RED, YELLOW)  # two colours so that keys often match doors
    kind = rng.choice(
        [EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA],
        p=[0.45, 0.12, 0.04, 0.16, 0.08, 0.05, 0.04, 0.03, 0.03],
    )
    color = int(rng.choice(colors)) if kind in (DOOR, KEY, BALL, BOX, FLOOR) else 0
    if kind == WALL:
        color = 5
    elif kind == GOAL:
        color = 1
    state = int(rng.choice([OPEN, CLOSED, LOCKED])) if kind == DOOR else 0
    return WorldObj.decode(int(kind), color, state)


def fuzz_engine(n_states: int, see_through_walls: bool, seed: int = 0, size: int = 8) -> int:
    """Compare every action from `n_states` random states; returns the transitions compared."""
    rng = np.random.default_rng(seed)
    sandbox = Sandbox(width=size, height=size, see_through_walls=see_through_walls)
    ref = EmptyEnv(size=size, max_steps=sandbox.max_steps)
    ref.see_through_walls = see_through_walls
    ref.reset(seed=seed)
    starts, refs = [], []
    for _ in range(n_states):
        grid = Grid(size, size)
        grid.wall_rect(0, 0, size, size)
        for x in range(1, size - 1):
            for y in range(1, size - 1):
                grid.set(x, y, _random_object(rng))
        ax, ay = (int(v) for v in rng.integers(1, size - 1, 2))
        under = grid.get(ax, ay)
        if under is not None and not under.can_overlap():
            grid.set(ax, ay, None)
        ref.grid = grid
        ref.agent_pos = (ax, ay)
        ref.agent_dir = int(rng.integers(4))
        held = rng.choice([EMPTY, KEY, BALL, BOX], p=[0.4, 0.4, 0.1, 0.1])
        ref.carrying = None if held == EMPTY else WorldObj.decode(
            int(held), int(rng.choice((RED, YELLOW))), 0)
        ref.step_count = int(rng.integers(0, sandbox.max_steps))
        starts.append(to_numpy(sandbox.from_minigrid(ref)))
        refs.append(copy.deepcopy(ref))
    batch = stack(starts)
    actions = np.arange(7)
    step = jax.jit(jax.vmap(jax.vmap(sandbox.step, in_axes=(None, 0)), in_axes=(0, None)))
    observe = jax.jit(jax.vmap(sandbox.observation))
    start_obs = np.asarray(observe(batch))
    new, obs, reward, terminated, truncated = jax.tree_util.tree_map(
        np.asarray, step(batch, jnp.asarray(actions))
    )
    compared = 0
    for k, start in enumerate(refs):
        if not np.array_equal(start_obs[k], start.gen_obs()["image"]):
            raise _mismatch(sandbox, "fuzz image", k, 0, None, start_obs[k],
                            start.gen_obs()["image"])
        for a in actions:
            r = copy.deepcopy(start)
            r_obs, r_reward, r_term, r_trunc, _ = r.step(int(a))
            carried = (EMPTY, 0) if r.carrying is None else r.carrying.encode()[:2]
            same = (
                np.array_equal(obs[k, a], r_obs["image"])
                and np.isclose(reward[k, a], r_reward)
                and bool(terminated[k, a]) == r_term
                and bool(truncated[k, a]) == r_trunc
                and np.array_equal(new.grid[k, a], r.grid.encode())
                and tuple(new.agent_pos[k, a]) == tuple(int(v) for v in r.agent_pos)
                and int(new.agent_dir[k, a]) == r.agent_dir
                and tuple(new.carrying[k, a]) == tuple(carried)
            )
            if not same:
                raise _mismatch(sandbox, "fuzz transition", k, 0, int(a), obs[k, a][..., 0].T,
                                r_obs["image"][..., 0].T)
            compared += 1
    return compared


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--env", default="all",
        help="a name or gym id (envs.minigrid.ENVS / VARIANTS), all (ENVS) or variants",
    )
    parser.add_argument("--seeds", type=int, default=100, help="reference seeds stepped")
    parser.add_argument("--steps", type=int, default=2000, help="steps per seed")
    parser.add_argument("--grid-every", type=int, default=10)
    parser.add_argument("--layouts", type=int, default=5000, help="resets per side")
    parser.add_argument("--fuzz", type=int, default=2000, help="random engine states")
    args = parser.parse_args(argv)
    names = {"all": list(ENVS), "variants": list(VARIANTS)}.get(args.env, [args.env])
    failed = 0
    for name in names:
        env = make(name)
        t0 = time.time()
        stats = step_parity(env, list(range(args.seeds)), args.steps,
                            grid_every=args.grid_every, late_start=30)
        print(f"{name}: steps identical: {stats} ({time.time() - t0:.0f} s)", flush=True)
        t0 = time.time()
        ours = our_layouts(env, args.layouts)
        ref = reference(env)
        for i in range(args.layouts):
            replay_layout(env, index(ours, i), ref)
        theirs = reference_layouts(env, args.layouts)
        print(f"{name}: {args.layouts} of our layouts rebuilt exactly by minigrid's generator",
              flush=True)
        for report in layout_distribution(env, ours, theirs):
            # With few samples per value a value may be missing by chance: only p is judged then.
            bad = report.p_value < 1e-4 or (
                not report.same_values and report.values * 20 <= args.layouts
            )
            failed += bad
            print(f"  {report}{'  <- FAIL' if bad else ''}")
        print(f"  ({time.time() - t0:.0f} s)", flush=True)
    if args.fuzz:
        for see_through in (False, True):
            t0 = time.time()
            n = fuzz_engine(args.fuzz, see_through, seed=int(see_through))
            print(f"engine fuzz (see_through_walls={see_through}): {n} transitions identical "
                  f"({time.time() - t0:.0f} s)", flush=True)
    if failed:
        raise SystemExit(f"{failed} layout distribution check(s) failed")


if __name__ == "__main__":
    main()
