"""The tf.train.Example format of the project and its shard file names.

The keys are the ones deeplab2, Model Garden and research/deeplab share
(`advent_tf.core.constants.KEY_*`); unlabelled splits omit the label keys.
"""

import tensorflow as tf

from advent_tf.core import constants

SHARD_SUFFIX = ".tfrecord"


def shard_filename(split, generation, index, num_shards):
    """`{split}-g{generation}-%05d-of-%05d.tfrecord`.

    The generation (1, 2, ... for successive conversions of a split into one
    directory) keeps a conversion's shards from overwriting those of the one
    readers still use; see `convert`.
    """
    return f"{split}-g{generation}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_glob(split):
    """A glob matching every shard of `split`, whatever the generation and shard count.

    It also matches `{split}-%05d-of-%05d.tfrecord`, the names converters
    gave before generations, so that a reconversion removes those too.
    """
    return f"{split}-*[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]{SHARD_SUFFIX}"


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def encode_example(image, filename, label_png=None):
    """Serialises one sample.

    Args:
      image: an `image_io.EncodedImage` (RGB PNG or JPEG bytes).
      filename: the name stored under `image/filename` (relative path).
      label_png: PNG bytes of the uint8 train-id map, or None (unlabelled).

    Returns:
      The serialised tf.train.Example.
    """
    feature = {
        constants.KEY_IMAGE: _bytes(image.data),
        constants.KEY_FILENAME: _bytes(filename.encode("utf-8")),
        constants.KEY_FORMAT: _bytes(image.format.encode("ascii")),
        constants.KEY_HEIGHT: _int64(image.height),
        constants.KEY_WIDTH: _int64(image.width),
        constants.KEY_CHANNELS: _int64(3),
    }
    if image.source_size is not None and image.source_size != (image.width, image.height):
        feature[constants.KEY_SOURCE_WIDTH] = _int64(image.source_size[0])
        feature[constants.KEY_SOURCE_HEIGHT] = _int64(image.source_size[1])
    if label_png is not None:
        feature[constants.KEY_LABEL] = _bytes(label_png)
        feature[constants.KEY_LABEL_FORMAT] = _bytes(b"png")
    return tf.train.Example(
        features=tf.train.Features(feature=feature)).SerializeToString()


_FEATURES = {
    constants.KEY_IMAGE: tf.io.FixedLenFeature([], tf.string),
    constants.KEY_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    constants.KEY_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    constants.KEY_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    constants.KEY_SOURCE_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    constants.KEY_SOURCE_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    # Optional so that one parser reads labelled and unlabelled splits; the
    # pipelines check presence where they need a label.
    constants.KEY_LABEL: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def parse_example(serialized):
    """Parses a serialised example into a dict of scalar tensors.

    Returns:
      {"image": encoded image, "filename", "height", "width", "source_size"
       ([height, width] of the file before the converter resized it, or the
       stored size), "label": encoded label PNG or "" when unlabelled}.
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    return {
        "image": parsed[constants.KEY_IMAGE],
        "filename": parsed[constants.KEY_FILENAME],
        "height": parsed[constants.KEY_HEIGHT],
        "width": parsed[constants.KEY_WIDTH],
        "label": parsed[constants.KEY_LABEL],
        "source_size": tf.where(
            parsed[constants.KEY_SOURCE_HEIGHT] > 0,
            tf.stack([parsed[constants.KEY_SOURCE_HEIGHT], parsed[constants.KEY_SOURCE_WIDTH]]),
            tf.stack([parsed[constants.KEY_HEIGHT], parsed[constants.KEY_WIDTH]])),
    }
