"""Agents: network architectures (agents/networks.py) and algorithms (one folder each)."""
