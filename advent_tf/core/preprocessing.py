"""Image preprocessing of the reference: RGB -> BGR, minus the BGR mean, no scaling.

Defined once and used by the training and evaluation pipelines and by the
exported SavedModel, so that training, evaluation and serving cannot drift apart.
"""

import tensorflow as tf

from advent_tf.core import constants


def preprocess_image(image_rgb):
    """Turns RGB images into the network's input.

    Args:
      image_rgb: [..., H, W, 3] RGB image(s), uint8 or float in [0, 255].

    Returns:
      float32 tensor of the same shape: channels reversed to BGR and the
      reference mean `constants.IMG_MEAN_BGR` subtracted (no division).
    """
    image = tf.cast(image_rgb, tf.float32)
    return image[..., ::-1] - tf.constant(constants.IMG_MEAN_BGR)


def unpreprocess_image(image_bgr):
    """Inverse of `preprocess_image`, back to uint8 RGB (TensorBoard views, tests).

    Rounded, not truncated: adding the mean back can land a hair below the
    original integer in float32.
    """
    image = image_bgr + tf.constant(constants.IMG_MEAN_BGR)
    return tf.cast(tf.round(tf.clip_by_value(image[..., ::-1], 0.0, 255.0)), tf.uint8)
