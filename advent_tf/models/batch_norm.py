"""Batch normalisation with the reference's frozen affine parameters.

The reference (valeoai/ADVENT, DeepLab-V2 ResNet-101) sets `requires_grad =
False` on every BN weight and bias, yet keeps the network in `train()` mode:
each forward pass during training normalises with the statistics of the
current batch (one image) and moves the running statistics. Keras'
`BatchNormalization(trainable=False)` instead switches to inference
statistics (since Keras 2.1.3 a frozen BN layer runs in inference mode even
when called with training=True), so this layer implements the PyTorch
semantics explicitly.
"""

import keras
import tensorflow as tf

from advent_tf.experiment.config import BN_MODES


@keras.saving.register_keras_serializable(package="advent_tf")
class BatchNorm(keras.layers.Layer):
    """PyTorch-style BatchNorm2d (channels last) with non-trainable gamma/beta.

    Modes:
      * ``"reference"``: ``training=True`` normalises with the batch mean and
        biased batch variance and updates the moving statistics as PyTorch
        does (``momentum`` 0.1 weighting the new value, unbiased batch
        variance ``n / (n - 1)`` for the moving variance); ``training=False``
        normalises with the moving statistics.
      * ``"frozen"``: always normalises with the moving statistics and never
        updates them.

    gamma and beta are never trainable in either mode: the reference freezes
    them, and keeping them out of ``trainable_variables`` keeps them out of
    every optimizer (and out of weight decay). Under a mixed policy the
    input stays in its float16/bfloat16 compute dtype: the fused op's
    half-precision kernels compute the statistics and the normalisation in
    float32 internally (batch statistics would overflow float16 and lose
    digits in bfloat16) and return the compute dtype, with no cast ops
    around it (casting to float32 and back cost a quarter of a bfloat16
    ResNet-101 inference and kept BN from fusing with its ReLU).

    Args:
      mode: ``"reference"`` or ``"frozen"``.
      epsilon: Added to the variance, 1e-5 as in PyTorch.
      momentum: PyTorch convention: ``moving = (1 - momentum) * moving +
        momentum * batch`` (Keras' momentum would be ``1 - momentum``).
      **kwargs: Passed to `keras.layers.Layer` (``name``, ``dtype``).

    Raises:
      ValueError: If ``mode`` is not one of ``BN_MODES``.
    """

    def __init__(self, mode="reference", epsilon=1e-5, momentum=0.1, **kwargs):
        super().__init__(**kwargs)
        if mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {mode!r}.")
        self.mode = mode
        self.epsilon = epsilon
        self.momentum = momentum

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("BatchNorm needs a known channel dimension.")
        # Created in the order gamma, beta, moving_mean, moving_variance so that
        # `get_weights()` lines up with PyTorch's weight, bias, running_mean,
        # running_var. autocast=False keeps them float32 under mixed precision.
        # aggregation="mean" makes MirroredStrategy average the replicas'
        # updates; with the default "none" every replica silently keeps its
        # own moving statistics and only replica 0's get saved.
        self.gamma = self.add_weight(
            name="gamma", shape=(channels,), initializer="ones",
            trainable=False, autocast=False)
        self.beta = self.add_weight(
            name="beta", shape=(channels,), initializer="zeros",
            trainable=False, autocast=False)
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(channels,), initializer="zeros",
            trainable=False, autocast=False, aggregation="mean")
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(channels,), initializer="ones",
            trainable=False, autocast=False, aggregation="mean")

    def call(self, inputs, training=None):
        # One FusedBatchNormV3 op (and one FusedBatchNormGradV3 in the
        # backward pass) instead of moments + affine: oneDNN runs it in a
        # single pass, and in inference Grappler folds it into the preceding
        # convolution. Together about 8% of a ResNet-101 training step.
        x = inputs
        if self.mode == "reference" and training:
            # The op normalises with the biased batch variance and moves the
            # statistics itself, (1 - momentum) * moving + momentum * batch,
            # with the unbiased batch variance (n / (n - 1)): exactly what
            # PyTorch stores in running_mean and running_var. In the op rather
            # than as separate multiply-adds because every node of the traced
            # step costs host memory in each copy of its graph (this saved
            # ~17 nodes per BN layer and pass: ~3,500 in a MinEnt step).
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=True,
                exponential_avg_factor=self.momentum)
            count = x.shape[:-1].num_elements()
            if count is None or count < 2:
                # A single value per channel has no unbiased variance
                # (PyTorch raises there; the op would store the biased 0):
                # keep the moving value.
                count = tf.reduce_prod(tf.shape(x)[:-1])
                variance = tf.where(count > 1, variance, self.moving_variance)
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
        else:
            outputs = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon,
                is_training=False)[0]
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mode": self.mode, "epsilon": self.epsilon, "momentum": self.momentum})
        return config
