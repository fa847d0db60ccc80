"""Multi-task offline datasets on disk: one Minari dataset per task, plus flat arrays.

A dataset is a directory:

    DIR/dataset.json       what it is: format, suite, tasks, source (policy, tier, noise),
                           seeds, package versions, reward version, episode length, counts,
                           per-task return and success statistics
    DIR/minari/<task>/     one Minari dataset per task (Farama's format for offline RL,
                           hdf5 storage; read it with `minari.MinariDataset(DIR/minari/<task>)`).
                           Episodes hold observations (T + 1 of them: the last is the final
                           observation), actions, rewards, terminations, truncations and
                           infos/success per step.
    DIR/arrays/*.npy       the same steps flattened, task-major, episodes contiguous, for
                           training: memory-mapped at load, never parsed episode by episode

Why both: Minari is the field's interchange format (readable by any Minari user), but it
stores one hdf5 group per episode and one Minari dataset per environment, so reading 100k
episodes of MT50 back is slow and a multi-task set needs one dataset per task. The arrays
are derived data (`rebuild_arrays` regenerates them from the Minari storages) and are what
the learner maps into memory and copies to the device once.

Arrays (N steps, E episodes):
    observations (N, obs_dim) float32     actions (N, action_dim) float32 or (N,) int32
    rewards (N,) float32                  timesteps (N,) int32 (step within its episode)
    returns_to_go (N,) float32 (undiscounted, to the episode's end)
    episode_end (N,) int64 (one past its episode's last step: where a context window stops)
    episodes (E, 3) int64: task index, first step, length
    episode_returns (E,) float64          episode_success (E,) int8 (1/0, -1 unknown)

A dataset is written to DIR.partial and renamed at the end, so an interrupted collection
never leaves something that looks complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import UsageError

FORMAT = "mtrl-offline/1"
ENV_PACKAGES = ("metaworld", "mujoco", "minigrid")  # must match between data and evaluation
ARRAY_FIELDS = ("observations", "actions", "rewards", "timesteps", "returns_to_go",
                "episode_end", "episodes", "episode_returns", "episode_success")


@dataclass
class Episode:
    task: int
    observations: np.ndarray  # (T + 1, obs_dim): the last one is the final observation
    actions: np.ndarray  # (T, action_dim) float or (T,) int
    rewards: np.ndarray  # (T,)
    terminated: np.ndarray  # (T,) bool
    truncated: np.ndarray  # (T,) bool
    success: np.ndarray | None  # (T,) bool per-step success flag; None when unknown

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass(frozen=True)
class OfflineDataset:
    path: Path
    meta: dict
    arrays: dict  # name -> np.ndarray (memory-mapped)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.meta["tasks"])

    @property
    def num_tasks(self) -> int:
        return len(self.meta["tasks"])

    def task_steps(self) -> np.ndarray:
        """(T + 1,) offsets: task t's steps are [offsets[t], offsets[t + 1])."""
        return np.asarray(self.meta["task_offsets"], np.int64)


def write_dataset(path: str | Path, meta: dict, episodes: list[Episode]) -> Path:
    """Write `episodes` (any order) as a dataset at `path`; `meta` holds the description
    (suite, tasks, source, seeds, versions, ...), to which counts and statistics are added."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"dataset '{path}' already exists; choose another --out or delete it")
    tasks = list(meta["tasks"])
    if not episodes:
        raise ValueError("no episodes to write")
    by_task = [[e for e in episodes if e.task == t] for t in range(len(tasks))]
    missing = [tasks[t] for t, eps in enumerate(by_task) if not eps]
    if missing:
        raise ValueError(f"no episodes for tasks: {', '.join(missing)}")
    if episodes[0].actions.ndim == 1 and not meta.get("action_dim"):
        # The largest action the data holds need not be the env's last one.
        raise ValueError("discrete actions need meta['action_dim'], the env's action count")
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    requirements = [f"{k}=={v}" for k, v in meta.get("versions", {}).items()
                    if k in ENV_PACKAGES and v]
    for t, eps in enumerate(by_task):
        dataset_id = f"mtrl/{meta['suite']}-{meta['source'].get('tier', 'data')}/{tasks[t]}-v0"
        _write_minari(partial / "minari" / tasks[t], eps, dataset_id,
                      str(meta["source"].get("policy", "")), requirements,
                      meta.get("action_dim"))
    ordered = [e for eps in by_task for e in eps]
    arrays = _flatten(ordered, len(tasks))
    counts = np.bincount(arrays["episodes"][:, 0], minlength=len(tasks))
    steps = np.bincount(arrays["episodes"][:, 0], weights=arrays["episodes"][:, 2],
                        minlength=len(tasks)).astype(np.int64)
    full = dict(meta)
    full.update(
        format=FORMAT,
        obs_dim=int(arrays["observations"].shape[1]),
        action_kind="discrete" if arrays["actions"].ndim == 1 else "continuous",
        action_dim=int(meta["action_dim"] if arrays["actions"].ndim == 1
                       else arrays["actions"].shape[-1]),
        total_episodes=int(len(ordered)),
        total_steps=int(arrays["rewards"].shape[0]),
        task_offsets=[0, *np.cumsum(steps).tolist()],
        per_task=_statistics(arrays, tasks),
    )
    full["per_task_episodes"] = {tasks[t]: int(c) for t, c in enumerate(counts)}
    _write_arrays(partial / "arrays", arrays)
    (partial / "dataset.json").write_text(json.dumps(full, indent=2))
    partial.rename(path)
    return path


def _write_minari(directory: Path, episodes: list[Episode], dataset_id: str, algorithm: str,
                  requirements: list[str], action_dim: int | None) -> None:
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    directory.mkdir(parents=True)
    first = episodes[0]
    obs_dim = first.observations.shape[1]
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    if first.actions.ndim == 1:
        action_space = gym.spaces.Discrete(action_dim)  # the env's count (write_dataset)
    else:
        action_space = gym.spaces.Box(-1.0, 1.0, (first.actions.shape[1],), np.float32)
    storage = MinariStorage.new(directory, observation_space=obs_space,
                                action_space=action_space, data_format="hdf5")
    buffers = []
    for i, e in enumerate(episodes):
        infos = {} if e.success is None else {"success": np.asarray(e.success, bool)}
        buffers.append(EpisodeBuffer(
            id=i, observations=np.asarray(e.observations, np.float32),
            actions=np.asarray(e.actions, action_space.dtype),
            rewards=np.asarray(e.rewards, np.float64), terminations=np.asarray(e.terminated, bool),
            truncations=np.asarray(e.truncated, bool), infos=infos))
    storage.update_episodes(buffers)
    storage.update_metadata({"dataset_id": dataset_id, "algorithm_name": algorithm,
                             "minari_version": minari.__version__,
                             "requirements": requirements})


def _flatten(episodes: list[Episode], num_tasks: int) -> dict:
    lengths = np.array([len(e) for e in episodes], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rewards = np.concatenate([e.rewards for e in episodes]).astype(np.float32)
    rtg = np.concatenate([np.cumsum(e.rewards[::-1])[::-1] for e in episodes]).astype(np.float32)
    discrete = episodes[0].actions.ndim == 1
    success = np.array([-1 if e.success is None else int(np.any(e.success)) for e in episodes],
                       np.int8)
    return {
        "observations": np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float32),
        "actions": np.concatenate([e.actions for e in episodes]).astype(
            np.int32 if discrete else np.float32),
        "rewards": rewards,
        "timesteps": np.concatenate([np.arange(n) for n in lengths]).astype(np.int32),
        "returns_to_go": rtg,
        "episode_end": np.repeat(starts + lengths, lengths).astype(np.int64),
        "episodes": np.stack([[e.task for e in episodes], starts, lengths], 1).astype(np.int64),
        "episode_returns": np.array([np.sum(e.rewards, dtype=np.float64) for e in episodes]),
        "episode_success": success,
    }


def _statistics(arrays: dict, tasks: list[str]) -> dict:
    out = {}
    for t, name in enumerate(tasks):
        rows = arrays["episodes"][:, 0] == t
        ret = arrays["episode_returns"][rows]
        succ = arrays["episode_success"][rows]
        out[name] = {
            "episodes": int(rows.sum()),
            "steps": int(arrays["episodes"][rows, 2].sum()),
            "return_mean": float(ret.mean()), "return_std": float(ret.std()),
            "return_min": float(ret.min()), "return_max": float(ret.max()),
            "success": None if (succ < 0).any() else float(succ.mean()),
        }
    return out


def _write_arrays(directory: Path, arrays: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_FIELDS:
        np.save(directory / f"{name}.npy", arrays[name], allow_pickle=False)


def rebuild_arrays(path: str | Path) -> None:
    """Regenerate DIR/arrays from the Minari storages (the arrays are derived data)."""
    from minari.dataset.minari_storage import MinariStorage

    path = Path(path)
    meta = _read_meta(path)
    episodes = []
    for t, task in enumerate(meta["tasks"]):
        storage = MinariStorage.read(path / "minari" / task)
        for ep in storage.get_episodes(range(storage.total_episodes)):
            info = ep.get("infos") or {}
            episodes.append(Episode(
                task=t, observations=np.asarray(ep["observations"]),
                actions=np.asarray(ep["actions"]), rewards=np.asarray(ep["rewards"]),
                terminated=np.asarray(ep["terminations"]),
                truncated=np.asarray(ep["truncations"]), success=info.get("success")))
    tmp = path / "arrays.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    _write_arrays(tmp, _flatten(episodes, len(meta["tasks"])))
    if (path / "arrays").exists():
        shutil.rmtree(path / "arrays")
    tmp.rename(path / "arrays")


def _read_meta(path: Path) -> dict:
    if not path.is_dir():
        raise UsageError(f"dataset '{path}' not found (make one with `python launch.py collect`)")
    file = path / "dataset.json"
    if not file.is_file():
        raise UsageError(f"'{path}' is not a dataset: no dataset.json in it")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"corrupt dataset file '{file}': {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UsageError(f"'{file}' has format {found!r}; this code reads '{FORMAT}'")
    return meta


def load_dataset(path: str | Path, tasks: tuple[str, ...] | None = None,
                 env_versions: dict | None = None, reward_version: str | None = None,
                 check_values: bool = True) -> OfflineDataset:
    """Open a dataset, memory-mapped, after checking it.

    `tasks`: the tasks the caller trains on, in its order; every one must be in the dataset
    (the dataset may hold more; callers select with `select_tasks`). `env_versions`
    ({package: version}) and `reward_version` must equal the ones it was collected with:
    mixing Meta-World versions or reward functions silently changes what returns mean.
    `check_values` scans the floats for NaN / inf once.
    """
    path = Path(path)
    meta = _read_meta(path)
    if tasks is not None:
        missing = [t for t in tasks if t not in meta["tasks"]]
        if missing:
            raise UsageError(f"dataset '{path}' lacks tasks {', '.join(missing)}; it has: "
                             f"{', '.join(meta['tasks'])}")
    for package, wanted in (env_versions or {}).items():
        have = meta.get("versions", {}).get(package)
        if have != wanted:
            raise UsageError(f"dataset '{path}' was collected with {package} {have}, this "
                             f"environment has {wanted}: recollect it (versions are not mixed)")
    if reward_version is not None and meta.get("reward_version") != reward_version:
        raise UsageError(f"dataset '{path}' has reward_version {meta.get('reward_version')}, "
                         f"the run asks for {reward_version}")
    arrays = {}
    for name in ARRAY_FIELDS:
        file = path / "arrays" / f"{name}.npy"
        if not file.is_file():
            raise UsageError(f"dataset '{path}' lacks {file.relative_to(path)}; regenerate the "
                             "arrays from its Minari storages with `python launch.py collect "
                             f"--rebuild-arrays {path}`")
        try:
            arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UsageError(f"corrupt dataset file '{file}': {e}") from None
    _check_shapes(path, meta, arrays)
    if check_values:
        for name in ("observations", "actions", "rewards", "returns_to_go"):
            if arrays[name].dtype.kind == "f" and not _all_finite(arrays[name]):
                raise UsageError(f"dataset '{path}': {name} holds NaN or inf values")
        actions = arrays["actions"]
        if meta["action_kind"] == "discrete" and len(actions) and not (
                0 <= actions.min() and actions.max() < meta["action_dim"]):
            raise UsageError(f"dataset '{path}': discrete actions lie in [{actions.min()}, "
                             f"{actions.max()}], outside the {meta['action_dim']} actions")
    return OfflineDataset(path, meta, arrays)


def _all_finite(array: np.ndarray, chunk: int = 1 << 20) -> bool:
    flat = array.reshape(len(array), -1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, len(flat), chunk))


def _check_shapes(path: Path, meta: dict, arrays: dict) -> None:
    n, e = meta["total_steps"], meta["total_episodes"]
    action_shape = (n,) if meta["action_kind"] == "discrete" else (n, meta["action_dim"])
    expected = {
        "observations": (n, meta["obs_dim"]), "actions": action_shape, "rewards": (n,),
        "timesteps": (n,), "returns_to_go": (n,), "episode_end": (n,), "episodes": (e, 3),
        "episode_returns": (e,), "episode_success": (e,),
    }
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise UsageError(f"dataset '{path}': arrays/{name}.npy has shape "
                             f"{arrays[name].shape}, dataset.json says {shape}")
    offsets = meta["task_offsets"]
    if len(offsets) != len(meta["tasks"]) + 1 or offsets[-1] != n:
        raise UsageError(f"dataset '{path}': task_offsets do not match the tasks and steps")
