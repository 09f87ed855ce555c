"""Reading and checking the image and label files of a dataset on disk.

Everything is decoded in full at conversion time, so that a truncated or
corrupt file fails here, with its path, rather than in the middle of training.
"""

import dataclasses
import io

import numpy as np
import PIL.Image
import tensorflow as tf

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_KEPT_FORMATS = {"PNG": "png", "JPEG": "jpeg"}


class BadSampleError(Exception):
    """A sample that cannot be converted; the message names the file."""


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An RGB image as it will be stored: encoded bytes and their geometry."""

    data: bytes
    format: str
    height: int
    width: int
    # (width, height) of the file it was read from; the stored size differs
    # when the image was resized.
    source_size: tuple = None


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadSampleError(f"{path}: cannot read file ({e.strerror or e})") from e


def _open_decoded(path, data):
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()  # Decodes everything: truncated files fail here.
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise BadSampleError(f"{path}: not a decodable image ({e})") from e
    return image


def read_image(path, size=None):
    """Reads an image file, checking that it decodes; optionally resizes it as the reference does.

    PNG and JPEG files in RGB are stored as they are (no re-encoding, no loss);
    anything else (RGBA, grey, palette, other formats) is converted to RGB PNG
    so that every stored image decodes to exactly three channels. With a
    `size`, the image is resized exactly as the reference's loader does it,
    ``Image.open(f).convert('RGB').resize(size, Image.BICUBIC)`` (the same
    Pillow code, so the same pixels), and stored as PNG.

    Args:
      path: the image file.
      size: (width, height) to resize to, or None to keep the file's size.

    Returns:
      An `EncodedImage`.

    Raises:
      BadSampleError: unreadable, corrupt or truncated file.
    """
    data = _read_bytes(path)
    image = _open_decoded(path, data)
    source_size = (image.width, image.height)
    fmt = _KEPT_FORMATS.get(image.format)
    if size is not None and tuple(size) != source_size:
        image = image.convert("RGB").resize(tuple(size), PIL.Image.BICUBIC)
        fmt = None
    if fmt is None or image.mode != "RGB":
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        data, fmt = buffer.getvalue(), "png"
    return EncodedImage(data=data, format=fmt, height=image.height, width=image.width,
                        source_size=source_size)


def resize_label(train_ids, size):
    """Nearest-neighbour resize of a uint8 [H, W] id map to `size` (width, height), as PIL does.

    The reference resizes its label images with ``Image.NEAREST``; nearest
    picks source pixels, so resizing train ids equals mapping resized raw ids.
    """
    if (train_ids.shape[1], train_ids.shape[0]) == tuple(size):
        return train_ids
    resized = PIL.Image.fromarray(np.asarray(train_ids, np.uint8)).resize(
        tuple(size), PIL.Image.NEAREST)
    return np.asarray(resized)


def read_label_ids(path):
    """Reads a single-channel label image of raw ids (8- or 16-bit, or palette).

    Palette PNGs (GTA5) are read as their palette indices, which are the ids.

    Args:
      path: the label file.

    Returns:
      [H, W] integer array of raw ids.

    Raises:
      BadSampleError: unreadable or corrupt file, or not single-channel.
    """
    image = _open_decoded(path, _read_bytes(path))
    if image.mode not in ("L", "P", "I", "I;16"):
        raise BadSampleError(
            f"{path}: expected a single-channel image of class ids, got mode "
            f"{image.mode} (colour-coded labels are not supported)")
    return np.asarray(image)


def read_first_channel_ids(path):
    """Reads the class ids from the first channel of a (16-bit) PNG: SYNTHIA.

    Pillow reduces 16-bit colour PNGs to 8 bits, which would destroy the ids,
    so this decodes with TensorFlow at the file's own bit depth.

    Args:
      path: the label PNG.

    Returns:
      [H, W] integer array of raw ids.

    Raises:
      BadSampleError: unreadable, not a PNG, or corrupt.
    """
    data = _read_bytes(path)
    if not data.startswith(_PNG_MAGIC) or len(data) < 25:
        raise BadSampleError(f"{path}: not a PNG file")
    bit_depth = data[24]  # IHDR: 8 magic + 8 chunk header + 8 width/height.
    dtype = tf.uint16 if bit_depth == 16 else tf.uint8
    try:
        decoded = tf.io.decode_png(data, dtype=dtype)
    except tf.errors.OpError as e:
        raise BadSampleError(f"{path}: not a decodable PNG ({e.message})") from e
    return decoded.numpy()[..., 0]


def encode_label_png(train_ids):
    """Encodes a uint8 [H, W] train-id map as a greyscale PNG."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.asarray(train_ids, dtype=np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()
