"""The runtime every algorithm shares: the typed config (config.py), the lifecycle entry that
trains runs (train.py: lock, start-over, dispatch to agents/<algo>/loop.py), run directories,
checkpoints, evaluation helpers, memory checks, device sharding, and data/ (the replay buffer,
offline datasets and their sources)."""
