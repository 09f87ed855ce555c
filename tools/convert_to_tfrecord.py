r"""Converts GTA5, SYNTHIA, Cityscapes or a folder of images to sharded TFRecords.

Raw label ids are mapped to train ids here (255 = ignore), every file is
decoded and checked, and a `{split}_manifest.json` with the class histogram is
written beside the shards. Examples:

  python tools/convert_to_tfrecord.py --dataset=gta5 --root=data/GTA5 \
      --split=train --output_dir=tfrecords/gta5
  python tools/convert_to_tfrecord.py --dataset=cityscapes --root=data/Cityscapes \
      --split=train --nolabels --output_dir=tfrecords/cityscapes
  python tools/convert_to_tfrecord.py --dataset=cityscapes --root=data/Cityscapes \
      --split=val --output_dir=tfrecords/cityscapes
  python tools/convert_to_tfrecord.py --dataset=synthia --num_classes=16 \
      --root=data/SYNTHIA --split=train --output_dir=tfrecords/synthia16
  python tools/convert_to_tfrecord.py --dataset=folder --root=data/mine \
      --label_map=data/mine/label_map.txt --num_classes=5 --split=train \
      --output_dir=tfrecords/mine

Exit status: 0 when everything was converted (or --skip_bad was given), 1
when some samples are bad (nothing is written then), 2 for a wrong layout.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from advent_tf.data import tfrecord_writer
from advent_tf.experiment import config
from advent_tf.data import sources

_DATASET = flags.DEFINE_enum(
    "dataset", None, ["gta5", "synthia", "cityscapes", "folder"], "Dataset layout of --root.")
_ROOT = flags.DEFINE_string("root", None, "Dataset root directory.")
_SPLIT = flags.DEFINE_string(
    "split", "train",
    "Split name. For cityscapes the split directory to read (train, val, test); "
    "for the others only the name given to the output files.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where shards and manifest go.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 16, "Number of shards.", lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Parallel worker processes; 0 = one per CPU core.", lower_bound=0)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", 19,
    "Train classes: 19, or 16 for the SYNTHIA setting (also for the Cityscapes "
    "splits it is evaluated on); any count for the folder dataset.", lower_bound=1)
_LABELS = flags.DEFINE_bool(
    "labels", True, "Whether to store labels; --nolabels for unlabelled target splits.")
_LIST_FILE = flags.DEFINE_string(
    "list_file", None,
    "Optional list of image names relative to the image directory (the "
    "reference's *_list/*.txt); default: every image found.")
_LABEL_MAP = flags.DEFINE_string(
    "label_map", None, "folder: file of 'raw_id train_id' lines (255 = ignore).")
_IMAGE_SUBDIR = flags.DEFINE_string("image_subdir", "images", "folder: image directory under --root.")
_LABEL_SUBDIR = flags.DEFINE_string("label_subdir", "labels", "folder: label directory under --root.")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "folder: names of the train ids.")
_ORDER_SEED = flags.DEFINE_integer(
    "order_seed", 0,
    "Samples are written in a permutation seeded with this, so that every window of a "
    "training stream is a uniform sample of the split (the reference shuffles the whole "
    "list); recorded in the manifest. -1 keeps the dataset's own order.", lower_bound=-1)
_IMAGE_SIZE = flags.DEFINE_list(
    "image_size", None,
    "WIDTH,HEIGHT: store images resized to this size with PIL bicubic, exactly as the "
    "reference's loaders resize them (GTA5 1280,720; Cityscapes 1024,512); the training and "
    "evaluation pipelines then read them without resizing. Default: the files' own size.")
_LABEL_SIZE = flags.DEFINE_list(
    "label_size", None,
    "WIDTH,HEIGHT: store labels resized to this size with PIL nearest (the training size of "
    "a source split). Leave it unset for evaluation splits, scored at full label "
    "resolution. With both sizes given, an image and a label of different sizes (a few "
    "GTA5 pairs) are resized independently, as the reference does, with a warning.")
_SKIP_BAD = flags.DEFINE_bool(
    "skip_bad", False, "Convert the good samples and list the bad ones, instead of failing.")

flags.mark_flags_as_required(["dataset", "root", "output_dir"])


def _source():
    labels, num_classes, list_file = _LABELS.value, _NUM_CLASSES.value, _LIST_FILE.value
    if _DATASET.value in ("gta5", "synthia", "cityscapes") and num_classes not in (19, 16):
        raise ValueError(f"--num_classes must be 19 or 16 for {_DATASET.value}")
    if _DATASET.value == "gta5":
        return sources.gta5(_ROOT.value, labels, num_classes, list_file)
    if _DATASET.value == "synthia":
        return sources.synthia(_ROOT.value, labels, num_classes, list_file)
    if _DATASET.value == "cityscapes":
        return sources.cityscapes(_ROOT.value, _SPLIT.value, labels, num_classes, list_file)
    return sources.folder(_ROOT.value, num_classes, _LABEL_MAP.value, labels, list_file,
                          _IMAGE_SUBDIR.value, _LABEL_SUBDIR.value, _CLASS_NAMES.value)


def _resize():
    sizes = {}
    for holder in (_IMAGE_SIZE, _LABEL_SIZE):
        if holder.value is not None:
            try:
                sizes[holder.name] = config.parse_size(holder.value, holder.name)
            except config.ConfigError as e:
                raise ValueError(str(e)) from e
    return tfrecord_writer.Resize(sizes.get("image_size"), sizes.get("label_size"))


def main(argv):
    del argv
    try:
        source = _source()
        resize = _resize()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    num_workers = _NUM_WORKERS.value or os.cpu_count() or 1
    logging.info("%s %s: %d samples -> %s", _DATASET.value, _SPLIT.value,
                 len(source.samples), _OUTPUT_DIR.value)
    try:
        manifest = tfrecord_writer.convert_split(
            source, _OUTPUT_DIR.value, _SPLIT.value, num_shards=_NUM_SHARDS.value,
            num_workers=num_workers, skip_bad=_SKIP_BAD.value,
            order_seed=None if _ORDER_SEED.value < 0 else _ORDER_SEED.value, resize=resize)
    except tfrecord_writer.BadSamplesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{_DATASET.value} {_SPLIT.value}: {manifest['num_examples']} examples in "
          f"{manifest['num_shards']} shards -> {_OUTPUT_DIR.value}")
    for skipped in manifest["skipped"]:
        print(f"skipped: {skipped['error']}", file=sys.stderr)
    for item in manifest["mismatched"]:
        print(f"resized: {item['image']} is {item['image_size']} but its label {item['label']} "
              f"is {item['label_size']}", file=sys.stderr)
    if manifest["mismatched_pairs"]:
        print(f"{manifest['mismatched_pairs']} image/label pair(s) of different sizes were "
              "resized independently, as the reference does (listed under 'mismatched' in "
              "the manifest)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)
