r"""Exports a segmenter (or an ensemble) as a SavedModel for TF Serving.

    python -m advent_tf.export --train_dir=runs/gta2cityscapes_advent \
        --export_dir=serving/advent

writes `serving/advent/<version>/` (the next integer version unless
--version is given) from the run's newest checkpoint; the network, class
names and input size (the run's --eval_size) come from the run. A converted
.weights.h5 outside a run: --checkpoints=FILE with --backbone, --num_classes
and --multi_level. Signatures and outputs: see `advent_tf.inference.saved_model`.
"""

from absl import app
from absl import flags
from absl import logging

from advent_tf.experiment import model_flags
from advent_tf.inference import saved_model

_IMAGE_SIZE = flags.DEFINE_list(
    "image_size", None,
    "WIDTH,HEIGHT the network sees; default: the run's --eval_size, else 1024,512. Outputs "
    "come at the input size.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Model base directory of TF Serving.")
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: latest + 1).",
                                lower_bound=1)
_PROBABILITIES = flags.DEFINE_bool(
    "export_probabilities", False,
    "Also output the per-class probabilities (C times larger responses).")

flags.mark_flags_as_required(["export_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    loaded = model_flags.load_members()
    model_size = model_flags.input_size(loaded.run_config, _IMAGE_SIZE.value, "image_size")
    try:
        path = saved_model.export(loaded.members, loaded.model.class_names, model_size,
                                  _EXPORT_DIR.value, _VERSION.value, _PROBABILITIES.value)
    except FileExistsError as e:
        raise app.UsageError(str(e))
    logging.info("Exported %s (from %s)", path, ", ".join(loaded.sources))
    print(path)


if __name__ == "__main__":
    app.run(main)
