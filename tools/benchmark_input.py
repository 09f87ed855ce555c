r"""Measures the training input pipeline at the reference sizes on this machine.

Writes a few dozen synthetic frames at the real datasets' resolutions
(GTA5-like 1914x1052 with labels, Cityscapes-like 2048x1024 without) into a
temporary directory through the real converter, then times
`make_train_dataset` at 1280x720 (source) and 1024x512 (target) and says
whether the input or the model would limit training:

  python tools/benchmark_input.py [--image_format=png|jpeg] [--model_step_seconds=6]
                                  [--noconverter_resize]

By default the frames are converted as the README documents (resized to the
training size by the converter with Pillow, `--image_size`/`--label_size`),
so the pipeline decodes without resizing; --noconverter_resize stores them
at full size and times TensorFlow's resize in the pipeline instead.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import PIL.Image

from advent_tf.data import tfrecord_writer
from advent_tf.data import demo_scenes
from advent_tf.data import pipeline
from advent_tf.data import sources

_NUM_RECORDS = flags.DEFINE_integer("num_records", 24, "Frames per domain.", lower_bound=2)
_IMAGE_FORMAT = flags.DEFINE_enum("image_format", "png", ["png", "jpeg"],
                                  "Stored image format (GTA5 and Cityscapes ship PNG).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Pairs per step (reference: 1).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps first (tracing, buffers).")
_AUGMENT = flags.DEFINE_bool("augment", False, "Time with augmentation on.")
_CONVERTER_RESIZE = flags.DEFINE_bool(
    "converter_resize", True, "Store frames at the training size (the documented conversion).")
_MODEL_STEP_SECONDS = flags.DEFINE_float(
    "model_step_seconds", 6.0, "Seconds per training iteration of the model.")

SOURCE_STORED, TARGET_STORED = (1052, 1914), (1024, 2048)
SOURCE_SIZE, TARGET_SIZE = (720, 1280), (512, 1024)


def _write_frames(root, domain, stored, count, image_format, rng):
    """Photo-sized frames: upscaled demo scenes plus grain (PNG sizes like photos')."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "labels"))
    extension = "png" if image_format == "png" else "jpg"
    for i in range(count):
        image, label = demo_scenes.render_scene(rng, 96, 176, domain)
        size = (stored[1], stored[0])
        big = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BICUBIC))
        big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(big).save(os.path.join(root, "images", f"{i:03d}.{extension}"),
                                      quality=95)
        PIL.Image.fromarray(label).resize(size, PIL.Image.NEAREST).save(
            os.path.join(root, "labels", f"{i:03d}.png"))


def _make_split(scratch, domain, stored, labelled, size):
    root = os.path.join(scratch, "raw", domain)
    _write_frames(root, domain, stored, _NUM_RECORDS.value, _IMAGE_FORMAT.value,
                  np.random.default_rng(len(domain)))
    label_map = os.path.join(scratch, "label_map.txt")
    with open(label_map, "w", encoding="utf-8") as f:
        f.writelines(f"{i} {i}\n" for i in range(19))
    source = sources.folder(root, 19, label_map_file=label_map, labels=labelled)
    output_dir = os.path.join(scratch, "records", domain)
    width_height = (size[1], size[0])
    resize = (tfrecord_writer.Resize(width_height, width_height if labelled else None)
              if _CONVERTER_RESIZE.value else tfrecord_writer.Resize())
    tfrecord_writer.convert_split(source, output_dir, "train", num_shards=4,
                                  num_workers=os.cpu_count() or 1, resize=resize)
    return os.path.join(output_dir, "train-*.tfrecord")


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        start = time.time()
        source = _make_split(scratch, "source", SOURCE_STORED, True, SOURCE_SIZE)
        target = _make_split(scratch, "target", TARGET_STORED, False, TARGET_SIZE)
        print(f"wrote {_NUM_RECORDS.value} {_IMAGE_FORMAT.value} frames per domain "
              f"({SOURCE_STORED[1]}x{SOURCE_STORED[0]} source with labels, "
              f"{TARGET_STORED[1]}x{TARGET_STORED[0]} target) in {time.time() - start:.0f} s")
        dataset = pipeline.make_train_dataset(
            source, target, SOURCE_SIZE, TARGET_SIZE, _BATCH_SIZE.value,
            augment=_AUGMENT.value)
        iterator = iter(dataset)
        for _ in range(_WARMUP.value):
            next(iterator)
        start = time.time()
        for _ in range(_STEPS.value):
            next(iterator)
        elapsed = time.time() - start
        # Stop the background readers before their files are deleted.
        del iterator, dataset
    pairs_per_second = _STEPS.value * _BATCH_SIZE.value / elapsed
    consumed = _BATCH_SIZE.value / _MODEL_STEP_SECONDS.value
    print(f"input pipeline: {pairs_per_second:.2f} source+target pairs/s "
          f"(source {SOURCE_SIZE[1]}x{SOURCE_SIZE[0]}, target {TARGET_SIZE[1]}x{TARGET_SIZE[0]}, "
          f"batch {_BATCH_SIZE.value}, {os.cpu_count()} CPU cores, "
          f"augment={_AUGMENT.value}, converter_resize={_CONVERTER_RESIZE.value})")
    print(f"model at {_MODEL_STEP_SECONDS.value:g} s/iteration consumes {consumed:.2f} pairs/s: "
          + ("the model is the bottleneck" if pairs_per_second > consumed
             else "the input pipeline is the bottleneck"))


if __name__ == "__main__":
    app.run(main)
