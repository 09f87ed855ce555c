"""Tensor operations shared by the model, the losses and evaluation.

The reference upsamples every logit map with PyTorch's bilinear interpolation
and `align_corners=True` (before the cross-entropy, the softmax/entropy, the
discriminator and the evaluation argmax). `tf.image.resize` samples at
half-pixel centres instead, which shifts every output pixel, so the reference
interpolation is written out here.
"""

import tensorflow as tf


def linear_taps(in_size, out_size):
    """Source indices and weights of 1-D linear interpolation, align_corners=True.

    Follows PyTorch's `upsample_bilinear2d` index computation: the source
    coordinate of output index i is i * (in - 1) / (out - 1), computed in
    float32; the second tap is clamped to the last input index.

    Args:
      in_size: input length (int or scalar int tensor).
      out_size: output length (int or scalar int tensor).

    Returns:
      (i0, i1, w1): int32 [out_size] indices of the two taps and float32
      [out_size] weight of the second tap (the first one gets 1 - w1).
    """
    in_size = tf.cast(in_size, tf.int32)
    out_size = tf.cast(out_size, tf.int32)
    # A single output pixel takes the first input pixel (scale 0), as PyTorch does.
    scale = tf.where(
        out_size > 1,
        tf.cast(in_size - 1, tf.float32) / tf.cast(tf.maximum(out_size - 1, 1), tf.float32),
        0.0)
    src = scale * tf.cast(tf.range(out_size), tf.float32)
    i0 = tf.minimum(tf.cast(tf.floor(src), tf.int32), in_size - 1)
    w1 = tf.clip_by_value(src - tf.cast(i0, tf.float32), 0.0, 1.0)
    i1 = tf.minimum(i0 + 1, in_size - 1)
    return i0, i1, w1


def _along(weights, axis, dtype):
    """[n] tap weights shaped to broadcast along `axis` of an NHWC map."""
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    return tf.reshape(tf.cast(weights, dtype), shape)


def lerp_taps(x, axis, i0, i1, w1):
    """Interpolates `x` along `axis` between the taps of `linear_taps` (or a subset of them)."""
    w1 = _along(w1, axis, x.dtype)
    return (1.0 - w1) * tf.gather(x, i0, axis=axis) + w1 * tf.gather(x, i1, axis=axis)


def lerp_taps_adjoint(gradient, axis, i0, i1, w1, in_size):
    """The gradient of `lerp_taps` w.r.t. its input `x`, from that of its output.

    Each output's gradient, times each tap's weight, summed into the tap's
    input position (`tf.math.unsorted_segment_sum`: exact float32 on every
    device, where a matrix product would run in TF32 on recent GPUs).

    Args:
      gradient: gradient of the interpolated map.
      axis: the interpolated axis.
      i0, i1, w1: the taps `lerp_taps` was given.
      in_size: the length of `x` along `axis`.

    Returns:
      The gradient of `x`, of its shape.
    """
    w1 = _along(w1, axis, gradient.dtype)

    def scatter(weighted, index):
        # unsorted_segment_sum sums along the leading axis.
        moved = tf.experimental.numpy.moveaxis(weighted, axis, 0)
        summed = tf.math.unsorted_segment_sum(moved, index, in_size)
        return tf.experimental.numpy.moveaxis(summed, 0, axis)

    return scatter((1.0 - w1) * gradient, i0) + scatter(w1 * gradient, i1)


def lerp_along(x, axis, in_size, out_size):
    """Linearly resamples `x` along one spatial axis (align_corners=True)."""
    return lerp_taps(x, axis, *linear_taps(in_size, out_size))


def resize_bilinear_align_corners(x, size):
    """Bilinear resize of NHWC maps with PyTorch's `align_corners=True` sampling.

    Equivalent to `F.interpolate(x, size, mode='bilinear', align_corners=True)`
    of the reference (the corner pixels of input and output coincide). Written
    as two gathers and lerps (width, then height, the order PyTorch sums in),
    so it is differentiable with respect to `x`, compiles under XLA and runs
    in the input's precision on every device (a matmul formulation would run in
    TF32 on recent GPUs).

    Args:
      x: [B, h, w, C] float tensor.
      size: (height, width) of the output: Python ints, scalar int tensors or
        a [2] int tensor such as `tf.shape(images)[1:3]` (static under XLA).

    Returns:
      [B, height, width, C] tensor of the dtype of `x`.
    """
    x = tf.convert_to_tensor(x)
    in_shape = tf.shape(x)
    height, width = size[0], size[1]
    x = lerp_along(x, 2, in_shape[2], width)
    return lerp_along(x, 1, in_shape[1], height)
