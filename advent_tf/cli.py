"""Helpers shared by the command-line entry points (no flags defined here)."""

from absl import app


def parse_size(values, name):
    """A WIDTH,HEIGHT list-flag value -> (height, width).

    The flags read like the reference's configs (1280,720); the code works in
    (height, width) like TensorFlow.

    Raises:
      app.UsageError: not two positive integers, naming the flag.
    """
    try:
        width, height = (int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be WIDTH,HEIGHT with two integers, got {values}")
    if width < 1 or height < 1:
        raise app.UsageError(f"--{name} must be positive, got {values}")
    return height, width
