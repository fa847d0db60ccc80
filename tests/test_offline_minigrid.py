"""Offline decision transformers on MiniGrid (discrete actions): the planner's dataset, a
tiny DT trained and evaluated on the device (and on minigrid's own envs), learning on
discrete actions, config and dataset errors.

One tiny dataset (the planner on the two smallest grids, 4 episodes each) per module and
one tiny model configuration, whose learner and evaluator compile once and are shared by
the tests (every new learner compiles anew on the CPU).
"""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from agents.dt.networks import DTConfig
from training import config as config_lib
from training.config import Config, EnvConfig, EvalConfig, TrainConfig
from training.data.collect_minigrid import collect_minigrid
from training.data.offline_data import load_dataset
from training.errors import UsageError

TASKS = ("MiniGrid-LavaGapS5-v0", "MiniGrid-DoorKey-5x5-v0")  # max_steps 100, 250
EPISODES = 3  # evaluation episodes per task


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "tiny"
    return collect_minigrid(str(out), "minigrid_custom", "expert", 4, seed=0, tasks=TASKS,
                            show_progress=False)


def tiny_config(dataset, **dt) -> Config:
    fields = dict(variant="mtdt", action_kind="discrete", dataset=str(dataset), context_len=4,
                  embed_dim=16, num_layers=1, num_heads=2, batch_per_task=4, dropout=0.0,
                  learning_rate=3e-3, warmup_steps=0, updates=8, rtg_scale=1.0,
                  max_timestep=250)
    fields.update(dt)
    return Config(
        preset="test_dt_minigrid", algo="dt",
        env=EnvConfig(suite="minigrid_custom", tasks=TASKS),
        dt=DTConfig(**fields),
        train=TrainConfig(eval_every=8, checkpoint_every=8, keep_checkpoints=2),
        eval=EvalConfig(episodes=EPISODES, deterministic=True),
    )


def test_planner_dataset_is_discrete_minigrid_data(dataset_dir):
    meta = load_dataset(dataset_dir, tasks=TASKS).meta
    assert meta["env"] == "minigrid" and meta["action_kind"] == "discrete"
    assert (meta["obs_dim"], meta["action_dim"]) == (147, 7)
    assert meta["max_steps"] == {TASKS[0]: 100, TASKS[1]: 250}
    assert meta["versions"]["minigrid"] and "reward_version" not in meta
    assert all(meta["per_task"][t]["success"] == 1.0 for t in TASKS)


def test_dt_trains_and_evaluates_all_tasks_on_the_device(dataset_dir, tmp_path):
    from agents.dt.loop import DTTrainer, reevaluate
    from training import run_dir as run_lib

    cfg = tiny_config(dataset_dir)
    config_lib.validate(cfg)
    run = run_lib.create_at(tmp_path / "run", cfg)
    (final,) = DTTrainer(cfg, run, show_progress=False).train()
    records = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert records == [final] and final["step"] == 8 and final["deterministic"]
    assert list(final["per_task"]) == list(TASKS)
    assert all(r["episodes"] == EPISODES and 0 <= r["success"] <= 1 and 0 <= r["return"] <= 1
               for r in final["per_task"].values())
    best = [load_dataset(dataset_dir).meta["per_task"][t]["return_max"] for t in TASKS]
    assert final["target_returns"] == pytest.approx(best)
    # `launch.py eval --run` reproduces it; the reference backend (minigrid's envs on the
    # host) evaluates the same checkpoint with the same record.
    assert reevaluate(cfg, run, None, None) == final
    gym = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, backend="gym"))
    record = reevaluate(gym, run, None, 2)
    assert list(record["per_task"]) == list(TASKS)
    assert all(r["episodes"] == 2 for r in record["per_task"].values())
    for r in (*final["per_task"].values(), *record["per_task"].values()):
        # timeouts are counted as the PPO evaluation counts them, on both backends
        assert list(r) == ["success", "return", "timeout", "episodes"]
        assert 0 <= r["timeout"] <= 1 - r["success"]


def test_discrete_action_loss_falls_on_the_data(dataset_dir):
    """Cross-entropy on the planner's actions: 200 updates (the learner of the test above,
    already compiled) bring the loss far below its start (log 7 = 1.95)."""
    from agents.dt.learner import device_data, make_dt_learner

    cfg = tiny_config(dataset_dir).dt
    learner = make_dt_learner(cfg, 147, 7, len(TASKS))
    data = device_data(load_dataset(dataset_dir), TASKS, 1)
    state = learner.init(jax.random.PRNGKey(0))
    state, first = learner.train_updates(state, data, 8)
    for _ in range(24):
        state, last = learner.train_updates(state, data, 8)
    print(float(first["loss"]), float(last["loss"]))
    assert float(first["loss"]) > 1.0 and float(last["loss"]) < 0.3 * float(first["loss"])
    assert np.isfinite(np.asarray(last["task_loss"])).all()


def test_minigrid_dt_config_errors(dataset_dir):
    cfg = tiny_config(dataset_dir)
    with pytest.raises(UsageError, match="action_kind continuous: MiniGrid actions are "
                                         "discrete"):
        config_lib.validate(dataclasses.replace(cfg, dt=dataclasses.replace(
            cfg.dt, action_kind="continuous")))
    with pytest.raises(UsageError, match="max_timestep \\(100\\) must cover an episode "
                                         "\\(MiniGrid-DoorKey-5x5-v0's max_steps 250"):
        config_lib.validate(dataclasses.replace(cfg, dt=dataclasses.replace(
            cfg.dt, max_timestep=100)))
    metaworld = dataclasses.replace(cfg, env=EnvConfig(suite="custom", tasks=("reach-v3",),
                                                       max_episode_steps=50))
    with pytest.raises(UsageError, match="action_kind discrete: Meta-World actions are "
                                         "continuous"):
        config_lib.validate(metaworld)
    with pytest.raises(UsageError, match="unknown env.backend 'cuda'"):
        config_lib.validate(dataclasses.replace(cfg, env=dataclasses.replace(
            cfg.env, backend="cuda")))
    # The presets: discrete, unscaled returns, timesteps covering RedBlueDoors' 720 steps.
    from experiments.presets import get_preset

    preset = get_preset("minigrid_mt3_mtdt")
    assert (preset.dt.action_kind, preset.dt.rtg_scale, preset.dt.max_timestep) == \
        ("discrete", 1.0, 720)
    config_lib.validate(dataclasses.replace(preset, dt=dataclasses.replace(
        preset.dt, dataset="-")))


def test_minigrid_dataset_mismatches(dataset_dir, tmp_path):
    from agents.dt.loop import open_dataset

    cfg = tiny_config(dataset_dir)
    dataset, names = open_dataset(cfg)
    assert names == TASKS and dataset.meta["env"] == "minigrid"

    def edited(name, change):
        copy = tmp_path / name
        shutil.copytree(dataset_dir, copy)
        meta = json.loads((copy / "dataset.json").read_text())
        change(meta)
        (copy / "dataset.json").write_text(json.dumps(meta))
        return dataclasses.replace(cfg, dt=dataclasses.replace(cfg.dt, dataset=str(copy)))

    old = edited("old", lambda m: m["versions"].update(minigrid="0.0"))
    with pytest.raises(UsageError, match="collected with minigrid 0.0"):
        open_dataset(old)
    longer = edited("longer", lambda m: m["max_steps"].update({TASKS[0]: 50}))
    with pytest.raises(UsageError, match="LavaGapS5-v0 episodes have max_steps 50, the "
                                         "evaluation env's is 100"):
        open_dataset(longer)
    other = edited("other", lambda m: m.update(env="metaworld"))
    with pytest.raises(UsageError, match="holds metaworld data; suite 'minigrid_custom' is "
                                         "MiniGrid"):
        open_dataset(other)
