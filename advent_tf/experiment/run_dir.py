"""The run directory's record of its experiment: ``config.json`` and ``run.flags``.

Each training start writes its `config.ExperimentConfig` into --train_dir
twice: ``config.json`` for people and tools (`evaluate`, `predict` and
`export` rebuild the network from it), and ``run.flags``, an absl flagfile
that relaunches the run (``--flagfile=TRAIN_DIR/run.flags``).

A rerun on the same --train_dir resumes, and must not silently continue one
experiment as another (MinEnt resumed as source-only, other loss weights):
the checkpoint alone cannot tell, since those share every variable. So a
resumed run diffs its config against the recorded one (`check_resume`); the
fields themselves say which changes are refused (`config.RESUME_*`).
"""

import os

from absl import logging

from advent_tf.experiment import config as config_lib

CONFIG_FILENAME = "config.json"
FLAGS_FILENAME = "run.flags"


def _write_atomically(path, text):
    # A temporary file and a rename: a reader never sees half a file.
    temp = path + ".incomplete"
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temp, path)


def write(train_dir, config):
    """Records `config` as TRAIN_DIR/config.json and TRAIN_DIR/run.flags."""
    os.makedirs(train_dir, exist_ok=True)
    flags_path = os.path.join(train_dir, FLAGS_FILENAME)
    _write_atomically(os.path.join(train_dir, CONFIG_FILENAME), config_lib.to_json(config))
    header = f"# The flags of this run; relaunch it with --flagfile={flags_path}"
    _write_atomically(flags_path, "".join(
        line + "\n" for line in [header] + config_lib.to_flag_lines(config)))


def read_config(train_dir):
    """The recorded config of a run, or None when the directory records none.

    ``config.json`` is read when present; a run of an earlier release has
    only ``run.flags``, which is parsed instead (its class names are then
    unknown: an empty tuple).

    Raises:
      config.ConfigError: a record that cannot be read, naming the file.
    """
    json_path = os.path.join(train_dir, CONFIG_FILENAME)
    if os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            return config_lib.from_json(f.read(), source=json_path)
    flags_path = os.path.join(train_dir, FLAGS_FILENAME)
    if os.path.isfile(flags_path):
        with open(flags_path, encoding="utf-8") as f:
            return config_lib.from_flag_lines(f.readlines(), source=flags_path)
    return None


def find_train_dir(path):
    """The run directory that `path` belongs to, or None.

    Args:
      path: a train_dir, its ``checkpoints`` subdirectory, or a checkpoint
        prefix inside it (``TRAIN_DIR/checkpoints/ckpt-N``).
    """
    candidates = [path, os.path.dirname(path.rstrip(os.sep)),
                  os.path.dirname(os.path.dirname(path.rstrip(os.sep)))]
    for candidate in candidates:
        if candidate and any(os.path.isfile(os.path.join(candidate, name))
                             for name in (CONFIG_FILENAME, FLAGS_FILENAME)):
            return candidate
    return None


def check_resume(train_dir, config):
    """Compares a resumed run's config with the recorded one.

    Args:
      train_dir: the run's directory.
      config: the config of the run about to resume.

    Raises:
      config.ConfigError: an experiment field differs; the message lists
        each flag with its recorded and current value. Warn-level changes
        are logged; execution-level changes pass silently.
    """
    recorded = read_config(train_dir)
    if recorded is None:
        return
    changes = config_lib.diff(recorded, config)
    # A record of an earlier release has no class names: nothing to compare.
    changes = [c for c in changes if not (c.name == "class_names" and not c.old)]

    def describe(change):
        return f"--{change.name}: {change.old!r} in the record, now {change.new!r}"

    refused = [describe(c) for c in changes if c.resume == config_lib.RESUME_EXPERIMENT]
    if refused:
        raise config_lib.ConfigError(
            f"--train_dir={train_dir}: resuming would continue the recorded experiment "
            f"({os.path.join(train_dir, CONFIG_FILENAME)}) with other settings ("
            + "; ".join(refused) + "). Rerun with the recorded values, or start a new "
            f"--train_dir with --init_checkpoint={train_dir} to begin a new experiment "
            "from this run's weights.")
    for change in changes:
        if change.resume == config_lib.RESUME_WARN:
            logging.warning("Resuming with a changed setting: %s", describe(change))
