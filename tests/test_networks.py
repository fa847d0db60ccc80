"""Architecture invariants whose failure would be silent: orthonormality, head selection, inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.nn.layers import MLP, TaskHeads
from agents.nn.moore import gram_schmidt
from agents.nn.registry import ARCHITECTURES, NetworkConfig, make_network

NUM_TASKS, OBS = 3, 6


def test_gram_schmidt_is_orthonormal_and_ordered():
    v = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 16))
    u = gram_schmidt(v)
    gram = jnp.einsum("bkd,bjd->bkj", u, u)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(4), gram.shape), atol=1e-5)
    # Order: u_1 is v_1 normalised; u_i is orthogonal to v_1..v_{i-1} and lies in the span
    # of v_1..v_i.
    np.testing.assert_allclose(u[:, 0], v[:, 0] / jnp.linalg.norm(v[:, 0], axis=-1, keepdims=True),
                               atol=1e-6)
    for i in range(4):
        for j in range(i):
            np.testing.assert_allclose(jnp.sum(u[:, i] * v[:, j], -1), 0.0, atol=1e-5)
        coeffs, *_ = np.linalg.lstsq(np.asarray(v[0, : i + 1]).T, np.asarray(u[0, i]), rcond=None)
        np.testing.assert_allclose(np.asarray(v[0, : i + 1]).T @ coeffs, u[0, i], atol=1e-5)


def test_gram_schmidt_reversed_order_differs():
    v = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
    assert not np.allclose(gram_schmidt(v)[:, 0], gram_schmidt(v[:, ::-1])[:, -1], atol=1e-3)


def test_task_heads_select_each_samples_head():
    heads = TaskHeads(NUM_TASKS, 2)
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 5))
    task = jnp.array([0, 1, 2, 2, 1, 0])
    params = heads.init(jax.random.PRNGKey(3), x, task)
    out = heads.apply(params, x, task)
    k, b = params["params"]["kernel"], params["params"]["bias"]
    expected = jnp.stack([x[i] @ k[t] + b[t] for i, t in enumerate(task)])
    np.testing.assert_allclose(out, expected, atol=1e-5)

    # A sample's loss reaches only its own task's head.
    def loss(p):
        return heads.apply(p, x[:2], jnp.array([1, 1])).sum()

    grads = jax.grad(loss)(params)["params"]["kernel"]
    assert np.abs(grads[1]).sum() > 0
    assert np.abs(grads[0]).sum() == 0 and np.abs(grads[2]).sum() == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_shares_one_interface(arch):
    net = make_network(NetworkConfig(arch=arch, hidden_sizes=(16, 16), num_experts=3), NUM_TASKS, 4)
    obs = jax.random.normal(jax.random.PRNGKey(4), (NUM_TASKS, OBS))
    same_obs = jnp.broadcast_to(obs[:1], obs.shape)
    task = jnp.arange(NUM_TASKS)
    variables = net.init(jax.random.PRNGKey(5), obs, task)
    # Some architectures start nearly task-independent by design (Soft Modules' routing
    # starts uniform); perturbed parameters show whether the task id can condition the output.
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.PRNGKey(6), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    variables = {**variables, "params": jax.tree.unflatten(tree, noisy)}
    out = net.apply(variables, same_obs, task)
    assert out.shape == (NUM_TASKS, 4)
    # The task id conditions the output: one observation, three tasks, three outputs.
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    # One scalar task id for a batch means the same as that id repeated per sample.
    for t in range(NUM_TASKS):
        np.testing.assert_allclose(net.apply(variables, obs, jnp.int32(t)),
                                   net.apply(variables, obs, jnp.full((NUM_TASKS,), t)),
                                   rtol=1e-5, atol=1e-5)


def test_moore_experts_see_the_observation_only():
    cfg = NetworkConfig(arch="moore", hidden_sizes=(16, 8), num_experts=3)
    net = make_network(cfg, NUM_TASKS, 2)
    obs = jnp.ones((2, OBS))
    params = net.init(jax.random.PRNGKey(6), obs, jnp.array([0, 1]))["params"]
    first = params["VmapMLP_0"]["Linear_0"]["Dense_0"]["kernel"]
    assert first.shape == (3, OBS, 16)  # k experts, input = observation without the one-hot
    assert params["task_weights"]["Dense_0"].keys() == {"kernel"}  # no bias
    assert params["task_weights"]["Dense_0"]["kernel"].shape == (NUM_TASKS, 3)


def test_moore_features_are_tanh_of_unnormalised_weighted_orthonormal_experts():
    cfg = NetworkConfig(arch="moore", hidden_sizes=(16, 8), num_experts=3)
    net = make_network(cfg, NUM_TASKS, 2)
    obs = jax.random.normal(jax.random.PRNGKey(7), (4, OBS))
    task = jnp.array([0, 1, 2, 0])
    variables = net.init(jax.random.PRNGKey(8), obs, task)
    p = variables["params"]
    # Scale the task weights: without softmax normalisation the features must change.
    scaled = jax.tree.map(lambda x: x, variables)
    weights = p["task_weights"]["Dense_0"]["kernel"]
    scaled["params"]["task_weights"]["Dense_0"]["kernel"] = weights * 3
    assert not np.allclose(net.apply(variables, obs, task), net.apply(scaled, obs, task))
    # Recompute by hand: experts -> Gram-Schmidt -> w . U -> tanh -> head of the task.
    experts = jnp.stack([
        MLP((16, 8)).apply({"params": jax.tree.map(lambda x, e=e: x[e], p["VmapMLP_0"])}, obs)
        for e in range(3)
    ], axis=1)
    u = gram_schmidt(experts)
    w = jax.nn.one_hot(task, NUM_TASKS) @ p["task_weights"]["Dense_0"]["kernel"]
    feats = jnp.tanh(jnp.einsum("bk,bkh->bh", w, u))
    heads = p["TaskHeads_0"]
    expected = jnp.einsum("bh,bho->bo", feats, heads["kernel"][task]) + heads["bias"][task]
    np.testing.assert_allclose(net.apply(variables, obs, task), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["moore", "moe"])
def test_mixture_equals_its_previous_formulation_with_gradients(arch):
    """Experts laid out (k, B, H) and mixed by scaled adds give the outputs and gradients
    of the (B, k, H) layout with Gram-Schmidt along k and an einsum mix, to float rounding."""
    obs = jax.random.normal(jax.random.PRNGKey(11), (5, OBS))
    task = jnp.array([0, 1, 2, 0, 2])
    net = make_network(NetworkConfig(arch=arch, hidden_sizes=(16, 8), num_experts=3),
                       NUM_TASKS, 2)
    params = net.init(jax.random.PRNGKey(12), obs, task)

    def previous(variables, obs):
        p = variables["params"]
        experts = jax.vmap(lambda e: MLP((16, 8)).apply({"params": e}, obs), out_axes=1)(
            p["VmapMLP_0"])
        if arch == "moore":
            experts = gram_schmidt(experts)
        w = jax.nn.one_hot(task, NUM_TASKS) @ p["task_weights"]["Dense_0"]["kernel"]
        feats = jnp.tanh(jnp.einsum("bk,bkh->bh", w, experts))
        return TaskHeads(NUM_TASKS, 2).apply({"params": p["TaskHeads_0"]}, feats, task)

    def loss(fn):
        return jax.value_and_grad(lambda v, o: jnp.sum(jnp.sin(fn(v, o))), argnums=(0, 1))

    (new_value, new_grads), (old_value, old_grads) = (
        loss(lambda v, o: net.apply(v, o, task))(params, obs), loss(previous)(params, obs))
    np.testing.assert_allclose(new_value, old_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 new_grads, old_grads)


def test_moe_skips_orthogonalisation():
    obs = jax.random.normal(jax.random.PRNGKey(9), (4, OBS))
    task = jnp.array([0, 1, 2, 0])
    moe = make_network(NetworkConfig(arch="moe", hidden_sizes=(8,), num_experts=2), NUM_TASKS, 2)
    moore_cfg = NetworkConfig(arch="moore", hidden_sizes=(8,), num_experts=2)
    moore = make_network(moore_cfg, NUM_TASKS, 2)
    params = moe.init(jax.random.PRNGKey(10), obs, task)
    assert not np.allclose(moe.apply(params, obs, task), moore.apply(params, obs, task))
