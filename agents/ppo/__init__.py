"""PPO for multi-task discrete-action agents (MTPPO, MoE-PPO, MOORE-PPO)."""
