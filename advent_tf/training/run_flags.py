"""The flags of a training run, kept in its --train_dir as an absl flagfile.

A rerun of the same command resumes from the newest checkpoint. A rerun with
other flags on the same --train_dir would silently continue one experiment as
another (MinEnt resumed as source-only, other loss weights): the checkpoint
alone cannot tell, since those share every variable. So each start records
its flags in ``TRAIN_DIR/run.flags`` (``--flagfile=TRAIN_DIR/run.flags``
relaunches the run), and a resumed run compares its own with them first.
"""

import os

from absl import logging

FILENAME = "run.flags"


class FlagChangeError(ValueError):
    """A resumed run changes a flag that defines the experiment."""


def _path(train_dir):
    return os.path.join(train_dir, FILENAME)


def _serialize(holders):
    """{name: the flag's flagfile line} of `absl.flags.FlagHolder`s; unset ones omitted."""
    return {holder.name: holder.serialize() for holder in holders if holder.value is not None}


def read(train_dir):
    """The recorded flagfile lines (``--name=value``, ``--name``, ``--noname``), or None."""
    try:
        with open(_path(train_dir), encoding="utf-8") as f:
            return [line.strip() for line in f if line.startswith("--")]
    except FileNotFoundError:
        return None


def _recorded_line(name, lines):
    for line in lines:
        if line.split("=", 1)[0] in (f"--{name}", f"--no{name}"):
            return line
    return None


def write(train_dir, holders):
    """Records the flags of `holders` through a temporary file and a rename (never half a file)."""
    os.makedirs(train_dir, exist_ok=True)
    temp = _path(train_dir) + ".incomplete"
    with open(temp, "w", encoding="utf-8") as f:
        f.write("# The flags of this run; relaunch it with --flagfile=" + _path(train_dir) + "\n")
        f.writelines(line + "\n" for _, line in sorted(_serialize(holders).items()))
    os.replace(temp, _path(train_dir))


def check_resume(train_dir, holders, experiment, ignored):
    """Compares a resumed run's flags with the recorded ones.

    Args:
      train_dir: the run's directory.
      holders: every `absl.flags.FlagHolder` of the run.
      experiment: names that must not change (method, loss weights, network).
      ignored: names free to change silently (logging, checkpoint period,
        num_steps, strategy: how the run is executed, not what it learns).

    Raises:
      FlagChangeError: an `experiment` flag differs; the message lists each
        with its recorded and current value.
    """
    lines = read(train_dir)
    if lines is None:
        return
    current = _serialize(holders)
    names = {holder.name for holder in holders} - set(ignored)
    recorded = {name: _recorded_line(name, lines) for name in names}
    recorded = {name: line for name, line in recorded.items() if line is not None}
    changed = sorted(name for name in names if recorded.get(name) != current.get(name))

    def describe(name):
        return (f"{name}: {recorded.get(name, '(unset)')} in {_path(train_dir)}, "
                f"now {current.get(name, '(unset)')}")

    refused = [describe(name) for name in changed if name in experiment]
    if refused:
        raise FlagChangeError(
            "resuming would continue the recorded experiment with other flags ("
            + "; ".join(refused) + "). Rerun with the recorded values, or start a new "
            f"--train_dir with --init_checkpoint={train_dir} to begin a new experiment "
            "from this run's weights.")
    for name in changed:
        logging.warning("Resuming with a changed flag: %s", describe(name))
