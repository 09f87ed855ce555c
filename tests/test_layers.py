"""Tests for the shared building blocks in advent_tf.models.layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.models import layers as layers_lib
from advent_tf.models.layers import PointwiseConv2D, TapSumConv2D


def _pair(rate, filters=5, seed=0):
    """A TapSumConv2D and a plain dilated Conv2D holding the same weights."""
    kwargs = dict(filters=filters, kernel_size=3, padding="same",
                  dilation_rate=rate, use_bias=True,
                  bias_initializer=keras.initializers.RandomUniform(-1, 1, seed=seed),
                  kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=seed))
    return TapSumConv2D(**kwargs), keras.layers.Conv2D(**kwargs)


def _output_and_gradients(fn, x, sources):
    """``(fn(x), d/dx, d/dsource...)`` of a non-linear scalar of ``fn(x)`` (summed in float32)."""
    with tf.GradientTape() as tape:
        tape.watch([x] + [s for s in sources if isinstance(s, tf.Tensor)])
        y = fn(x)
        y32 = tf.cast(y, tf.float32)
        loss = tf.reduce_sum(y32 * tf.sin(y32))
    return (y, *tape.gradient(loss, [x, *sources]))


@pytest.mark.parametrize("rate", [1, 2, 6, 24])
@pytest.mark.parametrize("shape", [(2, 9, 9, 7), (1, 5, 13, 3), (1, 33, 65, 4)])
def test_tap_sum_equals_dilated_convolution_and_its_gradients(rate, shape):
    # Rate 24 on 9x9 / 5x13 maps: most taps fall wholly outside the map, as
    # in the tests' 65x65 images; the zero fill must still give 'same' output.
    x = tf.constant(np.random.default_rng(rate).normal(size=shape), tf.float32)
    taps, conv = _pair(rate)
    taps.build(shape)
    conv.build(shape)
    conv.set_weights(taps.get_weights())
    grads = [_output_and_gradients(layer, x, [layer.kernel, layer.bias])
             for layer in (taps, conv)]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want.numpy()).max())


def test_tap_sum_under_bfloat16_policy_sums_in_float32():
    shape = (1, 17, 23, 8)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    _, conv = _pair(6, filters=4)
    conv.build(shape)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed, _ = _pair(6, filters=4)
        mixed.build(shape)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(conv.get_weights())
    got = mixed(x)
    assert got.dtype == tf.bfloat16
    want = conv(x).numpy()
    # One bfloat16 rounding of the inputs/products (8 bits of mantissa).
    np.testing.assert_allclose(tf.cast(got, tf.float32), want, rtol=0,
                               atol=3e-2 * np.abs(want).max())


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=1), dict(kernel_size=3, strides=2),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, data_format="channels_first"),
])
def test_tap_sum_rejects_what_it_does_not_compute(kwargs):
    kwargs.setdefault("padding", "same")
    with pytest.raises(ValueError, match="TapSumConv2D supports"):
        TapSumConv2D(4, dilation_rate=1 if kwargs.get("strides") else 2,
                     name="head", **kwargs)


def test_tap_sum_config_round_trip():
    layer = TapSumConv2D(3, 3, padding="same", dilation_rate=12, name="layer6_x")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is TapSumConv2D
    assert tuple(clone.dilation_rate) == (12, 12) and clone.name == "layer6_x"


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
    assert kinds["layer3_0_conv2"] is keras.layers.Conv2D
