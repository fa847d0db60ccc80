"""Offline data sources: a SAC run's replay buffer exported as a dataset (episode boundaries,
a wrapped ring buffer, the first-half split), the MiniGrid planner's success on every task,
and a small planner dataset read back."""

import json

import gymnasium
import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
import numpy as np
import pytest
from minigrid.wrappers import ImgObsWrapper

from envs.minigrid import make
from envs.minigrid.expert import Planner, memory_cells, memory_cue, rollout
from envs.minigrid.multitask import SUITES
from training.checkpoint import Checkpointer
from training.data.offline_data import load_dataset
from training.errors import UsageError

# The tiny SAC run of tests/test_training.py (TINY, SMALL_SUITE) with a 100-step buffer and
# the plain multi-task MLP (the architecture is irrelevant here; it compiles fastest):
# 40-step episodes, checkpoints at 0, 80, 160 and 220 (the last mid-episode); the buffer
# wraps after step 100.
LENGTH, CAPACITY, TASKS = 40, 100, ("reach-v3", "drawer-close-v3")
OVERRIDES = {
    "network.arch": "mtmlp", "network.hidden_sizes": "16,16",
    "sac.batch_size_per_task": "8", "sac.buffer_size_per_task": str(CAPACITY),
    "sac.critic_warmup": "40", "sac.actor_warmup": "60", "eval.episodes": "1",
    "train.chunk_steps": "20", "env.max_episode_steps": str(LENGTH),
    "env.suite": "custom", "env.tasks": ",".join(TASKS),
    "train.total_steps_per_task": "220", "train.eval_every": "1000",
    "train.checkpoint_every": "80", "train.keep_checkpoints": "10",
}


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    from agents.sac.loop import Trainer
    from experiments.presets import get_preset
    from training import config as config_lib
    from training import run_dir as run_lib

    cfg = config_lib.apply_overrides(get_preset("demo"), OVERRIDES)
    config_lib.validate(cfg)
    run = run_lib.create_at(tmp_path_factory.mktemp("sac") / "run", cfg)
    Trainer(cfg, run, show_progress=False).train()
    return run


def _buffer(run, step):
    tree, meta = Checkpointer(run / "checkpoints", 10).restore(step)
    return {k: np.asarray(v) for k, v in tree["buffer"].items()}, meta


def _export(run, tmp_path, step, half="all"):
    from training.data.collect_replay import collect_replay

    path = collect_replay(tmp_path / f"replay-{step}-{half}", run, half=half, step=step,
                          show_progress=False)
    return load_dataset(path)


def _check_against_buffer(data, buffer, first_episode):
    """Episode e (in the run) of task t is env steps [e L, (e + 1) L), stored at positions
    step % capacity: the dataset's steps must be exactly those."""
    eps = np.asarray(data.arrays["episodes"])
    for row, (task, start, length) in enumerate(eps):
        assert length == LENGTH
        episode = first_episode + (row % (len(eps) // len(TASKS)))
        pos = (episode * LENGTH + np.arange(LENGTH)) % CAPACITY
        sl = slice(start, start + length)
        np.testing.assert_array_equal(data.arrays["rewards"][sl], buffer["reward"][task, pos])
        np.testing.assert_array_equal(data.arrays["observations"][sl], buffer["obs"][task, pos])
        np.testing.assert_array_equal(data.arrays["actions"][sl], buffer["action"][task, pos])
        np.testing.assert_array_equal(data.arrays["timesteps"][sl], np.arange(LENGTH))
        np.testing.assert_allclose(data.arrays["returns_to_go"][sl][0],
                                   buffer["reward"][task, pos].sum(), rtol=1e-5)


def test_replay_export_episodes_and_first_half(sac_run, tmp_path):
    buffer, _ = _buffer(sac_run, 80)  # not wrapped: 80 steps = 2 episodes per task
    data = _export(sac_run, tmp_path, 80)
    meta = data.meta
    assert meta["tasks"] == list(TASKS) and meta["per_task_episodes"] == {t: 2 for t in TASKS}
    assert meta["replay"]["missing_episodes"] == 0 and not meta["replay"]["wrapped"]
    assert meta["action_kind"] == "continuous" and meta["obs_dim"] == 39
    np.testing.assert_array_equal(data.arrays["episodes"][:, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(data.arrays["episodes"][:, 1], [0, 40, 80, 120])
    _check_against_buffer(data, buffer, first_episode=0)
    assert (np.asarray(data.arrays["episode_success"]) == -1).all()
    assert all(s["success"] is None for s in meta["per_task"].values())
    # The run's description and the versions the data came from.
    config = json.loads((sac_run / "config.json").read_text())
    src = meta["source"]
    assert src["checkpoint_step"] == 80 and src["run"] == str(sac_run.resolve())
    assert src["preset"] == config["preset"] and meta["seed"] == config["seed"]
    assert meta["suite"] == "custom" and meta["reward_version"] == config["env"]["reward_version"]
    run_versions = json.loads((sac_run / "versions.json").read_text())
    assert meta["versions"] == run_versions
    load_dataset(data.path, tasks=TASKS, reward_version=config["env"]["reward_version"],
                 env_versions={"metaworld": run_versions["metaworld"]})
    # Minari storage: T + 1 observations per episode, the last = next_obs of the last step.
    from minari.dataset.minari_storage import MinariStorage

    storage = MinariStorage.read(data.path / "minari" / TASKS[1])
    (first,) = storage.get_episodes([0])
    np.testing.assert_array_equal(first["observations"][-1], buffer["next_obs"][1, LENGTH - 1])
    assert first["truncations"][-1] and not first["truncations"][:-1].any()

    half = _export(sac_run, tmp_path, 80, half="first")
    assert half.meta["per_task_episodes"] == {t: 1 for t in TASKS}
    assert half.meta["source"]["tier"] == "replay-first"
    _check_against_buffer(half, buffer, first_episode=0)


def test_replay_export_of_a_wrapped_buffer(sac_run, tmp_path):
    # Step 160: positions hold steps 60..159; episode 1 (40..79) is incomplete, so episodes
    # 2 and 3 are exported and the run's first 2 are missing.
    buffer, meta = _buffer(sac_run, 160)
    assert meta["buffer_ptr"] == 60
    data = _export(sac_run, tmp_path, 160)
    replay = data.meta["replay"]
    assert replay["wrapped"] and replay["missing_episodes"] == 2
    assert replay["exported_episode_range"] == [2, 4]
    assert data.meta["per_task_episodes"] == {t: 2 for t in TASKS}
    _check_against_buffer(data, buffer, first_episode=2)
    # Step 220 (the final checkpoint, mid-episode): steps 120..219; episodes 3 and 4, the
    # 20 steps of episode 5 left out; first half = episode 3.
    buffer, _ = _buffer(sac_run, 220)
    data = _export(sac_run, tmp_path, 220)
    replay = data.meta["replay"]
    assert replay["missing_episodes"] == 3 and replay["dropped_partial_steps"] == 20
    _check_against_buffer(data, buffer, first_episode=3)
    half = _export(sac_run, tmp_path, 220, half="first")
    assert half.meta["replay"]["exported_episode_range"] == [3, 4]
    _check_against_buffer(half, buffer, first_episode=3)


def test_replay_export_errors(sac_run, tmp_path):
    from training.data.collect_replay import collect_replay

    with pytest.raises(UsageError, match="no replay buffer"):
        collect_replay(tmp_path / "a", sac_run, step=0, show_progress=False)
    with pytest.raises(UsageError, match="unknown half"):
        collect_replay(tmp_path / "b", sac_run, half="second", show_progress=False)
    with pytest.raises(UsageError, match="no checkpoint at step 100"):
        collect_replay(tmp_path / "c", sac_run, step=100, show_progress=False)


@pytest.mark.parametrize("task", SUITES["minigrid_mt7"])
def test_planner_solves_every_task(task):
    env = gymnasium.make(make(task).gym_id)
    planner = Planner()
    for i in range(6):
        _, actions, rewards, terminated, _ = rollout(env, planner, seed=1000 + i)
        assert terminated[-1] and rewards[-1] > 0, (task, i, actions)
        if task == "MemoryS11":
            env.reset(seed=1000 + i)
            u = env.unwrapped
            success, failure = memory_cells(u)
            assert success == tuple(u.success_pos) and failure == tuple(u.failure_pos)
            # The cue is in the agent's view at some step before the choice.
            seen = u.agent_sees(*memory_cue(u))
            for action in actions[:-1]:
                env.step(action)
                seen |= u.agent_sees(*memory_cue(u))
            assert seen, i
    # Noise: the planner replans from wherever random actions (drops, toggles) left it.
    wins = [rollout(env, planner, seed=2000 + i, epsilon=0.3,
                    rng=np.random.default_rng(i))[2][-1] > 0 for i in range(6)]
    assert sum(wins) >= 5, (task, wins)
    env.close()


def test_minigrid_dataset(tmp_path):
    from training.data.collect_minigrid import collect_minigrid, episode_seed

    names = SUITES["minigrid_mt3"]
    path = collect_minigrid(tmp_path / "mt3", "minigrid_mt3", "mixed", 4, seed=3,
                            show_progress=False)
    data = load_dataset(path, tasks=names)
    meta, arrays = data.meta, data.arrays
    n = meta["total_steps"]
    assert meta["env"] == "minigrid" and meta["tasks"] == list(names)
    assert meta["action_kind"] == "discrete" and meta["action_dim"] == 7
    assert arrays["observations"].shape == (n, 147) and arrays["observations"].dtype == np.float32
    assert arrays["actions"].shape == (n,) and arrays["actions"].dtype == np.int32
    assert 0 <= arrays["actions"].min() and arrays["actions"].max() < 7
    assert meta["per_task_episodes"] == {t: 4 for t in names}
    assert meta["max_steps"] == {"LavaGapS7": 196, "RedBlueDoors-6x6": 720, "MemoryS11": 605}
    assert meta["versions"]["minigrid"] == minigrid.__version__
    eps = np.asarray(arrays["episodes"])
    rewards = np.asarray(arrays["rewards"])
    for t, task in enumerate(names):
        rows = np.flatnonzero(eps[:, 0] == t)
        lengths = eps[rows, 2]
        assert (lengths <= meta["max_steps"][task]).all()
        last = rewards[eps[rows, 1] + lengths - 1]
        # success = the episode ended with a positive reward (only the last step is rewarded)
        np.testing.assert_array_equal(arrays["episode_success"][rows], (last > 0).astype(np.int8))
        stats = meta["per_task"][task]
        assert stats["success"] == pytest.approx((last > 0).mean())
        assert stats["steps"] == lengths.sum()
        # The stored observation is the agent's: ImgObsWrapper's image of the same reset.
        env = ImgObsWrapper(gymnasium.make(make(task).gym_id))
        first_obs, _ = env.reset(seed=episode_seed(3, task, 0))
        np.testing.assert_array_equal(arrays["observations"][eps[rows[0], 1]],
                                      first_obs.reshape(147).astype(np.float32))
        env.close()
    # Reproducible from the seed.
    again = load_dataset(collect_minigrid(tmp_path / "again", "minigrid_mt3", "mixed", 4,
                                          seed=3, show_progress=False))
    for name in ("observations", "actions", "rewards", "episodes"):
        np.testing.assert_array_equal(again.arrays[name], arrays[name])
    with pytest.raises(UsageError, match="unknown tier"):
        collect_minigrid(tmp_path / "x", "minigrid_mt3", "best", 1, seed=0)
