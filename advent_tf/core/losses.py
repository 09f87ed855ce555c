"""The losses and maps of ADVENT (Vu et al., CVPR 2019), one equation per function.

Everything is NHWC. Segmentation logits come out of the network at stride 8;
like the reference, callers upsample them to the input size with
`ops.resize_bilinear_align_corners` before the softmax (for the entropy and
self-information maps) and before the discriminator; `segmentation_loss` does
that upsampling itself because it needs the label size anyway.

Every function computes with XLA (`xla.compiled`: inlined into an enclosing
XLA-compiled train step; `segmentation_loss` is a custom gradient around the
compiled `_cross_entropy_and_gradient`) and casts its inputs to float32 first, so
that mixed-precision (float16/bfloat16) activations give the same losses as the
reference's float32 ones.
"""

import math

import tensorflow as tf

from advent_tf.core import constants
from advent_tf.core import ops
from advent_tf.core import xla

# Domain labels of the discriminator as the reference code assigns them. The
# paper (eq. 7-9) writes source = 1 and target = 0; only the naming of the two
# classes differs, the optimisation problem is the same.
SOURCE_DOMAIN_LABEL = 0.0
TARGET_DOMAIN_LABEL = 1.0

# The reference adds this inside log2 so that P = 0 gives 0 * log(1e-30) = 0.
_LOG_EPS = 1e-30


def segmentation_loss(logits, labels):
    """Source cross-entropy L_seg of the supervised term (paper eq. 1).

    The logits are upsampled (bilinear, align_corners=True) to the label size,
    then the softmax cross-entropy is averaged over the pixels whose label is not
    `constants.IGNORE_LABEL`, as the reference's `CrossEntropy2d` does.

    When every pixel is ignored the loss is 0 (with a zero gradient); the
    reference returns NaN there (mean over an empty set), which would poison the
    weights of a real run.

    The gradient with respect to the low-resolution logits is computed with
    the loss (`_cross_entropy_and_gradient`) and is all the backward pass
    keeps: autodiff of the compiled loss kept label-sized residuals (the
    upsampled logits and their softmax, 67 MiB each at 1280x720 with 19
    classes) alive from the loss to the backward pass, at a full-resolution
    training step's memory peak.

    Args:
      logits: [B, h, w, C] low-resolution logits.
      labels: [B, H, W] integer train ids, `constants.IGNORE_LABEL` = ignore.

    Returns:
      Scalar float32 loss.
    """
    @tf.custom_gradient
    def loss_of(logits):
        # Not recorded by an enclosing tape: the gradient is `backward`, and
        # a recorded call would be rewritten to also return the loop's
        # intermediates, which cannot leave an XLA cluster.
        loss, gradient = _cross_entropy_and_gradient(tf.stop_gradient(logits), labels)

        def backward(upstream):
            return tf.cast(upstream * gradient, logits.dtype)

        return loss, backward

    return loss_of(logits)


# Label rows per block of `_cross_entropy_and_gradient`: 32 x 1280 pixels of 19
# classes are 3 MiB per map, against 67 MiB for a whole 1280x720 label.
_ROWS_PER_BLOCK = 32


@xla.compiled
def _cross_entropy_and_gradient(logits, labels):
    """`segmentation_loss` and its float32 gradient w.r.t. `logits`, a block of rows at a time.

    The same function as the masked mean of the softmax cross-entropy over
    `ops.resize_bilinear_align_corners(logits, label size)`, with the
    same upsampled values, but the label-sized maps (upsampled logits, their
    softmax and its gradient) exist for `_ROWS_PER_BLOCK` label rows at a
    time: XLA's compiled forward-and-gradient of the whole map allocated 361
    MiB of temporaries at 1280x720 (257 MiB hand-written), at the training
    step's memory peak. The gradient goes back through the upsampling by
    `ops.lerp_taps_adjoint`.

    Args:
      logits: [B, h, w, C] low-resolution logits.
      labels: [B, H, W] integer train ids, `constants.IGNORE_LABEL` = ignore.

    Returns:
      (scalar float32 loss, [B, h, w, C] float32 gradient of the loss).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    low_height, low_width = tf.shape(logits)[1], tf.shape(logits)[2]
    height, width = tf.shape(labels)[1], tf.shape(labels)[2]
    # Upsampled along the width first, as `ops.resize_bilinear_align_corners`
    # does: [B, h, W, C], 8.8 MiB at 161 -> 1280 columns. The same taps give
    # the adjoint at the end.
    width_taps = ops.linear_taps(low_width, width)
    wide = ops.lerp_taps(logits, 2, *width_taps)
    valid = tf.not_equal(labels, constants.IGNORE_LABEL)
    num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
    # Padded label rows are ignored: they add nothing to the loss or gradient.
    num_blocks = (height + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
    padding = [[0, 0], [0, num_blocks * _ROWS_PER_BLOCK - height], [0, 0]]
    labels = tf.pad(labels, padding, constant_values=constants.IGNORE_LABEL)
    row0, row1, weight1 = (tf.pad(t, padding[1:2]) for t in ops.linear_taps(low_height, height))

    def block(index, loss_sum, wide_gradient):
        rows = index * _ROWS_PER_BLOCK + tf.range(_ROWS_PER_BLOCK)
        taps = [tf.gather(t, rows) for t in (row0, row1, weight1)]
        # The height pass of `ops.lerp_along`, for these rows: the same values.
        upsampled = ops.lerp_taps(wide, 1, *taps)
        block_labels = tf.gather(labels, rows, axis=1)
        block_valid = tf.not_equal(block_labels, constants.IGNORE_LABEL)
        # Ignored pixels get class 0 so the op sees a valid id; they are masked out.
        # The op returns each pixel's loss and its gradient (softmax - one-hot).
        pixel_loss, pixel_gradient = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
            features=tf.reshape(upsampled, [-1, tf.shape(upsampled)[-1]]),
            labels=tf.reshape(tf.where(block_valid, block_labels, 0), [-1]))
        pixel_gradient = tf.reshape(pixel_gradient, tf.shape(upsampled))
        block_valid = tf.cast(block_valid, tf.float32)
        pixel_loss = tf.reshape(pixel_loss, tf.shape(block_valid))
        loss_sum += tf.reduce_sum(pixel_loss * block_valid)
        pixel_gradient *= tf.math.divide_no_nan(block_valid, num_valid)[..., None]
        wide_gradient += ops.lerp_taps_adjoint(pixel_gradient, 1, *taps, low_height)
        return index + 1, loss_sum, wide_gradient

    # A bound on the iterations lets XLA compile the loop inside a step that a
    # tape records (it then sizes the loop's accumulators from it).
    _, loss_sum, wide_gradient = tf.while_loop(
        lambda index, *_: index < num_blocks, block,
        (tf.constant(0), tf.constant(0.0), tf.zeros_like(wide)), maximum_iterations=num_blocks)
    gradient = ops.lerp_taps_adjoint(wide_gradient, 2, *width_taps, low_width)
    return tf.math.divide_no_nan(loss_sum, num_valid), gradient


@xla.compiled
def self_information_map(prob):
    """Weighted self-information map I_x (paper section 3.2, the term inside eq. 2).

    I_x(h, w, c) = -P_x(h, w, c) * log P_x(h, w, c), normalised by log C as the
    reference's `prob_2_entropy` does (-P * log2(P + 1e-30) / log2(C)). This is
    the discriminator's input in AdvEnt (eq. 7-9).

    Args:
      prob: [B, H, W, C] softmax probabilities.

    Returns:
      [B, H, W, C] float32 map; its sum over C is the entropy map.
    """
    prob = tf.cast(prob, tf.float32)
    num_classes = prob.shape[-1]
    # log2(P) / log2(C) = ln(P) / ln(C).
    return -prob * tf.math.log(prob + _LOG_EPS) / math.log(num_classes)


@xla.compiled
def entropy_map(prob):
    """Normalised entropy map E_x (paper eq. 2).

    E_x(h, w) = -1/log(C) * sum_c P_x(h, w, c) log P_x(h, w, c), in [0, 1].

    Args:
      prob: [B, H, W, C] softmax probabilities.

    Returns:
      [B, H, W] float32 entropy map.
    """
    return tf.reduce_sum(self_information_map(prob), axis=-1)


@xla.compiled
def entropy_loss(prob):
    """MinEnt loss L_ent (paper eq. 3): the entropy map averaged over pixels.

    Like the reference's `entropy_loss`, the average is over batch and pixels
    together (the paper writes a sum over pixels; the weight lambda_ent absorbs
    the difference).

    Args:
      prob: [B, H, W, C] softmax probabilities of target images (the reference
        takes the softmax of the upsampled logits).

    Returns:
      Scalar float32 loss.
    """
    return tf.reduce_mean(entropy_map(prob))


@xla.compiled
def ranked_entropy_loss(prob, top_fraction):
    """Entropy loss with entropy ranking, ER (paper section 4.3).

    The entropy loss of eq. 3 restricted, for each sample, to its
    `top_fraction` highest-entropy pixels (30% in the paper): the confident
    pixels are left alone so that they cannot dominate the minimisation. The
    number of kept pixels is k = max(1, round(top_fraction * H * W)), rounded
    to the nearest integer (halves up). Rounding rather than ceil keeps k
    exact when top_fraction * H * W is an integer that floating point
    represents slightly above it. The per-sample means are then averaged over
    the batch; top_fraction = 1 gives `entropy_loss`. The reference code does
    not implement ER.

    Args:
      prob: [B, H, W, C] softmax probabilities with static H and W.
      top_fraction: Python float in (0, 1] (a new value retraces).

    Returns:
      Scalar float32 loss.

    Raises:
      ValueError: if top_fraction is outside (0, 1] or H, W are not static
        (XLA's top-k needs a constant k).
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}.")
    entropy = entropy_map(prob)
    if entropy.shape[1] is None or entropy.shape[2] is None:
        raise ValueError(f"ranked_entropy_loss needs a static H and W, got {prob.shape}.")
    num_pixels = entropy.shape[1] * entropy.shape[2]
    k = max(1, math.floor(top_fraction * num_pixels + 0.5))
    flat = tf.reshape(entropy, [-1, num_pixels])
    top = tf.math.top_k(flat, k=k, sorted=False).values
    return tf.reduce_mean(top)


@xla.compiled
def adversarial_loss(d_logits, domain_label):
    """Adversarial binary cross-entropy L_D of AdvEnt (paper eq. 7-9).

    Mean BCE-with-logits of a discriminator output map against a constant
    domain label, as the reference's `bce_loss`. The discriminator is trained
    with `SOURCE_DOMAIN_LABEL` on source maps and `TARGET_DOMAIN_LABEL` on
    target maps; the segmentation network is trained to fool it with the
    target maps labelled `SOURCE_DOMAIN_LABEL`.

    Args:
      d_logits: [B, h, w, 1] discriminator logits.
      domain_label: `SOURCE_DOMAIN_LABEL` or `TARGET_DOMAIN_LABEL` (Python
        float).

    Returns:
      Scalar float32 loss.
    """
    d_logits = tf.cast(d_logits, tf.float32)
    labels = tf.fill(tf.shape(d_logits), tf.cast(domain_label, tf.float32))
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=d_logits))


@xla.compiled
def class_ratio_prior_loss(prob, prior, mu=0.5):
    """Class-ratio prior loss L_cp (paper eq. 10).

    L_cp = sum_c max(0, mu * p_s(c) - p_t(c)), where p_t(c) is the mean of
    P(h, w, c) over the pixels of one target image and p_s the L1-normalised
    class histogram of the source labels. Only classes predicted less than
    mu times their source frequency are penalised. Computed per sample, then
    averaged over the batch (the paper states it for one image). The
    reference code does not implement CP.

    Args:
      prob: [B, H, W, C] softmax probabilities of target images.
      prior: [C] source class frequencies p_s (summing to 1).
      mu: relaxation of the prior (0.5 in the paper).

    Returns:
      Scalar float32 loss.
    """
    prob = tf.cast(prob, tf.float32)
    prior = tf.cast(prior, tf.float32)
    target_ratio = tf.reduce_mean(prob, axis=[1, 2])
    per_sample = tf.reduce_sum(tf.nn.relu(mu * prior - target_ratio), axis=-1)
    return tf.reduce_mean(per_sample)
