"""Meta-World wrapper and evaluation: final_obs on truncation, exact env restore, success at any
step, and parity of our evaluation with `metaworld.evaluation` for the scripted experts."""

from dataclasses import dataclass

import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World envs)
import numpy as np
import pytest
from metaworld.evaluation import evaluation as metaworld_evaluation

from envs.metaworld import MT10_TASKS, MetaWorldVectorEnv
from training.evaluation import evaluate, format_table, scripted_agent
from training.run_dir import log_eval

TASKS = ("reach-v3", "drawer-close-v3")


def _custom(steps=5, seed=3):
    return MetaWorldVectorEnv("custom", TASKS, seed=seed, max_episode_steps=steps)


def test_truncation_returns_true_final_obs_and_the_reset_obs():
    env = _custom(steps=5)
    obs = env.reset()
    rng = np.random.default_rng(0)
    for _t in range(5):
        previous = obs
        result = env.step(rng.uniform(-1, 1, (2, 4)))
        obs = result.obs
    assert result.truncated.all() and not result.terminated.any()
    # The true last observation continues the episode: its "previous frame" block is the
    # current block of the step before. The returned obs is a fresh reset (both blocks equal).
    np.testing.assert_array_equal(result.final_obs[:, 18:36], previous[:, :18])
    np.testing.assert_array_equal(result.obs[:, 18:36], result.obs[:, :18])
    assert not np.allclose(result.final_obs, result.obs)
    assert env.at_episode_boundary


def test_rng_checkpoint_restores_the_future_exactly():
    env = _custom(steps=5)
    env.reset()
    actions = np.random.default_rng(1).uniform(-1, 1, (15, 2, 4))
    for a in actions[:5]:
        env.step(a)
    ckpt = env.rng_checkpoint()
    future = [env.step(a) for a in actions[5:]]
    other = _custom(steps=5)
    other.restore(ckpt)
    replay = [other.step(a) for a in actions[5:]]
    for x, y in zip(future, replay, strict=True):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.reward, y.reward)
    with pytest.raises(RuntimeError):
        env.step(actions[0])
        env.rng_checkpoint()


def test_benchmark_goals_kept_on_disk_give_the_same_envs(tmp_path, monkeypatch):
    """A second process reads the goal set from MTRL_CACHE_DIR instead of drawing it again;
    the envs it builds are the same as freshly drawn ones (first observations and rewards of
    two episodes after a reseed, the reseed itself going through `call`)."""
    from envs import metaworld as mw

    def rollout():
        mw._benchmark.cache_clear()  # as a new process
        env = MetaWorldVectorEnv("custom", ("pick-place-v3",), seed=3, max_episode_steps=6)
        env.reseed(11)
        out = [env.reset()]
        for a in np.random.default_rng(0).uniform(-1, 1, (12, 1, 4)):
            out.append(env.step(a).obs)
        return np.concatenate(out)

    monkeypatch.setenv("MTRL_CACHE_DIR", "off")
    fresh = rollout()
    monkeypatch.setenv("MTRL_CACHE_DIR", str(tmp_path))
    written = rollout()
    (cached,) = tmp_path.glob("metaworld-*-mujoco-*/pick-place-v3-seed3.pkl")
    read = rollout()
    np.testing.assert_array_equal(written, fresh)
    np.testing.assert_array_equal(read, fresh)
    cached.write_bytes(b"torn")  # an unreadable file is drawn again and rewritten
    np.testing.assert_array_equal(rollout(), fresh)
    assert cached.stat().st_size > 1000
    mw._benchmark.cache_clear()


@dataclass
class _Step:
    obs: np.ndarray
    reward: np.ndarray
    success: np.ndarray


class _FakeEnv:
    """Two tasks, 4-step episodes; task 0 succeeds only at step 2 of each episode."""

    num_tasks, max_episode_steps, task_names = 2, 4, ("a", "b")

    def reset(self):
        self.t = 0
        return np.zeros((2, 39))

    def step(self, action):
        self.t += 1
        success = np.array([self.t % 4 == 2, False])
        return _Step(np.zeros((2, 39)), np.ones(2), success)


def test_success_counts_at_any_step_and_returns_sum_the_episode():
    result = evaluate(lambda obs: np.zeros((2, 4)), _FakeEnv(), episodes=3)
    assert result["per_task"]["a"] == {"success": 1.0, "return": 4.0, "episodes": 3}
    assert result["per_task"]["b"]["success"] == 0.0
    assert result["mean_success"] == 0.5


class _MetaWorldAgent:
    """The scripted experts behind metaworld.evaluation's Agent protocol."""

    def __init__(self, tasks):
        self.act = scripted_agent(tasks)

    def eval_action(self, obs):
        return self.act(obs)

    def reset(self, env_mask):
        pass


def test_scripted_experts_match_metaworld_evaluation():
    episodes, seed = 2, 7
    ours = evaluate(scripted_agent(MT10_TASKS), MetaWorldVectorEnv("mt10", seed=seed), episodes)
    envs = gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=seed)
    mean, _, per_task, _ = metaworld_evaluation(_MetaWorldAgent(MT10_TASKS), envs, episodes)
    assert {t: ours["per_task"][t]["success"] for t in MT10_TASKS} == per_task
    assert ours["mean_success"] == pytest.approx(mean)
    assert ours["mean_success"] > 0.5  # the experts do solve most of MT10


def _record(returns, timeouts=None):
    per_task = {}
    for i, ret in enumerate(returns):
        per_task[f"task{i}"] = {"success": 0.5, "return": ret, "episodes": 16}
        if timeouts is not None:
            per_task[f"task{i}"]["timeout"] = timeouts[i]
    return {"mean_success": 0.5, "mean_return": float(np.mean(returns)), "per_task": per_task}


def test_format_table_keeps_the_digits_of_small_returns():
    # MiniGrid returns in [0, 1]: 0.832 and 0.874 must not both print as 0.8 / 0.9.
    table = format_table(_record([0.832, 0.874], timeouts=[0.0, 0.25]))
    assert "0.832" in table and "0.874" in table and "0.853" in table
    assert table.splitlines()[0].split()[-1] == "timeout" and "0.25" in table
    # Meta-World returns in the thousands keep one decimal and no timeout column.
    table = format_table(_record([4512.34, 120.06]))
    assert "4512.3" in table and "120.1" in table and "timeout" not in table


class _RecordingWriter:
    def __init__(self):
        self.scalars, self.flushed = {}, False

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = (value, step)

    def flush(self):
        self.flushed = True


def test_log_eval_writes_timeouts_only_where_recorded():
    writer = _RecordingWriter()
    log_eval(writer, _record([0.8, 0.1], timeouts=[0.0, 0.9]), step=40)
    assert writer.scalars["eval_timeout/task1"] == (0.9, 40)
    assert writer.scalars["eval_return/task0"] == (0.8, 40)
    assert writer.scalars["eval/mean_return"] == (pytest.approx(0.45), 40) and writer.flushed
    writer = _RecordingWriter()
    log_eval(writer, _record([4512.3, 120.1]), step=7)
    assert not any(tag.startswith("eval_timeout/") for tag in writer.scalars)
    assert set(writer.scalars) == {"eval/mean_success", "eval/mean_return", "eval_success/task0",
                                   "eval_success/task1", "eval_return/task0", "eval_return/task1"}
