"""Multi-task SAC (Haarnoja et al.) with one temperature per task, as used by MOORE."""
