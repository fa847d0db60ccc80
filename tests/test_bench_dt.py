"""bench/bench_dt.py: the PyTorch DT of bench/torch_dt.py is ours (`mtdt`, continuous
actions): same parameter count and, with our weights copied in, the same outputs and the same
training loss and gradient norm; and the benchmark's JAX side runs on our learner.

PyTorch is a benchmark-only dependency (bench/requirements.txt) that CI does not install, so
the tests that need it skip without it; the JAX-side test runs everywhere. Tiny sizes: d 16,
1 layer, 2 heads, K 5, batch 4 (20 for the learner).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.dt import DTConfig, action_loss, make_dt

S, A, TASKS, K, B = 39, 4, 10, 5, 4
CFG = DTConfig(context_len=K, embed_dim=16, num_layers=1, num_heads=2, dropout=0.1,
               max_timestep=64)


def _batch():
    rng = np.random.default_rng(0)
    mask = np.ones((B, K), np.int32)
    mask[1, :2] = 0  # left padding
    mask[3, :4] = 0
    batch = {"returns_to_go": rng.uniform(0, 2, (B, K, 1)).astype(np.float32),
             "states": rng.normal(size=(B, K, S)).astype(np.float32),
             "actions": rng.uniform(-1, 1, (B, K, A)).astype(np.float32),
             "timesteps": (rng.integers(0, 40, (B, 1)) + np.arange(K)).astype(np.int32),
             "attention_mask": mask}
    for key in ("returns_to_go", "states", "actions", "timesteps"):
        batch[key][mask == 0] = 0  # padding steps carry zeros, as DT's data pipeline
    return batch, np.array([0, 3, 9, 3], np.int32)


def _models():
    pytest.importorskip("torch")
    from bench.torch_dt import make_torch_dt

    batch, task = _batch()
    net = make_dt(CFG, S, A, TASKS)
    params = jax.jit(lambda key: net.init(key, **batch, task_id=task))(
        jax.random.PRNGKey(0))["params"]
    model = make_torch_dt(S, A, TASKS, embed_dim=CFG.embed_dim, num_layers=CFG.num_layers,
                          num_heads=CFG.num_heads, dropout=CFG.dropout,
                          max_timestep=CFG.max_timestep)
    return net, params, model, batch, task


def _torch_batch(batch, task):
    import torch

    out = {k: torch.as_tensor(v) for k, v in batch.items()}
    out["timesteps"] = out["timesteps"].long()
    return out, torch.as_tensor(task).long()


def test_same_parameter_count_and_outputs():
    net, params, model, batch, task = _models()
    import torch

    from bench.torch_dt import load_flax_params, num_parameters

    assert num_parameters(model) == sum(x.size for x in jax.tree_util.tree_leaves(params))

    load_flax_params(model, params)
    model.eval()
    ours = np.asarray(jax.jit(net.apply)({"params": params}, **batch, task_id=task))
    tb, tt = _torch_batch(batch, task)
    with torch.no_grad():
        theirs = model(tb["returns_to_go"], tb["states"], tb["actions"], tb["timesteps"],
                       tb["attention_mask"], tt).numpy()
    valid = batch["attention_mask"] > 0
    np.testing.assert_allclose(theirs[valid], ours[valid], atol=1e-5)
    assert np.isfinite(theirs).all()  # padding steps: never used, but must not be NaN


def test_same_training_loss_and_gradient_norm():
    """Without dropout the two losses (MSE over valid steps) and gradients agree."""
    net, params, model, batch, task = _models()
    import torch

    from bench.torch_dt import load_flax_params

    load_flax_params(model, params)
    model.eval()  # no dropout

    def loss_fn(p):
        pred = net.apply({"params": p}, **batch, task_id=task)
        return action_loss(pred, jnp.asarray(batch["actions"]), batch["attention_mask"],
                           "continuous")

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    tb, tt = _torch_batch(batch, task)
    pred = model(tb["returns_to_go"], tb["states"], tb["actions"], tb["timesteps"],
                 tb["attention_mask"], tt)
    valid = tb["attention_mask"] > 0
    torch_loss = torch.nn.functional.mse_loss(pred[valid], tb["actions"][valid])
    torch_loss.backward()
    np.testing.assert_allclose(torch_loss.item(), float(loss), rtol=1e-5)
    grad_norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads))))
    torch_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())))
    np.testing.assert_allclose(torch_norm, grad_norm, rtol=1e-4)


def test_bench_jax_side_calls_our_learner():
    """The benchmark's JAX side (agents/dt/learner.py's learner on a random dataset) builds, and
    its training and evaluation calls trace to the expected shapes (traced only: compiling
    the learner's update takes longer than this whole module should)."""
    from bench.bench_dt import NUM_TASKS, JaxSide

    side = JaxSide(embed_dim=16, num_layers=1, num_heads=2, batch=20, context=K)
    params = side.state.params
    assert side.num_params == sum(x.size for x in jax.tree_util.tree_leaves(params))
    state, metrics = jax.eval_shape(lambda s, d: side.learner.train_updates(s, d, 1),
                                    side.state, side.data)
    assert metrics["loss"].shape == () and state.updates.shape == ()
    action, ctx = jax.eval_shape(side.learner.act, side.state, side.data, None, side.ctx,
                                 side.obs, side.reward, 0, True)
    assert action.shape == (NUM_TASKS, 4) and ctx.mask.shape == (NUM_TASKS, K)
