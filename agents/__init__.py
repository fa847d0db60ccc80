"""Agents: the network architectures (agents/nn/, a leaf) and the algorithms, one folder each
(sac/, ppo/, dt/: config, networks, losses, learner, and loop.py with its own actor or rollout,
evaluation and run lifecycle), plus gradient_surgery.py (PCGrad, GradNorm as optax transforms)."""
