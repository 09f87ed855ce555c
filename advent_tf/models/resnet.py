"""DeepLab-V2 ResNet ("ResNetMulti" of valeoai/ADVENT) as a flat Keras model.

Every layer is named after its PyTorch state-dict module path with '.'
replaced by '_' (``layer3_22_bn2`` holds ``layer3.22.bn2.*``), so a
checkpoint converter can map keys to layers by name alone.

Differences from a torchvision/Keras ResNet, all taken from the reference:
  * Caffe-style bottleneck: the block's stride sits on the first 1x1 conv.
  * The 3x3 conv of a block has padding = dilation; layer3 is dilated by 2
    and layer4 by 4 instead of striding, so the output stride is 8.
  * Every stage's first block has a projection shortcut (1x1 conv + BN), even
    where the shape would allow identity (layer3/layer4).
  * The stem max-pool is 3x3/2, padding 1, ceil mode (`CeilMaxPool2D`).
  * All convs are bias-free and initialised N(0, 0.01); BN gamma/beta are
    frozen (`BatchNorm`).
"""

import keras

from advent_tf.models.batch_norm import BatchNorm
from advent_tf.models.layers import (
    CeilMaxPool2D,
    DilatedConv2D,
    PointwiseConv2D,
    aspp_classifier,
)

RESNET_BLOCKS = {
    "resnet101": (3, 4, 23, 3),
    "resnet50": (3, 4, 6, 3),
    # One block per stage, same widths: the full topology (projection
    # shortcuts, dilation, ceil pool, both heads) at a fraction of the cost,
    # for tests and demos.
    "resnet_tiny": (1, 1, 1, 1),
    # resnet_tiny at a quarter of the widths (stem 16, layer4 512 channels):
    # about 16x cheaper, so the demo trains on a 2-core CPU in minutes.
    "resnet_mini": (1, 1, 1, 1),
}
# Channel divisor per backbone (1 = the reference widths).
_WIDTH_DIVISOR = {"resnet_mini": 4}

_EXPANSION = 4
_CONV_INIT_STDDEV = 0.01


def _conv(filters, kernel_size, name, strides=1, dilation_rate=1):
    """Bias-free conv with the reference's N(0, 0.01) init.

    'same' padding is exact here: the only 3x3 convs are stride 1 with
    padding = dilation, and the strided 1x1 convs need no padding at all.
    Stride-1 1x1 convs are `PointwiseConv2D` (a faster kernel gradient), the
    dilated 3x3 convs `DilatedConv2D` (less kept for the backward).
    """
    if kernel_size == 1 and strides == 1:
        layer = PointwiseConv2D
    elif dilation_rate > 1:
        layer = DilatedConv2D
    else:
        layer = keras.layers.Conv2D
    return layer(
        filters, kernel_size, strides=strides, padding="same",
        dilation_rate=dilation_rate, use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, _CONV_INIT_STDDEV),
        name=name)


def _bottleneck(x, planes, name, bn_mode, strides=1, dilation=1, projection=False):
    """One Caffe-style bottleneck block (expansion 4)."""
    if projection:
        shortcut = _conv(planes * _EXPANSION, 1, f"{name}_downsample_0",
                         strides=strides)(x)
        shortcut = BatchNorm(bn_mode, name=f"{name}_downsample_1")(shortcut)
    else:
        shortcut = x
    y = _conv(planes, 1, f"{name}_conv1", strides=strides)(x)
    y = BatchNorm(bn_mode, name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(planes, 3, f"{name}_conv2", dilation_rate=dilation)(y)
    y = BatchNorm(bn_mode, name=f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(planes * _EXPANSION, 1, f"{name}_conv3")(y)
    y = BatchNorm(bn_mode, name=f"{name}_bn3")(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def _stage(x, planes, num_blocks, name, bn_mode, strides=1, dilation=1):
    """A ResNet stage; its first block always carries a projection shortcut."""
    for i in range(num_blocks):
        x = _bottleneck(
            x, planes, f"{name}_{i}", bn_mode,
            strides=strides if i == 0 else 1, dilation=dilation,
            projection=(i == 0))
    return x


def build_resnet(backbone="resnet101", num_classes=19, multi_level=True,
                 bn_mode="reference", name=None):
    """Builds DeepLab-V2 ResNetMulti.

    Args:
      backbone: A key of `RESNET_BLOCKS`.
      num_classes: Number of segmentation classes.
      multi_level: Adds the auxiliary ASPP head (``layer5``) on layer3.
      bn_mode: `BatchNorm` mode, ``"reference"`` or ``"frozen"``.
      name: Model name; defaults to ``"deeplabv2_{backbone}"``.

    Returns:
      A functional `keras.Model` on float NHWC input of any size (already
      preprocessed: BGR minus the mean). It outputs stride-8 logits
      (not upsampled): ``[aux_logits, main_logits]`` if ``multi_level``, else
      ``main_logits``.

    Raises:
      ValueError: On an unknown ``backbone`` or ``bn_mode``.
    """
    if backbone not in RESNET_BLOCKS:
        raise ValueError(
            f"backbone must be one of {tuple(RESNET_BLOCKS)}, got {backbone!r}.")
    blocks = RESNET_BLOCKS[backbone]
    base = 64 // _WIDTH_DIVISOR.get(backbone, 1)
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(
        base, 7, strides=2, padding="valid", use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, _CONV_INIT_STDDEV),
        name="conv1")(x)
    x = BatchNorm(bn_mode, name="bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = CeilMaxPool2D(strides=2, name="maxpool")(x)
    x = _stage(x, base, blocks[0], "layer1", bn_mode)
    x = _stage(x, 2 * base, blocks[1], "layer2", bn_mode, strides=2)
    x3 = _stage(x, 4 * base, blocks[2], "layer3", bn_mode, dilation=2)
    x4 = _stage(x3, 8 * base, blocks[3], "layer4", bn_mode, dilation=4)
    main = aspp_classifier(x4, num_classes, "layer6", in_channels=8 * base * _EXPANSION)
    if multi_level:
        aux = aspp_classifier(x3, num_classes, "layer5", in_channels=4 * base * _EXPANSION)
        outputs = [aux, main]
    else:
        outputs = main
    return keras.Model(inputs, outputs, name=name or f"deeplabv2_{backbone}")
