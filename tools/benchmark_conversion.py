r"""Measures the TFRecord converter on GTA5-sized PNG frames, with one worker and with all cores.

    python tools/benchmark_conversion.py [--num_frames=24] [--noresize]

Writes photo-like 1914x1052 PNG frames with labels (the GTA5 layout's sizes)
into a temporary directory, converts them as the README's GTA5 command does
(resized to 1280x720 by Pillow, unless --noresize), once with one worker
process and once with one per core, and prints frames per second and the
time that implies for the 24,966 frames of GTA5.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from advent_tf.data import sources
from advent_tf.data import tfrecord_writer

import benchmark_input

_NUM_FRAMES = flags.DEFINE_integer("num_frames", 24, "Frames to convert.", lower_bound=2)
_RESIZE = flags.DEFINE_bool("resize", True, "Resize to 1280x720 (the documented conversion).")

GTA5_FRAMES = 24966


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.join(scratch, "raw")
        benchmark_input._write_frames(root, "source", benchmark_input.SOURCE_STORED,
                                      _NUM_FRAMES.value, "png", np.random.default_rng(0))
        label_map = os.path.join(scratch, "label_map.txt")
        with open(label_map, "w", encoding="utf-8") as f:
            f.writelines(f"{i} {i}\n" for i in range(19))
        source = sources.folder(root, 19, label_map_file=label_map)
        resize = (tfrecord_writer.Resize((1280, 720), (1280, 720)) if _RESIZE.value
                  else tfrecord_writer.Resize())
        cores = os.cpu_count() or 1
        for workers in sorted({1, cores}):
            start = time.time()
            tfrecord_writer.convert_split(source, os.path.join(scratch, f"out{workers}"), "train",
                                          num_shards=max(2, workers), num_workers=workers,
                                          resize=resize)
            rate = _NUM_FRAMES.value / (time.time() - start)
            hours = GTA5_FRAMES / rate / 3600
            print(f"{workers} worker(s) of {cores} cores: {rate:.2f} frames/s "
                  f"(1914x1052 PNG, resize={_RESIZE.value}); GTA5's {GTA5_FRAMES} frames: "
                  f"{hours:.1f} h")


if __name__ == "__main__":
    app.run(main)
