"""Converts one split of a dataset into sharded TFRecords plus a manifest.

Shards are written in parallel (one task per shard) into a temporary folder
inside the output directory. Readers trust only the shards that the split's
manifest `{split}_manifest.json` lists (`records.list_shards`), so a split is
published in one atomic step, the rename of its new manifest:

1. The complete new shards are moved (renamed) into the output directory.
   Their names carry the conversion's generation, one more than the current
   manifest's (`{split}-g{generation}-%05d-of-%05d.tfrecord`), so they
   replace no shard of the published split.
2. The new manifest, written to a temporary file, is renamed over the old
   one: the commit point.
3. Only then are the shards that the new manifest does not list removed.

A conversion starts by removing what an interrupted earlier one left: the
shards that the current manifest does not list and the temporary folders of
other conversions; the listed ones are never touched before step 2. So
whenever a conversion is killed, readers see exactly the previous split or
exactly the new one, never a mix nor a truncated shard, and rerunning it
leaves no leftover. (This holds for the process dying, not for the machine
losing power: nothing is fsynced.)

Resuming: GTA5 takes hours to convert, so the same command rerun after an
interruption (a kill, Ctrl-C, bad samples) keeps the shards the interrupted
run finished. Each finished shard in the temporary folder has a completion
record, written after the shard is complete, with its size, SHA-256 and a
fingerprint of everything that decides its content: the shard's name and
samples, each input file's path, size and modification time, the label map,
the label reader, the resize and the format version. A shard is reused only
if all of them match (same generation, split, shard count, sample order and
options, inputs unchanged); any other shard is written again.
"""

import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import time

from absl import logging
import numpy as np
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.data import example as example_lib
from advent_tf.data import image_io
from advent_tf.data import manifest as manifest_lib


class BadSamplesError(Exception):
    """Some samples could not be converted and skipping them was not asked for.

    Attributes:
      bad: list of (file, message) pairs, one per bad sample.
    """

    def __init__(self, split, bad):
        self.bad = bad
        lines = "\n".join(f"  {message}" for _, message in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        super().__init__(
            f"split {split!r}: {len(bad)} sample(s) could not be converted, nothing "
            f"published (fix them, or pass skip_bad / --skip_bad to convert the rest; the "
            f"rerun reuses the finished shards):\n{lines}{more}")


@dataclasses.dataclass(frozen=True)
class Resize:
    """Sizes (width, height) the converter resizes to, as the reference's loaders do.

    Attributes:
      image_size: images, PIL bicubic; None keeps their size.
      label_size: labels, PIL nearest; None keeps their size (evaluation
        splits are scored at full label resolution).
    """

    image_size: tuple = None
    label_size: tuple = None


@dataclasses.dataclass
class _ShardResult:
    num_examples: int
    class_counts: np.ndarray
    ignored_pixels: int
    sizes: collections.Counter
    bad: list
    # (image file, label file, image WxH, label WxH) of pairs whose sizes differ.
    mismatched: list


def _size_text(size):
    return f"{size[0]}x{size[1]}"


def convert_sample(sample, read_label, label_map, resize=Resize()):
    """Reads, checks, resizes and serialises one sample.

    Args:
      sample: a `sources.Sample`.
      read_label: path -> raw ids (see `sources.DatasetSource`).
      label_map: a `labels.LabelMap`, or None for an unlabelled split.
      resize: a `Resize`. An image and a label of different sizes are
        accepted only when both are resized (independently, each to its
        size, as the reference does with GTA5's few such pairs).

    Returns:
      (serialised example, per-train-id pixel counts [256], stored (height,
      width), None or the (image WxH, label WxH) of a mismatched pair).

    Raises:
      image_io.BadSampleError: the message names the offending file.
    """
    image = image_io.read_image(sample.image_path, resize.image_size)
    if label_map is None:
        return (example_lib.encode_example(image, sample.name),
                np.zeros([256], np.int64), (image.height, image.width), None)
    raw = read_label(sample.label_path)
    label_source_size = (raw.shape[1], raw.shape[0])
    mismatch = None
    if label_source_size != image.source_size:
        mismatch = (_size_text(image.source_size), _size_text(label_source_size))
        if resize.image_size is None or resize.label_size is None:
            raise image_io.BadSampleError(
                f"{sample.label_path}: label is {mismatch[1]} but image {sample.image_path} "
                f"is {mismatch[0]} (WxH); the reference resizes both independently to the "
                "training size: convert with --image_size and --label_size to do the same")
    try:
        train_ids = label_map(raw)
    except ValueError as e:
        raise image_io.BadSampleError(f"{sample.label_path}: {e}") from e
    if resize.label_size is not None:
        train_ids = image_io.resize_label(train_ids, resize.label_size)
    counts = np.bincount(train_ids.ravel(), minlength=256)
    return (example_lib.encode_example(image, sample.name,
                                       image_io.encode_label_png(train_ids)),
            counts, (image.height, image.width), mismatch)


def _write_shard(samples, read_label, label_map, path, resize=Resize(), fingerprint=None):
    """Writes the good samples of one shard to `path`; reports the bad ones.

    With a `fingerprint`, a completion record (`_record_path`) is written once
    the shard is complete, so that an interrupted conversion can reuse it.
    """
    counts = np.zeros([256], np.int64)
    sizes = collections.Counter()
    bad, mismatched = [], []
    num_examples = 0
    with tf.io.TFRecordWriter(path) as writer:
        for sample in samples:
            try:
                record, sample_counts, (height, width), mismatch = convert_sample(
                    sample, read_label, label_map, resize)
            except image_io.BadSampleError as e:
                bad.append((sample.image_path, str(e)))
                continue
            writer.write(record)
            counts += sample_counts
            sizes[f"{height}x{width}"] += 1
            num_examples += 1
            if mismatch is not None:
                mismatched.append((sample.image_path, sample.label_path, *mismatch))
    num_classes = label_map.num_classes if label_map is not None else 0
    result = _ShardResult(num_examples, counts[:num_classes],
                          int(counts[constants.IGNORE_LABEL]), sizes, bad, mismatched)
    if fingerprint is not None:
        _write_record(path, fingerprint, result)
    return result


def _record_path(shard_path):
    return shard_path + ".done.json"


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_record(shard_path, fingerprint, result):
    """Records a complete shard: written to a temporary name, then renamed."""
    record = {"fingerprint": fingerprint, "size": os.path.getsize(shard_path),
              "sha256": _file_sha256(shard_path),
              "result": {"num_examples": result.num_examples,
                         "class_counts": result.class_counts.tolist(),
                         "ignored_pixels": result.ignored_pixels,
                         "sizes": dict(result.sizes), "bad": result.bad,
                         "mismatched": result.mismatched}}
    temp = _record_path(shard_path) + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(temp, _record_path(shard_path))


def _finished_shard(shard_path, fingerprint):
    """The result of a shard an interrupted conversion finished with this fingerprint, or None."""
    try:
        with open(_record_path(shard_path), encoding="utf-8") as f:
            record = json.load(f)
        if (record["fingerprint"] != fingerprint
                or os.path.getsize(shard_path) != record["size"]
                or _file_sha256(shard_path) != record["sha256"]):
            return None
        r = record["result"]
        return _ShardResult(r["num_examples"], np.array(r["class_counts"], np.int64),
                            r["ignored_pixels"], collections.Counter(r["sizes"]),
                            [tuple(b) for b in r["bad"]], [tuple(m) for m in r["mismatched"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shard_fingerprint(source, name, samples, resize):
    """SHA-256 of everything that decides a shard's content (see the module docstring)."""
    digest = hashlib.sha256(json.dumps({
        "format_version": manifest_lib.FORMAT_VERSION, "dataset": source.dataset,
        "shard": name, "resize": [resize.image_size, resize.label_size],
        "read_label": f"{source.read_label.__module__}.{source.read_label.__qualname__}",
        "label_map": (None if source.label_map is None else
                      [source.label_map.num_classes, source.label_map.lut.tolist()]),
    }, default=list).encode())
    for sample in samples:
        for path in (sample.image_path, sample.label_path):
            try:
                stat = os.stat(path) if path else None
                state = stat and (stat.st_size, stat.st_mtime_ns)
            except OSError as e:  # Reported as a bad sample by the conversion.
                state = type(e).__name__
            digest.update(json.dumps([sample.name, path, state]).encode())
    return digest.hexdigest()


def _run_shards(tasks, num_workers):
    """Runs the shard tasks, in worker processes when num_workers > 1."""
    if num_workers <= 1 or len(tasks) <= 1:
        return [_write_shard(*task) for task in tasks]
    # spawn, not fork: forking a process that has started TensorFlow's thread
    # pools can deadlock the children.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        return list(pool.map(_write_shard, *zip(*tasks)))


def _published_manifest(output_dir, split):
    """The split's current manifest, or None when there is none that readers could use."""
    try:
        return manifest_lib.read_manifest(output_dir, split)
    except (FileNotFoundError, ValueError):
        return None


def _remove_unlisted_shards(output_dir, split, listed):
    """Removes the shards of `split` whose file names are not in `listed`."""
    for path in tf.io.gfile.glob(os.path.join(output_dir, example_lib.shard_glob(split))):
        if os.path.basename(path) not in listed:
            os.remove(path)


def _temp_prefix(split):
    return f".incomplete-{split}-"


def _temp_dir(output_dir, split, generation):
    """The conversion's temporary folder: the same for a rerun of an interrupted conversion."""
    return os.path.join(output_dir, f"{_temp_prefix(split)}g{generation}")


def _split_manifest(source, split, generation, names, results, bad, order_seed, order,
                    resize):
    has_labels = source.label_map is not None
    num_classes = len(source.class_names)
    sizes = sum((r.sizes for r in results), collections.Counter())
    mismatched = [item for r in results for item in r.mismatched]
    return {
        "format_version": manifest_lib.FORMAT_VERSION,
        "dataset": source.dataset,
        "split": split,
        "generation": generation,
        "has_labels": has_labels,
        "num_examples": sum(r.num_examples for r in results),
        "num_shards": len(names),
        "shards": [{"file": name, "num_examples": r.num_examples}
                   for name, r in zip(names, results)],
        "num_classes": num_classes,
        "class_names": list(source.class_names),
        "ignore_label": constants.IGNORE_LABEL,
        "image_sizes": dict(sorted(sizes.items())),
        "class_pixel_counts": (sum(r.class_counts for r in results).tolist()
                               if has_labels else [0] * num_classes),
        "ignored_pixel_count": sum(r.ignored_pixels for r in results),
        "skipped": [{"file": f, "error": m} for f, m in bad],
        "order_seed": order_seed,
        "order": [int(i) for i in order],
        "resized_to": {"image": resize.image_size and list(resize.image_size),
                       "label": resize.label_size and list(resize.label_size)},
        "mismatched_pairs": len(mismatched),
        "mismatched": [{"image": i, "label": l, "image_size": si, "label_size": sl}
                       for i, l, si, sl in mismatched],
    }


def sample_order(num_samples, order_seed):
    """The order in which samples are written: a seeded permutation, or None: source order.

    The reference draws every batch uniformly from the whole split
    (`DataLoader(shuffle=True)`). Training streams read a few shards at a
    time through a bounded shuffle buffer, so shards written in source order
    (consecutive, near-duplicate frames of one drive; one Cityscapes city)
    would feed batches from a narrow window of the split. A permutation over
    all shards makes any window of the stream a uniform sample of the split.
    """
    if order_seed is None:
        return np.arange(num_samples)
    return np.random.default_rng(order_seed).permutation(num_samples)


def convert_split(source, output_dir, split, num_shards=16, num_workers=1, skip_bad=False,
                  order_seed=0, resize=Resize()):
    """Converts a dataset split to `{split}-g{generation}-%05d-of-%05d.tfrecord` shards.

    Args:
      source: a `sources.DatasetSource`.
      output_dir: where shards and manifest go (created if needed). An
        earlier conversion of the same split is replaced atomically (see the
        module docstring).
      split: the split name used in file names; no '-' (readers take the
        text before the first '-' of a shard name as its split).
      num_shards: number of shards (at most one per sample); the samples, in
        `sample_order`, are split into contiguous runs, so reading the shards
        in name order gives the samples in that order.
      num_workers: parallel worker processes.
      skip_bad: convert the good samples and list the bad ones in the
        manifest, instead of failing.
      order_seed: seed of the permutation the samples are written in (see
        `sample_order`); None keeps the source order.
      resize: a `Resize`: images and labels stored at the training size,
        resized exactly as the reference does (PIL bicubic / nearest), so
        that the pipelines read them without resizing.

    Returns:
      The manifest dict, also written to `{split}_manifest.json`. Fields:
      format_version, dataset, split, generation, has_labels, num_examples,
      num_shards, shards [{file, num_examples}], num_classes, class_names,
      ignore_label, image_sizes {"HxW": count}, class_pixel_counts
      [num_classes], ignored_pixel_count, skipped [{file, error}],
      order_seed, order (the source index of each sample, in written order;
      skipped samples are left out of the shards, not of this list),
      resized_to {image, label}, mismatched_pairs and mismatched [{image,
      label, image_size, label_size}] (pairs of different sizes, resized).

    Raises:
      BadSamplesError: some samples are bad and `skip_bad` is False; then
        nothing is published (the published split is kept) and the finished
        shards wait in the temporary folder for the rerun.
      ValueError: the split name contains '-'.
    """
    if "-" in split:
        raise ValueError(f"split {split!r}: split names must not contain '-'")
    start = time.time()
    samples = list(source.samples)
    num_shards = max(1, min(num_shards, len(samples)))
    os.makedirs(output_dir, exist_ok=True)
    previous = _published_manifest(output_dir, split)
    generation = (previous or {}).get("generation", 0) + 1
    temp_dir = _temp_dir(output_dir, split, generation)
    # Leftovers of other conversions, removed first to free the disk; this
    # one's folder holds what an interrupted run of it finished.
    for path in glob.glob(os.path.join(output_dir, _temp_prefix(split) + "*")):
        if path != temp_dir:
            shutil.rmtree(path, ignore_errors=True)
    _remove_unlisted_shards(output_dir, split,
                            {s["file"] for s in previous["shards"]} if previous else set())
    names = [example_lib.shard_filename(split, generation, i, num_shards)
             for i in range(num_shards)]
    os.makedirs(temp_dir, exist_ok=True)
    order = sample_order(len(samples), order_seed)
    tasks = []
    for chunk, name in zip(np.array_split(order, num_shards), names):
        shard_samples = [samples[i] for i in chunk]
        tasks.append((shard_samples, source.read_label, source.label_map,
                      os.path.join(temp_dir, name), resize,
                      _shard_fingerprint(source, name, shard_samples, resize)))
    # What an interrupted run of this conversion finished is reused.
    results = [_finished_shard(path, fingerprint) for *_, path, _, fingerprint in tasks]
    todo = [i for i, result in enumerate(results) if result is None]
    if len(todo) < num_shards:
        logging.info("%s: %d of %d shards reused, finished by an interrupted run of this "
                     "conversion (inputs and options unchanged)", split,
                     num_shards - len(todo), num_shards)
    for i, result in zip(todo, _run_shards([tasks[i] for i in todo], num_workers)):
        results[i] = result
    bad = [item for result in results for item in result.bad]
    if bad and (not skip_bad or len(bad) == len(samples)):
        raise BadSamplesError(split, bad)
    manifest = _split_manifest(source, split, generation, names, results, bad,
                               order_seed, order, resize)
    for item in manifest["mismatched"]:
        logging.warning("%s is %s but its label %s is %s: both resized independently, "
                        "as the reference does", item["image"], item["image_size"],
                        item["label"], item["label_size"])
    for name in names:
        os.replace(os.path.join(temp_dir, name), os.path.join(output_dir, name))
    manifest_lib.write_manifest(manifest, output_dir, split)  # The commit point.
    _remove_unlisted_shards(output_dir, split, set(names))
    shutil.rmtree(temp_dir, ignore_errors=True)
    logging.info("%s: %d examples in %d shards (%d skipped) in %.1f s", split,
                 manifest["num_examples"], num_shards, len(bad), time.time() - start)
    return manifest
