"""Offline datasets and decision-transformer training: format round trip, validation of bad
datasets, on-device window sampling, learning, HarmoDT's masks, exact resume.

One tiny real dataset (Meta-World's scripted experts on reach and push, 50-step episodes)
is collected once per module; the models are tiny (d 16, 1 layer) and few, since every new
learner compiles anew on the CPU.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.dt.learner import device_data, make_dt_learner, window
from tests.conftest import interrupted_at_call
from training import config as config_lib
from training.config import Config, EnvConfig, EvalConfig, TrainConfig
from training.data.collect import collect_scripted
from training.data.offline_data import Episode, load_dataset, rebuild_arrays, write_dataset
from training.errors import UsageError

TASKS = ("reach-v3", "push-v3")
HORIZON = 50


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    return collect_scripted(str(out), "custom", TASKS, "mixed", 3, seed=0,
                            max_episode_steps=HORIZON, show_progress=False)


def tiny_config(dataset, variant="mtdt", **dt) -> Config:
    from agents.dt.networks import DTConfig

    return Config(
        preset="test_dt", algo="dt",
        env=EnvConfig(suite="custom", tasks=TASKS, max_episode_steps=HORIZON),
        dt=DTConfig(variant=variant, dataset=str(dataset), context_len=4, embed_dim=16,
                    num_layers=1, num_heads=2, prompt_length=3, batch_per_task=4,
                    warmup_steps=5, updates=12, **dt),
        train=TrainConfig(eval_every=12, checkpoint_every=4, keep_checkpoints=5),
        eval=EvalConfig(episodes=1, deterministic=True),
    )


# ---- format ---------------------------------------------------------------------------------

def test_dataset_round_trip_minari_and_arrays(dataset_dir):
    import minari

    data = load_dataset(dataset_dir, tasks=TASKS)
    meta, arrays = data.meta, data.arrays
    assert meta["tasks"] == list(TASKS) and meta["total_episodes"] == 6
    assert meta["total_steps"] == 6 * HORIZON and meta["source"]["tier"] == "mixed"
    assert meta["versions"]["metaworld"] and meta["reward_version"] == "v2"
    # Each task's Minari dataset holds exactly the steps of its slice of the arrays.
    for t, task in enumerate(TASKS):
        lo, hi = meta["task_offsets"][t], meta["task_offsets"][t + 1]
        minari_data = minari.MinariDataset(dataset_dir / "minari" / task)
        episodes = list(minari_data.iterate_episodes())
        assert len(episodes) == 3 and minari_data.spec.dataset_id.endswith(f"{task}-v0")
        np.testing.assert_allclose(np.concatenate([e.observations[:-1] for e in episodes]),
                                   arrays["observations"][lo:hi])
        np.testing.assert_allclose(np.concatenate([e.rewards for e in episodes]),
                                   arrays["rewards"][lo:hi], rtol=1e-6)
        assert all(e.truncations[-1] and not e.truncations[:-1].any() for e in episodes)
        returns = [e.rewards.sum() for e in episodes]
        assert meta["per_task"][task]["return_max"] == pytest.approx(max(returns))
    # Returns-to-go: the episode's return at its first step, the last reward at its last.
    first, length = arrays["episodes"][0, 1], arrays["episodes"][0, 2]
    assert arrays["returns_to_go"][first] == pytest.approx(arrays["episode_returns"][0], 1e-5)
    assert arrays["returns_to_go"][first + length - 1] == arrays["rewards"][first + length - 1]
    assert (arrays["episode_end"][first:first + length] == first + length).all()
    np.testing.assert_array_equal(arrays["timesteps"][first:first + length], np.arange(length))
    # The arrays are derived data: rebuilt from Minari they are identical.
    before = {k: np.array(v) for k, v in arrays.items()}
    rebuild_arrays(dataset_dir)
    again = load_dataset(dataset_dir).arrays
    for name, value in before.items():
        np.testing.assert_array_equal(value, again[name])


def test_same_seed_same_dataset(dataset_dir, tmp_path):
    other = collect_scripted(str(tmp_path / "again"), "custom", TASKS, "mixed", 3, seed=0,
                             max_episode_steps=HORIZON, show_progress=False)
    a, b = load_dataset(dataset_dir).arrays, load_dataset(other).arrays
    for name in ("observations", "actions", "rewards"):
        np.testing.assert_array_equal(a[name], b[name])


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_datasets_give_clear_errors(dataset_dir, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no dataset.json"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(UsageError, match="lacks tasks pick-place-v3"):
        load_dataset(dataset_dir, tasks=("reach-v3", "pick-place-v3"))
    with pytest.raises(UsageError, match="metaworld 3.1.1, this environment has 0.0"):
        load_dataset(dataset_dir, env_versions={"metaworld": "0.0"})
    with pytest.raises(UsageError, match="reward_version v2, the run asks for v1"):
        load_dataset(dataset_dir, reward_version="v1")

    broken = _copy(dataset_dir, tmp_path / "json")
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(UsageError, match="corrupt dataset file"):
        load_dataset(broken)

    truncated = _copy(dataset_dir, tmp_path / "npy")
    file = truncated / "arrays" / "observations.npy"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(UsageError, match="corrupt dataset file .*observations.npy"):
        load_dataset(truncated)

    missing = _copy(dataset_dir, tmp_path / "missing")
    (missing / "arrays" / "actions.npy").unlink()
    with pytest.raises(UsageError, match="rebuild-arrays"):
        load_dataset(missing)

    nan = _copy(dataset_dir, tmp_path / "nan")
    rewards = np.load(nan / "arrays" / "rewards.npy")
    rewards[7] = np.nan
    np.save(nan / "arrays" / "rewards.npy", rewards)
    with pytest.raises(UsageError, match="rewards holds NaN"):
        load_dataset(nan)

    with pytest.raises(UsageError, match="already exists"):
        write_dataset(dataset_dir, {"tasks": list(TASKS)}, [])

    # Another task order is another Meta-World goal set: the run must not evaluate on it.
    from agents.dt.loop import open_dataset

    cfg = tiny_config(dataset_dir)
    with pytest.raises(UsageError, match="collected on suite 'custom'"):
        open_dataset(dataclasses.replace(cfg, env=dataclasses.replace(cfg.env,
                                                                      tasks=TASKS[::-1])))


def test_discrete_actions_outside_the_env_action_count_are_refused(tmp_path):
    def episode(actions):
        done = np.array([False, True])
        return Episode(0, np.zeros((3, 2), np.float32), np.array(actions, np.int32),
                       np.zeros(2), np.zeros(2, bool), done, None)

    meta = {"tasks": ["a"], "suite": "x", "source": {}, "env": "x"}
    with pytest.raises(ValueError, match="action_dim"):
        write_dataset(tmp_path / "no_count", meta, [episode([0, 1])])
    path = write_dataset(tmp_path / "d", {**meta, "action_dim": 3}, [episode([2, 3])])
    with pytest.raises(UsageError, match=r"discrete actions lie in \[2, 3\], outside the 3"):
        load_dataset(path)


def test_write_refuses_a_task_without_episodes(tmp_path):
    ep = Episode(0, np.zeros((3, 2)), np.zeros((2, 1)), np.zeros(2), np.zeros(2, bool),
                 np.array([False, True]), None)
    with pytest.raises(ValueError, match="no episodes for tasks: b"):
        write_dataset(tmp_path / "d", {"tasks": ["a", "b"], "suite": "x", "source": {}}, [ep])
    assert not (tmp_path / "d").exists()


# ---- sampling and learning ------------------------------------------------------------------

def _synthetic(tmp_path):
    """Two tasks whose action is a fixed function of the state (different per task): a
    model that fits the data must both read the state and tell the tasks apart."""
    rng = np.random.default_rng(0)
    episodes = []
    for task, sign in ((0, 1.0), (1, -1.0)):
        for length in (7, 5, 9):
            obs = rng.normal(size=(length + 1, 3)).astype(np.float32)
            actions = np.tanh(sign * obs[:-1, :2])
            rewards = rng.uniform(size=length)
            done = np.zeros(length, bool)
            done[-1] = True
            episodes.append(Episode(task, obs, actions, rewards, np.zeros(length, bool), done,
                                    done.copy()))
    meta = {"suite": "synthetic", "tasks": ["a", "b"], "env": "synthetic", "seed": 0,
            "source": {"policy": "tanh(+-s)", "tier": "test"}}
    return load_dataset(write_dataset(tmp_path / "syn", meta, episodes))


def test_windows_are_left_padded_and_stay_in_their_episode(tmp_path):
    data = device_data(_synthetic(tmp_path), ("b", "a"), prompt_episodes=2)
    # Task order follows the run: "b" first. Its episodes have lengths 7, 5, 9.
    assert data.task_size.tolist() == [21, 21] and data.task_start.tolist() == [0, 21]
    start = 5  # the 6th step of b's first episode (length 7): 2 steps remain
    w = window(data, jnp.int32(start), 4, data.episode_end[start], 1e-3)
    assert w["attention_mask"].tolist() == [0, 0, 1, 1]
    assert w["timesteps"].tolist() == [0, 0, 5, 6]
    np.testing.assert_allclose(w["states"][2:], data.observations[5:7])
    assert float(jnp.abs(w["states"][:2]).sum()) == 0.0
    # The best episodes (by return) serve as prompts.
    assert data.prompt_length.shape == (2, 2)

    cfg = tiny_config("unused", "promptdt").dt
    learner = make_dt_learner(cfg, 3, 2, 2)
    batch = jax.jit(learner.sample_batch)(data, jax.random.PRNGKey(0))
    assert batch["states"].shape == (2, 4, 4, 3) and batch["prompt"]["states"].shape[:3] == \
        (2, 4, 3)
    # Slice t holds task t's data only: every valid state is one of that task's states.
    for t in range(2):
        lo = int(data.task_start[t])
        own = np.asarray(data.observations[lo:lo + int(data.task_size[t])])
        valid = np.asarray(batch["attention_mask"][t]).astype(bool)
        for row in np.asarray(batch["states"][t])[valid]:
            assert np.isclose(own, row).all(1).any()


def test_states_are_normalised_per_task_online_too_and_prompts_are_best_episode_tails(
        tmp_path):
    dataset = _synthetic(tmp_path)
    raw, offsets = np.asarray(dataset.arrays["observations"]), dataset.task_steps()
    names = ("b", "a")
    data = device_data(dataset, names, prompt_episodes=1)
    firsts = []
    for t, name in enumerate(names):
        i = dataset.tasks.index(name)
        steps = raw[offsets[i]:offsets[i + 1]]
        mean, std = steps.mean(0), steps.std(0)
        np.testing.assert_allclose(data.state_mean[t], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data.state_std[t], std, rtol=1e-5)
        lo = int(data.task_start[t])
        np.testing.assert_allclose(data.observations[lo:lo + len(steps)], (steps - mean) / std,
                                   rtol=1e-4, atol=1e-5)
        firsts.append(steps[0])
    unnormalised = device_data(dataset, names, 1, normalize_states=False)
    np.testing.assert_array_equal(unnormalised.observations[:len(raw)], np.concatenate(
        [raw[offsets[dataset.tasks.index(n)]:offsets[dataset.tasks.index(n) + 1]]
         for n in names]))

    cfg = tiny_config("unused", "promptdt").dt
    learner = make_dt_learner(cfg, 3, 2, 2)
    state = learner.init(jax.random.PRNGKey(0))
    prompt = learner.eval_prompt(data, jax.random.PRNGKey(1))
    # The prompt is the last prompt_length (3) steps of each task's best episode.
    lengths = np.asarray(data.prompt_length[:, 0])
    np.testing.assert_array_equal(prompt["timesteps"][:, 0],
                                  lengths[:, None] - 3 + np.arange(3))
    # Online, `act` feeds raw observations through the same per-task statistics.
    _, ctx = learner.act(state, data, prompt, learner.eval_reset(jnp.ones(2)),
                         jnp.asarray(np.stack(firsts)), jnp.zeros(2), 0, True)
    np.testing.assert_allclose(ctx.states[:, -1], data.observations[data.task_start],
                               rtol=1e-4, atol=1e-5)


def test_mtdt_fits_task_dependent_actions(tmp_path):
    dataset = _synthetic(tmp_path)
    cfg = dataclasses.replace(tiny_config("unused").dt, dropout=0.0, learning_rate=3e-3,
                              warmup_steps=0, updates=300, batch_per_task=8)
    learner = make_dt_learner(cfg, 3, 2, 2)
    data = device_data(dataset, ("a", "b"), 1)
    state = learner.init(jax.random.PRNGKey(0))
    state, early = learner.train_updates(state, data, 100)  # mean loss of updates 1-100
    for _ in range(2):
        state, late = learner.train_updates(state, data, 100)
    print(float(early["loss"]), float(late["loss"]))
    assert float(late["loss"]) < 0.2 * float(early["loss"])
    assert int(state.updates) == 300


# HarmoDT with a mask update every 3 updates: the run below resumes masks too, and the
# regrow test shares its compiled learner (same configuration, same chunk of 4 updates).
HARMODT = {"mask_update_every": 3, "mask_update_max": 5}


def test_harmodt_regrow_changes_masks_at_constant_density(dataset_dir):
    cfg = tiny_config(dataset_dir, "harmodt", **HARMODT).dt
    dataset = load_dataset(dataset_dir)
    learner = make_dt_learner(cfg, 39, 4, 2)
    data = device_data(dataset, TASKS, 1)
    state = learner.init(jax.random.PRNGKey(0))
    before = jax.tree.leaves(state.masks)
    state, _ = learner.train_updates(state, data, 4)  # a mask update at update 3
    after = jax.tree.leaves(state.masks)
    changed = 0
    for m0, m1 in zip(before, after, strict=True):
        assert set(np.unique(m1).tolist()) <= {0.0, 1.0}
        changed += int((m0 != m1).sum())
    assert 0 < changed <= 2 * 2 * HARMODT["mask_update_max"]  # k per task over all kernels
    # Ranked over the whole network (HarmoDT): each task's total density is exact.
    np.testing.assert_array_equal(sum(m.sum((1, 2)) for m in before),
                                  sum(m.sum((1, 2)) for m in after))


# ---- the loop -------------------------------------------------------------------------------

def _evals(run):
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


def test_interrupted_dt_run_resumes_exactly(dataset_dir, tmp_path):
    from agents.dt.loop import DTTrainer, reevaluate
    from training import run_dir as run_lib

    cfg = tiny_config(dataset_dir, "harmodt", **HARMODT)
    config_lib.validate(cfg)
    full = run_lib.create_at(tmp_path / "full", cfg)
    full_trainer = DTTrainer(cfg, full, show_progress=False)
    (final,) = full_trainer.train()
    assert [r["step"] for r in _evals(full)] == [12] and final == _evals(full)[-1]
    assert set(final["per_task"]) == set(TASKS)

    cut = run_lib.create_at(tmp_path / "cut", cfg)
    with interrupted_at_call(DTTrainer, "_chunk", 3):
        DTTrainer(cfg, cut, show_progress=False).train()
    resumed = DTTrainer(cfg, cut, show_progress=False)
    resumed.train(resume=True)
    assert _evals(cut) == _evals(full)
    for x, y in zip(jax.tree.leaves(full_trainer.state), jax.tree.leaves(resumed.state),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    # `launch.py eval --run` reproduces the final evaluation from the checkpoint.
    assert reevaluate(cfg, full, None, None) == final


def test_dt_config_errors(dataset_dir):
    cfg = tiny_config(dataset_dir)
    with pytest.raises(UsageError, match="--dt.dataset DIR"):
        config_lib.validate(dataclasses.replace(cfg, dt=dataclasses.replace(cfg.dt, dataset="")))
    with pytest.raises(UsageError, match="unknown dt variant 'gpt'"):
        config_lib.validate(dataclasses.replace(cfg, dt=dataclasses.replace(cfg.dt,
                                                                            variant="gpt")))
    with pytest.raises(UsageError, match="--dt.batch_per_task must be positive"):
        config_lib.validate(dataclasses.replace(cfg, dt=dataclasses.replace(
            cfg.dt, batch_per_task=0)))
    # MiniGrid suites train dt too (tests/test_offline_minigrid.py), with discrete actions.
    with pytest.raises(UsageError, match="MiniGrid actions are discrete"):
        config_lib.validate(dataclasses.replace(cfg, env=EnvConfig(suite="minigrid_mt3")))
