"""Task-conditioned masks: the invariants that a wrong implementation would break silently."""

import jax
import jax.numpy as jnp
import numpy as np

from agents.nn import masks
from agents.nn.registry import NetworkConfig
from agents.sac.learner import SACConfig, make_learner
from training.data import replay

NUM_TASKS, OBS = 3, 6


def _unit_net(density=0.5):
    return masks.UnitMaskMLP(NUM_TASKS, 2, (8, 12), density, 4)


def test_unit_masks_keep_the_density_and_only_a_tasks_own_code_gets_its_gradient():
    net = _unit_net(0.25)
    obs = jax.random.normal(jax.random.PRNGKey(0), (4, OBS))
    variables = net.init(jax.random.PRNGKey(1), obs, jnp.zeros(4, jnp.int32))
    for layer in masks.task_masks(variables, 0.25):
        np.testing.assert_array_equal(layer.sum(-1), round(0.25 * layer.shape[-1]))

    def loss(v, task):
        return jnp.sum(net.apply(v, obs, jnp.full((4,), task)) ** 2)

    grads = jax.grad(loss)(variables, 1)["params"]
    codes = grads["task_codes"]
    assert np.abs(codes[1]).sum() > 0  # straight-through: the hard mask passes a gradient
    assert np.abs(codes[0]).sum() == 0 and np.abs(codes[2]).sum() == 0
    assert np.abs(grads["dictionary_0"]).sum() > 0


def test_unit_masks_of_similar_codes_overlap_more():
    net = _unit_net()
    obs = jnp.ones((1, OBS))
    variables = net.init(jax.random.PRNGKey(2), obs, jnp.zeros(1, jnp.int32))
    codes = variables["params"]["task_codes"]
    near = codes.at[1].set(codes[0] + 0.01)  # task 1 almost task 0's code, task 2 its negative
    near = near.at[2].set(-codes[0])
    variables = {"params": {**variables["params"], "task_codes": near}}
    overlap = masks.mask_statistics(variables, 0.5)["overlap"]
    assert overlap[0, 1] > 0.9 and overlap[0, 2] < 0.1


def test_weight_masks_compute_with_masked_weights_and_train_only_active_ones():
    net = masks.WeightMaskMLP(NUM_TASKS, 2, (8,), 0.5)
    obs = jax.random.normal(jax.random.PRNGKey(3), (5, OBS))
    variables = net.init(jax.random.PRNGKey(4), obs, jnp.zeros(5, jnp.int32))
    layer = variables["params"]["MaskedDense_0"]
    mask = variables[masks.MASKS]["MaskedDense_0"]["kernel"]
    out = variables["params"]["Linear_0"]["Dense_0"]
    for task in range(NUM_TASKS):
        x = jnp.concatenate([obs, jnp.broadcast_to(jax.nn.one_hot(task, NUM_TASKS), (5, 3))], -1)
        hidden = jax.nn.relu(x @ (layer["kernel"] * mask[task]) + layer["bias"])
        expected = hidden @ out["kernel"] + out["bias"]
        np.testing.assert_allclose(net.apply(variables, obs, jnp.full((5,), task)), expected,
                                   rtol=1e-5, atol=1e-6)

    def loss(v):
        return jnp.sum(net.apply(v, obs, jnp.int32(2)) ** 2)

    grads = jax.grad(loss)(variables)
    kernel_grad = grads["params"]["MaskedDense_0"]["kernel"]
    assert np.all(kernel_grad[mask[2] == 0] == 0)  # a task never moves weights it masks out
    assert np.abs(kernel_grad[mask[2] == 1]).sum() > 0
    assert np.all(grads[masks.MASKS]["MaskedDense_0"]["kernel"] == 0)  # masks: not by gradient
    # The probe's gradient is dL/d(W * m): defined on inactive weights too (regrow scores).
    probe = grads[masks.PROBE]["MaskedDense_0"]["kernel"]
    assert np.abs(probe[mask[2] == 0]).sum() > 0


def test_erk_densities_meet_the_target_and_thin_out_large_layers():
    shapes = [(49, 400), (400, 400), (400, 400)]
    dens = masks.erk_densities(shapes, 0.5)
    sizes = np.array([a * b for a, b in shapes])
    np.testing.assert_allclose((np.array(dens) * sizes).sum() / sizes.sum(), 0.5, rtol=1e-6)
    assert dens[0] > dens[1] and max(dens) <= 1.0
    assert masks.erk_densities(shapes, 0.99)[0] == 1.0  # capped layers become dense


def test_prune_and_regrow_keeps_density_and_never_regrows_what_it_just_pruned():
    # Task 0 keeps weights 0-2. Task 1's gradient is chosen so that task 0's agreement
    # g_mean * g_0 is [1, 2, 3, 0.5, 0.2]: weight 0 has the lowest drop score
    # (10 * agreement + g_0^2) and yet the highest agreement of all. Having just been
    # dropped, it must not come back; weight 3 (next best agreement) is regrown instead.
    g0 = jnp.array([0.1, 0.2, 0.3, 0.1, 0.1])
    agreement = jnp.array([1.0, 2.0, 3.0, 0.5, 0.2])
    g1 = 2 * agreement / g0 - g0
    m = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    new = masks.prune_and_regrow(m, jnp.stack([g0, g1]), jnp.int32(1), gamma=10.0)
    np.testing.assert_array_equal(new[0], [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(new[1], m[1])  # dense task: nothing can move
    # k larger than what can move is capped: every task keeps its density.
    capped = masks.prune_and_regrow(m, jnp.stack([g0, g1]), jnp.int32(10), gamma=10.0)
    np.testing.assert_array_equal(capped.sum(-1), m.sum(-1))
    np.testing.assert_array_equal(capped[0], [0, 0, 1, 1, 1])  # 2 movable: 0, 1 out; 3, 4 in


def test_prune_and_regrow_scores_use_agreement_with_the_mean_gradient():
    # Two tasks. Task 0's inactive weights 2 and 3 have equal |g|; weight 2 agrees with the
    # mean gradient (task 1 pushes it the same way), weight 3 conflicts: regrow 2.
    m = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    g = jnp.array([[0.1, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, -3.0]])
    new = masks.prune_and_regrow(m, g, jnp.int32(1), gamma=10.0)
    np.testing.assert_array_equal(new[0], [0, 1, 1, 0])
    np.testing.assert_array_equal(new.sum(-1), m.sum(-1))


def test_network_wide_regrow_moves_weights_between_layers_at_constant_task_density():
    # Two tasks, two (T, 2, 2) kernels, each task keeping 2 of 4 entries in each. Task 0's
    # gradients make kernel a's active entries the cheapest to drop and kernel b's inactive
    # ones the best to regrow: ranked over the network (HarmoDT), k = 2 moves both from a to
    # b; ranked per kernel, each kernel swaps one entry and keeps its own density.
    half = jnp.array([[1, 1], [0, 0]], jnp.float32)
    tree = {"a": jnp.stack([half, half]), "b": jnp.stack([half, half])}
    g0 = {"a": jnp.array([[0.01, 0.01], [0.1, 0.1]]), "b": jnp.array([[1.0, 1.0], [2.0, 2.0]])}
    grads = {name: jnp.stack([g, g]) for name, g in g0.items()}  # both tasks agree
    net = masks.regrow_tree(tree, grads, jnp.int32(2), 10.0, scope="network")
    np.testing.assert_array_equal(net["a"][0], [[0, 0], [0, 0]])
    np.testing.assert_array_equal(net["b"][0], [[1, 1], [1, 1]])
    per_layer = masks.regrow_tree(tree, grads, jnp.int32(2), 10.0)
    for name in tree:
        np.testing.assert_array_equal(per_layer[name].sum((1, 2)), [2, 2])
    np.testing.assert_array_equal(per_layer["a"][0], [[0, 0], [1, 1]])


def test_regrow_schedule_rises_and_falls():
    ks = [int(masks.regrow_count(jnp.int32(u), 100, 100)) for u in (0, 25, 50, 75, 100)]
    assert ks == [0, 50, 100, 50, 0]


def _buffer(num_tasks, obs_dim, act_dim, reward_scale=None):
    keys = jax.random.split(jax.random.PRNGKey(7), 5)
    fields = {"obs": (obs_dim,), "action": (act_dim,), "reward": (), "next_obs": (obs_dim,),
              "terminated": ()}
    chunk = {k: jax.random.normal(key, (8, num_tasks, *s))
             for key, (k, s) in zip(keys, fields.items(), strict=True)}
    chunk["terminated"] = jnp.zeros_like(chunk["terminated"])
    if reward_scale is not None:
        chunk["reward"] = chunk["reward"] * reward_scale
    return replay.insert(replay.init_buffer(num_tasks, 8, obs_dim, act_dim), chunk)


def test_sac_with_weight_masks_regrows_on_schedule_and_targets_follow():
    net = NetworkConfig(arch="weightmask", hidden_sizes=(8, 8), mask_density=0.5,
                        mask_update_every=2, mask_update_max=4)
    learner = make_learner(SACConfig(batch_size_per_task=4), net, NUM_TASKS, OBS, 2,
                           total_updates=4)
    state = learner.init(jax.random.PRNGKey(8))
    flags = jnp.ones(3, bool)
    new, _ = jax.jit(learner.train_chunk)(state, _buffer(NUM_TASKS, OBS, 2), flags, flags)
    for params in (new.actor_params, new.critic_params):
        before = state.actor_params if params is new.actor_params else state.critic_params
        for old, now in zip(jax.tree.leaves(before[masks.MASKS]),
                            jax.tree.leaves(params[masks.MASKS]), strict=True):
            assert set(np.unique(now)) <= {0.0, 1.0}
            np.testing.assert_array_equal(now.sum((-1, -2)), old.sum((-1, -2)))  # density
        assert any(not np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(before[masks.MASKS]), jax.tree.leaves(params[masks.MASKS]),
            strict=True))  # update 2 of 4 regrew (k = 4 at mid-training)
        assert all(np.all(p == 0) for p in jax.tree.leaves(params[masks.PROBE]))
    for a, b in zip(jax.tree.leaves(new.critic_params[masks.MASKS]),
                    jax.tree.leaves(new.target_critic_params[masks.MASKS]), strict=True):
        np.testing.assert_array_equal(a, b)  # the target computes with the online masks


def test_ppo_with_weight_masks_trains_only_active_weights_and_regrows_on_schedule():
    from agents.ppo.learner import PPOConfig, make_ppo

    net = NetworkConfig(arch="weightmask", hidden_sizes=(8,), mask_density=0.5,
                        mask_update_every=2, mask_update_max=4)
    tasks = ("MiniGrid-LavaGapS5-v0", "MiniGrid-LavaGapS6-v0")
    ppo = make_ppo(PPOConfig(steps_per_task=16, envs_per_task=2, epochs=2, num_minibatches=2),
                   net, tasks, total_updates=4)
    train = jax.jit(ppo.train_updates, static_argnums=1)
    start = ppo.init(jax.random.PRNGKey(0))
    first, _ = train(start, 1)  # update 1: no regrow due
    second, _ = train(first, 1)  # update 2 of 4: regrow with k = 4
    for name in ("actor_params", "critic_params"):
        before, after, regrown = (getattr(s.learner, name) for s in (start, first, second))
        assert all(np.all(p == 0) for p in jax.tree.leaves(after[masks.PROBE]))  # never trained
        for old, now in zip(jax.tree.leaves(before[masks.MASKS]),
                            jax.tree.leaves(after[masks.MASKS]), strict=True):
            np.testing.assert_array_equal(old, now)  # the optimiser never moves a mask
        kernel_before, kernel_after, mask = (_first_masked_kernel(tree) for tree in (
            before["params"], after["params"], before[masks.MASKS]))
        used = mask.max(0) > 0  # by some task
        assert np.all(kernel_after[~used] == kernel_before[~used])  # no task moved these
        assert np.any(kernel_after[used] != kernel_before[used])
        changed = False
        for old, now in zip(jax.tree.leaves(after[masks.MASKS]),
                            jax.tree.leaves(regrown[masks.MASKS]), strict=True):
            assert set(np.unique(now)) <= {0.0, 1.0}
            np.testing.assert_array_equal(now.sum((-1, -2)), old.sum((-1, -2)))  # density
            changed |= not np.array_equal(old, now)
        assert changed


def _first_masked_kernel(tree):
    from flax.traverse_util import flatten_dict

    return next(v for k, v in flatten_dict(tree).items()
                if k[-1] == "kernel" and "MaskedDense_0" in k)
