"""Typed, frozen run configuration, its JSON form, and `--section.field value` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from agents.dt.networks import DTConfig
from agents.nn.registry import NetworkConfig
from agents.ppo.learner import PPOConfig
from agents.sac.learner import SACConfig
from training.errors import UsageError, check_fields


@dataclass(frozen=True)
class EnvConfig:
    # Meta-World: mt10 | mt50 | custom. MiniGrid: minigrid_mt3 | minigrid_mt5 | minigrid_mt7 |
    # minigrid_custom (envs/minigrid/multitask.py).
    suite: str = "mt10"
    tasks: tuple[str, ...] = ()  # only for suite=custom / minigrid_custom
    reward_version: str = "v2"  # Meta-World only
    max_episode_steps: int = 500  # Meta-World only (150 in the MOORE paper's protocol);
    # MiniGrid envs keep their own max_steps
    backend: str = "jax"  # MiniGrid only: jax (our envs, on the device) | gym (minigrid itself);
    # ppo trains and evaluates there, dt evaluates there
    # Meta-World only: sub-envs stepped in this process (sync) or one process each (async);
    # the same numbers either way. auto: sync when JAX runs on the CPU, async on a GPU/TPU.
    vector_strategy: str = "auto"


    HELP: ClassVar[dict[str, str]] = {
        "suite": "Meta-World: mt10, mt50, custom; MiniGrid: minigrid_mt3, minigrid_mt5, "
                 "minigrid_mt7, minigrid_custom",
        "tasks": "comma-separated tasks of a custom suite",
        "reward_version": "Meta-World reward function",
        "max_episode_steps": "Meta-World episode length (MOORE's paper protocol: 150)",
        "backend": "MiniGrid: jax (our envs, on the device) or gym (minigrid itself)",
        "vector_strategy": "Meta-World: step the sub-envs in this process (sync) or each in "
                           "its own process (async); same numbers; auto: sync on a CPU, "
                           "async on a GPU/TPU",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"reward_version": ("v1", "v2"),
                                                     "backend": ("jax", "gym"),
                                                     "vector_strategy": ("auto", "sync",
                                                                         "async")}

@dataclass(frozen=True)
class TrainConfig:
    total_steps_per_task: int = 2_000_000
    chunk_steps: int = 50  # env steps collected, then as many gradient steps, per learner call
    async_actor: bool = False  # overlap env stepping with the learner (policy lag: one chunk)
    # Local devices the learner's batch is split over, from learner_device on; 0: all of them.
    # 1 by default: a launch-bound learner gains nothing from a node's other GPUs.
    devices: int = 1
    # The learner's (first) device: an index into the default backend's local devices. Where
    # the learner runs, not what it computes: a resume or re-evaluation may place it elsewhere.
    learner_device: int = 0
    # Both count env steps per task (taken at the next episode boundary); for algo dt, which
    # trains offline, they count gradient updates (dt.updates in all).
    eval_every: int = 100_000
    checkpoint_every: int = 100_000
    keep_checkpoints: int = 2
    # float32 matmul precision (jax_default_matmul_precision): "default" lets recent GPUs use
    # TF32 and TPUs bfloat16 passes; "highest" is full float32 everywhere (the CPU always is).
    matmul_precision: str = "default"
    # GPU only: XLA's deterministic kernels (--xla_gpu_deterministic_ops), so that a resumed
    # run repeats its numbers bit for bit there too; slower scatter-adds (embedding gradients).
    deterministic_ops: bool = False


    HELP: ClassVar[dict[str, str]] = {
        "total_steps_per_task": "env steps per task in the run",
        "chunk_steps": "SAC: env steps collected, then as many gradient steps, per learner "
                       "call",
        "async_actor": "SAC: step the envs while the learner updates (one chunk of policy "
                       "lag)",
        "devices": "SAC: local devices the learner's batch is split over, from "
                   "learner_device on (0: all)",
        "learner_device": "index of the learner's device among the default backend's local "
                          "devices (SAC's actor stays on the CPU); on a CPU, "
                          "XLA_FLAGS=--xla_force_host_platform_device_count=2 simulates an "
                          "accelerator at index 1",
        "eval_every": "env steps per task between evaluations (dt: updates)",
        "checkpoint_every": "env steps per task between checkpoints (dt: updates)",
        "keep_checkpoints": "newest checkpoints kept",
        "matmul_precision": "float32 matmul precision on accelerators (default: TF32 on "
                            "recent GPUs, bfloat16 passes on TPUs; highest: full float32)",
        "deterministic_ops": "GPU: deterministic XLA kernels (--xla_gpu_deterministic_ops), "
                             "for runs that must resume bit for bit; CPU runs always do",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "matmul_precision": ("default", "high", "highest")}

    def check(self) -> None:
        """The bounds of this section's own fields (UsageError naming the option)."""
        check_fields("train", self, positive=("total_steps_per_task", "eval_every",
                                              "checkpoint_every", "keep_checkpoints"))
        if self.devices < 0:
            raise UsageError(f"--train.devices must be >= 0 (0: all local devices), got "
                             f"{self.devices}")
        if self.learner_device < 0:
            raise UsageError(f"--train.learner_device must be >= 0 (an index into the local "
                             f"devices), got {self.learner_device}")
        for name in ("total_steps_per_task", "eval_every", "checkpoint_every"):
            if getattr(self, name) > MAX_STEPS:
                raise UsageError(f"--train.{name} must be at most {MAX_STEPS} (step counters "
                                 f"are 32-bit), got {getattr(self, name)}")

@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 50  # per task; MOORE's code uses 10
    deterministic: bool = True  # mean action; MOORE's code samples (False)


    HELP: ClassVar[dict[str, str]] = {
        "episodes": "evaluation episodes per task",
        "deterministic": "mean / argmax actions (true) or sampled ones (false)",
    }

    def check(self) -> None:
        check_fields("eval", self, positive=("episodes",))

ALGORITHMS = ("sac", "ppo", "dt")
SEED_LIMIT = 2**32
MAX_STEPS = 2**31 - 1  # learners count their updates in int32
# Which network.arch each algorithm trains. Every learner takes the shared optimiser step
# (agents/nn/rules.py: only `params` trains, masks and probes keep their values); SAC
# and PPO apply weight masks' prune-and-regrow; only SAC has PaCo's task reset, which is
# defined on SAC's per-task critic loss. DT builds its own networks (dt.variant; HarmoDT's
# masks) and reads no network.arch. A pair missing here is refused with its reason.
ARCH_SUPPORT = {
    "sac": ("mtmlp", "multihead", "moe", "moore", "paco", "care", "softmod", "unitmask",
            "weightmask"),
    "ppo": ("mtmlp", "multihead", "moe", "moore", "care", "softmod", "unitmask", "weightmask"),
}
ARCH_REFUSALS = {
    ("ppo", "paco"): "PaCo's task reset (a task whose loss passes "
                     "network.paco_reset_threshold is masked out and its vector reset) is "
                     "defined on SAC's per-task critic loss (Sun et al. 2022); PPO's learner "
                     "does not apply it, so PaCo would train without its defining rule",
}
MINIGRID_BACKENDS = ("jax", "gym")


@dataclass(frozen=True)
class Config:
    preset: str = "custom"
    seed: int = 0
    # sac (Meta-World, agents/sac/loop.py) | ppo (MiniGrid, agents/ppo/loop.py) |
    # dt (offline, from a dataset: the decision-transformer family, agents/dt/loop.py)
    algo: str = "sac"
    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dt: DTConfig = field(default_factory=DTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = ("env", "network", "sac", "ppo", "dt", "train", "eval")
# The sections each algorithm reads: a run's config.json holds these only, and an option of
# another section is refused. DT builds its own model from dt.* (no network section).
ALGORITHM_SECTIONS = {
    "sac": ("env", "network", "sac", "train", "eval"),
    "ppo": ("env", "network", "ppo", "train", "eval"),
    "dt": ("env", "dt", "train", "eval"),
}
TOP_LEVEL = {"seed": int, "algo": str}  # overridable fields outside the sections


def sections_of(algo: str) -> tuple[str, ...]:
    """The config sections algorithm `algo` reads (all of them for an unknown name, which
    `validate` refuses)."""
    return ALGORITHM_SECTIONS.get(algo, SECTIONS)


def to_dict(cfg: Config) -> dict:
    """The config as JSON-ready data: the top-level fields and the algorithm's own sections."""
    data = dataclasses.asdict(cfg)
    return {k: v for k, v in data.items() if k not in SECTIONS or k in sections_of(cfg.algo)}


def from_dict(data: dict) -> Config:
    # Configs written before a field or section existed load with its default.
    kwargs = {"preset": data["preset"], "seed": data["seed"], "algo": data.get("algo", "sac")}
    for section in SECTIONS:
        cls = type(getattr(Config(), section))
        hints = typing.get_type_hints(cls)
        values = {k: _coerce_json(hints[k], v) for k, v in data.get(section, {}).items()}
        kwargs[section] = cls(**values)
    return Config(**kwargs)


def _coerce_json(hint, value):
    return tuple(value) if typing.get_origin(hint) is tuple else value


TOP_LEVEL_HELP = {"seed": "run seed in [0, 2^32): everything random derives from it",
                  "algo": "sac (Meta-World, online), ppo (MiniGrid, online), dt (offline)"}


class Option(typing.NamedTuple):
    name: str  # dotted: section.field, or a top-level field
    hint: object  # the field's type
    default: object  # its value in the config the table was made from
    help: str
    choices: tuple[str, ...] = ()


def option_table(cfg: Config | None = None) -> list[Option]:
    """Every overridable option, valued as in `cfg` (default: the bare config); with a
    `cfg`, only the sections its algorithm reads."""
    base = cfg or Config()
    rows = [Option(name, hint, getattr(base, name), TOP_LEVEL_HELP[name],
                   ALGORITHMS if name == "algo" else ())
            for name, hint in TOP_LEVEL.items()]
    for section in sections_of(base.algo) if cfg is not None else SECTIONS:
        sub = getattr(base, section)
        hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            choices = type(sub).__dict__.get("CHOICES", {}).get(f.name, ())
            if cfg is not None and (section, f.name) == ("network", "arch"):
                choices = ARCH_SUPPORT[base.algo]
            rows.append(Option(f"{section}.{f.name}", hints[f.name], getattr(sub, f.name),
                               type(sub).HELP[f.name], choices))
    return rows


def parse_value(name: str, hint, text: str):
    """Parse one override's text according to its field type; bad text is a UsageError."""
    try:
        if typing.get_origin(hint) is tuple:
            (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
            return tuple(item(x) for x in text.split(",") if x.strip())
        if typing.get_origin(hint) in (typing.Union, _union_type()):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if text.lower() in ("none", "null", ""):
                return None
            return args[0](text)
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(float(text)) if "e" in text.lower() else int(text)
        return hint(text)
    except (TypeError, ValueError):
        raise UsageError(f"bad value '{text}' for --{name} (expected {_type_name(hint)})") from None


def _union_type():
    import types

    return types.UnionType


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return "a comma-separated list"
    return getattr(hint, "__name__", str(hint))


def apply_overrides(cfg: Config, overrides: dict[str, str]) -> Config:
    """Apply {'section.field': text} overrides; unknown names are a UsageError."""
    table = {option.name: option.hint for option in option_table()}
    # --algo first: it decides which sections' options apply.
    overrides = dict(sorted(overrides.items(), key=lambda item: item[0] != "algo"))
    for name, text in overrides.items():
        if name not in table:
            raise UsageError(
                f"unknown option --{name}; see `python launch.py train --help` for all options"
            )
        value = parse_value(name, table[name], text)
        if name in TOP_LEVEL:
            cfg = dataclasses.replace(cfg, **{name: value})
            continue
        section, key = name.split(".", 1)
        if section not in sections_of(cfg.algo):
            used = ", ".join(f"--{s}.*" for s in sections_of(cfg.algo))
            raise UsageError(f"--{name} does not apply to algo {cfg.algo} (preset "
                             f"'{cfg.preset}'), which reads {used}")
        sub = dataclasses.replace(getattr(cfg, section), **{key: value})
        cfg = dataclasses.replace(cfg, **{section: sub})
    return cfg


# Options that say where and how a run computes, not what (the same numbers; with another
# device count, to float rounding): a resumed run, or a grid relaunched, may change them.
PLACEMENT = ("train.learner_device", "train.devices", "env.vector_strategy")


def diff(a: Config, b: Config, placement: bool = True) -> list[str]:
    """Dotted names whose values differ between two configs (without `placement`: except the
    PLACEMENT options)."""
    da, db = flatten(a), flatten(b)
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k)
                  and (placement or k not in PLACEMENT))


def flatten(cfg: Config) -> dict:
    """{dotted name: value} of every field; sequences as tuples."""
    return _flatten(to_dict(cfg))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list | tuple) else v
    return out


def format_value(value) -> str:
    """A value as the text an override takes (the inverse of `parse_value`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def validate(cfg: Config) -> None:
    """Reject configs that cannot run, with a one-line message naming the value."""
    from envs.minigrid.multitask import is_minigrid

    if cfg.algo not in ALGORITHMS:
        raise UsageError(f"unknown algo '{cfg.algo}'; valid: {', '.join(ALGORITHMS)}")
    wanted = "ppo" if is_minigrid(cfg.env.suite) else "sac"
    if cfg.algo == "dt":  # offline, on either family
        wanted = "dt"
    if cfg.algo != wanted:
        raise UsageError(f"--algo {cfg.algo} does not train on suite '{cfg.env.suite}': "
                         "MiniGrid suites use ppo (online) or dt (offline), Meta-World suites "
                         "use sac (online) or dt (offline)")
    if not 0 <= cfg.seed < SEED_LIMIT:  # PRNG keys and numpy seeds take 32-bit seeds
        raise UsageError(f"--seed must be in [0, 2^32), got {cfg.seed}")
    for name, value in flatten(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name} must be a finite number, got {value}")
    # Each section states its own fields' bounds; what follows relates fields to each other.
    for section in sections_of(cfg.algo):
        check = getattr(getattr(cfg, section), "check", None)
        if check is not None:
            check()
    if is_minigrid(cfg.env.suite) and cfg.env.vector_strategy == "async":
        raise UsageError(f"--env.vector_strategy {cfg.env.vector_strategy} is for Meta-World; "
                         f"MiniGrid suites run on env.backend (jax or gym)")
    t = cfg.train
    _apply_deterministic_ops(t.deterministic_ops)  # before JAX starts its backend below
    from training.sharding import learner_device, local_mesh

    learner_device(t.learner_device)  # the upper bounds need JAX's backend
    if cfg.algo == "sac":  # the only learner that splits its batch over devices
        local_mesh(t.devices, t.learner_device)
        _check_cpu_backend()
    if cfg.algo == "dt":
        _validate_dt(cfg)
        _check_choices(cfg)
        return
    if cfg.algo == "ppo":
        _validate_ppo(cfg)
    else:
        _validate_sac(cfg)
    check_arch(cfg.algo, cfg.network.arch)
    # Checked here, before a run directory exists, so bad input leaves nothing behind.
    from agents.nn.registry import make_network

    make_network(cfg.network, 1, 1)
    _check_choices(cfg)


DETERMINISTIC_OPS_FLAG = "--xla_gpu_deterministic_ops=true"


def _apply_deterministic_ops(wanted: bool) -> None:
    """XLA reads XLA_FLAGS once, when JAX starts its backend: the flag is added to the
    environment then, which validation (the first use of JAX's devices) precedes. A process
    whose GPU backend already runs without it is refused."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if not wanted or "xla_gpu_deterministic_ops" in flags:
        return
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_OPS_FLAG}".strip()
    elif jax.default_backend() == "gpu":
        raise UsageError(f"--train.deterministic_ops needs XLA_FLAGS={DETERMINISTIC_OPS_FLAG} "
                         "before JAX starts, and this process started its GPU backend "
                         "already: set it in the environment")


def _check_cpu_backend() -> None:
    """SAC's actor steps MuJoCo with a policy jitted on JAX's CPU device, so a JAX_PLATFORMS
    that leaves the CPU backend out (e.g. `cuda`) would fail mid-start."""
    import os

    import jax

    try:
        jax.devices("cpu")
    except RuntimeError:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        raise UsageError(f"JAX_PLATFORMS='{platforms}' hides JAX's CPU backend, where SAC's "
                         f"actor runs next to MuJoCo: add it (JAX_PLATFORMS={platforms},cpu)"
                         ) from None


def _check_choices(cfg: Config) -> None:
    """Every string option with a fixed set of values (each config class's CHOICES) holds one
    of them; checked last, after the checks that name a value in their own words."""
    for section in sections_of(cfg.algo):
        sub = getattr(cfg, section)
        for name, choices in type(sub).__dict__.get("CHOICES", {}).items():
            if getattr(sub, name) not in choices:
                raise UsageError(f"unknown {section}.{name} '{getattr(sub, name)}'; valid: "
                                 f"{', '.join(choices)}")


def check_arch(algo: str, arch: str) -> None:
    """Refuse an architecture the algorithm's learner does not train faithfully."""
    from agents.nn.registry import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown network.arch '{arch}'; valid: {', '.join(ARCHITECTURES)}")
    if arch not in ARCH_SUPPORT[algo]:
        reason = ARCH_REFUSALS.get((algo, arch), "not supported")
        raise UsageError(f"--network.arch {arch} with algo {algo}: {reason}; valid with "
                         f"{algo}: {', '.join(ARCH_SUPPORT[algo])}")


def _validate_dt(cfg: Config) -> None:
    from agents.dt.networks import make_dt
    from envs.minigrid.multitask import is_minigrid

    d, e = cfg.dt, cfg.env
    minigrid = is_minigrid(e.suite)
    if minigrid:
        from envs.minigrid import make
        from envs.minigrid.multitask import task_names

        lengths = {name: make(name).max_steps for name in task_names(e.suite, e.tasks)}
        longest = max(lengths, key=lengths.get)
        horizon = lengths[longest]
        horizon_text = f"{longest}'s max_steps {horizon}, the suite's longest episode"
        if e.backend not in MINIGRID_BACKENDS:
            raise UsageError(f"unknown env.backend '{e.backend}'; valid: "
                             f"{', '.join(MINIGRID_BACKENDS)}")
    else:
        from envs.metaworld import check_env_args

        check_env_args(e.suite, e.tasks, e.reward_version, e.max_episode_steps)
        horizon = e.max_episode_steps
        horizon_text = f"--env.max_episode_steps {horizon}"
    make_dt(d, 1, 1, 1)
    family, kind = ("MiniGrid", "discrete") if minigrid else ("Meta-World", "continuous")
    if d.action_kind != kind:
        raise UsageError(f"--dt.action_kind {d.action_kind}: {family} actions are {kind} "
                         f"(--dt.action_kind {kind})")
    if d.max_timestep < horizon:
        raise UsageError(f"--dt.max_timestep ({d.max_timestep}) must cover an episode "
                         f"({horizon_text})")


def _validate_ppo(cfg: Config) -> None:
    from envs.minigrid.multitask import task_names

    task_names(cfg.env.suite, cfg.env.tasks)
    if cfg.env.backend not in MINIGRID_BACKENDS:
        raise UsageError(f"unknown env.backend '{cfg.env.backend}'; valid: "
                         f"{', '.join(MINIGRID_BACKENDS)}")
    p, t = cfg.ppo, cfg.train
    for name in ("total_steps_per_task", "eval_every", "checkpoint_every"):
        if getattr(t, name) % p.steps_per_task:
            raise UsageError(f"--train.{name} ({getattr(t, name)}) must be a multiple of "
                             f"--ppo.steps_per_task ({p.steps_per_task})")


def _validate_sac(cfg: Config) -> None:
    t, e = cfg.train, cfg.env
    positive = {"train.chunk_steps": t.chunk_steps,  # read by SAC's loop alone
                "env.max_episode_steps": e.max_episode_steps}
    for name, value in positive.items():
        if value <= 0:
            raise UsageError(f"--{name} must be positive, got {value}")
    if e.max_episode_steps % t.chunk_steps:
        raise UsageError(
            f"--train.chunk_steps ({t.chunk_steps}) must divide --env.max_episode_steps "
            f"({e.max_episode_steps}) so that checkpoints fall on episode boundaries"
        )
    if t.total_steps_per_task % t.chunk_steps:
        raise UsageError(
            f"--train.total_steps_per_task ({t.total_steps_per_task}) must be a multiple of "
            f"--train.chunk_steps ({t.chunk_steps})"
        )
    if cfg.network.encoder == "cnn":
        raise UsageError("--network.encoder cnn reads MiniGrid's 7x7x3 image observations; "
                         "Meta-World observations are vectors: use --network.encoder mlp")
    from envs.metaworld import check_env_args

    check_env_args(e.suite, e.tasks, e.reward_version, e.max_episode_steps)


def dumps(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
