"""A planning expert for the MiniGrid tasks of our suites, on the reference `minigrid` envs.

It reads the full state of a `minigrid` env (`env.unwrapped`: grid, agent_pos, agent_dir,
carrying), not the agent's egocentric view, and replans from scratch at every step: a
shortest-path search (Dijkstra, unit cost per action) over (position, direction, carried
key colour) with the actions left / right / forward, pickup of a key in front, and the
two-action move "toggle then forward" through a closed (or, with the matching key, locked)
door. The search ends with the task's final action on a target cell in front of the agent:

    DoorKey               forward onto the goal (the path picks up the key and unlocks the door)
    LavaGap, DistShift,   forward onto the goal; lava and walls are never entered
    SimpleCrossing
    MultiRoom             forward onto the goal, opening doors on the way
    RedBlueDoors          toggle the red door while it is closed, then toggle the blue one;
                          no closed door is opened on the way (opening the blue door first
                          ends the episode with 0)
    Memory                first (unless already seen) to where the start room's object is
                          in the agent's view (see `Planner`), then forward onto the success
                          cell: the cell next to the object at the end of the hallway that
                          matches the one in the start room (read from the grid);
                          MemoryEnv.step succeeds when the agent stands on that cell, and
                          fails on the other object's cell, which is blocked

Replanning makes it robust to noise: after a random action (a dropped key, a door closed
again) the next step plans from wherever the agent is. Should no plan exist, it returns a
random turn (this never happened in 8,848 planning calls at epsilon 0.5 on all 7 tasks).

Measured success with no noise (`python -m envs.minigrid.expert`): 100 % on every task of
minigrid_mt7, 1,000 episodes each (with noise: training/data/collect_minigrid.py).
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))  # 0 right, 1 down, 2 left, 3 up


def _kind(unwrapped) -> str:
    from minigrid.envs.doorkey import DoorKeyEnv
    from minigrid.envs.memory import MemoryEnv
    from minigrid.envs.redbluedoors import RedBlueDoorEnv

    if isinstance(unwrapped, MemoryEnv):
        return "memory"
    if isinstance(unwrapped, RedBlueDoorEnv):
        return "redbluedoors"
    if isinstance(unwrapped, DoorKeyEnv):
        return "doorkey"
    return "goal"  # LavaGap, DistShift, (Simple/Lava)Crossing, MultiRoom, Empty, ...


def memory_cells(unwrapped) -> tuple[tuple[int, int], tuple[int, int]]:
    """(success cell, failure cell) of a MemoryEnv, from its grid: the start room's object
    is the leftmost key/ball; the two at the hallway's end are the rightmost ones; the
    target is the cell between the matching one and the hallway's middle row."""
    grid = unwrapped.grid
    objects = [(x, y, grid.get(x, y).type) for x in range(grid.width) for y in range(grid.height)
               if grid.get(x, y) is not None and grid.get(x, y).type in ("key", "ball")]
    if len(objects) != 3:
        raise ValueError(f"MemoryEnv grid should hold 3 objects, found {len(objects)}")
    objects.sort()
    start_type = objects[0][2]
    mid = grid.height // 2
    ends = objects[1:]
    cells = {kind: (x, y + 1 if y < mid else y - 1) for x, y, kind in ends}
    if len(cells) != 2 or start_type not in cells:
        raise ValueError("MemoryEnv grid: the hallway's end should hold one key and one ball")
    other = "ball" if start_type == "key" else "key"
    return cells[start_type], cells[other]


def memory_cue(unwrapped) -> tuple[int, int]:
    """The cell of a MemoryEnv's start-room object (the cue): the leftmost key or ball."""
    grid = unwrapped.grid
    return min((x, y) for x in range(grid.width) for y in range(grid.height)
               if grid.get(x, y) is not None and grid.get(x, y).type in ("key", "ball"))


def _sees(unwrapped, cell, x, y, d) -> bool:
    """Whether the agent at (x, y) facing d would have `cell` in its (occluded) view."""
    saved = unwrapped.agent_pos, unwrapped.agent_dir
    unwrapped.agent_pos, unwrapped.agent_dir = (x, y), d
    try:
        coords = unwrapped.relative_coords(*cell)
        return coords is not None and bool(unwrapped.gen_obs_grid()[1][coords])
    finally:
        unwrapped.agent_pos, unwrapped.agent_dir = saved


class Planner:
    """The expert's decision for the current state of one `minigrid` env.

    `look_at_cue` (Memory): before heading for the matching object, go (by the shortest
    path) to where the start-room object is in the agent's view, unless it has been in view
    since the episode began. Without it the planner, which reads the answer from the grid,
    walks straight to the hallway's end, and in most episodes (87 % of them, measured) the
    cue never appears in the observations: the demonstrations would choose an object the
    recorded observations give no reason for. The episode's memory is reset when the env's
    step count is 0.
    """

    def __init__(self, rng: np.random.Generator | None = None, look_at_cue: bool = True):
        self.rng = rng or np.random.default_rng(0)
        self.look_at_cue = look_at_cue
        self._env = None
        self.cue_seen = False

    def act(self, env) -> int:
        plan = self.plan(env)
        if plan is None:
            return int(self.rng.integers(0, 2))  # stuck: a random turn
        return plan[0]

    def plan(self, env) -> list[int] | None:
        """The full action sequence of the current shortest plan (None: no plan)."""
        u = env.unwrapped
        kind = _kind(u)
        grid = u.grid
        blocked: set[tuple[int, int]] = set()
        open_doors = kind != "redbluedoors"
        pickup_keys = kind == "doorkey"
        view = None
        if kind == "memory":
            success, failure = memory_cells(u)
            targets, final = {success}, FORWARD
            blocked.add(failure)
            if self._env is not u or u.step_count == 0:
                self._env, self.cue_seen = u, False
            cue = memory_cue(u)
            if self.look_at_cue and not self.cue_seen:
                self.cue_seen = u.agent_sees(*cue)
                if not self.cue_seen:
                    cache: dict = {}

                    def view(x, y, d):
                        if (x, y, d) not in cache:
                            cache[x, y, d] = _sees(u, cue, x, y, d)
                        return cache[x, y, d]
        elif kind == "redbluedoors":
            door = u.red_door if not u.red_door.is_open else u.blue_door
            targets = {(x, y) for x in range(grid.width) for y in range(grid.height)
                       if grid.get(x, y) is door}
            final = TOGGLE
        else:
            targets = {(x, y) for x in range(grid.width) for y in range(grid.height)
                       if grid.get(x, y) is not None and grid.get(x, y).type == "goal"}
            final = FORWARD
        carrying = u.carrying
        key = carrying.color if carrying is not None and carrying.type == "key" else None
        start = (int(u.agent_pos[0]), int(u.agent_pos[1]), int(u.agent_dir), key)
        return _search(grid, start, targets, final, blocked, open_doors, pickup_keys,
                       carrying is not None, view)


def _search(grid, start, targets, final, blocked, open_doors, pickup_keys, hands_full,
            view=None):
    """Dijkstra over (x, y, dir, key colour); -> the primitive actions of a cheapest plan
    ending with `final` applied to a target cell in front, or None. With `view` (a
    predicate on (x, y, dir)), the plan ends instead at the first pose where it holds."""
    width, height = grid.width, grid.height
    counter = itertools.count()
    frontier = [(0, next(counter), start)]
    best = {start: 0}
    parent: dict = {start: None}
    while frontier:
        cost, _, state = heapq.heappop(frontier)
        if cost > best[state]:
            continue
        x, y, d, key = state
        dx, dy = DIR_TO_VEC[d]
        fx, fy = x + dx, y + dy
        reached = view(x, y, d) if view is not None else (fx, fy) in targets
        if reached:
            actions = [] if view is not None else [final]
            while parent[state] is not None:
                state, moves = parent[state]
                actions[:0] = moves
            return actions
        moves = [((x, y, (d - 1) % 4, key), [LEFT]), ((x, y, (d + 1) % 4, key), [RIGHT])]
        if 0 <= fx < width and 0 <= fy < height and (fx, fy) not in blocked:
            cell = grid.get(fx, fy)
            kind = None if cell is None else cell.type
            if kind is None or kind == "floor" or (kind == "door" and cell.is_open):
                moves.append(((fx, fy, d, key), [FORWARD]))
            elif kind == "door" and open_doors and (
                    not cell.is_locked or key == cell.color):
                moves.append(((fx, fy, d, key), [TOGGLE, FORWARD]))
            elif kind == "key" and pickup_keys:
                if key is not None:  # (the search's picked-up key, still drawn in the grid)
                    moves.append(((fx, fy, d, key), [FORWARD]))
                elif not hands_full:
                    moves.append(((x, y, d, cell.color), [PICKUP]))
        for nxt, acts in moves:
            c = cost + len(acts)
            if c < best.get(nxt, 1 << 30):
                best[nxt] = c
                parent[nxt] = (state, acts)
                heapq.heappush(frontier, (c, next(counter), nxt))
    return None


def rollout(env, planner: Planner, seed: int, epsilon: float = 0.0,
            rng: np.random.Generator | None = None):
    """One episode from `env.reset(seed=seed)`: the planner's action, or with probability
    `epsilon` a uniform random one of the env's actions.
    -> (observations [T + 1 images], actions, rewards, terminated, truncated)."""
    rng = rng or np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    images, actions, rewards, terms, truncs = [obs["image"]], [], [], [], []
    n_actions = env.action_space.n
    while True:
        if epsilon > 0 and rng.random() < epsilon:
            action = int(rng.integers(n_actions))
        else:
            action = planner.act(env)
        obs, reward, terminated, truncated, _ = env.step(action)
        images.append(obs["image"])
        actions.append(action)
        rewards.append(float(reward))
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        if terminated or truncated:
            return images, actions, rewards, terms, truncs


def success_rates(tasks, episodes: int, epsilon: float = 0.0, seed: int = 0) -> dict:
    """{task: (success rate, mean return, mean length)} of the planner over `episodes`
    fresh episodes per task (success: terminated with a positive reward)."""
    import gymnasium
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids)

    from envs.minigrid import make

    out = {}
    for t, task in enumerate(tasks):
        env = gymnasium.make(make(task).gym_id)
        planner = Planner(np.random.default_rng([seed, t, 1]))
        rng = np.random.default_rng([seed, t])
        wins, returns, lengths = 0, [], []
        for i in range(episodes):
            _, _, rewards, terms, _ = rollout(env, planner, seed * 100_003 + 1000 * t + i,
                                              epsilon, rng)
            wins += terms[-1] and rewards[-1] > 0
            returns.append(sum(rewards))
            lengths.append(len(rewards))
        env.close()
        out[task] = (wins / episodes, float(np.mean(returns)), float(np.mean(lengths)))
    return out


if __name__ == "__main__":
    import argparse

    from envs.minigrid.multitask import SUITES

    parser = argparse.ArgumentParser(description="the planner's success per task")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for task, (rate, ret, length) in success_rates(SUITES["minigrid_mt7"], args.episodes,
                                                   args.epsilon, args.seed).items():
        print(f"{task:<22} success {rate:6.1%}  return {ret:.3f}  length {length:.1f}")
