"""Experiment management: presets (named configs), grid specs (*.toml), the grid launcher
(grid.py: local) and Slurm (slurm.py, with the worker entry point)."""
