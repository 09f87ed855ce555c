"""Converts an official ADVENT PyTorch checkpoint to a Keras .weights.h5 file.

Examples:

  # A released ADVENT model (multi-level ResNet-101, 19 classes).
  python tools/convert_pytorch_checkpoint.py \
      --input GTA2Cityscapes_AdvEnt.pth --output gta2cityscapes_advent.weights.h5

  # The ImageNet initialisation (its classifier is skipped, as in the
  # reference; the ASPP heads keep their fresh initialisation).
  python tools/convert_pytorch_checkpoint.py \
      --input DeepLab_resnet_pretrained_imagenet.pth --output init.weights.h5

  # torchvision's ImageNet VGG-16 (vgg16-397923af.pth) for the VGG-16 rows:
  # conv1_1..conv5_3 from it; fc6, fc7 and the classifier stay fresh.
  python tools/convert_pytorch_checkpoint.py --backbone=vgg16 --nomulti_level \
      --num_classes=16 --input vgg16-397923af.pth --output vgg16_imagenet.weights.h5

Load the result with the same model arguments:
``build_segmenter(backbone, num_classes, multi_level).load_weights(output)``.
See `advent_tf.pytorch_interop` for the key mapping. Exits with status 1, writing
nothing, if the checkpoint cannot be read safely or does not match the model.
"""

import sys

from absl import app, flags, logging

from advent_tf import pytorch_interop

_INPUT = flags.DEFINE_string("input", None, "PyTorch checkpoint (.pth) to pytorch_interop.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Keras weights file to write; must end in .weights.h5.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", 19, "Classes of the checkpoint's heads (19 GTA5, 16 SYNTHIA).",
    lower_bound=1)
_MULTI_LEVEL = flags.DEFINE_bool(
    "multi_level", True,
    "Whether the network has the auxiliary layer5 head on layer3 (the "
    "released ADVENT models do).")
_BACKBONE = flags.DEFINE_enum(
    "backbone", "resnet101", pytorch_interop.CONVERTIBLE_BACKBONES,
    "DeepLab-V2 backbone: a ResNet for the official checkpoints, vgg16 (with "
    "--nomulti_level) for torchvision's ImageNet VGG-16.")

flags.mark_flags_as_required(["input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        summary = pytorch_interop.convert_checkpoint(
            _INPUT.value, _OUTPUT.value, backbone=_BACKBONE.value,
            num_classes=_NUM_CLASSES.value, multi_level=_MULTI_LEVEL.value)
    except pytorch_interop.StateDictMismatchError as err:
        # The message lists every offending key; a traceback would bury it.
        print(f"Conversion failed: {err}\nCheck --backbone, --num_classes and "
              "--multi_level against the checkpoint.", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"Conversion failed: {err}", file=sys.stderr)
        return 1
    logging.info("Read a %s checkpoint; wrote %d tensors to %s.",
                 summary.checkpoint_format, summary.num_tensors, _OUTPUT.value)
    if summary.skipped_keys:
        logging.info("Skipped the initialisation's classifier (no counterpart in the "
                     "DeepLab-V2 network; the reference skips it too): %s",
                     ", ".join(summary.skipped_keys))
    for source, target in summary.renamed_heads.items():
        logging.info("Mapped the single-level head %s to the main head %s.",
                     source, target)
    if not summary.heads_converted:
        logging.info("The ASPP heads (and VGG-16's fc6, fc7) keep their fresh initialisation.")
    return 0


if __name__ == "__main__":
    app.run(main)
