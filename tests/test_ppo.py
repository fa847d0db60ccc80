"""Multi-task PPO on MiniGrid: GAE and losses against direct computations, the multi-task env
wrapper, MOORE's CNN networks, and small end-to-end runs (exact resume, seed batching, the
host-stepped minigrid backend). Shapes are kept tiny: each new shape compiles for seconds."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.nn.layers import conv2x2
from agents.nn.registry import NetworkConfig, make_network
from agents.ppo import losses
from agents.ppo.learner import PPOConfig
from envs.minigrid import ENVS
from envs.minigrid.multitask import MultiTaskGrid
from experiments.presets import get_preset
from tests.conftest import interrupted_at_call, tensorboard_scalars
from training import config as config_lib
from training.errors import UsageError


def moore_gae(v, v_next, r, absorbing, last, gamma, lam):
    """MOORE's compute_gae (mtppo.py) for one task's sequence, transcribed loop for loop."""
    adv = np.zeros_like(v)
    for rev_k in range(len(v)):
        k = len(v) - rev_k - 1
        if last[k] or rev_k == 0:
            adv[k] = r[k] - v[k]
            if not absorbing[k]:
                adv[k] += gamma * v_next[k]
        else:
            adv[k] = r[k] + gamma * v_next[k] - v[k] + gamma * lam * adv[k + 1]
    return adv + v, adv


def test_gae_matches_moore_reference():
    rng = np.random.default_rng(0)
    n = 50
    v, v_next, r = (rng.normal(size=n).astype(np.float32) for _ in range(3))
    terminated = rng.random(n) < 0.1
    truncated = (rng.random(n) < 0.1) & ~terminated
    done = terminated | truncated
    target, adv = moore_gae(v, v_next, r, terminated, done, 0.99, 0.95)
    ours_adv, ours_target = losses.gae(v[:, None], v_next[:, None], r[:, None],
                                       terminated[:, None].astype(np.float32), done[:, None],
                                       0.99, 0.95)
    np.testing.assert_allclose(ours_adv[:, 0], adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_target[:, 0], target, rtol=1e-5, atol=1e-5)


def test_advantages_normalised_within_each_task_or_the_batch():
    scales = np.array([1.0, 10.0, 100.0])[None, :, None]
    adv = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3, 4)) * scales)
    out = losses.normalise_advantages(adv, "task", task_axis=1)
    np.testing.assert_allclose(out.mean((0, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std((0, 2)), 1.0, atol=1e-4)
    whole = losses.normalise_advantages(adv, "batch", task_axis=1)
    np.testing.assert_allclose([whole.mean(), whole.std()], [0.0, 1.0], atol=1e-4)
    assert whole[:, 0].std() < 0.1 < whole[:, 2].std()  # the tasks' scales survive
    np.testing.assert_array_equal(losses.normalise_advantages(adv, "none", task_axis=1), adv)


def test_policy_loss_clips_the_ratio():
    logits = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
    actions = jnp.array([0, 0])
    old = jnp.log(jnp.array([0.25, 0.9]))  # ratio 2 (clipped to 1.2), ratio 1
    adv = jnp.array([1.0, -1.0])
    loss, aux = losses.policy_loss(logits, actions, old, adv, clip=0.2, entropy_coef=0.0)
    np.testing.assert_allclose(loss, -(1.2 * 1.0 + 1.0 * -1.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(aux["clip_fraction"], 0.5)


def test_policy_loss_reports_entropy_per_task():
    # task-major (T=2, N=2, A=2): task 0 uniform, task 1 near-deterministic
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.5, 0.5]], [[1 - 1e-6, 1e-6], [1 - 1e-6, 1e-6]]]))
    actions = jnp.zeros((2, 2), jnp.int32)
    old = jnp.log(jnp.array([[0.5, 0.5], [1.0, 1.0]]))
    _, aux = losses.policy_loss(logits, actions, old, jnp.ones((2, 2)), clip=0.2,
                                entropy_coef=0.01)
    np.testing.assert_allclose(aux["task_entropy"], [np.log(2), 0.0], atol=1e-4)
    np.testing.assert_allclose(aux["entropy"], aux["task_entropy"].mean(), rtol=1e-6)


def test_conv2x2_equals_lax_convolution():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 3))
    k = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 3, 16))
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv2x2(x, k), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, params", [("mtmlp", 143_287), ("multihead", 671_059),
                                          ("moore", 692_162)])
def test_cnn_networks_match_moore_sizes(arch, params):
    """Parameter counts of MOORE's MiniGrid networks (5 tasks, 7 actions, 3 experts): CNN
    10,544 per copy; heads Linear(1024, 128)-Tanh-Linear(128, 7) per task."""
    net = make_network(NetworkConfig(arch=arch, encoder="cnn", hidden_sizes=(128,),
                                     num_experts=3), 5, 7)
    obs = jnp.ones((2, 147))
    variables = net.init(jax.random.PRNGKey(0), obs, jnp.array([0, 4]))
    assert sum(x.size for x in jax.tree.leaves(variables)) == params
    # A scalar task id (the learner's per-task vmap) computes what per-sample ids compute.
    np.testing.assert_allclose(net.apply(variables, obs, jnp.int32(4)),
                               net.apply(variables, obs, jnp.array([4, 4])), rtol=1e-5,
                               atol=1e-6)


def test_cnn_encoder_refuses_other_architectures():
    with pytest.raises(UsageError, match="network.encoder cnn supports .* got 'paco'"):
        make_network(NetworkConfig(arch="paco", encoder="cnn"), 3, 7)


def test_multitask_env_final_obs_and_shapes():
    env = MultiTaskGrid(("LavaGapS7", "DistShift1"), 3)
    states, obs = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (2, 3, 147) and obs.dtype == jnp.uint8
    # Walking forward into lava / out of time ends episodes; final_obs keeps the ended step's
    # observation while obs is the fresh episode's.
    step = jax.jit(env.step)
    ended = np.zeros((2, 3), bool)
    key = jax.random.PRNGKey(1)
    for _ in range(300):
        key, k = jax.random.split(key)
        actions = jax.random.randint(k, (2, 3), 0, 3)
        states, obs, reward, terminated, truncated, final_obs = step(states, actions, k)
        done = np.asarray(terminated | truncated)
        same = np.all(np.asarray(obs) == np.asarray(final_obs), -1)
        assert np.all(same[~done])
        ended |= done
    assert ended.all()
    reference = jax.vmap(ENVS["LavaGapS7"].observation)(states[0]).reshape(3, 147)
    np.testing.assert_array_equal(obs[0], reference)


TINY = dict(
    ppo=PPOConfig(steps_per_task=32, envs_per_task=4, epochs=2, num_minibatches=2),
    train=config_lib.TrainConfig(total_steps_per_task=96, eval_every=32, checkpoint_every=32),
    eval=config_lib.EvalConfig(episodes=2, deterministic=False),
)


TINY_TASKS = ("MiniGrid-LavaGapS5-v0", "MiniGrid-LavaGapS6-v0")  # two grid sizes, short episodes


def tiny_config(seed=0, **env) -> config_lib.Config:
    cfg = get_preset("minigrid_mt3_mtppo", seed)
    return dataclasses.replace(
        cfg, env=dataclasses.replace(cfg.env, suite="minigrid_custom", tasks=TINY_TASKS, **env),
        **TINY)


def _train(cfgs, tmp_path, resume=False, runs=None):
    from agents.ppo.loop import PPOTrainer
    from training import run_dir as run_lib

    runs = runs or [run_lib.create_at(tmp_path / f"s{c.seed}", c) for c in cfgs]
    trainer = PPOTrainer(cfgs, runs, show_progress=False)
    trainer.train(resume=resume)
    return runs, trainer


def _evals(run):
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


def test_advantage_normalisation_changes_the_actor_update_only():
    from agents.ppo.learner import make_ppo

    cfg = tiny_config()
    after = {}
    for mode in ("task", "batch"):
        ppo = make_ppo(dataclasses.replace(cfg.ppo, advantage_normalisation=mode), cfg.network,
                       TINY_TASKS)
        state, _ = jax.jit(ppo.train_updates, static_argnums=1)(
            ppo.init(jax.random.PRNGKey(0)), 1)
        after[mode] = state.learner
    task, batch = after["task"], after["batch"]
    assert not all(np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(task.actor_params), jax.tree.leaves(batch.actor_params), strict=True))
    for a, b in zip(jax.tree.leaves(task.critic_params), jax.tree.leaves(batch.critic_params),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # value targets do not depend on the advantages


def test_memory_check_refuses_seeds_that_do_not_fit(monkeypatch):
    from agents.ppo import loop as ppo_loop
    from training.memory import call_bytes
    from training.train import seeds_per_process

    cfgs = [tiny_config(0), tiny_config(1)]  # the shapes the resume test below compiles
    need = call_bytes(ppo_loop.compiled_chunk(cfgs[0], 2))
    assert need > 0 and seeds_per_process(cfgs) == 2
    monkeypatch.setattr(ppo_loop, "free_bytes", lambda device: need * 3 // 4)  # one seed fits
    assert seeds_per_process(cfgs) == 1  # what a grid group is split to
    with pytest.raises(UsageError, match=r"chunk of 2 seeds of 'minigrid_mt3_mtppo' needs .* "
                                         r"at most 1 per process \(--num-seeds 1, or 1 run "
                                         r"directories to --resume\)"):
        ppo_loop.check_memory(cfgs)
    monkeypatch.setattr(ppo_loop, "free_bytes", lambda device: need // 4)
    assert seeds_per_process(cfgs) == 0
    with pytest.raises(UsageError, match="lower --ppo.steps_per_task"):
        ppo_loop.check_memory(cfgs)
    monkeypatch.setattr(ppo_loop, "free_bytes", lambda device: need)
    assert ppo_loop.check_memory(cfgs).startswith("memory: the training chunk of 2 seeds needs")
    gym = dataclasses.replace(cfgs[0], env=dataclasses.replace(cfgs[0].env, backend="gym"))
    assert seeds_per_process([gym]) == 1 and ppo_loop.check_memory([gym]) is None


def test_interrupted_run_resumes_exactly_and_seeds_batch(tmp_path):
    from agents.ppo.loop import PPOTrainer

    cfgs = [tiny_config(0), tiny_config(1)]
    for c in cfgs:
        config_lib.validate(c)
    (full0, full1), full = _train(cfgs, tmp_path / "full")
    assert [r["step"] for r in _evals(full0)] == [0, 32, 64, 96]
    assert (full0 / "final.json").is_file()
    logged = tensorboard_scalars(full0 / "tb")
    for task in TINY_TASKS:  # per-task training entropy, one per chunk
        entropy = logged[f"train_entropy/{task}"]
        assert [step for step, _ in entropy] == [32, 64, 96]
        assert all(0 < value <= np.log(7) for _, value in entropy)
        assert [step for step, _ in logged[f"eval_success/{task}"]] == [0, 32, 64, 96]

    # Interrupt after the second chunk (its checkpoint is written), then resume.
    with interrupted_at_call(PPOTrainer, "_device_chunk", 3):
        _train(cfgs, tmp_path / "cut")
    runs = [tmp_path / "cut" / "s0", tmp_path / "cut" / "s1"]
    _, resumed = _train(cfgs, tmp_path, resume=True, runs=runs)
    for a, b in ((full0, runs[0]), (full1, runs[1])):
        assert _evals(a) == _evals(b)
    for x, y in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(x, y)

    # `launch.py eval --run` on the final checkpoint reproduces the last eval.jsonl record.
    from agents.ppo.loop import reevaluate

    again = reevaluate(cfgs[0], full0, None, None, deterministic=False)
    assert again == _evals(full0)[-1]
    # ... and with the behaviour summary, the same record plus a table of every task.
    from agents.ppo.loop import format_behaviour

    described = reevaluate(cfgs[0], full0, None, None, deterministic=False, behaviour=True)
    assert {k: described[k] for k in again} == again
    assert described["behaviour_episodes"] == "the evaluated episodes"
    table = format_behaviour(described).splitlines()
    assert len(table) == 1 + len(TINY_TASKS) and table[0].split()[:3] == ["task", "entropy",
                                                                          "moved"]
    for r in described["behaviour"].values():
        assert sum(r["actions"].values()) == pytest.approx(1) and 0 < r["entropy"] <= np.log(7)

    # Seed 1 trained alone follows the streams it followed in the batch.
    (alone,), _ = _train([cfgs[1]], tmp_path / "alone")
    for a, b in zip(_evals(alone), _evals(full1), strict=True):
        assert a["step"] == b["step"]
        for task in a["per_task"]:
            assert a["per_task"][task]["return"] == pytest.approx(
                b["per_task"][task]["return"], abs=1e-4)


def test_gym_backend_trains_resumes_deterministically_and_evaluates(tmp_path):
    import shutil

    from agents.ppo.loop import PPOTrainer
    from training import run_dir as run_lib

    cfg = tiny_config(0, backend="gym")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, total_steps_per_task=64))
    config_lib.validate(cfg)
    cut = run_lib.create_at(tmp_path / "cut", cfg)
    with interrupted_at_call(PPOTrainer, "_gym_chunk", 2):  # after the step-32 checkpoint
        _train([cfg], tmp_path, runs=[cut])
    # The host envs restart on resume (seeded by seed and step): two resumes agree.
    runs = [shutil.copytree(cut, tmp_path / name) for name in ("again", "twice")]
    states = [_train([cfg], tmp_path, resume=True, runs=[run])[1].state for run in runs]
    assert _evals(runs[0]) == _evals(runs[1])
    for x, y in zip(*map(jax.tree.leaves, states), strict=True):
        np.testing.assert_array_equal(x, y)
    run = runs[0]
    records = _evals(run)
    assert [r["step"] for r in records] == [0, 32, 64]
    assert set(records[-1]["per_task"]) == set(TINY_TASKS)
    assert all(r["per_task"][TINY_TASKS[0]]["episodes"] == 2 for r in records)
    from agents.ppo.loop import reevaluate

    described = reevaluate(cfg, run, None, None, deterministic=False, behaviour=True)
    assert {k: described[k] for k in records[-1]} == records[-1]  # the host envs' evaluation
    assert described["behaviour_episodes"].startswith("on-device episodes")
    assert set(described["behaviour"]) == set(TINY_TASKS)


@pytest.mark.parametrize("override, message", [
    ({"algo": "sac"}, "--algo sac does not train on suite 'minigrid_mt3'"),
    ({"env.backend": "cuda"}, "unknown env.backend 'cuda'; valid: jax, gym"),
    ({"ppo.num_minibatches": "3"}, r"--ppo.num_minibatches \(3\) must divide"),
    ({"train.eval_every": "3000"}, r"--train.eval_every \(3000\) must be a multiple"),
    ({"env.suite": "minigrid_mt4"}, "unknown MiniGrid suite 'minigrid_mt4'"),
    ({"ppo.advantage_normalisation": "global"},
     "unknown ppo.advantage_normalisation 'global'; valid: task, batch, none"),
])
def test_bad_ppo_configs_are_refused(override, message):
    cfg = config_lib.apply_overrides(get_preset("minigrid_mt3_moore"), override)
    with pytest.raises(UsageError, match=message):
        config_lib.validate(cfg)


def test_on_device_training_improves_return_on_an_easy_task(tmp_path):
    """MTPPO on LavaGapS5 (one task): 6144 steps lift the evaluation return from about 0.04
    (random) to about 0.75 (measured); the bar is a rise of 0.3."""
    cfg = config_lib.apply_overrides(get_preset("minigrid_mt3_mtppo"), {
        "env.suite": "minigrid_custom", "env.tasks": "MiniGrid-LavaGapS5-v0",
        "ppo.steps_per_task": "512", "ppo.envs_per_task": "16", "ppo.num_minibatches": "4",
        "ppo.critic_epochs": "4", "ppo.critic_minibatches": "4",
        "train.total_steps_per_task": "6144", "train.eval_every": "6144",
        "train.checkpoint_every": "6144", "eval.episodes": "32"})
    config_lib.validate(cfg)
    (run,), _ = _train([cfg], tmp_path)
    first, last = _evals(run)
    assert last["mean_return"] > first["mean_return"] + 0.3, (first, last)


def _always(params, action):
    """Actor params whose output layer's kernel is zeroed and bias all on `action`."""
    def pin(path, x):
        if x.shape[-1] != 7:
            return x
        is_bias = "bias" in jax.tree_util.keystr(path[-1:])
        return x * 0 + 100.0 * (jnp.arange(7) == action) if is_bias else x * 0
    return jax.tree_util.tree_map_with_path(pin, params)


def test_evaluation_tells_timeouts_from_terminal_failures():
    """A policy that always says 'done' times out every episode; one that always walks forward
    on LavaGap (agent at (1, 1) facing the lava column) dies in the lava unless the gap is in
    its row, and then times out against the wall: never a success, some timeouts, not all.
    Both backends."""
    from agents.ppo.learner import make_ppo
    from agents.ppo.loop import gym_evaluate

    ppo = make_ppo(PPOConfig(), NetworkConfig(arch="mtmlp", encoder="cnn", hidden_sizes=(8,)),
                   TINY_TASKS)
    params = ppo.init(jax.random.PRNGKey(0)).learner.actor_params

    def always(action):
        return _always(params, action)

    evaluate = jax.jit(lambda p, k: ppo.evaluate(p, k, episodes=16))
    policy = jax.jit(ppo.policy, static_argnums=3)
    for name, outcome in (("jax", lambda p: evaluate(p, jax.random.PRNGKey(1))),
                          ("gym", lambda p: gym_evaluate(policy, p, TINY_TASKS,
                                                         jax.random.PRNGKey(1), 16, False))):
        returns, successes, timeouts = (np.asarray(x) for x in outcome(always(6)))
        assert timeouts.all() and not successes.any() and not returns.any(), name
        _, successes, timeouts = (np.asarray(x) for x in outcome(always(2)))
        assert not successes.any() and 0 < timeouts.mean() < 1, (name, timeouts)

    # The behaviour summary tells standing still from walking, by the agent's cell and not by
    # the action chosen ('left' never moves it, 'forward' does until it meets a wall).
    behaviour = jax.jit(lambda p: ppo.evaluate(p, jax.random.PRNGKey(1), episodes=16,
                                               with_behaviour=True)[3])
    for still in (6, 0):  # 'done', 'left'
        found = jax.device_get(behaviour(always(still)))
        assert np.all(found["moved"] == 0) and np.allclose(found["actions"][:, still], 1)
        np.testing.assert_allclose(found["entropy"], 0, atol=1e-3)
    walk = jax.device_get(behaviour(always(2)))
    assert np.all(walk["moved"] > 0) and np.allclose(walk["actions"][:, 2], 1)
    uniform = jax.device_get(behaviour(jax.tree.map(jnp.zeros_like, params)))
    np.testing.assert_allclose(uniform["entropy"], np.log(7), rtol=1e-5)
    np.testing.assert_allclose(uniform["actions"], 1 / 7, atol=0.05)
    # Where each episode starts in a random cell, the auto-reset moves the agent: those steps
    # must not count as moves. A policy that says 'done' on DoorKey-5x5 still never moves.
    doorkey = make_ppo(PPOConfig(), NetworkConfig(arch="mtmlp", encoder="cnn",
                                                  hidden_sizes=(8,)), ("MiniGrid-DoorKey-5x5-v0",))
    done = _always(doorkey.init(jax.random.PRNGKey(0)).learner.actor_params, 6)
    found = jax.device_get(jax.jit(lambda p: doorkey.evaluate(
        p, jax.random.PRNGKey(2), episodes=4, with_behaviour=True)[3])(done))
    assert found["moved"][0] == 0
