"""The fully convolutional discriminator of AdvEnt (paper eq. 7-9).

Mirrors the reference's ``get_fc_discriminator``: five Conv2d(k=4, s=2,
p=1, bias) num_classes -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1, LeakyReLU(0.2)
after the first four, no normalisation, logits out. Layers are named after
the indices of the PyTorch ``nn.Sequential`` (convs ``D_0, D_2, ..., D_8``,
activations ``D_1, ..., D_7``) so that state-dict keys ``D.N.*`` map by name.
"""

import keras

from advent_tf.models.layers import (
    pytorch_default_bias_initializer,
    pytorch_default_kernel_initializer,
)

CONV_INDICES = (0, 2, 4, 6, 8)
_KERNEL_SIZE = 4


def build_discriminator(num_classes=19, ndf=64, name="discriminator", dtype=None):
    """Builds the AdvEnt discriminator.

    Args:
      num_classes: Channels of the weighted self-information map it sees.
      ndf: Width of the first conv; later ones double it up to 8 * ndf.
      name: Model name (two instances, aux and main, need distinct names).
      dtype: Keras dtype policy of its layers; None follows the global
        policy. The training factory passes "float32" (see
        `experiment.factory.build_method`).

    Returns:
      A functional `keras.Model` from an NHWC ``num_classes``-channel map of
      any size to a one-channel logit map at 1/32 resolution (PyTorch's
      ``floor((n + 2 - 4) / 2) + 1`` per conv: 512x1024 -> 16x32).
    """
    filters = (ndf, ndf * 2, ndf * 4, ndf * 8, 1)
    inputs = keras.Input(shape=(None, None, num_classes), name="self_information",
                         dtype="float32")
    x = inputs
    in_channels = num_classes
    for i, (index, out_channels) in enumerate(zip(CONV_INDICES, filters)):
        # Explicit symmetric padding 1 + VALID is PyTorch's padding=1 exactly;
        # 'same' with stride 2 would pad asymmetrically.
        x = keras.layers.ZeroPadding2D(1, name=f"D_{index}_pad", dtype=dtype)(x)
        x = keras.layers.Conv2D(
            out_channels, _KERNEL_SIZE, strides=2, padding="valid", use_bias=True,
            kernel_initializer=pytorch_default_kernel_initializer(),
            bias_initializer=pytorch_default_bias_initializer(
                in_channels * _KERNEL_SIZE * _KERNEL_SIZE),
            name=f"D_{index}", dtype=dtype)(x)
        if i < len(filters) - 1:
            x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"D_{index + 1}", dtype=dtype)(x)
        in_channels = out_channels
    return keras.Model(inputs, x, name=name)
