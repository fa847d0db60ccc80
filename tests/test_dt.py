"""Decision transformers: the invariants a wrong implementation would break silently.

Tiny shapes throughout (K 4, d 16, 1 layer, 2 heads, batch 2) and few of them: on the CPU
every new shape costs a compile, even eagerly. For the same reason the prompt is as long as the
context, and each configuration's model is built once and shared (`_model` is cached).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents.dt import DTConfig, action_loss, make_dt, returns_to_go, rtg_after_step
from agents.dt.networks import HARMODT
from agents.nn import masks
from training.errors import UsageError

B, K, P, S, A, TASKS = 2, 4, 4, 3, 2, 3
TINY = DTConfig(context_len=K, embed_dim=16, num_layers=1, num_heads=2, dropout=0.0,
                max_timestep=16, prompt_length=P)


def _cfg(**kw):
    return dataclasses.replace(TINY, **kw)


def _steps(key, length, discrete=False):
    k = jax.random.split(key, 4)
    actions = (jax.random.randint(k[2], (B, length), 0, A) if discrete
               else jax.random.uniform(k[2], (B, length, A), minval=-0.9, maxval=0.9))
    return {"returns_to_go": jax.random.uniform(k[0], (B, length, 1)),
            "states": jax.random.normal(k[1], (B, length, S)),
            "actions": actions,
            "timesteps": jnp.broadcast_to(jnp.arange(length) + 3, (B, length)),
            "attention_mask": jnp.ones((B, length), jnp.int32)}


@functools.cache
def _model(cfg, seed=0):
    """(net, variables, jitted apply(variables, batch, task_id, prompt), batch, task, prompt)."""
    net = make_dt(cfg, S, A, TASKS)
    batch = _steps(jax.random.PRNGKey(seed), K, cfg.action_kind == "discrete")
    prompt = (_steps(jax.random.PRNGKey(seed + 1), P, cfg.action_kind == "discrete")
              if cfg.variant in ("promptdt", "harmodt") else None)
    task = jnp.array([0, 2])
    # One compile of the whole init, with a key whose bits are one XLA op: about a second
    # faster on the CPU than threefry, eagerly or jitted.
    key = jax.random.key(seed + 2, impl="unsafe_rbg")
    variables = jax.jit(lambda key: net.init(key, **batch, task_id=task, prompt=prompt))(key)

    @jax.jit
    def apply(variables, batch, task_id, prompt):
        return net.apply(variables, **batch, task_id=task_id, prompt=prompt)

    return net, variables, apply, batch, task, prompt


def test_causal_a_step_never_changes_earlier_predictions():
    _, variables, apply, batch, task, _ = _model(_cfg())
    base = apply(variables, batch, task, None)
    for t in range(K):
        for field in ("returns_to_go", "states", "actions"):
            changed = dict(batch)
            changed[field] = batch[field].at[:, t].add(5.0)
            out = apply(variables, changed, task, None)
            np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
            if field == "actions":  # a_t comes after s_t: it must not leak into its own target
                np.testing.assert_allclose(out[:, t], base[:, t], atol=1e-6)
            else:
                assert np.abs(out[:, t] - base[:, t]).max() > 1e-4, (field, t)


@pytest.mark.parametrize("variant", ["mtdt", "promptdt"])
def test_left_padding_leaves_the_valid_predictions_unchanged(variant):
    """Sample 1 = two junk padding steps, then the first two steps of sample 0. By causality its
    valid predictions must equal sample 0's first two (the unpadded length-2 sequence's)."""
    _, variables, apply, batch, _, prompt = _model(_cfg(variant=variant))
    if prompt is not None:
        prompt = jax.tree.map(lambda x: jnp.concatenate([x[:1], x[:1]]), prompt)
    junk = _steps(jax.random.PRNGKey(9), 2)
    junk["timesteps"] = jnp.full((B, 2), 11)
    padded = {}
    for field, x in batch.items():
        row = jnp.concatenate([junk[field][0] * (1 if field == "timesteps" else 7), x[0, :2]])
        padded[field] = jnp.stack([x[0], row])
    padded["attention_mask"] = jnp.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    out = apply(variables, padded, jnp.array([1, 1]), prompt)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[1, 2:], out[0, :2], atol=1e-5)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_overfits_one_batch(kind):
    net, variables, _, batch, task, _ = _model(_cfg(action_kind=kind))
    opt = optax.adamw(3e-3, weight_decay=1e-4)
    params = variables["params"]
    state = opt.init(params)

    def loss_fn(params):
        pred = net.apply({"params": params}, **batch, task_id=task)
        return action_loss(pred, batch["actions"], batch["attention_mask"], kind), pred

    @jax.jit
    def step(params, state):
        (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, pred

    for _ in range(301):  # the last step reports the loss after 300 updates
        params, state, loss, pred = step(params, state)
    if kind == "continuous":
        assert loss < 1e-3, loss
    else:
        assert (pred.argmax(-1) == batch["actions"]).all(), loss


def test_harmodt_masks_only_block_weights_and_a_task_trains_only_its_active_ones():
    cfg = _cfg(variant="harmodt", mask_density=0.5)
    net, variables, _, batch, _, prompt = _model(cfg)
    mask_tree = variables[masks.MASKS]
    assert set(mask_tree) == {"block_0"}  # not the embeddings, not the head
    assert set(mask_tree["block_0"]) == {"qkv", "attn_out", "fc", "mlp_out"}
    assert "prompt_embed" in variables["params"] and "action_head" in variables["params"]
    kept = sum(float(m[0].sum()) for m in jax.tree.leaves(mask_tree))
    total = sum(m[0].size for m in jax.tree.leaves(mask_tree))
    assert abs(kept / total - 0.5) < 0.01  # ERK spreads the density over the layers

    task = 1

    @jax.jit  # one compile for the scalar-id gradient and the per-sample-id predictions
    def check(params):
        def loss(params):
            pred = net.apply({**variables, "params": params}, **batch, task_id=jnp.int32(task),
                             prompt=prompt)
            return jnp.sum(pred**2), pred

        grads, scalar = jax.grad(loss, has_aux=True)(params)
        per_sample = [net.apply({**variables, "params": params}, **batch, task_id=ids,
                                prompt=prompt) for ids in (jnp.array([task, task]),
                                                           jnp.array([0, 2]))]
        return grads, scalar, per_sample

    grads, scalar, (same, other) = check(variables["params"])
    for name, m in mask_tree["block_0"].items():
        g = grads["block_0"][name]["masked"]["kernel"]
        m = m["masked"]["kernel"][task]
        assert np.abs(g * (1 - m)).max() == 0.0, name
        assert np.abs(g * m).max() > 0.0, name
    # Per-sample task ids (acting) compute what the scalar id (training) does.
    np.testing.assert_allclose(same, scalar, atol=1e-5)
    assert np.abs(other - scalar).max() > 1e-4


def test_returns_to_go_and_the_decrement_rule():
    rewards = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    np.testing.assert_allclose(returns_to_go(rewards), [[6.0, 5.0, 3.0], [4.0, 4.0, 4.0]])
    np.testing.assert_allclose(returns_to_go(rewards[0], 0.5), [2.75, 3.5, 3.0])
    scale = 1e-3  # Meta-World v2
    rtg = returns_to_go(rewards[0])[0] * scale
    for t, r in enumerate(rewards[0]):
        np.testing.assert_allclose(rtg, returns_to_go(rewards[0])[t] * scale, rtol=1e-6)
        rtg = rtg_after_step(rtg, r, scale)
    np.testing.assert_allclose(rtg, 0.0, atol=1e-7)


def test_action_loss_ignores_padding():
    pred = jnp.array([[[0.5], [0.0]]])
    mask = jnp.array([[1, 0]])
    assert float(action_loss(pred, jnp.array([[[0.0], [9.0]]]), mask, "continuous")) == 0.25
    logits = jnp.array([[[2.0, 0.0], [0.0, 5.0]]])
    expected = -jax.nn.log_softmax(logits[0, 0])[0]
    np.testing.assert_allclose(action_loss(logits, jnp.array([[0, 0]]), mask, "discrete"),
                               expected, rtol=1e-6)


def test_mtbc_ignores_returns():
    _, variables, apply, batch, task, _ = _model(_cfg(variant="mtbc"))
    assert "return" not in variables["params"]["embed"]
    changed = {**batch, "returns_to_go": batch["returns_to_go"] + 100.0}
    np.testing.assert_array_equal(apply(variables, changed, task, None),
                                  apply(variables, batch, task, None))


def test_prompt_dt_depends_on_the_prompt_through_its_own_embeddings():
    _, variables, apply, batch, task, prompt = _model(_cfg(variant="promptdt"))
    params = variables["params"]
    assert "embed_task" not in params  # the prompt, not a task id, identifies the task
    assert set(params["prompt_embed"]) == set(params["embed"])
    other = jax.tree.map(lambda x: x[::-1], prompt)  # each sample gets the other's prompt
    base = apply(variables, batch, task, prompt)
    assert np.abs(apply(variables, batch, task, other) - base).max() > 1e-4
    # Separate parameters, not tied ones: they start different and are trained separately.
    assert not np.allclose(params["prompt_embed"]["state"]["Dense_0"]["kernel"],
                           params["embed"]["state"]["Dense_0"]["kernel"])
    # The prompt is read through prompt_embed (the same shapes: no new compile).
    # (A random change: a constant shift of every embedding feature is undone by LayerNorm.)
    noise = jax.random.normal(jax.random.PRNGKey(5), params["prompt_embed"]["timestep"][
        "embedding"].shape)
    moved = {**params["prompt_embed"], "timestep": {"embedding": noise}}
    out = apply({"params": {**params, "prompt_embed": moved}}, batch, task, prompt)
    assert np.abs(out - base).max() > 1e-4


def test_config_checks_and_harmodt_preset():
    assert (HARMODT.context_len, HARMODT.num_layers, HARMODT.num_heads, HARMODT.embed_dim,
            HARMODT.mask_density) == (20, 6, 8, 256, 0.8)
    with pytest.raises(UsageError):
        make_dt(_cfg(variant="nope"), S, A, TASKS)
    with pytest.raises(UsageError):
        make_dt(_cfg(num_heads=3), S, A, TASKS)


def test_hashed_dropout_keeps_the_rate_independently_per_element_and_per_key():
    from agents.dt.networks import Dropout, hashed_bits

    bits = np.asarray(hashed_bits(jnp.array([1, 2], jnp.uint32), (256, 1024)))
    threshold = np.uint32(round(0.1 * 2 ** 32))
    keep = bits >= threshold
    assert abs(keep.mean() - 0.9) < 0.003  # 262,144 draws: 5 standard deviations
    for axis in (0, 1):  # neighbours along either axis are independent
        a, b = np.moveaxis(keep, axis, 0)[:-1].ravel(), np.moveaxis(keep, axis, 0)[1:].ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    for seed in ([1, 3], [2, 2]):  # either seed word changes the whole mask
        other = np.asarray(hashed_bits(jnp.array(seed, jnp.uint32), (256, 1024)))
        assert abs(np.corrcoef(keep.ravel(), (other >= threshold).ravel())[0, 1]) < 0.01
        assert (other != bits).mean() > 0.99
    x = jnp.ones((64, 64))
    layer = Dropout(0.25)
    out = layer.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 1.0 / 0.75], rtol=1e-6)
    assert abs(float((out > 0).mean()) - 0.75) < 0.03
    again = layer.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_array_equal(out, again)
    assert layer.apply({}, x, True) is x


def test_attention_equals_the_heads_between_tokens_and_channels_formulation():
    """The block's attention (heads next to the batch) against the layout it replaced
    (einsum over (b, t, h, c)): the same function, to float rounding."""
    import math

    from agents.dt.networks import Block

    d, h, t = 16, 2, 6
    x = jax.random.normal(jax.random.PRNGKey(0), (3, t, d))
    allowed = jnp.tril(jnp.ones((t, t), bool))[None].repeat(3, 0).at[1, :, :2].set(False)
    block = Block(d, h, 0.0, TASKS, None)
    params = block.init(jax.random.PRNGKey(1), x, allowed, None, True)
    out = block.apply(params, x, allowed, None, True)

    p = params["params"]

    def dense(name, y):
        layer = p[name]["Linear_0"]["Dense_0"]
        return y @ layer["kernel"] + layer["bias"]

    def norm(name, y):
        mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        return (y - mean) / jnp.sqrt(var + 1e-5) * p[name]["scale"] + p[name]["bias"]

    q, k, v = (z.reshape(3, t, h, d // h) for z in jnp.split(dense("qkv", norm("ln_1", x)),
                                                                3, axis=-1))
    scores = jnp.einsum("bqhc,bkhc->bhqk", q, k) / math.sqrt(d // h)
    scores = jnp.where(allowed[:, None], scores, jnp.finfo(scores.dtype).min)
    y = jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(scores, -1), v).reshape(3, t, d)
    x = x + dense("attn_out", y)
    expected = x + dense("mlp_out", jax.nn.relu(dense("fc", norm("ln_2", x))))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
