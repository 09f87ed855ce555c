"""Tests for the shared building blocks in advent_tf.models.layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.models import layers as layers_lib
import graph_helpers
from advent_tf.models.layers import ASPPBranch, ASPPSum, DilatedConv2D, PointwiseConv2D


def _output_and_gradients(fn, x, sources):
    """``(fn(x), d/dx, d/dsource...)`` of a non-linear scalar of ``fn(x)`` (summed in float32)."""
    with tf.GradientTape() as tape:
        tape.watch([x] + [s for s in sources if isinstance(s, tf.Tensor)])
        y = fn(x)
        y32 = tf.cast(y, tf.float32)
        loss = tf.reduce_sum(y32 * tf.sin(y32))
    return (y, *tape.gradient(loss, [x, *sources]))


def _heads(rates, channels, filters=5, policy="float32"):
    """An ASPPSum head and the same sum of keras dilated Conv2Ds, holding the same weights.

    Returns:
      ``(aspp, reference)``: functions of the features, and the ASPP's weights
      (every branch's kernel and bias, also the reference's after copying).
    """
    keras.mixed_precision.set_global_policy(policy)
    try:
        branches, convs = [], []
        for i, rate in enumerate(rates):
            kwargs = dict(filters=filters, kernel_size=3, padding="same", dilation_rate=rate,
                          use_bias=True,
                          bias_initializer=keras.initializers.RandomUniform(-1, 1, seed=i),
                          kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=i))
            branches.append(ASPPBranch(**kwargs))
            convs.append(keras.layers.Conv2D(**kwargs))
        head = ASPPSum(rates)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for branch, conv in zip(branches, convs):
        branch.build((None, None, None, channels))
        conv.build((None, None, None, channels))
        conv.set_weights(branch.get_weights())

    def aspp(x):
        return head(x, [branch(x) for branch in branches])

    def reference(x):
        return tf.add_n([tf.cast(conv(x), tf.float32) for conv in convs])

    weights = [w for branch in branches for w in (branch.kernel, branch.bias)]
    return aspp, reference, weights, convs


@pytest.mark.parametrize("rates", [(6, 12, 18, 24), (1, 2)])
@pytest.mark.parametrize("shape", [(2, 9, 9, 7), (1, 5, 13, 3), (1, 33, 65, 4)])
def test_aspp_sum_equals_the_sum_of_dilated_convolutions_and_its_gradients(rates, shape):
    # Rate 24 on 9x9 / 5x13 maps: most taps fall wholly outside the map, as
    # in the tests' 65x65 images; the zero fill must still give 'same' output.
    x = tf.constant(np.random.default_rng(len(rates)).normal(size=shape), tf.float32)
    aspp, reference, weights, convs = _heads(rates, shape[-1])
    got = _output_and_gradients(aspp, x, weights)
    want = _output_and_gradients(
        reference, x, [w for conv in convs for w in (conv.kernel, conv.bias)])
    assert got[0].dtype == tf.float32 and got[0].shape == shape[:3] + (5,)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w.numpy()).max())


def test_aspp_product_and_its_gradients_are_three_matrix_products():
    """The four branches' input gradient is one tensor, and no convolution gradient runs.

    Separate convolutions give one input gradient per branch, all computed
    before TensorFlow adds them: for the main head at 640x360, 4 x 29 MiB at
    the peak of a training step's memory. A 1x1 convolution instead of the
    matrix product would make oneDNN allocate two more input-sized buffers
    in the backward (2 x 114 MiB for the main head at 1280x720).
    """
    aspp, _, weights, _ = _heads((6, 12, 18, 24), 8)

    @tf.function
    def input_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(aspp(x)))
        return tape.gradient(loss, [x, *weights])

    graph = input_gradient.get_concrete_function(tf.TensorSpec([1, 9, 9, 8])).graph
    kinds = [op.type for op in graph.get_operations()]
    assert not [kind for kind in kinds if kind.startswith("Conv")]
    assert kinds.count("MatMul") == 3  # The product, its input and its kernel gradient.
    assert "AddN" not in kinds


def test_aspp_sum_under_bfloat16_policy_sums_in_float32():
    shape = (1, 17, 23, 8)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    _, reference, _, _ = _heads((6, 12), 8, filters=4)
    aspp, _, _, mixed_convs = _heads((6, 12), 8, filters=4, policy="mixed_bfloat16")
    got = aspp(x)
    assert got.dtype == tf.float32
    assert mixed_convs[0].compute_dtype == "bfloat16"
    want = reference(x).numpy()
    # One bfloat16 rounding of the inputs/products (8 bits of mantissa).
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-2 * np.abs(want).max())
    # Each branch rounded once to bfloat16, as its convolution layer does.
    np.testing.assert_allclose(got, tf.add_n([tf.cast(c(x), tf.float32) for c in mixed_convs]),
                               rtol=0, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=1), dict(kernel_size=3, strides=2),
    dict(kernel_size=3, padding="valid"), dict(kernel_size=3, use_bias=False),
    dict(kernel_size=3, data_format="channels_first"),
])
def test_aspp_branch_rejects_what_it_does_not_compute(kwargs):
    kwargs.setdefault("padding", "same")
    kwargs.setdefault("use_bias", True)
    with pytest.raises(ValueError, match="ASPPBranch supports"):
        ASPPBranch(4, dilation_rate=1 if kwargs.get("strides") else 2,
                   name="head", **kwargs)


def test_aspp_sum_rejects_a_branch_count_other_than_its_rates():
    head = ASPPSum((6, 12, 18))
    branch = ASPPBranch(2, 3, padding="same", dilation_rate=6)
    x = tf.zeros([1, 5, 5, 3])
    with pytest.raises(ValueError, match="2 branches for rates"):
        head(x, [branch(x), branch(x)])


def test_aspp_config_round_trip():
    layer = ASPPBranch(3, 3, padding="same", dilation_rate=12, name="layer6_x")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is ASPPBranch
    assert tuple(clone.dilation_rate) == (12, 12) and clone.name == "layer6_x"
    head = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(ASPPSum((6, 12), name="layer6")))
    assert type(head) is ASPPSum and head.rates == (6, 12) and head.name == "layer6"


@pytest.mark.parametrize("shape", [(1, 7, 9, 6), (2, 5, 3, 16)])
def test_matmul_gradient_pointwise_conv_equals_the_convolution(shape):
    # The half-precision path's custom gradient, checked exactly in float32.
    rng = np.random.default_rng(shape[-1])
    x = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(1, 1, shape[-1], 5)), tf.float32)
    got = _output_and_gradients(
        lambda a: layers_lib._matmul_grad_pointwise_conv(a, kernel), x, [kernel])
    want = _output_and_gradients(
        lambda a: tf.nn.conv2d(a, kernel, strides=1, padding="VALID"), x, [kernel])
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w.numpy()).max())


def test_pointwise_conv_layer_under_bfloat16_matches_float32_conv():
    shape = (1, 9, 11, 32)
    x = tf.constant(np.random.default_rng(3).normal(size=shape), tf.float32)
    init = dict(filters=8, kernel_size=1, use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=0))
    conv = keras.layers.Conv2D(**init)
    conv.build(shape)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = PointwiseConv2D(**init)
        mixed.build(shape)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(conv.get_weights())
    results = [_output_and_gradients(layer, x, [layer.kernel]) for layer in (mixed, conv)]
    assert results[0][0].dtype == tf.bfloat16
    assert results[0][2].dtype == tf.float32  # The variable's gradient.
    for got, want in zip(*results):
        # bfloat16 rounding of inputs, weights and outputs (8-bit mantissa).
        np.testing.assert_allclose(tf.cast(got, tf.float32), want, rtol=0,
                                   atol=3e-2 * np.abs(want.numpy()).max())


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3), dict(kernel_size=1, strides=2), dict(kernel_size=1, dilation_rate=2),
    dict(kernel_size=1, data_format="channels_first"),
])
def test_pointwise_conv_rejects_what_it_does_not_compute(kwargs):
    with pytest.raises(ValueError, match="PointwiseConv2D supports"):
        PointwiseConv2D(4, name="layer1_0_conv1", **kwargs)


def test_pointwise_conv_config_round_trip_and_resnet_use():
    layer = PointwiseConv2D(3, 1, use_bias=False, name="layer1_0_conv3")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is PointwiseConv2D and clone.name == "layer1_0_conv3"
    from advent_tf.models import build_segmenter

    model = build_segmenter("resnet_tiny", num_classes=3)
    kinds = {layer.name: type(layer) for layer in model.layers}
    # Stride-1 1x1 convs only: not the strided layer2 entry, not the 3x3s.
    assert kinds["layer1_0_conv1"] is PointwiseConv2D
    assert kinds["layer3_0_downsample_0"] is PointwiseConv2D
    assert kinds["layer2_0_conv1"] is keras.layers.Conv2D
    assert kinds["layer2_0_downsample_0"] is keras.layers.Conv2D
    assert kinds["layer2_0_conv2"] is keras.layers.Conv2D
    assert kinds["layer3_0_conv2"] is DilatedConv2D


def _dilated_pair(rate, policy="float32", use_bias=False):
    """A DilatedConv2D and a keras Conv2D under ``policy``, holding the same weights."""
    kwargs = dict(filters=6, kernel_size=3, padding="same", dilation_rate=rate,
                  use_bias=use_bias, bias_initializer="random_uniform",
                  kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=0))
    keras.mixed_precision.set_global_policy(policy)
    try:
        pair = DilatedConv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return pair


@pytest.mark.parametrize("rate, shape, policy, use_bias", [
    (2, (1, 46, 81, 8), "float32", False),  # layer3's rate on an odd-sized map
    (4, (2, 9, 13, 5), "float32", True),  # layer4's / VGG fc6's, rate near the map size
    ((2, 4), (1, 17, 23, 4), "float32", False),
    (2, (1, 21, 33, 8), "mixed_bfloat16", False),
])
def test_dilated_conv_equals_keras_conv_and_its_gradients(rate, shape, policy, use_bias):
    """Same output as Keras' Conv2D; for the same upstream gradient, bit-identical gradients.

    The forward is a native dilated Conv2D where Keras' goes through
    SpaceToBatchND: the same sums, whose order oneDNN may choose differently
    per kernel (bit-equal on an AVX2 CPU, 1-ulp differences on a Zen 4). The
    backward re-builds Keras' own ops from the input, so given the same
    upstream gradient its results are bit-identical.
    """
    x = tf.constant(np.random.default_rng(0).normal(size=shape), tf.float32)
    dilated, conv = _dilated_pair(rate, policy, use_bias)
    dilated.build(shape)
    conv.build(shape)
    conv.set_weights(dilated.get_weights())
    outputs, gradients = [], []
    for layer in (dilated, conv):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        upstream = tf.cast(tf.sin(tf.reshape(tf.range(tf.size(y), dtype=tf.float32),
                                             y.shape)), y.dtype)
        outputs.append(y)
        gradients.append(tape.gradient(y, [x, *layer.trainable_weights],
                                       output_gradients=upstream))
    assert outputs[0].dtype == tf.as_dtype(keras.mixed_precision.Policy(policy).compute_dtype)
    np.testing.assert_allclose(*[tf.cast(y, tf.float32) for y in outputs], rtol=1e-5,
                               atol=1e-6 if policy == "float32" else 1e-2)
    assert len(gradients[0]) == 1 + len(conv.trainable_weights)
    for g, w in zip(*gradients):
        np.testing.assert_array_equal(g, w)


def test_dilated_conv_forward_is_one_native_dilated_conv():
    # SpaceToBatchND and its padding cost inference at 1024x512 ~6% on CPU.
    layer = DilatedConv2D(4, 3, padding="same", dilation_rate=(2, 3), use_bias=False)
    layer.build((1, 12, 12, 3))
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec([1, 12, 12, 3])).graph
    convs = [op for op in graph.get_operations() if op.type.startswith(("Conv", "SpaceTo"))]
    assert [op.type for op in convs] == ["Conv2D"]
    assert list(convs[0].get_attr("dilations")) == [1, 2, 3, 1]


def test_dilated_conv_backward_pads_only_after_the_upstream_gradient():
    """Nothing the kernel gradient reads is made before the gradient reaches the layer.

    TensorFlow's own gradient reads the SpaceToBatchND copy made in the
    forward pass, which then stays alive from the forward to the backward
    (at 640x360 + 512x256, 127 MiB of ResNet-101's peak); a re-built copy made
    without waiting for the upstream gradient is run by the executor in the
    forward pass all the same.
    """
    layer = DilatedConv2D(4, 3, padding="same", dilation_rate=2, use_bias=False)
    layer.build((1, 12, 12, 3))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(tf.nn.relu(x))
            loss = tf.reduce_sum(tf.square(y))
        upstream = tf.identity(2.0 * y, name="the_upstream_gradient")
        return tape.gradient(y, [x, layer.kernel], output_gradients=upstream), loss

    graph = step.get_concrete_function(tf.TensorSpec([1, 12, 12, 3])).graph
    upstream = graph.get_operation_by_name("the_upstream_gradient")

    filter_inputs = [op.inputs[0].op for op in graph.get_operations()
                     if op.type == "Conv2DBackpropFilter"]
    assert [op.type for op in filter_inputs] == ["SpaceToBatchND"]
    assert all(upstream in graph_helpers.ancestors(op) for op in filter_inputs)


@pytest.mark.parametrize("kwargs", [
    dict(dilation_rate=1), dict(dilation_rate=2, padding="valid"),
    dict(dilation_rate=2, data_format="channels_first"),
])
def test_dilated_conv_rejects_what_it_does_not_compute(kwargs):
    kwargs.setdefault("padding", "same")
    with pytest.raises(ValueError, match="DilatedConv2D supports"):
        DilatedConv2D(4, 3, name="layer3_0_conv2", **kwargs)


def test_dilated_conv_config_round_trip_and_vgg_use():
    layer = DilatedConv2D(3, 3, padding="same", dilation_rate=4, name="fc6")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is DilatedConv2D and clone.name == "fc6"
    assert tuple(clone.dilation_rate) == (4, 4)
    from advent_tf.models.vgg import build_vgg16

    kinds = {layer.name: type(layer) for layer in build_vgg16(num_classes=3).layers}
    assert kinds["conv4_3"] is keras.layers.Conv2D
    assert kinds["conv5_1"] is kinds["fc6"] is DilatedConv2D


def _ceil_pool_by_autodiff(x, strides):
    """The stem pool as PyTorch computes it: -inf padding, ceil mode, plain autodiff."""
    rows, cols = (-(-(n - 1) // strides) + 1 for n in x.shape[1:3])
    padded = tf.pad(x, [[0, 0], [1, (rows - 1) * strides + 2 - x.shape[1]],
                        [1, (cols - 1) * strides + 2 - x.shape[2]], [0, 0]],
                    constant_values=-np.inf)
    return tf.nn.max_pool2d(padded, ksize=3, strides=strides, padding="VALID")


@pytest.mark.parametrize("strides, shape", [
    (2, (1, 360, 640, 2)),  # ResNet's stem at full resolution: 181x321, ceil
    (2, (2, 7, 10, 3)),
    (1, (1, 9, 8, 4)),  # VGG's pool4/pool5
])
def test_ceil_max_pool_equals_pytorchs_pool_and_its_gradient(strides, shape):
    # On post-ReLU input (as every caller pools) with distinct positive
    # values, so that no tie decides where a gradient goes.
    x = tf.constant(np.random.default_rng(1).permutation(np.prod(shape)).reshape(shape) + 1.0,
                    tf.float32)
    pool = layers_lib.CeilMaxPool2D(strides=strides)
    got, want = [_output_and_gradients(fn, x, [])
                 for fn in (pool, lambda t: _ceil_pool_by_autodiff(t, strides))]
    assert got[0].shape == want[0].shape
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_ceil_max_pool_backward_pads_only_after_the_upstream_gradient():
    # The padded copy the pool's gradient reads is 57 MiB at ResNet's stem
    # at 1280x720; kept from the forward pass it lives through the backward.
    pool = layers_lib.CeilMaxPool2D(strides=2)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool(tf.nn.relu(x))
        upstream = tf.identity(2.0 * y, name="the_upstream_gradient")
        return tape.gradient(y, x, output_gradients=upstream)

    graph = step.get_concrete_function(tf.TensorSpec([1, 9, 12, 3])).graph
    upstream = graph.get_operation_by_name("the_upstream_gradient")
    pool_grads = [op for op in graph.get_operations() if op.type == "MaxPoolGrad"]
    assert len(pool_grads) == 1
    padded = pool_grads[0].inputs[0].op
    assert padded.type == "Pad"
    assert upstream in graph_helpers.ancestors(padded)


def test_aspp_sum_shifts_each_tap_with_a_few_ops():
    """Its traced forward and backward: a Pad and a Slice per tap, no per-tap shape arithmetic.

    Every node of a traced training step costs host memory in each copy of
    the graph TensorFlow keeps; the classifier's 36 taps, forward and
    backward, twice per step, used to be a fifth of a MinEnt step's nodes.
    """
    aspp, _, weights, _ = _heads((6, 12, 18, 24), channels=4)
    x = tf.zeros([1, 9, 11, 4])

    @tf.function
    def forward_backward(x):
        return _output_and_gradients(aspp, x, weights)

    graph = forward_backward.get_concrete_function(x).graph
    ops = [op.type for op in graph.get_operations()]
    taps = 4 * 9
    # A Pad and a Slice per tap for the shift, as many for its gradient (the
    # opposite shift); 4 more Slices: the gradient of the kernels' concat.
    assert ops.count("Pad") == 2 * taps and ops.count("Slice") == 2 * taps + 4, ops
    assert ops.count("Shape") <= 4 and ops.count("StridedSlice") <= 4, ops
    # With their constants, the sums and custom_gradient's identities, about
    # 16 ops per tap (44 with TensorFlow's own Pad and StridedSlice gradients).
    assert len(ops) < 18 * taps, len(ops)
