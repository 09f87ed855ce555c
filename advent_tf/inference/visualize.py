"""Pictures of predictions: Cityscapes colours, entropy maps, overlays (numpy, PIL).

Colours (`palette`): 19 and 16 classes get the Cityscapes colours (a 16-class
SYNTHIA prediction is mapped back to the 19-class ids first, so a "car" is
the same blue whatever the setting). Any other class count (a user's own
data, up to 255 classes) gets the PASCAL VOC colour map shifted by one:
class i is VOC colour i + 1, so that no class is black, which marks ignored
pixels.
"""

import os

import numpy as np
import PIL.Image

from advent_tf.core import constants

# Anchors of a dark-to-bright colour ramp (black, purple, red, orange, pale
# yellow: the look of the paper's entropy figures); confident pixels are dark.
_RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
                 dtype=np.float32)
# Rows rendered at a time: rendered whole, a 12-megapixel photo's float
# temporaries took ~0.15 GB each (`predict`'s peak 2.2 GB, by rows 1.3 GB).
_ROWS = 256


def _by_rows(render, *arrays):
    """`render` over blocks of `_ROWS` rows of `arrays`, into one uint8 [H, W, 3] image.

    The same values as `render(*arrays)`: each pixel's colour depends on that
    pixel alone.
    """
    out = np.empty(arrays[0].shape[:2] + (3,), np.uint8)
    for start in range(0, out.shape[0], _ROWS):
        rows = slice(start, start + _ROWS)
        out[rows] = render(*(a[rows] for a in arrays))
    return out


def _voc_colour(index):
    """Colour `index` of the PASCAL VOC map: the bits of the index spread over R, G, B."""
    colour = [0, 0, 0]
    for shift in range(8):
        for channel in range(3):
            colour[channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return colour


def palette(num_classes):
    """The [num_classes, 3] uint8 RGB colours of a setting (see the module docstring).

    Raises:
      ValueError: fewer than 1 or more than 255 classes.
    """
    if num_classes == 19:
        return constants.CITYSCAPES_PALETTE
    if num_classes == 16:
        return constants.CITYSCAPES_PALETTE[list(constants.SYNTHIA_16_FROM_19)]
    if not 1 <= num_classes <= 255:
        raise ValueError(f"no palette for {num_classes} classes (1 to 255)")
    return np.array([_voc_colour(i + 1) for i in range(num_classes)], np.uint8)


def colorize(class_map, num_classes):
    """Colour-codes a class map; ids outside [0, num_classes) (e.g. 255) are black.

    Args:
      class_map: integer [H, W] class ids.
      num_classes: the model's number of classes.

    Returns:
      uint8 [H, W, 3] RGB.
    """
    colours = np.zeros((256, 3), np.uint8)
    colours[:num_classes] = palette(num_classes)
    ids = np.asarray(class_map)
    return colours[np.where((ids >= 0) & (ids < num_classes), ids, 255)]


def entropy_image(entropy):
    """Renders an entropy map in [0, 1] (eq. 2) with the colour ramp.

    Args:
      entropy: float [H, W], 0 = certain, 1 = uniform over the classes.

    Returns:
      uint8 [H, W, 3] RGB.
    """
    return _by_rows(_ramp_colours, np.asarray(entropy))


def _ramp_colours(entropy):
    """The ramp's colour of each entropy value, uint8 [..., 3] (`entropy_image`'s rows)."""
    position = np.clip(np.asarray(entropy, np.float32), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(np.int32), len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    rgb = (1.0 - fraction) * _RAMP[low] + fraction * _RAMP[low + 1]
    return np.round(rgb).astype(np.uint8)


def overlay(image, colours, alpha=0.5):
    """Blends a colour-coded map over the RGB image (alpha = weight of the colours)."""
    def blend(image_rows, colour_rows):
        mixed = ((1.0 - alpha) * np.asarray(image_rows, np.float32)
                 + alpha * np.asarray(colour_rows, np.float32))
        return np.round(mixed).astype(np.uint8)

    return _by_rows(blend, np.asarray(image), np.asarray(colours))


def save_png(path, array):
    """Writes a uint8 array as PNG, creating the directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    PIL.Image.fromarray(np.asarray(array, np.uint8)).save(path)
