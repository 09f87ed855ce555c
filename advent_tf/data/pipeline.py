"""The tf.data input pipelines of training and evaluation.

Shards: those of the glob that the split's manifest lists, so a conversion
being published or interrupted is never read half old, half new; every
match of the glob when the split has no manifest (see `records.list_shards`).

Training (deeplab2 order): list shards -> shuffle shards -> interleave ->
shuffle records -> decode, resize (bicubic images, nearest labels; aspect
ratio not preserved, as in the reference), optional augmentation,
preprocess -> batch(drop_remainder) -> prefetch. Source and target are two
independent infinite streams zipped into one element per step.

Evaluation: shards in conversion order (name order without a manifest),
images resized to the network's input size, labels kept at full resolution
(the reference scores at 2048x1024), file names carried for outputs.

tf.distribute: pass the *global* batch size and give the dataset to
`strategy.experimental_distribute_dataset` (or Keras `fit`); the auto-shard
policy is set to DATA, so with several workers each one reads every shard
and keeps its share of the elements (works whatever the shard count).

Damage is never skipped: a corrupt or truncated shard, a record without an
image or a label where one is needed, or an image that is not PNG/JPEG raises
an InvalidArgumentError that names the shard (and the image file name).
"""

import tensorflow as tf

from advent_tf.core import constants
from advent_tf.core import preprocessing
from advent_tf.data import example as example_lib
from advent_tf.data import records as records_lib
from advent_tf.data import transforms

AUTOTUNE = tf.data.AUTOTUNE


def _check(condition, what, shard, filename):
    return tf.debugging.Assert(condition, [what, "in shard", shard, "image", filename])


def _decode(record, shard, with_label):
    """Parses and decodes one record to uint8 image [H,W,3] and label [H,W,1]."""
    parsed = example_lib.parse_example(record)
    image_bytes, filename = parsed["image"], parsed["filename"]
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, 4), b"\x89PNG")
    checks = [_check(tf.logical_or(is_png, tf.io.is_jpeg(image_bytes)),
                     "Undecodable image (neither PNG nor JPEG)", shard, filename)]
    if with_label:
        checks.append(_check(tf.equal(tf.strings.substr(parsed["label"], 0, 4), b"\x89PNG"),
                             "Missing or non-PNG label (unlabelled split?)", shard, filename))
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        label = tf.io.decode_png(parsed["label"], channels=1) if with_label else None
    if with_label:
        # The label is stored at the image's stored size (both resized by the
        # converter, or neither), or at the size of the image file before it
        # was resized (an evaluation split scored at full label resolution).
        label_size = tf.cast(tf.shape(label)[:2], tf.int64)
        fits = tf.logical_or(
            tf.reduce_all(tf.equal(tf.cast(tf.shape(image)[:2], tf.int64), label_size)),
            tf.reduce_all(tf.equal(parsed["source_size"], label_size)))
        with tf.control_dependencies([_check(fits, "Label and image sizes differ",
                                             shard, filename)]):
            label = tf.identity(label)
    return image, label, filename


def _shard_files(pattern, shuffle_seed=None, shuffle=False):
    files, sizes = records_lib.list_shards(pattern)
    shards = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files), tf.constant(sizes, tf.int64)))
    if shuffle:
        shards = shards.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    return shards, files


def _require_labels(files, pattern, purpose):
    if records_lib.first_example(files)["label"].numpy() == b"":
        raise ValueError(
            f"{pattern}: the split has no labels (converted with --nolabels?), but "
            f"{purpose} needs a labelled split")


def _train_stream(pattern, size, with_label, seed, augment, shuffle_buffer,
                  scale_range, cycle_length):
    """An infinite stream of (image, label-or-None) at `size`, preprocessed."""
    deterministic = seed is not None
    shards, files = _shard_files(pattern, seed, shuffle=True)
    if with_label:
        _require_labels(files, pattern, "the source stream")
    records = shards.repeat().interleave(
        records_lib.checked_records, cycle_length=min(cycle_length, len(files)),
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # One stateless seed per example: augmentation is reproducible even though
    # the map runs in parallel.
    records = tf.data.Dataset.zip(records, tf.data.Dataset.random(seed=seed).batch(2))

    def load(record_and_shard, example_seed):
        record, shard = record_and_shard
        image, label, _ = _decode(record, shard, with_label)
        image = transforms.resize_image(image, size)
        if with_label:
            label = transforms.resize_label(label, size)
        if augment:
            image, label = transforms.random_scale_crop_flip(
                image, label, example_seed, scale_range)
        image = tf.ensure_shape(preprocessing.preprocess_image(image), [*size, 3])
        if not with_label:
            return image
        return image, tf.ensure_shape(tf.cast(label[..., 0], tf.int32), list(size))

    return records.map(load, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    # No autotuning: its thread sleeps up to 60 s between optimisations, and
    # deleting an iterator often waited for it (TF 2.21, CPU): 30-39 s after
    # the last image in 10 of 18 25-image `evaluate` runs, 7 s and over 16 s
    # after the demo's AdvEnt training (2 s without). AUTOTUNE then stays at
    # one call per core (at most 16): decoding takes milliseconds against the
    # network's seconds, and the demo's figures are unchanged.
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return options


def make_train_dataset(source_pattern, target_pattern, source_size, target_size,
                       batch_size, seed=None, augment=False, shuffle_buffer=128,
                       scale_range=(0.5, 1.5), cycle_length=8):
    """The training input: labelled source and unlabelled target, one batch of each per step.

    Args:
      source_pattern: glob of the labelled source shards, e.g.
        `tfrecords/gta5/train-*.tfrecord`.
      target_pattern: glob of the target shards (labels, if any, unused).
      source_size: (height, width) of source images, e.g. (720, 1280).
      target_size: (height, width) of target images, e.g. (512, 1024).
      batch_size: global batch size (of each domain).
      seed: makes the stream reproducible: with the same shards, TF version
        and seed, shard order, interleaving, record shuffling and augmentation
        are identical from run to run (parallelism keeps element order).
        None: order is nondeterministic, which is a little faster.
      augment: random scale, crop and horizontal flip (off in the reference).
      shuffle_buffer: records in each stream's shuffle buffer (encoded, so
        about 3 MB each at GTA5 size).
      scale_range: (min, max) random scale factor of the augmentation.
      cycle_length: shards read concurrently per stream.

    Returns:
      An infinite dataset of dicts {"source_image": float32 [B, Hs, Ws, 3],
      "source_label": int32 [B, Hs, Ws] (255 = ignore), "target_image":
      float32 [B, Ht, Wt, 3]}, images preprocessed by
      `advent_tf.core.preprocessing.preprocess_image` (BGR minus mean).

    Raises:
      FileNotFoundError: a pattern matches no shard, or a shard listed by
        the split's manifest is missing (see `records.list_shards`).
      ValueError: the source shards have no labels.
    """
    source_size, target_size = tuple(source_size), tuple(target_size)
    target_seed = None if seed is None else seed + 1
    source = _train_stream(source_pattern, source_size, True, seed, augment,
                           shuffle_buffer, scale_range, cycle_length)
    target = _train_stream(target_pattern, target_size, False, target_seed, augment,
                           shuffle_buffer, scale_range, cycle_length)
    deterministic = seed is not None
    source = source.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic)
    target = target.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic)
    dataset = tf.data.Dataset.zip(source, target).map(
        lambda s, t: {constants.SOURCE_IMAGE: s[0], constants.SOURCE_LABEL: s[1],
                      constants.TARGET_IMAGE: t})
    return dataset.prefetch(AUTOTUNE).with_options(_options(deterministic))


def make_eval_dataset(pattern, image_size, batch_size=1):
    """The evaluation input, in conversion order, with full-resolution labels.

    Args:
      pattern: glob of a labelled split's shards, e.g.
        `tfrecords/cityscapes/val-*.tfrecord`.
      image_size: (height, width) the network sees, e.g. (512, 1024).
      batch_size: images per batch; with more than 1, all labels of a batch
        must share one size (true of Cityscapes). The last batch may be short.

    Returns:
      A dataset of dicts {"image": float32 [B, h, w, 3] preprocessed at
      `image_size`, "label": int32 [B, H, W] at the stored resolution,
      "filename": string [B]}.

    Raises:
      FileNotFoundError: the pattern matches no shard, or a shard listed by
        the split's manifest is missing (see `records.list_shards`).
      ValueError: the split has no labels.
    """
    image_size = tuple(image_size)
    shards, files = _shard_files(pattern)
    _require_labels(files, pattern, "evaluation")

    def load(record, shard):
        image, label, filename = _decode(record, shard, True)
        image = preprocessing.preprocess_image(transforms.resize_image(image, image_size))
        return {"image": tf.ensure_shape(image, [*image_size, 3]),
                "label": tf.cast(label[..., 0], tf.int32),
                "filename": filename}

    dataset = shards.flat_map(records_lib.checked_records).map(
        load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE).with_options(_options(True))
