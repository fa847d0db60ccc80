"""Environments: each suite is a vector env with one sub-env per task."""
