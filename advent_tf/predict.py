r"""Segments images and writes what to look at: colour map, entropy map, overlay.

    python -m advent_tf.predict --train_dir=runs/gta2cityscapes_advent \
        --inputs=photos/,extra.jpg --output_dir=predictions
    python -m advent_tf.predict --saved_model=serving/advent \
        --inputs=photos/ --output_dir=predictions

The network, class count and input size come from the run (see `evaluate`
for --checkpoints and .weights.h5 files). For each image (directories are
searched recursively for PNG, JPEG, BMP and GIF files) three PNGs, at the
image's resolution, under --output_dir with the input's relative path:
NAME_color.png (`visualize.palette`: Cityscapes colours for 19 and 16
classes, the PASCAL VOC colour map for other counts), NAME_entropy.png
(eq. 2, dark = confident; the paper's Figure 1/3 view) and NAME_overlay.png.
Inputs that would share an output name (``a.png`` and ``a.jpg``, or two
``a.png`` from different places) keep their extension in the name
(``a_png``, ``a_jpg``), then get a number: no output is ever overwritten.
An unreadable image is reported and skipped, and the others are still
processed; the exit status is non-zero only when no image could be processed.
"""

import os

import numpy as np
import PIL.Image
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from advent_tf.core import host_memory
from advent_tf.inference import segment
from advent_tf.experiment import model_flags
from advent_tf.inference import image_files
from advent_tf.inference import saved_model
from advent_tf.inference import visualize

_INPUTS = flags.DEFINE_list("inputs", None, "Image files and/or directories of images.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the PNGs are written.")
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None,
    "An exported SavedModel (version directory, or the base directory: newest version), "
    "instead of --checkpoints.")
_IMAGE_SIZE = flags.DEFINE_list(
    "image_size", None,
    "WIDTH,HEIGHT the network sees (with --train_dir/--checkpoints); default: the run's "
    "--eval_size, else 1024,512.")
_ALPHA = flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the colours in the overlay.",
                            lower_bound=0.0, upper_bound=1.0)

flags.mark_flags_as_required(["inputs", "output_dir"])


def _checkpoint_predictor():
    """Predictor over the named run or checkpoints, and its number of classes.

    The image is resized to the network's input size with PIL, as the
    reference's loaders (and the converter) do, so that the network sees
    exactly the pixels evaluation scored.
    """
    loaded = model_flags.load_members()
    logging.info("Model: %s", ", ".join(loaded.sources))
    height, width = model_flags.input_size(loaded.run_config, _IMAGE_SIZE.value, "image_size")
    members = loaded.members

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8),
                                  tf.TensorSpec([2], tf.int32)])
    def run(resized, output_size):
        return segment.maps_of_resized(members, resized, output_size)

    def predict(images):
        image = images[0].numpy()
        resized = np.asarray(PIL.Image.fromarray(image).resize((width, height),
                                                               PIL.Image.BICUBIC))
        return run(resized[None], tf.constant(image.shape[:2], tf.int32))

    return predict, loaded.model.num_classes


def _saved_model_predictor():
    """Predictor over the --saved_model's image_tensor signature, and its number of classes."""
    try:
        path = saved_model.resolve_saved_model(_SAVED_MODEL.value)
    except FileNotFoundError as e:
        raise app.UsageError(str(e))
    logging.info("Model: %s", path)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["image_tensor"]
    return (lambda images: signature(images=images)), int(loaded.num_classes.numpy())


def _write(image, outputs, num_classes, output_base):
    colours = visualize.colorize(outputs["class_map"][0].numpy(), num_classes)
    visualize.save_png(output_base + "_color.png", colours)
    visualize.save_png(output_base + "_entropy.png",
                       visualize.entropy_image(outputs["entropy"][0].numpy()))
    visualize.save_png(output_base + "_overlay.png",
                       visualize.overlay(image, colours, _ALPHA.value))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if bool(_SAVED_MODEL.value) == bool(model_flags.CHECKPOINTS.value
                                        or model_flags.TRAIN_DIR.value):
        raise app.UsageError("give exactly one of --train_dir/--checkpoints and --saved_model")
    host_memory.configure_command(inference=True)  # Before the first tensor.
    images = image_files.list_images(_INPUTS.value)
    if not images:
        raise app.UsageError(f"no image found in {_INPUTS.value}")
    predict, num_classes = (_saved_model_predictor() if _SAVED_MODEL.value
                            else _checkpoint_predictor())
    skipped = []
    for index, (path, name) in enumerate(images, 1):
        try:
            with open(path, "rb") as f:
                image = segment.decode_image(f.read())
        except (OSError, tf.errors.InvalidArgumentError) as e:
            message = getattr(e, "message", None) or str(e)
            logging.error("Skipping %s: unreadable image (%s)", path, message.strip())
            skipped.append(path)
            continue
        _write(image.numpy(), predict(image[None]), num_classes,
               os.path.join(_OUTPUT_DIR.value, name))
        logging.info("[%d/%d] %s", index, len(images), path)
    done = len(images) - len(skipped)
    print(f"{done} image(s) segmented into {_OUTPUT_DIR.value}; {len(skipped)} skipped"
          + (f" (unreadable: {', '.join(skipped)})" if skipped else ""))
    if done == 0:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
