"""Tests for advent_tf.core.losses against the official PyTorch ADVENT code.

The loss functions are XLA-compiled tf.functions, so every value and gradient
checked here is the compiled one.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import losses
from advent_tf.core import ops


def _nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def _value_and_grad(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return value.numpy(), tape.gradient(value, x).numpy()


def _assert_grad_close(grad, expected):
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_domain_labels_follow_reference():
    assert losses.SOURCE_DOMAIN_LABEL == 0.0
    assert losses.TARGET_DOMAIN_LABEL == 1.0


def test_segmentation_loss_and_gradient(ref):
    logits = _nhwc(ref["f_seg_logits_lowres"])
    labels = tf.constant(ref["f_seg_labels"])
    value, grad = _value_and_grad(lambda t: losses.segmentation_loss(t, labels), logits)
    np.testing.assert_allclose(value, ref["f_seg_loss"], rtol=1e-5)
    _assert_grad_close(grad, _nhwc(ref["f_seg_grad_logits_lowres"]))
    # The loss's weight in a sum (0.1 for the aux head) scales the gradient.
    _, grad = _value_and_grad(lambda t: -0.1 * losses.segmentation_loss(t, labels), logits)
    _assert_grad_close(grad, -0.1 * _nhwc(ref["f_seg_grad_logits_lowres"]))


def test_segmentation_loss_all_ignored_is_zero():
    logits = tf.random.stateless_normal([1, 3, 4, 5], seed=(0, 1))
    labels = tf.fill([1, 17, 25], 255)
    value, grad = _value_and_grad(lambda t: losses.segmentation_loss(t, labels), logits)
    assert value == 0.0
    assert np.all(grad == 0.0)


def _plain_segmentation_loss(logits, labels):
    """Eq. 1 written directly, for autodiff: the upsampled map at once."""
    up = ops.resize_bilinear_align_corners(logits, labels.shape[1:3])
    valid = tf.not_equal(labels, 255)
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, 0), logits=up)
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(pixel_loss * valid) / tf.reduce_sum(valid)


@pytest.mark.parametrize("logits_shape, label_size", [
    ((2, 9, 17, 19), (65, 129)),  # label rows not a multiple of the block
    ((1, 3, 4, 5), (17, 25)),  # fewer label rows than one block
    ((1, 5, 6, 3), (5, 6)),  # no upsampling
    ((1, 12, 21, 19), (96, 161)),  # whole blocks
])
def test_segmentation_loss_blocks_equal_the_whole_map(logits_shape, label_size):
    rng = np.random.default_rng(0)
    logits = (3 * rng.normal(size=logits_shape)).astype(np.float32)
    labels = rng.integers(0, logits_shape[-1], size=(logits_shape[0], *label_size))
    labels[:, : label_size[0] // 3] = 255
    labels = tf.constant(labels, tf.int32)
    value, grad = _value_and_grad(lambda t: losses.segmentation_loss(t, labels), logits)
    want_value, want_grad = _value_and_grad(lambda t: _plain_segmentation_loss(t, labels), logits)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6 * np.abs(want_grad).max())


_LOSS_MEMORY_SCRIPT = """
import numpy as np, tensorflow as tf
from advent_tf.core import losses
logits = tf.zeros([1, 46, 81, 19])
labels = tf.constant(np.random.default_rng(0).integers(0, 19, (1, 360, 640)), tf.int32)
losses._cross_entropy_and_gradient(logits, labels)
resting = tf.config.experimental.get_memory_info("CPU:0")["current"]
tf.config.experimental.reset_memory_stats("CPU:0")
losses._cross_entropy_and_gradient(logits, labels)[1].numpy()
print(tf.config.experimental.get_memory_info("CPU:0")["peak"] - resting)
"""


def test_segmentation_loss_holds_at_most_about_one_label_sized_map():
    # XLA's compiled loss and gradient of the whole map held 5.4 maps of
    # upsampled logits (361 MiB at 1280x720) at a full-resolution step's peak.
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _LOSS_MEMORY_SCRIPT], env=env,
                         capture_output=True, text=True, check=True)
    label_map_bytes = 360 * 640 * 19 * 4
    assert int(out.stdout.split()[-1]) < 1.5 * label_map_bytes, out.stdout


def test_segmentation_loss_backward_keeps_nothing_label_sized():
    # At full resolution the training step peaks while the source losses wait
    # for their backward pass: what a loss keeps for it must be low-resolution.
    logits_size, label_size = [1, 9, 17, 19], [1, 65, 129]

    @tf.function
    def gradient(logits, labels):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = losses.segmentation_loss(logits, labels)
        return tape.gradient(loss, logits)

    graph = gradient.get_concrete_function(
        tf.TensorSpec(logits_size, tf.float32), tf.TensorSpec(label_size, tf.int32)).graph
    calls = [op for op in graph.get_operations()
             if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    assert calls
    kept = {t.name: t.shape for op in calls for t in op.outputs}
    assert all(shape.num_elements() <= np.prod(logits_size) for shape in kept.values()), kept


def test_segmentation_loss_casts_half_precision(ref):
    logits = _nhwc(ref["f_seg_logits_lowres"]).astype(np.float16)
    value, grad = _value_and_grad(
        lambda t: losses.segmentation_loss(t, ref["f_seg_labels"]), logits)
    assert value.dtype == np.float32 and grad.dtype == np.float16
    np.testing.assert_allclose(value, ref["f_seg_loss"], rtol=1e-3)
    expected = _nhwc(ref["f_seg_grad_logits_lowres"])
    np.testing.assert_allclose(grad, expected, rtol=1e-2, atol=1e-3 * np.abs(expected).max())


def test_entropy_map(ref):
    prob = tf.nn.softmax(_nhwc(ref["a_logits"]))
    out = losses.entropy_map(prob).numpy()
    np.testing.assert_allclose(out, ref["a_prob_2_entropy_chsum"], rtol=1e-5, atol=1e-6)
    info = losses.self_information_map(prob).numpy()
    assert info.shape == (1, 65, 129, 19)
    np.testing.assert_allclose(info.sum(-1), out, rtol=1e-6)


def test_entropy_loss_and_gradient(ref):
    value, grad = _value_and_grad(
        lambda t: losses.entropy_loss(tf.nn.softmax(t)), _nhwc(ref["a_logits"]))
    np.testing.assert_allclose(value, ref["a_entropy_loss"], rtol=1e-6)
    _assert_grad_close(grad, _nhwc(ref["a_entropy_loss_grad_logits"]))


def test_entropy_loss_extremes(ref):
    uniform = tf.fill([1, 4, 6, 19], 1.0 / 19)
    onehot = tf.one_hot(tf.zeros([1, 4, 6], tf.int32), 19)
    # XLA:CPU evaluates log inside fused reductions with a polynomial good to
    # a few ulp (1 - 3e-6 here, 1 - 6e-8 in PyTorch), hence 1e-5.
    np.testing.assert_allclose(losses.entropy_loss(uniform).numpy(),
                               ref["a_uniform_entropy_loss"], rtol=1e-5)
    assert abs(losses.entropy_loss(onehot).numpy()) == ref["a_onehot_entropy_loss"] == 0.0


def test_entropy_loss_after_upsampling(ref):
    def loss(logits):
        up = ops.resize_bilinear_align_corners(logits, (256, 512))
        return losses.entropy_loss(tf.nn.softmax(up))

    value, grad = _value_and_grad(tf.function(loss, jit_compile=True),
                                  _nhwc(ref["a2_logits_lowres"]))
    np.testing.assert_allclose(value, ref["a2_entropy_loss"], rtol=1e-5)
    _assert_grad_close(grad, _nhwc(ref["a2_entropy_loss_grad"]))


def test_ranked_entropy_loss_hand_computed():
    # Two classes, so the normalised entropy of a pixel with P = (p, 1 - p) is
    # the binary entropy in bits.
    p = np.array([[0.5, 0.1, 0.3], [0.01, 0.2, 0.45]], np.float32)  # 1 x 2 x 3 pixels
    prob = np.stack([p, 1.0 - p], axis=-1)[None]
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p)).ravel()
    top = np.sort(entropy)[::-1]
    # 0.3 * 6 = 1.8 -> 2 pixels; 0.5 * 6 = 3 pixels; 0.01 * 6 -> at least 1.
    for fraction, k in [(0.3, 2), (0.5, 3), (0.01, 1)]:
        value = losses.ranked_entropy_loss(prob, fraction).numpy()
        np.testing.assert_allclose(value, top[:k].mean(), rtol=1e-6)


def test_ranked_entropy_loss_full_fraction_and_gradient(ref):
    logits = _nhwc(ref["a_logits"])
    value, grad = _value_and_grad(
        lambda t: losses.ranked_entropy_loss(tf.nn.softmax(t), 1.0), logits)
    np.testing.assert_allclose(value, ref["a_entropy_loss"], rtol=1e-6)
    _assert_grad_close(grad, _nhwc(ref["a_entropy_loss_grad_logits"]))
    # Only the selected (high-entropy) pixels receive a gradient.
    _, grad = _value_and_grad(
        lambda t: losses.ranked_entropy_loss(tf.nn.softmax(t), 0.3), logits)
    touched = np.any(grad != 0.0, axis=-1).sum()
    assert touched == math.floor(0.3 * 65 * 129 + 0.5)


def test_ranked_entropy_loss_rejects_bad_fraction():
    with pytest.raises(ValueError):
        losses.ranked_entropy_loss(tf.fill([1, 2, 2, 3], 1.0 / 3), 0.0)


def test_adversarial_loss(ref):
    d_out = _nhwc(ref["b_d_out"])
    np.testing.assert_allclose(
        losses.adversarial_loss(d_out, losses.SOURCE_DOMAIN_LABEL).numpy(),
        ref["b_bce_label0"], rtol=1e-6)
    np.testing.assert_allclose(
        losses.adversarial_loss(d_out, losses.TARGET_DOMAIN_LABEL).numpy(),
        ref["b_bce_label1"], rtol=1e-6)


def _reference_discriminator(weights):
    """The reference's 5-layer discriminator, local so this test needs no model code."""
    layers = []
    for i, name in enumerate(["D.0", "D.2", "D.4", "D.6", "D.8"]):
        kernel = np.transpose(weights[name + ".weight"], (2, 3, 1, 0))  # OIHW -> HWIO
        layers.append((tf.constant(kernel), tf.constant(weights[name + ".bias"]), i < 4))

    def discriminator(x):
        for kernel, bias, leaky in layers:
            x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
            x = tf.nn.conv2d(x, kernel, strides=2, padding="VALID") + bias
            if leaky:
                x = tf.nn.leaky_relu(x, alpha=0.2)
        return x

    return discriminator


def test_adversarial_generator_chain(ref, ref_discriminator):
    discriminator = _reference_discriminator(ref_discriminator)

    @tf.function(jit_compile=True)
    def d_out(logits):
        return discriminator(losses.self_information_map(tf.nn.softmax(logits)))

    logits = _nhwc(ref["a_logits"])
    out = d_out(tf.constant(logits)).numpy()
    np.testing.assert_allclose(out, _nhwc(ref["b_D_out_on_a"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        losses.adversarial_loss(out, losses.TARGET_DOMAIN_LABEL).numpy(),
        ref["b_bce_D_on_a_label1"], rtol=1e-5)
    value, grad = _value_and_grad(
        lambda t: losses.adversarial_loss(d_out(t), losses.SOURCE_DOMAIN_LABEL), logits)
    np.testing.assert_allclose(value, ref["b_adv_loss_on_a"], rtol=1e-5)
    _assert_grad_close(grad, _nhwc(ref["b_adv_grad_logits"]))


def test_class_ratio_prior_loss_hand_computed():
    # Sample 0 predicts class 0 everywhere, sample 1 splits 50/50 between 1 and 2.
    prob0 = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (2, 2, 1))
    prob1 = np.tile(np.array([0.0, 0.5, 0.5], np.float32), (2, 2, 1))
    prob = np.stack([prob0, prob1])
    prior = np.array([0.2, 0.5, 0.3], np.float32)
    # mu * prior = (0.1, 0.25, 0.15). Sample 0: 0 + 0.25 + 0.15; sample 1: 0.1 + 0 + 0.
    expected = (0.4 + 0.1) / 2
    np.testing.assert_allclose(
        losses.class_ratio_prior_loss(prob, prior).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(
        losses.class_ratio_prior_loss(prob, prior, mu=1.0).numpy(), (0.8 + 0.2) / 2, rtol=1e-6)
