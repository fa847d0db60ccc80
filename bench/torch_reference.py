"""Plain PyTorch reference of our SAC update, for the JAX-vs-PyTorch speed benchmark (CPU).

The MOORE and mtrl reference code is PyTorch, updated eagerly one step at a time. This module
writes the same SAC gradient step as `agents/sac/learner.py` (same architectures as
`agents/nn/registry.py`, same losses as `agents/sac/losses.py`, same order) the way such a
reference implementation would: `nn.Module`s, `torch.optim.Adam`, `loss.backward()`.

Step order, as MOORE's (mushroom-rl's) SAC and ours:
  1. actor:  mean(alpha_task * log pi(a|s) - min_i Q_i(s, a)),  a ~ pi(.|s) reparameterised;
  2. alpha:  -mean(log_alpha[task] * (log pi + target_entropy)) with the step-1 log pi;
  3. critic: sum over both critics of the MSE to r + gamma (1 - terminated)
             (min_i Q_target_i(s', a') - alpha_task * log pi(a'|s')), a' from the updated actor
             and alpha from the updated log_alpha;
  4. Polyak update of the target critics with tau.

Fair-comparison notes:
- The batch is drawn once and re-used every call; the JAX side samples its batch from an
  on-device replay buffer inside its jit. Sampling is a gather of ~1280 rows, tiny next to the
  networks' cost either way, so leaving it out here favours PyTorch by a hair at most.
- Experts (moe, moore) are evaluated batched, with stacked weights and one batched matmul per
  layer, and per-task heads as one einsum over all heads selected by the one-hot task, as our
  JAX code does. MOORE's own `ParallelLayer` loops over per-expert modules in Python, which is
  slower; so this reference is, if anything, faster than MOORE's code.
- The two critics are two separate modules called one after the other (MOORE / mtrl style);
  the JAX side evaluates them as one vmapped network.
- Time on an otherwise idle machine: torch's OpenMP threads spin-wait, and with other
  processes on the same cores eager timings here dropped 5-20x.
- The actor loss back-propagates into the actor's parameters only (`backward(inputs=...)`), as
  `jax.grad` with respect to the actor does; the target is computed under `torch.no_grad()`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("mtmlp", "multihead", "moe", "moore")


# ---------------------------------------------------------------------------------------------
# Networks (mirroring agents/nn/registry.py)
# ---------------------------------------------------------------------------------------------


def mlp(in_dim: int, sizes: Sequence[int], activate_final: bool) -> nn.Sequential:
    """Linear-ReLU stack; the last layer is linear unless `activate_final`."""
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(in_dim, size))
        if i < len(sizes) - 1 or activate_final:
            layers.append(nn.ReLU())
        in_dim = size
    return nn.Sequential(*layers)


class ParallelLinear(nn.Module):
    """k independent Linear layers as one stacked weight (k, in, out), applied with one matmul.

    Input (B, in), shared by all k, or (k, B, in); output (k, B, out). Initialised as
    nn.Linear: weights and biases uniform in +-1/sqrt(in).
    """

    def __init__(self, num: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight) + self.bias


class ParallelMLP(nn.Module):
    """k expert MLPs (Linear-ReLU-...-Linear, no final activation) on a shared input."""

    def __init__(self, num: int, in_dim: int, sizes: Sequence[int]):
        super().__init__()
        dims = [in_dim, *sizes]
        self.layers = nn.ModuleList(
            ParallelLinear(num, dims[i], dims[i + 1]) for i in range(len(sizes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (k, B, out)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TaskHeads(nn.Module):
    """One Linear(in -> out) per task; every head is computed, then the one-hot selects."""

    def __init__(self, num_tasks: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tasks, in_dim, out_dim))
        for w in self.weight.data:
            nn.init.xavier_uniform_(w)
        bound = 1.0 / math.sqrt(in_dim)
        self.bias = nn.Parameter(torch.empty(num_tasks, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        per_task = torch.einsum("bi,tio->bto", x, self.weight) + self.bias
        return torch.einsum("bt,bto->bo", one_hot, per_task)


def gram_schmidt(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Classical Gram-Schmidt of (B, k, d) along k, in order, plus `eps` on each norm, as
    agents/nn/registry.py. MOORE's OrthogonalLayer1D computes the same projections with batched
    (1 x d) @ (d x i) matmuls; on CPU the elementwise form is faster (~20 vs ~28 ms forward +
    backward at B=1280, k=4, d=400), so the reference uses it."""
    basis: list[torch.Tensor] = []
    for i in range(x.shape[1]):
        v = x[:, i]
        w = v
        for u in basis:
            w = w - (v * u).sum(dim=-1, keepdim=True) * u
        basis.append(w / (torch.linalg.norm(w, dim=-1, keepdim=True) + eps))
    return torch.stack(basis, dim=1)


class MultiTaskNet(nn.Module):
    """`net(x, task_id)` -> (B, out_dim) for any of ARCHITECTURES."""

    def __init__(self, arch: str, in_dim: int, out_dim: int, num_tasks: int,
                 hidden_sizes: Sequence[int], num_experts: int):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch '{arch}'; valid: {', '.join(ARCHITECTURES)}")
        self.arch = arch
        self.num_tasks = num_tasks
        if arch in ("mtmlp", "multihead"):
            self.trunk = mlp(in_dim + num_tasks, hidden_sizes, activate_final=True)
        else:
            self.experts = ParallelMLP(num_experts, in_dim, hidden_sizes)
            self.task_weights = nn.Linear(num_tasks, num_experts, bias=False)
            nn.init.xavier_uniform_(self.task_weights.weight)
        if arch == "mtmlp":
            self.head = nn.Linear(hidden_sizes[-1], out_dim)
        else:
            self.head = TaskHeads(num_tasks, hidden_sizes[-1], out_dim)

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(task_id, self.num_tasks).to(x.dtype)
        if self.arch == "mtmlp":
            return self.head(self.trunk(torch.cat([x, one_hot], dim=-1)))
        if self.arch == "multihead":
            return self.head(self.trunk(torch.cat([x, one_hot], dim=-1)), one_hot)
        experts = self.experts(x).transpose(0, 1)  # (B, k, H)
        if self.arch == "moore":
            experts = gram_schmidt(experts)
        weights = self.task_weights(one_hot)  # (B, k)
        features = torch.tanh(torch.einsum("bk,bkh->bh", weights, experts))
        return self.head(features, one_hot)


# ---------------------------------------------------------------------------------------------
# SAC (mirroring agents/sac/networks.py, losses.py, train.py)
# ---------------------------------------------------------------------------------------------


class Actor(nn.Module):
    def __init__(self, action_dim: int, log_std_min: float = -10.0, log_std_max: float = 2.0,
                 **net_kwargs):
        super().__init__()
        self.net = MultiTaskNet(out_dim=2 * action_dim, **net_kwargs)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs, task_id):
        mean, log_std = self.net(obs, task_id).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)


def sample_tanh_gaussian(mean, log_std, noise=None):
    """Reparameterised tanh(N(mean, std)) sample and its log-probability summed over dims."""
    std = log_std.exp()
    if noise is None:
        noise = torch.randn_like(mean)
    pre_tanh = mean + std * noise
    log_prob = torch.distributions.Normal(mean, std).log_prob(pre_tanh)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), the numerically stable form.
    log_prob = log_prob - 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return torch.tanh(pre_tanh), log_prob.sum(-1)


class TwinCritic(nn.Module):
    """Two independent Q networks on concat(obs, action) -> (2, B)."""

    def __init__(self, action_dim: int, in_dim: int, **net_kwargs):
        super().__init__()
        self.qs = nn.ModuleList(
            MultiTaskNet(in_dim=in_dim + action_dim, out_dim=1, **net_kwargs) for _ in range(2)
        )

    def forward(self, obs, action, task_id):
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([q(x, task_id).squeeze(-1) for q in self.qs])


class TorchSAC:
    """SAC learner state (networks, targets, per-task log alpha, optimisers) and one update."""

    def __init__(self, arch: str, num_tasks: int, obs_dim: int, action_dim: int,
                 hidden_sizes: Sequence[int], num_experts: int, *, actor_lr: float = 3e-4,
                 critic_lr: float = 3e-4, alpha_lr: float = 1e-4, gamma: float = 0.99,
                 tau: float = 0.005):
        net_kwargs = {"arch": arch, "in_dim": obs_dim, "num_tasks": num_tasks,
                      "hidden_sizes": tuple(hidden_sizes), "num_experts": num_experts}
        self.actor = Actor(action_dim, **net_kwargs)
        self.critic = TwinCritic(action_dim, **net_kwargs)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(num_tasks))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=alpha_lr)
        self.target_entropy = -float(action_dim)
        self.gamma, self.tau = gamma, tau

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise for the policy samples (a hook for parity tests)."""
        return torch.randn_like(like)

    def update(self, batch: dict) -> dict:
        obs, action, task_id = batch["obs"], batch["action"], batch["task_id"]
        actor_params = list(self.actor.parameters())

        # 1. Actor.
        mean, log_std = self.actor(obs, task_id)
        new_action, log_prob = sample_tanh_gaussian(mean, log_std, self.noise(mean))
        q_new = self.critic(obs, new_action, task_id).min(dim=0).values
        alpha = self.log_alpha.detach().exp()[task_id]
        actor_loss = (alpha * log_prob - q_new).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward(inputs=actor_params)
        self.actor_opt.step()

        # 2. Per-task temperature, with the actor step's log-probabilities.
        alpha_loss = -(self.log_alpha[task_id]
                       * (log_prob + self.target_entropy).detach()).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        # 3. Critics, bootstrapping with the updated actor and temperature.
        with torch.no_grad():
            next_obs = batch["next_obs"]
            mean, log_std = self.actor(next_obs, task_id)
            next_action, next_log_prob = sample_tanh_gaussian(mean, log_std, self.noise(mean))
            next_q = self.target_critic(next_obs, next_action, task_id).min(dim=0).values
            soft_value = next_q - self.log_alpha.exp()[task_id] * next_log_prob
            target = batch["reward"] + self.gamma * (1.0 - batch["terminated"]) * soft_value
        q = self.critic(obs, action, task_id)
        critic_loss = (q - target).pow(2).sum(dim=0).mean()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        # 4. Polyak averaging of the target critics.
        with torch.no_grad():
            pairs = zip(self.critic.parameters(), self.target_critic.parameters(), strict=True)
            for p, p_target in pairs:
                p_target.lerp_(p, self.tau)

        return {
            "actor_loss": actor_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "q_mean": q.detach().mean(),
            "entropy": -log_prob.detach().mean(),
        }


def make_batch(num_tasks: int, batch_size_per_task: int, obs_dim: int, action_dim: int,
               generator: torch.Generator | None = None) -> dict:
    """A random task-balanced batch laid out as `training.data.replay.sample` returns it."""
    n = num_tasks * batch_size_per_task

    def uniform(*shape):
        return torch.rand(*shape, generator=generator) * 2.0 - 1.0

    return {
        "obs": uniform(n, obs_dim),
        "next_obs": uniform(n, obs_dim),
        "action": uniform(n, action_dim),
        "reward": torch.rand(n, generator=generator),
        "terminated": torch.zeros(n),
        "task_id": torch.arange(num_tasks).repeat_interleave(batch_size_per_task),
    }


def build_torch_update(arch: str, num_tasks: int = 10, obs_dim: int = 39, action_dim: int = 4,
                       hidden_sizes=(400, 400, 400), num_experts: int = 4,
                       batch_size_per_task: int = 128, seed: int = 0,
                       compile: bool = False) -> Callable[[], dict]:
    """Returns a zero-argument function doing one full SAC gradient step (actor, alpha, critic,
    soft target update) on a fixed random task-balanced batch, returning a dict of float losses.

    The batch tensors are drawn once and re-used on every call (the JAX side samples from its
    on-device buffer inside its jit; that sampling costs little either way). The learner is
    reachable as `fn.sac` for inspection.

    `compile=True` wraps the step in `torch.compile` (inductor, CPU). It works, graph-breaking
    at each `backward()` and optimiser step, but the first call compiles for ~0.5-1.5 minutes
    and at the paper size on this 2-core machine it was slower than eager (mtmlp 8.5 vs 10.8,
    moore 1.5 vs 2.2 updates/s; faster only at toy sizes), so eager is the reference.
    """
    torch.manual_seed(seed)
    sac = TorchSAC(arch, num_tasks, obs_dim, action_dim, hidden_sizes, num_experts)
    batch = make_batch(num_tasks, batch_size_per_task, obs_dim, action_dim,
                       torch.Generator().manual_seed(seed + 1))
    step = torch.compile(sac.update) if compile else sac.update

    def update() -> dict:
        return {k: v.item() for k, v in step(batch).items()}

    update.sac = sac
    return update


# ---------------------------------------------------------------------------------------------
# Self-check and timing
# ---------------------------------------------------------------------------------------------


def _updates_per_second(fn: Callable[[], dict], steps: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - start)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, num_threads={torch.get_num_threads()}")
    for arch in ARCHITECTURES:
        fn = build_torch_update(arch, num_tasks=5, hidden_sizes=(32, 32), num_experts=3,
                                batch_size_per_task=16)
        for i in range(3):
            losses = fn()
            assert all(math.isfinite(v) for v in losses.values()), (arch, losses)
            print(f"{arch:9s} step {i}: "
                  + ", ".join(f"{k}={v:.4f}" for k, v in losses.items()))
    print("paper size: MT10, hidden 3x400, 128 per task, k=4; 2 warm-up + 10 timed steps")
    for arch in ("moore", "mtmlp"):
        print(f"{arch:9s} {_updates_per_second(build_torch_update(arch)):.2f} updates/s")
