"""SAC pieces that fail silently: per-task temperature, bootstrapping, log-probs, warm-up gates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from agents.nn.registry import NetworkConfig
from agents.sac import losses
from agents.sac.learner import SACConfig, make_learner
from agents.sac.networks import sample_tanh_gaussian
from training.data import replay

NUM_TASKS, OBS, ACT = 3, 5, 2
NET = NetworkConfig(arch="moore", hidden_sizes=(16, 16), num_experts=2)


def _batch(n_per_task=4, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    n = NUM_TASKS * n_per_task
    return {
        "obs": jax.random.normal(k[0], (n, OBS)),
        "action": jax.random.uniform(k[1], (n, ACT), minval=-1, maxval=1),
        "reward": jax.random.normal(k[2], (n,)),
        "next_obs": jax.random.normal(k[3], (n, OBS)),
        "terminated": jnp.zeros((n,)),
        "task_id": jnp.repeat(jnp.arange(NUM_TASKS), n_per_task),
    }


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean = jnp.array([[0.3, -1.2]])
    log_std = jnp.array([[-0.5, 0.4]])
    action, log_prob = sample_tanh_gaussian(jax.random.PRNGKey(0), mean, log_std)
    pre = jnp.arctanh(action)
    std = jnp.exp(log_std)
    expected = (jax.scipy.stats.norm.logpdf(pre, mean, std) - jnp.log(1 - action**2)).sum(-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4)


def test_alpha_loss_moves_each_tasks_temperature_by_its_own_entropy():
    log_alpha = jnp.zeros(NUM_TASKS)
    task_id = jnp.array([0, 0, 1, 1, 2, 2])
    # Task 0 too random (log pi below -target), task 1 too greedy, task 2 exactly on target.
    log_prob = jnp.array([-9.0, -9.0, 3.0, 3.0, 2.0, 2.0])
    grad = jax.grad(losses.alpha_loss)(log_alpha, log_prob, task_id, -2.0)
    assert grad[0] > 0  # descent lowers alpha of the too-random task
    assert grad[1] < 0  # and raises it for the too-greedy one
    assert grad[2] == 0


def test_critic_bootstraps_unless_terminated():
    learner = make_learner(SACConfig(), NET, NUM_TASKS, OBS, ACT)
    state = learner.init(jax.random.PRNGKey(1))
    batch = _batch()
    kw = dict(actor=learner.actor, critic=learner.critic, gamma=0.99)
    others = (state.target_critic_params, state.actor_params, state.log_alpha)

    def target_of(b):
        mean, log_std = learner.actor.apply(state.actor_params, b["next_obs"], b["task_id"])
        a, lp = sample_tanh_gaussian(jax.random.PRNGKey(2), mean, log_std)
        q = learner.critic.apply(state.target_critic_params, b["next_obs"], a, b["task_id"]).min(0)
        soft_value = q - jnp.exp(state.log_alpha)[b["task_id"]] * lp
        return b["reward"] + 0.99 * (1 - b["terminated"]) * soft_value

    critic_loss = jax.jit(functools.partial(losses.critic_loss, **kw))
    loss_truncated = critic_loss(state.critic_params, batch, jax.random.PRNGKey(2), *others)[0]
    q = learner.critic.apply(state.critic_params, batch["obs"], batch["action"], batch["task_id"])
    np.testing.assert_allclose(loss_truncated, jnp.sum((q - target_of(batch)) ** 2, 0),
                               rtol=1e-5)
    terminal = dict(batch, terminated=jnp.ones_like(batch["terminated"]))
    loss_terminal = critic_loss(state.critic_params, terminal, jax.random.PRNGKey(2), *others)[0]
    np.testing.assert_allclose(loss_terminal, jnp.sum((q - batch["reward"]) ** 2, 0), rtol=1e-5)


def _same(tree_a, tree_b):
    leaves = zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
    return all(np.array_equal(a, b) for a, b in leaves)


def test_warmup_gates_and_per_task_alpha_updates():
    sac = SACConfig(batch_size_per_task=4)
    learner = make_learner(sac, NET, NUM_TASKS, OBS, ACT)
    state = learner.init(jax.random.PRNGKey(3))
    batch = _batch()
    off, on = jnp.bool_(False), jnp.bool_(True)
    update = jax.jit(learner.update)

    s1, _ = update(state, batch, off, off)
    assert _same(s1.critic_params, state.critic_params)
    assert int(s1.updates) == 0

    s2, _ = update(state, batch, on, off)  # critic only (MOORE: first 1500 updates)
    assert not _same(s2.critic_params, state.critic_params)
    assert _same(s2.actor_params, state.actor_params)
    np.testing.assert_array_equal(s2.log_alpha, state.log_alpha)

    s3, metrics = update(state, batch, on, on)
    assert not np.array_equal(s3.log_alpha, state.log_alpha)
    assert metrics["alpha"].shape == (NUM_TASKS,)
    assert int(s3.updates) == 1


def test_train_chunk_scans_updates_from_the_device_buffer():
    sac = SACConfig(batch_size_per_task=4)
    learner = make_learner(sac, NET, NUM_TASKS, OBS, ACT)
    state = learner.init(jax.random.PRNGKey(4))
    buf = replay.init_buffer(NUM_TASKS, 16, OBS, ACT)
    chunk = {k: np.random.default_rng(0).normal(size=(8, NUM_TASKS) + s).astype(np.float32)
             for k, s in [("obs", (OBS,)), ("action", (ACT,)), ("reward", ()),
                          ("next_obs", (OBS,)), ("terminated", ())]}
    chunk["terminated"][:] = 0
    buf = replay.insert(buf, chunk)
    flags = jnp.array([False, True, True])
    new, metrics = jax.jit(learner.train_chunk)(state, buf, flags, flags)
    assert int(new.updates) == 2
    assert metrics["critic_loss"].shape == (3,)
    assert np.all(np.isfinite(metrics["critic_loss"]))
