"""The one exception type for bad user input (launch.py prints it on one line and exits 2),
and the one for a run whose losses diverged."""


class UsageError(Exception):
    """Bad user input (preset, option, directory). The message names the value and the choices."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last checkpoint on disk is still good."""
