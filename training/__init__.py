"""Everything between an agent and a run directory: configs, loop, evaluation, checkpoints."""
