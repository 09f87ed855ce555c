"""Checks that run under MirroredStrategy over two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so each such
check is a script run in a fresh Python process (`run`), which starts with
`mirrored_strategy()`.
"""

import os
import pathlib
import subprocess
import sys

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def mirrored_strategy():
    """Splits the CPU into two logical devices and mirrors over them.

    Must run before TensorFlow has initialised its devices.

    Returns:
      A `tf.distribute.MirroredStrategy` over "/cpu:0" and "/cpu:1".
    """
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def run(script, *args, timeout=300):
    """Runs a check in a fresh process and fails the calling test if it fails.

    Args:
      script: Python source, or the path of a script file.
      *args: its command-line arguments.
      timeout: seconds.

    Returns:
      The script's stdout.
    """
    # The checkout's advent_tf and this module, wherever pytest runs from.
    path = os.pathsep.join(filter(None, [str(TESTS_DIR), str(REPO_ROOT),
                                         os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
    command = [str(script)] if isinstance(script, pathlib.Path) else ["-c", script]
    result = subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
