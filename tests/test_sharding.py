"""Data parallelism: a chunk of SAC updates gives the same numbers on 1 and on 4 devices.

JAX fixes its device count when it starts, so the comparison runs in a subprocess with four
forced CPU host devices (`python -m tests.test_sharding OUT_DIR` is that subprocess).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import ROOT
from training import config as config_lib
from training import sharding
from training.errors import UsageError

DEVICES = 4
# (tasks, batch per task): 4 tasks give each device one whole task; with 2 tasks of 6 the
# devices' shares of 3 rows cut through tasks.
CASES = [(4, 8), (2, 6)]
RTOL, ATOL = 1e-4, 1e-6


def _env(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu"}


def _chunks(out_dir):
    """Run a chunk of updates of every case on one device and on the mesh; save both."""
    import jax.numpy as jnp

    from agents.nn.registry import NetworkConfig
    from agents.sac.learner import SACConfig, make_learner
    from training.data import replay

    obs_dim, action_dim, updates, size = 5, 2, 3, 64
    net = NetworkConfig(arch="moore", hidden_sizes=(16, 16), num_experts=2)
    mesh = sharding.local_mesh(0)
    info = {"device_count": jax.device_count(), "cases": {}}
    for tasks, per_task in CASES:
        sac = SACConfig(batch_size_per_task=per_task)
        rng = np.random.default_rng(tasks)
        data = {"obs": rng.normal(size=(tasks, size, obs_dim)),
                "action": rng.uniform(-1, 1, (tasks, size, action_dim)),
                "reward": rng.normal(size=(tasks, size)),
                "next_obs": rng.normal(size=(tasks, size, obs_dim)),
                "terminated": rng.uniform(size=(tasks, size)) < 0.1}
        buffer = replay.ReplayBuffer({k: jnp.asarray(v, jnp.float32) for k, v in data.items()},
                                     ptr=jnp.int32(0), size=jnp.int32(size))
        flags = (jnp.ones(updates, bool), jnp.ones(updates, bool))
        init = jax.jit(make_learner(sac, net, tasks, obs_dim, action_dim).init)(
            jax.random.PRNGKey(tasks))  # one start for both runs
        for name, m in (("single", None), ("mesh", mesh)):
            learner = make_learner(sac, net, tasks, obs_dim, action_dim,
                                   batch_sharding=sharding.batch_rows(m))
            args = (*sharding.place((init, buffer), m), *flags)
            compiled = sharding.jit(learner.train_chunk, m).lower(*args).compile()
            state, metrics = compiled(*args)
            info["cases"][f"{tasks}_{name}"] = {
                "all_reduce": "all-reduce" in compiled.as_text(),
                "state_devices": sorted({len(x.sharding.device_set)
                                         for x in jax.tree.leaves(state)}),
                "updates": int(state.updates),
            }
            leaves = jax.tree.leaves((state.actor_params, state.critic_params,
                                      state.target_critic_params, state.log_alpha, metrics))
            np.savez(os.path.join(out_dir, f"{tasks}_{name}.npz"), *map(np.asarray, leaves))
    with open(os.path.join(out_dir, "info.json"), "w") as f:
        json.dump(info, f)


def test_one_and_four_devices_give_the_same_updates(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.test_sharding", str(tmp_path)], cwd=ROOT,
                          env=_env(DEVICES), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["device_count"] == DEVICES
    for tasks, _ in CASES:
        single, mesh = info["cases"][f"{tasks}_single"], info["cases"][f"{tasks}_mesh"]
        assert single["state_devices"] == [1] and not single["all_reduce"]
        # The mesh run is spread over all four devices and XLA all-reduces across them.
        assert mesh["state_devices"] == [DEVICES] and mesh["all_reduce"]
        assert single["updates"] == mesh["updates"] == 3
        a = np.load(tmp_path / f"{tasks}_single.npz")
        b = np.load(tmp_path / f"{tasks}_mesh.npz")
        assert a.files == b.files and len(a.files) > 10
        for k in a.files:
            assert np.all(np.isfinite(a[k]))
            np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL, err_msg=f"{tasks}: {k}")


def test_device_count_option():
    assert jax.local_device_count() == 1  # this process: no forced devices
    assert sharding.local_mesh(0) is None and sharding.local_mesh(1) is None
    for bad in (-1, 2):
        with pytest.raises(UsageError, match=rf"--train.devices must be in \[0, 1\].*got {bad}"):
            sharding.local_mesh(bad)
    cfg = config_lib.apply_overrides(config_lib.Config(), {"train.devices": "-1"})
    with pytest.raises(UsageError, match=r"--train.devices must be >= 0 .*got -1"):
        config_lib.validate(cfg)


if __name__ == "__main__":
    _chunks(sys.argv[1])
