"""Named experiment configurations (presets) and, later, grid specs."""
