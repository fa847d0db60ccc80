"""PaCo, CARE and Soft Modularization: each forward pass against a by-hand reference, plus the
invariants that a wrong implementation would break silently (mixing, routing, isolation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.nn.care import CARE
from agents.nn.paco import PACO_VECTOR_NAME, PaCo, paco_reset
from agents.nn.softmod import SoftModular
from training.errors import UsageError

T, D, OUT = 3, 5, 2
HIDDEN = (6, 7)
TASKS = jnp.array([0, 1, 2, 2, 1, 0])
OBS = jax.random.normal(jax.random.PRNGKey(0), (len(TASKS), D))


def _paco(k=4):
    return PaCo(T, OUT, HIDDEN, num_param_sets=k)


def _care():
    return CARE(T, OUT, HIDDEN, num_encoders=3)


def _soft():
    return SoftModular(T, OUT, HIDDEN, num_modules=3, module_layers=3, module_hidden=4)


def _randomized(params, seed, scale=1.5):
    """Every leaf redrawn, N(0, scale^2 / fan_in) for matrices and N(0, 0.25) for vectors: no
    identical parameter sets, routing and attention neither uniform nor saturated."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    std = [scale / np.sqrt(x.shape[-2]) if x.ndim >= 2 else 0.5 for x in leaves]
    return tree.unflatten(
        [s * jax.random.normal(k, x.shape) for k, x, s in zip(keys, leaves, std, strict=True)]
    )


def _np(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def _relu(x):
    return np.maximum(x, 0.0)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _stack(p, x):
    """A `_DenseStack` by hand: Dense_0..Dense_{n-1}, ReLU between, last linear."""
    n = len(p)
    for i in range(n):
        x = _dense(p[f"Dense_{i}"], x)
        if i < n - 1:
            x = _relu(x)
    return x


def _slice(p, i):
    return jax.tree_util.tree_map(lambda a: a[i], p)


def _sown(net, params, obs, task, name):
    _, state = net.apply(params, obs, task, mutable=["intermediates"])
    return state["intermediates"][name][0]


@pytest.mark.parametrize("make", [_paco, _care, _soft], ids=["paco", "care", "soft"])
def test_output_shape(make):
    net = make()
    params = net.init(jax.random.PRNGKey(1), OBS, TASKS)
    out = net.apply(params, OBS, TASKS)
    assert out.shape == (len(TASKS), OUT) and out.dtype == jnp.float32
    # The task conditions the output: one observation, every task, distinct outputs.
    same_obs = jnp.broadcast_to(OBS[:1], (T, D))
    out = net.apply(_randomized(params, 2), same_obs, jnp.arange(T))
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])


def test_paco_init_follows_reference():
    net = _paco(k=4)
    params = net.init(jax.random.PRNGKey(3), OBS, TASKS)["params"]
    assert params[PACO_VECTOR_NAME].shape == (T, 4)
    assert abs(float(params[PACO_VECTOR_NAME].std()) - 1.0) < 0.6  # N(0, 1), not tiny
    for i in range(len(HIDDEN) + 1):
        layer = params[f"layer_{i}"]
        assert layer["kernel"].shape[0] == 4
        # kernel_identical_init: all K sets start equal; biases start at zero.
        np.testing.assert_array_equal(layer["kernel"], jnp.broadcast_to(layer["kernel"][0],
                                                                         layer["kernel"].shape))
        assert np.abs(layer["kernel"]).max() > 0 and np.all(layer["bias"] == 0)
    assert params["layer_0"]["kernel"].shape[1] == D  # the observation only, no one-hot


def _paco_reference(p, obs, task):
    w = p[PACO_VECTOR_NAME][task]  # (B, K)
    x = obs
    num_layers = len(HIDDEN) + 1
    for i in range(num_layers):
        layer = p[f"layer_{i}"]
        per_set = np.einsum("bi,kio->bko", x, layer["kernel"]) + layer["bias"][None]
        x = np.einsum("bk,bko->bo", w, per_set)
        if i < num_layers - 1:
            x = _relu(x)
    return x


def test_paco_one_hot_vectors_are_independent_task_mlps():
    net = _paco(k=T)
    params = _randomized(net.init(jax.random.PRNGKey(4), OBS, TASKS), 5)
    params["params"][PACO_VECTOR_NAME] = jnp.eye(T)  # w_tau = e_tau
    out = net.apply(params, OBS, TASKS)
    p, obs = _np(params["params"]), np.asarray(OBS, np.float64)
    for b, tau in enumerate(np.asarray(TASKS)):
        # Task tau's own MLP, built from parameter set tau of every layer.
        x = obs[b]
        for i in range(len(HIDDEN) + 1):
            x = x @ p[f"layer_{i}"]["kernel"][tau] + p[f"layer_{i}"]["bias"][tau]
            if i < len(HIDDEN):
                x = _relu(x)
        np.testing.assert_allclose(out[b], x, rtol=1e-4, atol=1e-4)

    # General vectors: each layer mixes the sets' pre-activations, y = sum_k w_k (W_k x + b_k).
    params["params"][PACO_VECTOR_NAME] = jax.random.normal(jax.random.PRNGKey(6), (T, T))
    out = net.apply(params, OBS, TASKS)
    np.testing.assert_allclose(out, _paco_reference(_np(params["params"]), obs, TASKS),
                               rtol=1e-4, atol=1e-4)
    w = _sown(net, params, OBS, TASKS, "compositional_weights")
    np.testing.assert_array_equal(w, params["params"][PACO_VECTOR_NAME][TASKS])


def test_paco_reset_changes_only_diverged_rows():
    net = _paco(k=4)
    params = _randomized(net.init(jax.random.PRNGKey(7), OBS, TASKS), 8)
    phi = np.asarray(params["params"][PACO_VECTOR_NAME])
    diverged = jnp.array([False, True, False])

    def unchanged_except_row(new, row):
        new_phi = np.asarray(new["params"][PACO_VECTOR_NAME])
        for other in set(range(T)) - {row}:
            np.testing.assert_array_equal(new_phi[other], phi[other])
        rest = {k: v for k, v in new["params"].items() if k != PACO_VECTOR_NAME}
        jax.tree_util.tree_map(np.testing.assert_array_equal, rest,
                               {k: v for k, v in params["params"].items()
                                if k != PACO_VECTOR_NAME})
        return new_phi[row]

    # Reference behaviour: a random convex combination of the healthy tasks' vectors.
    new = jax.jit(paco_reset)(params, diverged, jax.random.PRNGKey(9))
    row = unchanged_except_row(new, 1)
    assert not np.allclose(row, phi[1])
    basis = phi[[0, 2]].T  # (K, 2)
    coeff, *_ = np.linalg.lstsq(basis, row, rcond=None)
    np.testing.assert_allclose(basis @ coeff, row, atol=1e-5)
    assert np.all(coeff >= -1e-6) and abs(coeff.sum() - 1.0) < 1e-5
    assert np.all(coeff > 1e-4)  # genuinely mixed, not a copy
    # A second key draws other coefficients.
    other = paco_reset(params, diverged, jax.random.PRNGKey(10))
    assert not np.allclose(other["params"][PACO_VECTOR_NAME][1], row)

    # No key: the mean of the healthy tasks' vectors.
    row = unchanged_except_row(paco_reset(params, diverged), 1)
    np.testing.assert_allclose(row, (phi[0] + phi[2]) / 2, rtol=1e-6)

    # "copy": one healthy task's vector.
    row = unchanged_except_row(paco_reset(params, diverged, jax.random.PRNGKey(11), "copy"), 1)
    assert np.allclose(row, phi[0]) or np.allclose(row, phi[2])

    # Nothing diverged, or nothing healthy to interpolate from: unchanged.
    for mask in (jnp.zeros(T, bool), jnp.ones(T, bool)):
        same = paco_reset(params, mask, jax.random.PRNGKey(12))
        np.testing.assert_array_equal(same["params"][PACO_VECTOR_NAME], phi)
    with pytest.raises(UsageError):
        paco_reset(params, diverged, method="copy")


def test_care_matches_hand_forward_and_attends_by_task_only():
    net = _care()
    params = _randomized(net.init(jax.random.PRNGKey(13), OBS, TASKS), 14)
    out = net.apply(params, OBS, TASKS)
    att = np.asarray(_sown(net, params, OBS, TASKS, "attention"))

    p, obs, task = _np(params["params"]), np.asarray(OBS, np.float64), np.asarray(TASKS)
    context = _stack(p["context_encoder"], _relu(p["task_embedding"][task]))
    ref_att = _softmax(_stack(p["attention_mlp"], context))
    encodings = np.stack([_stack(_slice(p["encoders"], i), obs) for i in range(3)], 1)
    mixed = np.einsum("bk,bkh->bh", ref_att, encodings)
    ref = _stack(p["trunk"], np.concatenate([mixed, context], -1))
    np.testing.assert_allclose(att, ref_att, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)

    # A softmax over the k encoders ...
    assert att.shape == (len(TASKS), 3) and np.all(att > 0)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-6)
    # ... that depends on the task only: samples 0 and 5 share task 0 but not the observation.
    np.testing.assert_array_equal(att[0], att[5])
    other_obs = _sown(net, params, OBS[::-1] * 3.0, TASKS, "attention")
    np.testing.assert_array_equal(other_obs, att)
    assert not np.allclose(att[0], att[1]) and not np.allclose(att[1], att[2])
    assert not np.allclose(out[0], out[5])  # while the encoders see the observation


def _soft_reference(p, obs, task, net):
    n, layers = net.num_modules, net.module_layers
    f = _stack(p["base"], obs)
    g = _stack(p["task_embedding"], np.eye(T)[task])
    e = _stack(p["gating"], _relu(f * g))
    f = _relu(f)
    routing = [_softmax(_dense(p["routing_logits_0"], _relu(e)).reshape(-1, n, n))]
    for layer in range(1, layers):
        history = np.concatenate([r.reshape(-1, n * n) for r in routing], -1)
        cond = _relu(_dense(p[f"routing_cond_{layer}"], history) * e)
        if layer < layers - 1:
            routing.append(_softmax(_dense(p[f"routing_logits_{layer}"], cond).reshape(-1, n, n)))
        else:
            last = _softmax(_dense(p["routing_logits_out"], cond))
    h = [_dense(_slice(p["modules_0"], j), f) for j in range(n)]
    for layer in range(1, layers):
        # Module j of the next layer reads sum_i routing[j, i] * (output of module i).
        h = [_dense(_slice(p[f"modules_{layer}"], j),
                    _relu(sum(routing[layer - 1][:, j, i, None] * h[i] for i in range(n))))
             for j in range(n)]
    out = _dense(p["output"], _relu(sum(last[:, i, None] * h[i] for i in range(n))))
    return out, np.stack(routing, 1), last


def test_soft_modular_matches_hand_forward_and_routes_by_obs_and_task():
    net = _soft()
    init = net.init(jax.random.PRNGKey(15), OBS, TASKS)
    # Reference init: routing logits ~U(+-3e-3), so routing starts near uniform.
    routing0 = _sown(net, init, OBS, TASKS, "routing")
    np.testing.assert_allclose(routing0, 1.0 / 3, atol=5e-3)

    params = _randomized(init, 16)
    out = net.apply(params, OBS, TASKS)
    routing = np.asarray(_sown(net, params, OBS, TASKS, "routing"))
    last = np.asarray(_sown(net, params, OBS, TASKS, "output_routing"))
    ref_out, ref_routing, ref_last = _soft_reference(
        _np(params["params"]), np.asarray(OBS, np.float64), np.asarray(TASKS), net)
    np.testing.assert_allclose(routing, ref_routing, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last, ref_last, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)

    # module_layers - 1 row-stochastic n x n matrices, and an output distribution.
    assert routing.shape == (len(TASKS), 2, 3, 3) and last.shape == (len(TASKS), 3)
    np.testing.assert_allclose(routing.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(last.sum(-1), 1.0, rtol=1e-5)
    assert np.all(routing >= 0)
    # Depends on the observation (samples 0 and 5: same task) and on the task (same obs).
    assert np.abs(routing[0] - routing[5]).max() > 1e-3
    same_obs = jnp.broadcast_to(OBS[:1], (T, D))
    by_task = np.asarray(_sown(net, params, same_obs, jnp.arange(T), "routing"))
    assert np.abs(by_task[0] - by_task[1]).max() > 1e-3
    assert np.abs(by_task[1] - by_task[2]).max() > 1e-3

    with pytest.raises(UsageError):
        SoftModular(T, OUT, HIDDEN, 3, module_layers=1, module_hidden=4).init(
            jax.random.PRNGKey(0), OBS, TASKS)


@pytest.mark.parametrize(
    "make, task_params",
    [
        (_paco, lambda p: p[PACO_VECTOR_NAME]),
        (_care, lambda p: p["task_embedding"]),
        (_soft, lambda p: p["task_embedding"]["Dense_0"]["kernel"]),
    ],
    ids=["paco", "care", "soft"],
)
def test_a_task_gives_no_gradient_to_other_tasks_parameters(make, task_params):
    net = make()
    params = _randomized(net.init(jax.random.PRNGKey(17), OBS, TASKS), 18)
    mine = TASKS == 1
    assert task_params(params["params"]).shape[0] == T  # one row per task

    def loss(p):  # a batch of all tasks, the loss counting only task 1's samples
        return jnp.sum(jnp.where(mine[:, None], net.apply(p, OBS, TASKS) ** 2, 0.0))

    rows = np.asarray(task_params(jax.grad(loss)(params)["params"]))
    assert np.abs(rows[1]).sum() > 0
    assert np.all(rows[0] == 0) and np.all(rows[2] == 0)
