"""Reading TFRecord shards so that damage is reported with the shard's name.

`tf.data.TFRecordDataset` reports a corrupt or truncated shard as
"corrupted record at N", without saying which of hundreds of files it is.
Here each shard is read on its own, stopped at the first read error, and the
bytes it yielded are compared with the file size at its end: a shortfall
raises an error that names the shard. A healthy shard costs one scalar
addition per record.
"""

import os

import tensorflow as tf

from advent_tf.data import example as example_lib
from advent_tf.data import manifest as manifest_lib

# A TFRecord entry is: uint64 length, uint32 length CRC, data, uint32 data CRC.
_RECORD_OVERHEAD = 16


def list_shards(pattern):
    """The shards of a glob, with their sizes in bytes.

    When the pattern's split has a manifest (`manifest.read_manifest(pattern)`),
    only the matching shards that it lists are used, in its order (the
    conversion order): other matches are leftovers of an interrupted
    conversion, or of the previous one while a conversion is publishing (see
    `convert`). Without a manifest (TFRecords made elsewhere), every match is
    used, sorted by name.

    Args:
      pattern: a file glob such as `DIR/train-*.tfrecord` (or one file).

    Returns:
      (list of file names, list of sizes in bytes).

    Raises:
      FileNotFoundError: nothing matches; or a shard that the manifest lists
        and the pattern matches is missing; or the manifest lists none of the
        matches.
      ValueError: the manifest is not one of this format.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    try:
        manifest = manifest_lib.read_manifest(pattern)
    except FileNotFoundError:
        manifest = None  # TFRecords made elsewhere: every match is a shard.
    if manifest is not None:
        files = _listed_shards(pattern, files, manifest)
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}")
    return files, [tf.io.gfile.stat(f).length for f in files]


def _listed_shards(pattern, files, manifest):
    """The shards that `manifest` lists among `files`, the matches of `pattern`."""
    directory = os.path.dirname(pattern)
    where = manifest_lib.manifest_path(directory, manifest["split"])
    listed = [shard["file"] for shard in manifest_lib.shards_matching(manifest, pattern)]
    found = {os.path.basename(f) for f in files}
    missing = [name for name in listed if name not in found]
    if missing:
        raise FileNotFoundError(
            f"{os.path.join(directory, missing[0])}: missing, but listed by {where} "
            f"({len(missing)} of its {len(manifest['shards'])} shards missing; convert "
            "the split again)")
    if files and not listed:
        raise FileNotFoundError(
            f"{pattern}: {len(files)} file(s) match, but {where} lists none of them "
            "(left by an interrupted conversion?)")
    return [os.path.join(directory, name) for name in listed]


def checked_records(filename, size):
    """The serialised records of one shard, each paired with the shard's name.

    Args:
      filename: scalar string tensor, the shard.
      size: scalar int64 tensor, its size in bytes.

    Returns:
      A dataset of (serialised record, filename). Iterating it raises
      InvalidArgumentError naming the shard if the shard is corrupt or
      truncated (after yielding the records before the damage).
    """
    records = tf.data.TFRecordDataset(filename).ignore_errors(log_warning=True)
    tagged = records.map(lambda record: (record, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(b""), True)))

    def count(consumed, element):
        record, is_end = element
        length = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD
        consumed += tf.where(is_end, tf.constant(0, tf.int64), length)
        return consumed, (record, is_end, consumed)

    def check(record, is_end, consumed):
        intact = tf.logical_or(tf.logical_not(is_end), tf.equal(consumed, size))
        assertion = tf.debugging.Assert(intact, [
            "Corrupt or truncated TFRecord shard", filename, "of", size,
            "bytes: only", consumed, "bytes could be read (record length or CRC check failed)"])
        with tf.control_dependencies([assertion]):
            return tf.identity(record), is_end

    return (tagged.scan(tf.constant(0, tf.int64), count)
            .map(check)
            .filter(lambda record, is_end: tf.logical_not(is_end))
            .map(lambda record, is_end: (record, filename)))


def first_example(files):
    """Parses the first record of the shards eagerly (to check what a split holds).

    Raises:
      ValueError: the shards hold no record.
    """
    for record in tf.data.TFRecordDataset(files).take(1):
        return example_lib.parse_example(record)
    raise ValueError(f"no records in {files[0]} ... ({len(files)} shards)")
