"""Raw images in, class map and entropy out: the one inference path of predict and export.

The steps are those of evaluation, so that a served or predicted map is the
one the evaluation scored: the RGB image is resized to the network's input
size as the evaluation pipeline resizes it (`transforms.resize_image`),
preprocessed by `preprocessing.preprocess_image`, and the main logits
(weighted over an ensemble) are upsampled with align_corners=True back to the
image's own resolution before the softmax, the argmax and the entropy (eq. 2).
Without the probabilities as an output, the maps are made a block of rows at a
time (`evaluation_protocol.ensemble_maps`): the image-size logits, their
softmax and its entropy never exist whole.
"""

import tensorflow as tf

from advent_tf.inference import evaluation_protocol
from advent_tf.core import losses
from advent_tf.core import preprocessing
from advent_tf.core import xla
from advent_tf.data import transforms


def decode_image(encoded):
    """Decodes one PNG, JPEG, BMP or GIF (first frame) to uint8 RGB [H, W, 3].

    Raises:
      tf.errors.InvalidArgumentError: empty, truncated, corrupt or unknown
        data (TensorFlow's decoders reject truncated PNG and JPEG).
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def maps_at_input_resolution(members, images, model_size, with_probabilities=False):
    """`maps_of_resized` of RGB images resized with TensorFlow: the SavedModel's path.

    Args:
      members: list of (segmenter, weight).
      images: uint8 or float RGB [B, H, W, 3] in [0, 255].
      model_size: (height, width) the network sees (the evaluation size).
      with_probabilities: also return the probabilities.

    Returns:
      The dict of `segmentation_maps`, at the images' own resolution.
    """
    images = tf.cast(images, tf.float32)
    return maps_of_resized(members, transforms.resize_image(images, model_size),
                           tf.shape(images)[1:3], with_probabilities)


def maps_of_resized(members, resized_images, output_size, with_probabilities=False):
    """Class map and entropy (and probabilities) of RGB images at the network's input size.

    `predict` resizes with PIL (the reference's resize, bit for bit) before
    calling this; the SavedModel resizes with TensorFlow
    (`maps_at_input_resolution`), since serving has no PIL.

    Args:
      members: list of (segmenter, weight).
      resized_images: uint8 or float RGB [B, h, w, 3] in [0, 255].
      output_size: (height, width) of the maps: the original images' size.
      with_probabilities: also return the probabilities (then the whole
        logits are made at once: the output holds them all anyway).

    Returns:
      The dict of `segmentation_maps` (without "probabilities" unless asked).
    """
    inputs = preprocessing.preprocess_image(tf.cast(resized_images, tf.float32))
    if with_probabilities:
        return segmentation_maps(
            evaluation_protocol.ensemble_logits(members, inputs, output_size))
    return evaluation_protocol.ensemble_maps(members, inputs, output_size, pixel_maps)


def pixel_maps(logits, probabilities=None):
    """Class map and entropy map (eq. 2, in [0, 1]) of logits, pixel by pixel.

    Args:
      logits: float32 [B, H, W, C].
      probabilities: their softmax, if already made.

    Returns:
      {"class_map": int32 [B, H, W], "entropy": float32 [B, H, W]}.
    """
    if probabilities is None:
        probabilities = tf.nn.softmax(logits, axis=-1)
    # Exported graphs must run without XLA (see `xla.uncompiled`).
    with xla.uncompiled():
        entropy = losses.entropy_map(probabilities)
    return {"class_map": tf.argmax(logits, axis=-1, output_type=tf.int32), "entropy": entropy}


def segmentation_maps(logits):
    """Class map, entropy map (eq. 2, in [0, 1]) and probabilities of logits.

    Args:
      logits: float32 [B, H, W, C].

    Returns:
      {"class_map": int32 [B, H, W], "entropy": float32 [B, H, W],
       "probabilities": float32 [B, H, W, C]}.
    """
    probabilities = tf.nn.softmax(logits, axis=-1)
    return {**pixel_maps(logits, probabilities), "probabilities": probabilities}
