"""Command-line flags shared by evaluate, predict and export: which weights, which network.

Defined once here so that the three commands read alike and can be imported
together.
"""

from absl import app
from absl import flags

from advent_tf import checkpoint_io
from advent_tf.cli import parse_size  # noqa: F401  (re-exported for the commands)
from advent_tf.models.builder import BACKBONES

CHECKPOINTS = flags.DEFINE_list(
    "checkpoints", None,
    "Comma-separated checkpoints: a training checkpoint prefix (train_dir/checkpoints/ckpt-N), "
    "a train_dir (its newest checkpoint) or a converted .weights.h5. Several = an ensemble "
    "averaging their upsampled main logits.")
ENSEMBLE_WEIGHTS = flags.DEFINE_list(
    "ensemble_weights", None,
    "One positive weight per checkpoint (default: equal; the paper's AdvEnt+MinEnt: 0.5,0.5).")
BACKBONE = flags.DEFINE_enum("backbone", "resnet101", list(BACKBONES),
                             "Backbone the checkpoints were trained with.")
NUM_CLASSES = flags.DEFINE_enum("num_classes", "19", ["19", "16"],
                                "19 (GTA5 -> Cityscapes) or 16 (SYNTHIA -> Cityscapes).")
MULTI_LEVEL = flags.DEFINE_bool("multi_level", True,
                                "The checkpoints have the auxiliary head (ResNet default).")


def num_classes():
    """--num_classes as an int."""
    return int(NUM_CLASSES.value)


def load_members():
    """Loads the --checkpoints (with --ensemble_weights) as a list of (segmenter, weight).

    Returns:
      (members, resolved checkpoint files).

    Raises:
      app.UsageError: missing, damaged or mismatched checkpoints, bad weights.
    """
    if not CHECKPOINTS.value:
        raise app.UsageError("--checkpoints is required")
    try:
        weights = None if ENSEMBLE_WEIGHTS.value is None else [
            float(w) for w in ENSEMBLE_WEIGHTS.value]
        return checkpoint_io.load_members(CHECKPOINTS.value, weights, BACKBONE.value,
                                          num_classes(), MULTI_LEVEL.value)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e))
