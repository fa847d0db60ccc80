"""The one exception type for bad user input: launch.py prints it on one line and exits 2."""


class UsageError(Exception):
    """Bad user input (preset, option, directory). The message names the value and the choices."""
