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


def aspp_classifier(x, num_classes, name, in_channels):
    """DeepLab-V2 ASPP classifier: the SUM of four dilated 3x3 convolutions.

    Mirrors the reference's ``ClassifierModule`` (dilation = padding in
    6, 12, 18, 24; with stride 1, padding = dilation is exactly 'same').
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
        keras.layers.Conv2D(
            num_classes, 3, padding="same", dilation_rate=rate, use_bias=True,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            bias_initializer=pytorch_default_bias_initializer(in_channels * 9),
            name=f"{name}_conv2d_list_{i}")(x)
        for i, rate in enumerate(ASPP_RATES)
    ]
    return keras.layers.Add(name=name, dtype="float32")(branches)
