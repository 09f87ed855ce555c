"""Resizing as the reference does it, and the optional training augmentation.

The augmentation (random scale, crop back, horizontal flip) is off by
default, as in the reference (which trains on plain resized images). All its
randomness is stateless and comes from a per-example seed, so a seeded
pipeline augments identically from run to run even with parallel maps.
"""

import tensorflow as tf

from advent_tf.core import constants


def resize_image(image, size):
    """Bicubic resize of an RGB image (or batch) in [0, 255] to `size` (height, width).

    Antialiased like the reference's PIL `resize(..., BICUBIC)`, then clipped
    and rounded as PIL's uint8 output is; within 1-3 grey levels of PIL on
    about 15% of pixels at the reference's sizes. Bit-identical inputs come
    from the converter instead (`--image_size`: PIL itself): an image that is
    already at `size` is passed through untouched, without the resize's cost.
    """
    image = tf.cast(image, tf.float32)

    def resize():
        resized = tf.image.resize(image, size, method="bicubic", antialias=True)
        return tf.round(tf.clip_by_value(resized, 0.0, 255.0))

    same = tf.reduce_all(tf.equal(tf.shape(image)[-3:-1], tf.cast(size, tf.int32)))
    return tf.cond(same, lambda: image, resize)


def resize_label(label, size):
    """Nearest-neighbour resize of a [H, W, 1] label map."""
    return tf.image.resize(label, size, method="nearest")


def random_scale_crop_flip(image, label, seed, scale_range=(0.5, 1.5)):
    """Rescales by a random factor, crops/pads back to the input size, flips.

    Args:
      image: float32 [H, W, 3] RGB in [0, 255].
      label: uint8 [H, W, 1] train ids, or None (unlabelled target images).
      seed: int [2] stateless seed for this example.
      scale_range: (min, max) of the uniform scale factor.

    Returns:
      (image, label) of the input shapes; padding is the mean colour (zero
      after preprocessing) in images and 255 (ignore) in labels.
    """
    scale_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    size = tf.shape(image)[:2]
    scale = tf.random.stateless_uniform([], scale_seed, *scale_range)
    scaled = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
    mean_rgb = tf.constant(constants.IMG_MEAN_BGR[::-1].copy())
    extra = tf.maximum(size - scaled, 0)
    padding = tf.stack([[0, extra[0]], [0, extra[1]], [0, 0]])
    image = tf.pad(resize_image(image, scaled) - mean_rgb, padding) + mean_rgb
    channels = [image]
    if label is not None:
        label = tf.pad(resize_label(label, scaled), padding,
                       constant_values=constants.IGNORE_LABEL)
        channels.append(tf.cast(label, tf.float32))
    stacked = tf.concat(channels, axis=-1)
    stacked = tf.image.stateless_random_crop(
        stacked, tf.concat([size, tf.shape(stacked)[2:]], 0), crop_seed)
    stacked = tf.image.stateless_random_flip_left_right(stacked, flip_seed)
    if label is None:
        return stacked, None
    return stacked[..., :3], tf.cast(stacked[..., 3:], tf.uint8)
