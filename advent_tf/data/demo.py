"""Built-in demo data: a small synthetic-to-real pair made from a seed.

The scenes (`demo_scenes`) are written as PNGs in the `folder` layout and
converted by the same converter as real datasets, so the demo exercises the
real data path. Layout of `output_dir`:

  source/train-*.tfrecord  labelled       (plays GTA5)
  source/val-*.tfrecord    labelled       (source-domain accuracy)
  target/train-*.tfrecord  no labels      (plays Cityscapes train)
  target/val-*.tfrecord    labelled       (plays Cityscapes val)
  demo_info.json           the parameters; written last, marks completion

Labels are Cityscapes train ids (19 classes, of which 9 occur).
"""

import contextlib
import glob
import json
import os
import tempfile

import numpy as np
import PIL.Image

from advent_tf.core import constants
from advent_tf.data import tfrecord_writer
from advent_tf.data import demo_scenes
from advent_tf.data import sources

DEFAULT_IMAGE_SIZE = (96, 192)
# (domain, split, number of images, labelled).
DEFAULT_SPLITS = (("source", "train", 200, True), ("source", "val", 50, True),
                  ("target", "train", 200, False), ("target", "val", 50, True))
_NUM_SHARDS = 2
_INFO = "demo_info.json"


def _info(seed, image_size, splits, num_shards):
    """What demo_info.json records: everything the generated files depend on."""
    return {"seed": seed, "image_size": list(image_size),
            "splits": [list(s) for s in splits], "num_shards": num_shards}


def _write_folder(root, seed, domain, split, count, image_size):
    """Renders `count` scenes as ROOT/images/*.png and ROOT/labels/*.png."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "labels"))
    # One independent generator per image: image i does not depend on others.
    key = [seed, ("source", "target").index(domain), ("train", "val").index(split)]
    children = np.random.SeedSequence(key).spawn(count)
    for i, child in enumerate(children):
        image, label = demo_scenes.render_scene(
            np.random.default_rng(child), *image_size, domain)
        name = f"{domain}_{split}_{i:05d}.png"
        PIL.Image.fromarray(image).save(os.path.join(root, "images", name), compress_level=1)
        PIL.Image.fromarray(label).save(os.path.join(root, "labels", name), compress_level=1)


def _write_label_map(path):
    with open(path, "w", encoding="utf-8") as f:
        for train_id in range(len(constants.CITYSCAPES_CLASS_NAMES)):
            f.write(f"{train_id} {train_id}\n")
        f.write(f"{constants.IGNORE_LABEL} {constants.IGNORE_LABEL}\n")


def demo_patterns(output_dir):
    """Shard globs of the demo splits: {"source_train": ..., "target_val": ...}."""
    return {f"{domain}_{split}": os.path.join(output_dir, domain, f"{split}-*.tfrecord")
            for domain, split, _, _ in DEFAULT_SPLITS}


def make_demo_data(output_dir, seed=0, image_size=DEFAULT_IMAGE_SIZE, splits=DEFAULT_SPLITS,
                   num_shards=_NUM_SHARDS):
    """Generates the demo data (always), deterministically from `seed`.

    Args:
      output_dir: destination directory.
      seed: the same seed gives the same images and labels.
      image_size: (height, width) of every image.
      splits: (domain, split, count, labelled) tuples.
      num_shards: shards per split.

    Returns:
      `demo_patterns(output_dir)`.
    """
    info_path = os.path.join(output_dir, _INFO)
    if os.path.exists(info_path):
        os.remove(info_path)
    with tempfile.TemporaryDirectory() as scratch:
        label_map = os.path.join(scratch, "label_map.txt")
        _write_label_map(label_map)
        for domain, split, count, labelled in splits:
            root = os.path.join(scratch, domain, split)
            _write_folder(root, seed, domain, split, count, image_size)
            source = sources.folder(root, len(constants.CITYSCAPES_CLASS_NAMES),
                                    label_map_file=label_map, labels=labelled)
            # Each scene is drawn independently, so the generation order is
            # already a uniform order: keep it (and the demo's published figures).
            tfrecord_writer.convert_split(source, os.path.join(output_dir, domain), split,
                                          num_shards=num_shards, num_workers=1, order_seed=None)
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(_info(seed, image_size, splits, num_shards), f, indent=1)
    return demo_patterns(output_dir)


def ensure_demo_data(output_dir, seed=0, image_size=DEFAULT_IMAGE_SIZE):
    """Makes the demo data unless `output_dir` already holds it for these parameters.

    Cheap: a few seconds the first time, a file read afterwards. Runs started
    together (several seeds at once) generate it once: the others wait on a
    lock file in `output_dir`, then find it complete.

    Returns:
      `demo_patterns(output_dir)`.
    """
    info_path = os.path.join(output_dir, _INFO)
    patterns = demo_patterns(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with _exclusive(os.path.join(output_dir, ".lock")):
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                complete = json.load(f) == _info(seed, image_size, DEFAULT_SPLITS, _NUM_SHARDS)
            if complete and all(glob.glob(p) for p in patterns.values()):
                return patterns
        return make_demo_data(output_dir, seed, image_size)


@contextlib.contextmanager
def _exclusive(lock_path):
    """Holds an exclusive lock on `lock_path` (POSIX; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Not POSIX: concurrent first runs are the user's to avoid.
        yield
        return
    with open(lock_path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
        yield
