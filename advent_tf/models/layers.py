"""Building blocks shared by the DeepLab-V2 backbones."""

import math

import keras
import tensorflow as tf

ASPP_RATES = (6, 12, 18, 24)


def replayed_in_backward(forward, replay, *tensors):
    """``forward(*tensors)``, whose gradient differentiates ``replay(*tensors)`` instead.

    Autodiff keeps, from the forward to the backward pass, every tensor that
    an op's gradient reads: for a convolution or a pooling of a padded copy
    of ``x``, the copy, besides ``x`` itself, which the preceding ReLU's
    gradient keeps anyway. Here the gradient re-runs ``replay`` (the same
    function, possibly computed another way) on the inputs once the upstream
    gradient exists and differentiates that, so such copies live only while
    this gradient is computed. Without the dependency on the upstream
    gradient the executor would run the replayed ops as soon as their inputs
    exist, in the forward pass, and keep their outputs all the same. Replayed
    ops whose outputs the gradient does not read (a convolution's output)
    are pruned with the rest of the graph.

    Args:
      forward: Function of ``tensors`` returning one tensor.
      replay: The same function; its TensorFlow gradients are this op's.
      *tensors: Its inputs (tensors, not variables).

    Returns:
      ``forward(*tensors)``.
    """
    @tf.custom_gradient
    def op(*inputs):
        def grad(upstream):
            with tf.control_dependencies([upstream]), tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = replay(*inputs)
            return tape.gradient(outputs, list(inputs), output_gradients=upstream)

        return forward(*inputs), grad

    return op(*tensors)


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
    at least one real element. The gradient pads again rather than keep the
    padded copy (`replayed_in_backward`): ResNet's stem pool at 1280x720
    reads a 57 MiB map that would otherwise stay alive through the whole
    backward pass.

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

    def _pool(self, inputs):
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

    def call(self, inputs):
        return replayed_in_backward(self._pool, self._pool, inputs)

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


def _recomputing_dilated_conv(x, kernel, rate):
    """A dilated 'same' convolution that re-derives its padded input for the backward.

    The forward pass is one native dilated Conv2D. Its gradients cannot be:
    TensorFlow 2.21's CPU `Conv2DBackpropInput` rejects dilations, so the
    backward replays the convolution the way `tf.nn.convolution` computes it,
    SpaceToBatchND -> Conv2D -> BatchToSpaceND, and differentiates that with
    TensorFlow's own gradients (`replayed_in_backward`). The kernel gradient
    needs that Conv2D's input, a padded copy of ``x``; autodiff of
    `tf.nn.convolution` would keep the copy alive from the forward to the
    backward, here it lives only while this layer's gradient is computed.
    What runs again is one SpaceToBatchND per call (the replayed forward
    Conv2D feeds nothing the gradient reads). The native forward skips the
    layout ops and the padding to a multiple of the dilation (on CPU,
    inference at 1024x512 spent 0.24 s of 6.1 in them); both forms are the
    same function.

    Args:
      x: [N, H, W, C] tensor.
      kernel: [kh, kw, C, F] tensor of the same dtype.
      rate: (rate_h, rate_w) dilation.

    Returns:
      [N, H, W, F].
    """
    def native(inputs, weights):
        return tf.nn.conv2d(inputs, weights, strides=1, padding="SAME", dilations=rate)

    def space_to_batch(inputs, weights):
        return tf.nn.convolution(inputs, weights, padding="SAME", dilations=rate)

    return replayed_in_backward(native, space_to_batch, x, kernel)


@keras.saving.register_keras_serializable(package="advent_tf")
class DilatedConv2D(keras.layers.Conv2D):
    """A dilated, stride-1, 'same' `keras.layers.Conv2D` that keeps less for its backward.

    The same function, weights, names and config as the Conv2D (checkpoints
    and the converter are unaffected); its gradient does not keep the padded
    copy TensorFlow makes of the input (`_recomputing_dilated_conv`). At
    640x360 + 512x256 that copy is ~127 MiB of a ResNet-101 MinEnt step's
    peak (layer3/layer4's 26 dilated 3x3 convs).

    Raises:
      ValueError: Unless dilated, stride 1, 'same' padding, channels_last.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (max(self.dilation_rate) == 1 or tuple(self.strides) != (1, 1)
                or self.padding != "same" or self.data_format != "channels_last"):
            raise ValueError(
                "DilatedConv2D supports dilation > 1, stride 1, 'same' padding "
                f"and channels_last only (layer {self.name!r}).")

    def convolution_op(self, inputs, kernel):
        return _recomputing_dilated_conv(
            inputs, tf.convert_to_tensor(kernel), tuple(self.dilation_rate))


def _channel_matmul(x, matrix):
    """``x @ matrix`` over the channel axis of NHWC ``x``, as one matrix product.

    The same function as a 1x1 convolution, but TensorFlow's MatMul and its
    two gradients (also MatMuls) work on ``x`` in place through a free
    reshape, where oneDNN's convolution gradients on CPU allocate two
    buffers the size of ``x`` (the input-gradient kernel's and the
    weight-gradient kernel's reordered input): 2 x 114 MiB for the main
    ASPP head at 1280x720, at the peak of a full-resolution training step.

    Args:
      x: [N, H, W, C] tensor.
      matrix: [C, F] tensor of the same dtype.

    Returns:
      [N, H, W, F].
    """
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), matrix)
    y = tf.reshape(y, tf.concat([shape[:-1], tf.shape(matrix)[-1:]], axis=0))
    y.set_shape(x.shape[:-1].concatenate(matrix.shape[-1:]))
    return y


def _shifted(y, dy, dx, size):
    """`_shift`'s function, without a gradient of its own."""
    padded = tf.pad(y, [[0, 0], [max(-dy, 0), max(dy, 0)],
                        [max(-dx, 0), max(dx, 0)], [0, 0]])
    return tf.slice(padded, [0, max(dy, 0), max(dx, 0), 0], size)


def _shift(y, dy, dx, size):
    """``out[:, p, q] = y[:, p + dy, q + dx]``, zero where that is outside ``y``.

    Padding before slicing (rather than slicing first) keeps the output the
    size of the input even when the shift exceeds the map, as dilation 24
    does on the 9x9 maps of a 65x65 test image. Its gradient is the opposite
    shift (a zero-filled shift's adjoint), so forward and backward are one
    Pad and one Slice each, with constant paddings and begin and ``size``
    (``tf.shape(y)``) shared by all taps. Why so few ops: each node of a
    traced step costs host memory in every copy of the graph TensorFlow
    keeps, and a head's 36 shifts run in each pass of a step (~1,000 nodes
    per head and pass when each shift did its own shape arithmetic and was
    differentiated by TensorFlow's generic Pad and StridedSlice gradients).
    """
    @tf.custom_gradient
    def shift(y):
        return _shifted(y, dy, dx, size), lambda g: _shifted(g, -dy, -dx, size)

    return shift(y)


@keras.saving.register_keras_serializable(package="advent_tf")
class ASPPBranch(keras.layers.Conv2D):
    """The weights of one ASPP branch, a 3x3 dilated 'same' convolution that `ASPPSum` computes.

    Same weights, names and config as `keras.layers.Conv2D` (checkpoints and
    the PyTorch converter are unaffected), but calling it on the head's input
    only builds it (the kernel's input channels come from that input) and
    returns ``(kernel, bias)`` in the compute dtype: the head's four branches
    are computed together by `ASPPSum`, which needs all four kernels at once.

    Raises:
      ValueError: Unless kernel 3x3, stride 1, 'same' padding, bias, channels_last.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (tuple(self.kernel_size) != (3, 3) or tuple(self.strides) != (1, 1)
                or self.padding != "same" or not self.use_bias
                or self.data_format != "channels_last"):
            raise ValueError(
                "ASPPBranch supports 3x3 kernels, stride 1, 'same' padding, a bias "
                f"and channels_last only (layer {self.name!r}).")

    def call(self, inputs):
        del inputs  # Only its channel count matters, and build() has used it.
        return (keras.ops.convert_to_tensor(self.kernel),
                keras.ops.convert_to_tensor(self.bias))

    def compute_output_shape(self, input_shape):
        return ((3, 3, input_shape[-1], self.filters), (self.filters,))


@keras.saving.register_keras_serializable(package="advent_tf")
class ASPPSum(keras.layers.Layer):
    """The sum of an ASPP head's dilated 3x3 convolutions, as one matrix product.

    ``conv(x, k)[p] = sum_t x[p + d * t] @ k[t]`` over the 9 taps ``t``. All
    taps of all branches, ``x @ k_b[t]``, are one matrix product over the
    channels (`_channel_matmul`) to ``branches * 9 * filters`` channels; each
    tap's slice is then shifted by ``d_b * t`` with zero fill, and each
    branch's nine slices are summed and its bias added before the branches
    are summed. That is the same function as the sum of the dilated
    convolutions, summed in another order (about 3e-6 relative apart in
    float32).

    Why one product: the input gradient is then one tensor where separate
    convolutions give one per branch, which all exist before TensorFlow adds
    them (4 x 29 MiB for the main head at 640x360, at the very peak of a
    training step's memory; PyTorch accumulates them). And why taps rather
    than a dilated convolution: TensorFlow runs their gradients on CPU through
    SpaceToBatchND, which pads the map to a multiple of the dilation, mostly
    padding at dilations 6-24 on stride-8 maps, with only ``num_classes``
    output channels that oneDNN runs far from peak (on the 33x65 map of a
    512x256 image one branch's forward+backward took 95-210 ms, its taps
    28-43 ms). Not used for the backbone's 256/512-channel dilated convs,
    whose 9x wider product costs more than it saves (`DilatedConv2D`).

    Weightless; the sum and the output are float32 under any policy, so that
    the logits leave the model in float32 and a mixed-precision policy rounds
    once, as a convolution's float32 accumulator would.

    Args:
      rates: The branches' dilations, in the order of the ``(kernel, bias)``
        pairs the layer is called with.
      **kwargs: Passed to `keras.layers.Layer`.
    """

    def __init__(self, rates, **kwargs):
        super().__init__(**kwargs)
        self.rates = tuple(int(rate) for rate in rates)

    def call(self, inputs, weights):
        """Sums the branches.

        Args:
          inputs: [N, H, W, C] features.
          weights: One ``(kernel [3, 3, C, F], bias [F])`` pair per rate, from `ASPPBranch`.

        Returns:
          [N, H, W, F] float32 logits.
        """
        if len(weights) != len(self.rates):
            raise ValueError(f"{self.name}: {len(weights)} branches for rates {self.rates}.")
        in_channels, filters = weights[0][0].shape[2], weights[0][0].shape[3]
        # [3, 3, C, F] -> [C, 3 * 3 * F]: column block t = (i, j) is k[i, j].
        taps = [tf.reshape(tf.transpose(tf.cast(kernel, inputs.dtype), [2, 0, 1, 3]),
                           [in_channels, 9 * filters]) for kernel, _ in weights]
        maps = tf.cast(_channel_matmul(inputs, tf.concat(taps, axis=-1)), tf.float32)
        # split (not slices): its gradient is one concat, where slices' would
        # be zero-filled full-width StridedSliceGrads.
        tap_maps = tf.split(maps, 9 * len(self.rates), axis=-1)
        size = tf.shape(tap_maps[0])
        total = None
        for b, ((_, bias), rate) in enumerate(zip(weights, self.rates)):
            branch = None
            for t in range(9):
                i, j = divmod(t, 3)
                shifted = _shift(tap_maps[9 * b + t], (i - 1) * rate, (j - 1) * rate, size)
                branch = shifted if branch is None else branch + shifted
            # As a convolution layer would: its output, then the bias, in
            # the compute dtype; the branches are summed in float32.
            branch = tf.cast(branch, inputs.dtype) + tf.cast(bias, inputs.dtype)
            branch = tf.cast(branch, tf.float32)
            total = branch if total is None else total + branch
        return total

    def compute_output_spec(self, inputs, weights):
        return keras.KerasTensor(inputs.shape[:-1] + (weights[0][0].shape[-1],), "float32")

    def get_config(self):
        config = super().get_config()
        config.update({"rates": list(self.rates)})
        return config


def aspp_classifier(x, num_classes, name, in_channels):
    """DeepLab-V2 ASPP classifier: the SUM of four dilated 3x3 convolutions.

    Mirrors the reference's ``ClassifierModule`` (dilation = padding in
    6, 12, 18, 24; with stride 1, padding = dilation is exactly 'same'): the
    branches' weights are `ASPPBranch` layers, their sum is computed by
    `ASPPSum`.
    Weights N(0, 0.01) as the reference sets them; biases keep PyTorch's
    default init, which the reference does not override. The logits are
    float32 under a mixed-precision policy (softmax, log and entropy are then
    computed at full precision).

    Args:
      x: Feature tensor (NHWC).
      num_classes: Number of output channels.
      name: Module name, e.g. ``"layer6"``; the branches are named
        ``{name}_conv2d_list_{i}`` after the PyTorch keys and the sum ``{name}``.
      in_channels: Channels of ``x`` (the bias init needs the fan-in).

    Returns:
      Logits tensor with ``num_classes`` channels.
    """
    weights = [
        ASPPBranch(
            num_classes, 3, padding="same", dilation_rate=rate, use_bias=True,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            bias_initializer=pytorch_default_bias_initializer(in_channels * 9),
            name=f"{name}_conv2d_list_{i}")(x)
        for i, rate in enumerate(ASPP_RATES)
    ]
    return ASPPSum(ASPP_RATES, name=name)(x, weights)
