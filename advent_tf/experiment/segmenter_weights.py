"""Loading a segmenter from whatever a user points at: a checkpoint, a train_dir, or .weights.h5.

Training (`advent_tf.train`) writes `tf.train.Checkpoint(segmenter=..., optimizer=...)`
files `<train_dir>/checkpoints/ckpt-<step>`; the converter of the official
PyTorch weights (`tools/convert_pytorch_checkpoint.py`) writes Keras
`.weights.h5` files. Both are loaded here into a freshly built network, and
every way this can go wrong (missing file, damaged file, a file for another
architecture or class count) ends in one exception type whose message names
the file and the flags to check.
"""

import os
import re
import warnings

import tensorflow as tf

from advent_tf.models import build_segmenter

WEIGHTS_SUFFIX = ".weights.h5"
_CHECKPOINT_SUBDIR = "checkpoints"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.index$")


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be loaded into the requested network."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint or weights file that cannot be read: truncated, corrupt, parts missing."""


# What reading a damaged TF checkpoint raises: an OpError (checksum, truncated
# index, missing data file) or, for a truncated data file, an IndexError.
CHECKPOINT_READ_ERRORS = (tf.errors.OpError, IndexError)


def checkpoint_step(path):
    """The training step of a `.../ckpt-<step>` prefix, or None for other files."""
    match = re.fullmatch(r"ckpt-(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else None


def _checkpoint_dir(train_dir):
    """`train_dir/checkpoints` when it exists, else `train_dir` itself."""
    nested = os.path.join(train_dir, _CHECKPOINT_SUBDIR)
    return nested if os.path.isdir(nested) else train_dir


def list_checkpoints(train_dir):
    """Every training checkpoint of a run, oldest first.

    Args:
      train_dir: the run's --train_dir, or its `checkpoints` subdirectory.

    Returns:
      List of (step, checkpoint prefix), sorted by step. A checkpoint counts
      once its `.index` file exists: TensorFlow writes the index last, so a
      save interrupted half-way is not listed.

    Raises:
      FileNotFoundError: the directory does not exist or holds no checkpoint.
    """
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(f"{train_dir}: no such directory")
    directory = _checkpoint_dir(train_dir)
    found = []
    for name in os.listdir(directory):
        match = _CKPT_RE.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name[:-len(".index")])))
    if not found:
        raise FileNotFoundError(f"{directory}: no ckpt-<step> checkpoint found")
    return sorted(found)


def resolve(path):
    """Turns what a user passes into a loadable file.

    Args:
      path: a `.weights.h5` file; a checkpoint prefix (`.../ckpt-2000`); or a
        directory (a train_dir or its `checkpoints` subdirectory), meaning its
        newest checkpoint.

    Returns:
      The `.weights.h5` path or the checkpoint prefix.

    Raises:
      FileNotFoundError: nothing loadable there.
    """
    if path.endswith(WEIGHTS_SUFFIX):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such weights file")
        return path
    if os.path.isdir(path):
        return list_checkpoints(path)[-1][1]
    if os.path.isfile(path + ".index"):
        return path
    raise FileNotFoundError(
        f"{path}: not a {WEIGHTS_SUFFIX} file, a checkpoint prefix (.../ckpt-<step>, "
        "with its .index file) or a directory holding checkpoints")


def _describe(backbone, num_classes, multi_level):
    level = "multi-level" if multi_level else "single-level"
    return f"{backbone} {level} {num_classes}-class segmenter"


def load_weights(model, path):
    """Loads a resolved checkpoint prefix or `.weights.h5` file into `model`.

    Only the segmenter is read from a training checkpoint (optimizer and
    discriminators are ignored), but every variable of the segmenter must be
    in the file.

    Raises:
      DamagedCheckpointError: the file cannot be read.
      CheckpointError: it does not fit the model.
    """
    try:
        if path.endswith(WEIGHTS_SUFFIX):
            # Keras only warns when a file lacks some layers of the model,
            # which would leave them randomly initialised: that is an error here.
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                model.load_weights(path)
        else:
            status = tf.train.Checkpoint(segmenter=model).restore(path)
            status.expect_partial().assert_existing_objects_matched()
    # A damaged .h5 raises an OSError.
    except CHECKPOINT_READ_ERRORS + (OSError,) as e:
        raise DamagedCheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    except (ValueError, AssertionError, UserWarning) as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_segmenter(path, backbone, num_classes, multi_level):
    """Builds a segmenter and loads its weights.

    Args:
      path: anything `resolve` accepts.
      backbone: `build_segmenter` backbone the file was trained with.
      num_classes: its number of classes.
      multi_level: whether it has the auxiliary head.

    Returns:
      (the Keras segmenter, the resolved file it was loaded from).

    Raises:
      FileNotFoundError: nothing loadable at `path`.
      DamagedCheckpointError: the file cannot be read.
      CheckpointError: a file for another network; the message names the
        flags to check.
    """
    resolved = resolve(path)
    model = build_segmenter(backbone, num_classes, multi_level)
    try:
        load_weights(model, resolved)
    except DamagedCheckpointError:
        raise  # the file, not the flags
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} (loading into a {_describe(backbone, num_classes, multi_level)}: check "
            "--backbone, --num_classes and --multi_level against the training run)") from e
    return model, resolved
