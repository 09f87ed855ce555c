"""Reading TFRecord shards so that damage is reported with the shard's name.

`tf.data.TFRecordDataset` reports a corrupt or truncated shard as
"corrupted record at N", without saying which of hundreds of files it is.
Here each shard is read on its own, stopped at the first read error, and the
bytes it yielded are compared with the file size at its end: a shortfall
raises an error that names the shard. A healthy shard costs one scalar
addition per record.
"""

import tensorflow as tf

from advent_tf.data import example as example_lib

# A TFRecord entry is: uint64 length, uint32 length CRC, data, uint32 data CRC.
_RECORD_OVERHEAD = 16


def list_shards(pattern):
    """The shards matching a glob, sorted by name, with their sizes in bytes.

    Args:
      pattern: a file glob such as `DIR/train-*.tfrecord` (or one file).

    Returns:
      (list of file names, list of sizes in bytes).

    Raises:
      FileNotFoundError: nothing matches.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}")
    return files, [tf.io.gfile.stat(f).length for f in files]


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
