"""The per-split manifest (JSON) and the class-ratio prior p_s derived from it.

The converter writes `{split}_manifest.json` beside the shards: the list of
the split's shards (the only ones readers use, see `records.list_shards`),
example counts, image sizes, class names and the per-class pixel histogram of
the labels. Eq. 10 of the paper (the class-ratio prior, "CP") needs p_s, the
class distribution of the source labels: it is that histogram, L1-normalised.
"""

import fnmatch
import glob
import json
import os

import numpy as np

from advent_tf.data import example as example_lib

FORMAT_VERSION = 1
_SUFFIX = "_manifest.json"


def manifest_path(output_dir, split):
    """Where the manifest of `split` lives."""
    return os.path.join(output_dir, f"{split}{_SUFFIX}")


def write_manifest(manifest, output_dir, split):
    """Writes the manifest atomically (temporary file, then rename)."""
    path = manifest_path(output_dir, split)
    temp = path + ".incomplete"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(temp, path)
    return path


def _resolve(path_or_dir, split):
    # A shard file (a one-file pattern) stands for its split, like a pattern.
    if os.path.isfile(path_or_dir) and not path_or_dir.endswith(example_lib.SHARD_SUFFIX):
        return path_or_dir
    if os.path.isdir(path_or_dir):
        if split is not None:
            return manifest_path(path_or_dir, split)
        found = sorted(glob.glob(os.path.join(path_or_dir, "*" + _SUFFIX)))
        if len(found) != 1:
            raise ValueError(
                f"{path_or_dir}: {len(found)} manifests found "
                f"({', '.join(os.path.basename(f) for f in found) or 'none'}); name the split")
        return found[0]
    # A shard pattern such as DIR/train-*.tfrecord: the split is the prefix.
    directory, base = os.path.split(path_or_dir)
    if "-" in base:
        return manifest_path(directory, base.split("-", 1)[0])
    raise FileNotFoundError(f"{path_or_dir}: no manifest there")


def read_manifest(path_or_dir, split=None):
    """Reads a split's manifest.

    Args:
      path_or_dir: the manifest file; or the directory of the shards (then
        `split` names the split, or the directory must hold one manifest); or
        a shard pattern `DIR/SPLIT-*.tfrecord` or one shard of the split.
      split: the split, when `path_or_dir` is a directory with several.

    Returns:
      The manifest as a dict (see `convert.convert_split` for the fields).

    Raises:
      FileNotFoundError: no manifest at that place.
      ValueError: ambiguous directory or not a manifest of this format.
    """
    path = _resolve(path_or_dir, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest (convert the split first)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not an advent_tf manifest of format {FORMAT_VERSION}")
    return manifest


def shards_matching(manifest, pattern):
    """The manifest's shard entries ({"file", "num_examples"}) whose names a glob selects.

    Args:
      manifest: a manifest dict.
      pattern: a shard glob such as `DIR/val-*.tfrecord`, or one shard's path;
        only its file name part is matched, case-sensitively, as tf.io does.

    Returns:
      The entries in the manifest's (conversion) order.
    """
    base = os.path.basename(pattern)
    return [shard for shard in manifest["shards"] if fnmatch.fnmatchcase(shard["file"], base)]


def class_prior_from_manifest(manifest_or_path, split=None):
    """The class-ratio prior p_s of eq. 10: the source label histogram, L1-normalised.

    Args:
      manifest_or_path: a manifest dict, or anything `read_manifest` accepts.
      split: passed to `read_manifest`.

    Returns:
      float32 [num_classes], summing to 1 (ignored pixels not counted).

    Raises:
      ValueError: the split has no labelled pixels (unlabelled split).
    """
    manifest = (manifest_or_path if isinstance(manifest_or_path, dict)
                else read_manifest(manifest_or_path, split))
    counts = np.asarray(manifest["class_pixel_counts"], dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError(
            f"split {manifest.get('split')!r} of {manifest.get('dataset')!r} has no "
            "labelled pixels: the class prior needs a labelled source split")
    return (counts / counts.sum()).astype(np.float32)


def save_class_prior(prior, class_names, path, source=None):
    """Writes p_s as JSON: {"class_names", "prior", "source"}."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"class_names": list(class_names),
                   "prior": [float(p) for p in prior],
                   "source": source}, f, indent=1)
        f.write("\n")


def load_class_prior(path):
    """Reads p_s from a file of `save_class_prior` or directly from a manifest.

    Returns:
      float32 [num_classes], summing to 1.
    """
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    if "prior" in content:
        return np.asarray(content["prior"], dtype=np.float32)
    return class_prior_from_manifest(read_manifest(path))
