"""Tests for advent_tf.core.ops against the reference's align_corners=True upsampling."""

import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import ops


def _nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


@pytest.mark.parametrize("jit", [False, True])
def test_resize_matches_reference(ref, jit):
    x = _nhwc(ref["up_in"])
    expected = _nhwc(ref["up_out_align_corners_true"])
    resize = tf.function(
        lambda t: ops.resize_bilinear_align_corners(t, (256, 512)), jit_compile=jit)
    out = resize(tf.constant(x)).numpy()
    assert out.shape == (1, 256, 512, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_resize_keeps_corners_and_accepts_tensor_size():
    x = tf.random.stateless_normal([2, 5, 7, 3], seed=(1, 2))
    size = (tf.constant(9), tf.constant(13))
    out = ops.resize_bilinear_align_corners(x, size).numpy()
    for (i, j), (k, m) in [((0, 0), (0, 0)), ((0, -1), (0, -1)),
                           ((-1, 0), (-1, 0)), ((-1, -1), (-1, -1)), ((4, 6), (2, 3))]:
        np.testing.assert_allclose(out[:, i, j], x.numpy()[:, k, m], rtol=1e-6)


def test_resize_matches_tf_compat_align_corners():
    # TF's legacy kernel implements the same sampling; it cross-checks the
    # gradient too (the reference vectors only hold the forward pass).
    x = tf.random.stateless_normal([1, 6, 11, 2], seed=(3, 4))
    weights = tf.random.stateless_normal([1, 17, 31, 2], seed=(5, 6))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = ops.resize_bilinear_align_corners(x, (17, 31))
        theirs = tf.compat.v1.image.resize_bilinear(x, (17, 31), align_corners=True)
        loss_ours = tf.reduce_sum(ours * weights)
        loss_theirs = tf.reduce_sum(theirs * weights)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss_ours, x).numpy(),
                               tape.gradient(loss_theirs, x).numpy(), rtol=1e-5, atol=1e-5)


def test_resize_accepts_shape_slice_in_graph():
    # Callers pass tf.shape(images)[1:3]; a [2] tensor cannot be unpacked in a graph.
    x = tf.random.stateless_normal([1, 4, 5, 2], seed=(7, 8))
    images = tf.zeros([1, 7, 9, 3])

    @tf.function(jit_compile=True)
    def resize(t, images):
        return ops.resize_bilinear_align_corners(t, tf.shape(images)[1:3])

    np.testing.assert_allclose(resize(x, images).numpy(),
                               ops.resize_bilinear_align_corners(x, (7, 9)).numpy(), rtol=1e-6)
