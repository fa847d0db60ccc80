"""Architecture-specific training rules in the learners (PaCo's task reset) and which
architectures each algorithm trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.nn.paco import PACO_VECTOR_NAME
from agents.nn.registry import NetworkConfig
from agents.sac.learner import SACConfig, make_learner
from tests.test_masks import _buffer

NUM_TASKS, OBS, ACT = 3, 6, 2


def _vectors(variables):
    found = []
    jax.tree_util.tree_map_with_path(
        lambda p, x: found.append(x) if p[-1].key == PACO_VECTOR_NAME else None,
        variables["params"])
    (vectors,) = found
    return vectors


def test_paco_masks_a_diverging_task_out_and_resets_its_vector():
    net = NetworkConfig(arch="paco", hidden_sizes=(8,), num_experts=2, paco_reset_threshold=1e3)
    learner = make_learner(SACConfig(batch_size_per_task=4), net, NUM_TASKS, OBS, ACT)
    state = learner.init(jax.random.PRNGKey(0))
    update = jax.jit(learner.train_chunk)
    on = jnp.ones(1, bool)
    results = []
    for scale in (1e3, 1e4):  # task 0's rewards blow its TD error past the threshold
        buffer = _buffer(NUM_TASKS, OBS, ACT)
        reward = buffer.data["reward"].at[0].multiply(scale)
        buffer = buffer.replace(data={**buffer.data, "reward": reward})
        new, metrics = update(state, buffer, on, on)
        per_task = np.asarray(metrics["critic_loss_per_task"][0])
        assert per_task[0] > 1e3 and np.all(per_task[1:] < 1e3)
        results.append(new)
    # Task 0 is out of the shared update: how far it diverged changes nothing.
    for a, b in zip(jax.tree.leaves(results[0].critic_params),
                    jax.tree.leaves(results[1].critic_params), strict=True):
        np.testing.assert_array_equal(a, b)
    # Its vector (per twin critic, and the actor's) is a convex mix of the healthy tasks'.
    for variables in (results[0].critic_params, results[0].actor_params):
        vectors = _vectors(variables).reshape(-1, NUM_TASKS, 2)
        for v in vectors:
            coeffs = np.linalg.solve(np.asarray(v[1:]).T, np.asarray(v[0]))
            assert np.all(coeffs >= -1e-5) and abs(coeffs.sum() - 1) < 1e-4


def test_every_algorithm_architecture_pair_trains_or_is_refused_with_its_reason():
    from agents.nn.registry import ARCHITECTURES
    from experiments.presets import get_preset
    from training import config as config_lib
    from training.errors import UsageError

    assert set(config_lib.ARCH_SUPPORT["sac"]) == set(ARCHITECTURES)
    for algo, supported in config_lib.ARCH_SUPPORT.items():
        for arch in ARCHITECTURES:
            if arch in supported:
                config_lib.check_arch(algo, arch)
            else:
                assert (algo, arch) in config_lib.ARCH_REFUSALS  # a reason for each refusal
    cfg = config_lib.apply_overrides(get_preset("minigrid_mt3_moore"),
                                     {"network.arch": "paco", "network.encoder": "mlp"})
    with pytest.raises(UsageError, match="--network.arch paco with algo ppo: PaCo's task reset"):
        config_lib.validate(cfg)
    weightmask = config_lib.apply_overrides(get_preset("minigrid_mt3_moore"),
                                            {"network.arch": "weightmask",
                                             "network.encoder": "mlp"})
    config_lib.validate(weightmask)
