"""The one exception type for bad user input (launch.py prints it on one line and exits 2),
the one for a run whose losses diverged, and the field bounds every config section checks."""


class UsageError(Exception):
    """Bad user input (preset, option, directory). The message names the value and the choices."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last checkpoint on disk is still good."""


def check_fields(section: str, values, positive=(), non_negative=(), positive_number=(),
                 unit_interval=()) -> None:
    """The bounds a config section states for its own fields, as one-line UsageErrors naming
    the option (`--section.field`) and its value."""
    for name in positive:
        if getattr(values, name) <= 0:
            raise UsageError(f"--{section}.{name} must be positive, got {getattr(values, name)}")
    for name in non_negative:
        if getattr(values, name) < 0:
            raise UsageError(f"--{section}.{name} must be >= 0, got {getattr(values, name)}")
    for name in positive_number:
        value = getattr(values, name)
        if not value > 0 or value == float("inf"):
            raise UsageError(f"--{section}.{name} must be a positive number, got {value}")
    for name in unit_interval:
        if not 0 <= getattr(values, name) <= 1:
            raise UsageError(f"--{section}.{name} must be in [0, 1], got "
                             f"{getattr(values, name)}")
