"""Presets and configs: every preset validates, round-trips through JSON, and builds its suite."""

import dataclasses

import pytest

from envs.metaworld import MT10_TASKS, MT50_TASKS, suite_tasks
from experiments.presets import PRESETS, get_preset
from training import config as config_lib
from training.errors import UsageError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip(name):
    cfg = get_preset(name, seed=3)
    if cfg.algo == "dt":  # offline presets name no dataset: --dt.dataset DIR is required
        cfg = dataclasses.replace(cfg, dt=dataclasses.replace(cfg.dt, dataset="data"))
    config_lib.validate(cfg)
    assert cfg.preset == name and cfg.seed == 3
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg


def test_paper_presets_match_moore():
    moore10, moore50 = get_preset("mt10_moore"), get_preset("mt50_moore")
    assert suite_tasks(moore10.env.suite) == MT10_TASKS and len(MT10_TASKS) == 10
    assert suite_tasks(moore50.env.suite) == MT50_TASKS and len(MT50_TASKS) == 50
    assert (moore10.network.num_experts, moore50.network.num_experts) == (4, 6)
    assert moore10.network.hidden_sizes == (400, 400, 400)
    assert moore10.sac.buffer_size_per_task == 1_000_000
    assert moore50.sac.buffer_size_per_task == 100_000
    assert moore10.sac.batch_size_per_task == 128
    assert moore10.train.total_steps_per_task == 2_000_000
    paper = get_preset("mt10_moore_paper")
    assert paper.env.max_episode_steps == 150
    assert (paper.eval.episodes, paper.eval.deterministic) == (10, False)


def test_overrides_are_typed_and_checked():
    cfg = config_lib.apply_overrides(get_preset("mt10_moore"), {
        "network.hidden_sizes": "64,32", "train.async_actor": "true", "sac.target_entropy": "none",
        "train.total_steps_per_task": "1e5", "env.tasks": "reach-v3,push-v3"})
    assert cfg.network.hidden_sizes == (64, 32) and cfg.train.async_actor is True
    assert cfg.sac.target_entropy is None and cfg.train.total_steps_per_task == 100_000
    assert cfg.env.tasks == ("reach-v3", "push-v3")
    assert config_lib.diff(get_preset("mt10_moore"), cfg) == [
        "env.tasks", "network.hidden_sizes", "train.async_actor", "train.total_steps_per_task"]
    with pytest.raises(UsageError, match="bad value 'maybe' for --train.async_actor"):
        config_lib.apply_overrides(cfg, {"train.async_actor": "maybe"})
    with pytest.raises(UsageError, match="--train.chunk_steps \\(70\\) must divide"):
        config_lib.validate(config_lib.apply_overrides(cfg, {"train.chunk_steps": "70"}))


def test_a_run_config_holds_only_its_algorithms_sections_and_old_ones_still_load():
    sections = {name: set(config_lib.to_dict(get_preset(preset))) - {"preset", "seed", "algo"}
                for name, preset in (("sac", "mt10_moore"), ("ppo", "minigrid_mt3_moore"),
                                     ("dt", "mt10_mtdt"))}
    assert sections == {"sac": {"env", "network", "sac", "train", "eval"},
                        "ppo": {"env", "network", "ppo", "train", "eval"},
                        "dt": {"env", "dt", "train", "eval"}}
    old = dataclasses.asdict(get_preset("minigrid_mt3_moore"))  # saved every section
    assert config_lib.from_dict(old) == get_preset("minigrid_mt3_moore")
    with pytest.raises(UsageError, match="--network.arch does not apply to algo dt"):
        config_lib.apply_overrides(get_preset("mt10_mtdt"), {"network.arch": "moe"})
    # --algo is applied first, so the sections of the algorithm it names apply
    cfg = config_lib.apply_overrides(get_preset("mt10_mtdt"),
                                     {"sac.gamma": "0.9", "algo": "sac"})
    assert cfg.algo == "sac" and cfg.sac.gamma == 0.9


def test_matmul_precision_is_a_choice_applied_to_the_process():
    import jax

    from training.train import configure_jax

    with pytest.raises(UsageError, match="unknown train.matmul_precision 'tf32'; valid: "
                                         "default, high, highest"):
        config_lib.validate(config_lib.apply_overrides(get_preset("demo"),
                                                       {"train.matmul_precision": "tf32"}))
    try:
        configure_jax(config_lib.apply_overrides(get_preset("demo"),
                                                 {"train.matmul_precision": "highest"}))
        assert jax.config.jax_default_matmul_precision == "highest"
    finally:
        configure_jax(get_preset("demo"))
    assert jax.config.jax_default_matmul_precision is None


def test_a_jax_platforms_without_the_cpu_backend_is_one_line(monkeypatch):
    import jax

    real = jax.devices

    def devices(backend=None):
        if backend == "cpu":
            raise RuntimeError("Unknown backend cpu")  # what JAX_PLATFORMS=cuda gives
        return real(backend)

    monkeypatch.setattr(jax, "devices", devices)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with pytest.raises(UsageError, match=r"JAX_PLATFORMS='cuda' hides JAX's CPU backend.*"
                                         r"JAX_PLATFORMS=cuda,cpu"):
        config_lib.validate(get_preset("demo"))


def test_deterministic_gpu_ops_reach_xla_before_jax_starts(monkeypatch):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
            "from experiments.presets import get_preset; from training import config; "
            "config.validate(config.apply_overrides(get_preset('demo'), "
            "{'train.deterministic_ops': 'true'})); import jax; jax.devices(); "
            "print(os.environ['XLA_FLAGS'])")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "--xla_gpu_deterministic_ops=true"
    # A process whose GPU backend already started without the flag is refused, in one line.
    import jax
    from jax._src import xla_bridge

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(UsageError, match=r"--train.deterministic_ops needs XLA_FLAGS="
                                         r"--xla_gpu_deterministic_ops=true before JAX starts"):
        config_lib.validate(config_lib.apply_overrides(get_preset("demo"),
                                                       {"train.deterministic_ops": "true"}))
