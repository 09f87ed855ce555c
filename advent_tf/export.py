r"""Exports a segmenter (or an ensemble) as a SavedModel for TF Serving.

    python -m advent_tf.export --checkpoints=runs/gta2cityscapes_advent \
        --backbone=resnet101 --num_classes=19 --image_size=1024,512 \
        --export_dir=serving/advent

writes `serving/advent/<version>/` (the next integer version unless
--version is given). Signatures and outputs: see `advent_tf.serving`.
"""

from absl import app
from absl import flags
from absl import logging

from advent_tf import model_flags
from advent_tf import serving

_IMAGE_SIZE = flags.DEFINE_list(
    "image_size", ["1024", "512"],
    "WIDTH,HEIGHT the network sees (the evaluation size); outputs come at the input size.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Model base directory of TF Serving.")
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: latest + 1).",
                                lower_bound=1)
_PROBABILITIES = flags.DEFINE_bool(
    "export_probabilities", False,
    "Also output the per-class probabilities (C times larger responses).")

flags.mark_flags_as_required(["checkpoints", "export_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    model_size = model_flags.parse_size(_IMAGE_SIZE.value, "image_size")
    members, sources = model_flags.load_members()
    try:
        path = serving.export(members, model_flags.num_classes(), model_size,
                              _EXPORT_DIR.value, _VERSION.value, _PROBABILITIES.value)
    except FileExistsError as e:
        raise app.UsageError(str(e))
    logging.info("Exported %s (from %s)", path, ", ".join(sources))
    print(path)


if __name__ == "__main__":
    app.run(main)
