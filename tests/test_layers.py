"""Tests for the shared building blocks in advent_tf.models.layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.models.layers import TapSumConv2D


def _pair(rate, filters=5, seed=0):
    """A TapSumConv2D and a plain dilated Conv2D holding the same weights."""
    kwargs = dict(filters=filters, kernel_size=3, padding="same",
                  dilation_rate=rate, use_bias=True,
                  bias_initializer=keras.initializers.RandomUniform(-1, 1, seed=seed),
                  kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=seed))
    return TapSumConv2D(**kwargs), keras.layers.Conv2D(**kwargs)


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
    grads = []
    for layer in (taps, conv):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads.append((y, *tape.gradient(loss, [x, layer.kernel, layer.bias])))
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
