"""Building blocks shared by the DeepLab-V2 backbones."""

import math

import keras
import tensorflow as tf

ASPP_RATES = (6, 12, 18, 24)


def pytorch_default_bias_initializer(fan_in):
    """PyTorch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def pytorch_default_kernel_initializer():
    """PyTorch's default Conv2d weight init, kaiming_uniform(a=sqrt(5)).

    Its bound gain * sqrt(3 / fan_in) with gain sqrt(2 / (1 + 5)) is
    sqrt(1 / fan_in), i.e. variance scaling with scale 1/3.
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


@keras.saving.register_keras_serializable(package="advent_tf")
class CeilMaxPool2D(keras.layers.Layer):
    """3x3 max pooling with padding 1 and PyTorch/Caffe ``ceil_mode=True``.

    PyTorch's output size is ``ceil((n + 2 - 3) / stride) + 1`` (the last
    window may hang over the bottom/right edge as long as it starts inside
    the padded input). Keras' 'same'/'valid' pooling floors instead (360 rows
    give 180, the reference 181), so the input is padded explicitly: one
    row/column on the top/left and as many on the bottom/right as the ceil
    formula needs, computed from the dynamic shape so that inputs of unknown
    size work. Zero padding equals PyTorch's -inf padding because every
    caller pools post-ReLU (non-negative) activations and every window holds
    at least one real element.

    Args:
      strides: 2 (downsampling pools) or 1 (DeepLab VGG's pool4/pool5).
      **kwargs: Passed to `keras.layers.Layer`.
    """

    def __init__(self, strides=2, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        self.strides = strides

    @staticmethod
    def _output_size(size, strides):
        # ceil((size + 2*1 - 3) / s) + 1, for ints and int tensors alike;
        # PyTorch's "last window must start inside" correction never triggers
        # for k=3, p=1, s<=2.
        return -(-(size - 1) // strides) + 1

    def call(self, inputs):
        shape = tf.shape(inputs)
        pads = []
        for axis in (1, 2):
            size = shape[axis]
            out = self._output_size(size, self.strides)
            # Padded length a VALID pool needs: (out - 1) * s + 3.
            after = (out - 1) * self.strides + 3 - size - 1
            pads.append([1, after])
        padded = tf.pad(inputs, [[0, 0], pads[0], pads[1], [0, 0]])
        return tf.nn.max_pool2d(
            padded, ksize=3, strides=self.strides, padding="VALID")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        h = None if h is None else self._output_size(h, self.strides)
        w = None if w is None else self._output_size(w, self.strides)
        return (n, h, w, c)

    def get_config(self):
        config = super().get_config()
        config.update({"strides": self.strides})
        return config


def _pointwise_conv(x, kernel):
    """``x @ kernel`` over the channel axis of NHWC ``x`` (a 1x1, stride-1 convolution).

    In half precision the kernel gradient is a matrix product
    (`_matmul_grad_pointwise_conv`); in float32 the plain convolution, whose
    weight gradient is as fast as the product there (whole ResNet-101
    gradient at 640x360, A/B in one process: 5.97 s conv, 6.16 s product).
    """
    if x.dtype == tf.float32:
        return tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
    return _matmul_grad_pointwise_conv(x, kernel)


@tf.custom_gradient
def _matmul_grad_pointwise_conv(x, kernel):
    """A 1x1 stride-1 convolution whose kernel gradient is one matrix product.

    The forward pass and the input gradient are oneDNN convolutions; the
    kernel gradient, ``sum_p x[p]^T dy[p]``, is one matrix product over the
    flattened positions. oneDNN's bfloat16 convolution weight-gradient
    kernel is slow at a batch of one image (~150 GFLOP/s at 46x81,
    1024->2048 channels, where the product reaches ~400 on AMX; equally
    accurate: both accumulate in float32 and round once). The whole
    ResNet-101 gradient at 640x360 in mixed_bfloat16: 3.32 -> 2.28 s.

    Args:
      x: [N, H, W, C] tensor.
      kernel: [1, 1, C, F] tensor of the same dtype.

    Returns:
      [N, H, W, F].
    """
    outputs = tf.nn.conv2d(x, kernel, strides=1, padding="VALID")

    def grad(dy):
        in_channels, filters = kernel.shape[2], kernel.shape[3]
        dx = tf.nn.conv2d(dy, tf.transpose(kernel, [0, 1, 3, 2]), strides=1, padding="VALID")
        dkernel = tf.matmul(tf.reshape(x, [-1, in_channels]), tf.reshape(dy, [-1, filters]),
                            transpose_a=True)
        return dx, tf.reshape(dkernel, tf.shape(kernel))

    return outputs, grad


@keras.saving.register_keras_serializable(package="advent_tf")
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1, stride-1 `keras.layers.Conv2D` whose kernel gradient is a matrix product.

    The same function, weights, names and config as the Conv2D (checkpoints
    and the converter are unaffected); only the backward pass differs, and
    only under a half-precision policy: see `_pointwise_conv`. About half of
    ResNet-101's FLOPs are such 1x1 convs.

    Raises:
      ValueError: Unless kernel 1x1, stride 1, dilation 1, channels_last.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (tuple(self.kernel_size) != (1, 1) or tuple(self.strides) != (1, 1)
                or tuple(self.dilation_rate) != (1, 1) or self.data_format != "channels_last"):
            raise ValueError(
                "PointwiseConv2D supports 1x1 kernels, stride 1, dilation 1 and "
                f"channels_last only (layer {self.name!r}).")

    def convolution_op(self, inputs, kernel):
        return _pointwise_conv(inputs, tf.convert_to_tensor(kernel))


def _shift(y, dy, dx):
    """``out[:, p, q] = y[:, p + dy, q + dx]``, zero where that is outside ``y``.

    Padding before slicing (rather than slicing first) keeps the output the
    size of the input even when the shift exceeds the map, as dilation 24
    does on the 9x9 maps of a 65x65 test image.
    """
    size = tf.shape(y)
    padded = tf.pad(y, [[0, 0], [max(-dy, 0), max(dy, 0)],
                        [max(-dx, 0), max(dx, 0)], [0, 0]])
    return padded[:, max(dy, 0):max(dy, 0) + size[1],
                  max(dx, 0):max(dx, 0) + size[2], :]


@keras.saving.register_keras_serializable(package="advent_tf")
class TapSumConv2D(keras.layers.Conv2D):
    """A 3x3 dilated 'same' convolution computed as 9 shifted 1x1 convolutions.

    ``conv(x, k)[p] = sum_t x[p + d * t] @ k[t]`` over the 9 taps ``t``. All
    nine ``x @ k[t]`` are one 1x1 convolution to ``9 * filters`` channels (a
    single large matrix product); each tap's slice is then shifted by
    ``d * t`` with zero fill and the slices are summed. That is the same
    function as the convolution, summed in another order (about 3e-6
    relative apart in float32).

    Why: TensorFlow runs a dilated convolution on CPU through SpaceToBatchND,
    which pads the map to a multiple of the dilation on both sides; at the
    ASPP heads' dilations (6-24) on stride-8 maps most of the batched work is
    padding, and with only ``num_classes`` output channels oneDNN's kernels
    are far from peak. On the 33x65 maps of a 512x256 image this cuts one
    ResNet-101 head's forward+backward from 95-210 ms to 28-43 ms per branch
    (tools/benchmark.py measures the whole network). It does not pay for the
    backbone's 256/512-channel dilated convs, whose 9x wider intermediate
    costs more than it saves, so those stay `keras.layers.Conv2D`.

    Same weights, names and config as `keras.layers.Conv2D`, so checkpoints
    and the PyTorch converter are unaffected.

    Raises:
      ValueError: Unless kernel 3x3, stride 1, 'same' padding, channels_last.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (tuple(self.kernel_size) != (3, 3) or tuple(self.strides) != (1, 1)
                or self.padding != "same" or self.data_format != "channels_last"):
            raise ValueError(
                "TapSumConv2D supports 3x3 kernels, stride 1, 'same' padding "
                f"and channels_last only (layer {self.name!r}).")

    def convolution_op(self, inputs, kernel):
        in_channels = kernel.shape[2]
        # [3, 3, C, F] -> [C, 3 * 3 * F]: column block t = (i, j) is k[i, j].
        taps = tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]),
                          [1, 1, in_channels, 9 * self.filters])
        maps = _pointwise_conv(inputs, taps)
        # The 9-term sum runs in float32 so that a mixed-precision policy
        # rounds once, as a convolution's float32 accumulator would.
        maps = tf.cast(maps, tf.float32)
        dy_rate, dx_rate = self.dilation_rate
        # split (not nine slices): its gradient is one concat, where slices'
        # would be nine zero-filled full-width StridedSliceGrads.
        tap_maps = tf.split(maps, 9, axis=-1)
        total = None
        for t, tap_map in enumerate(tap_maps):
            i, j = divmod(t, 3)
            shifted = _shift(tap_map, (i - 1) * dy_rate, (j - 1) * dx_rate)
            total = shifted if total is None else total + shifted
        return tf.cast(total, inputs.dtype)


def aspp_classifier(x, num_classes, name, in_channels):
    """DeepLab-V2 ASPP classifier: the SUM of four dilated 3x3 convolutions.

    Mirrors the reference's ``ClassifierModule`` (dilation = padding in
    6, 12, 18, 24; with stride 1, padding = dilation is exactly 'same'),
    each computed by `TapSumConv2D`.
    Weights N(0, 0.01) as the reference sets them; biases keep PyTorch's
    default init, which the reference does not override. The sum runs in
    float32 so that logits leave the model in float32 under a mixed-precision
    policy (softmax, log and entropy are then computed at full precision).

    Args:
      x: Feature tensor (NHWC).
      num_classes: Number of output channels.
      name: Module name, e.g. ``"layer6"``; the convolutions are named
        ``{name}_conv2d_list_{i}`` after the PyTorch keys and the sum ``{name}``.
      in_channels: Channels of ``x`` (the bias init needs the fan-in).

    Returns:
      Logits tensor with ``num_classes`` channels.
    """
    branches = [
        TapSumConv2D(
            num_classes, 3, padding="same", dilation_rate=rate, use_bias=True,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            bias_initializer=pytorch_default_bias_initializer(in_channels * 9),
            name=f"{name}_conv2d_list_{i}")(x)
        for i, rate in enumerate(ASPP_RATES)
    ]
    return keras.layers.Add(name=name, dtype="float32")(branches)
