"""DeepLab-V2 VGG-16, the paper's second backbone.

The ADVENT reference code has no VGG network; the paper uses DeepLab-V2
VGG-16 with the same ASPP classifier as the ResNet. This module follows the
DeepLab-V2 (Caffe) layout:

  * VGG-16 conv1_1 ... conv5_3 (3x3, bias, ReLU).
  * pool1-pool3: 3x3, stride 2, padding 1, ceil mode (Caffe pooling rounds
    up), so 512x1024 -> 65x129 exactly as the ResNet.
  * pool4, pool5: 3x3, stride 1, padding 1 (no downsampling); conv5_x are
    dilated by 2 to keep conv5's receptive field; output stride 8.
  * fc6: 3x3 conv, dilation 4, 1024 channels, ReLU; fc7: 1x1 conv, 1024
    channels, ReLU.
  * The four-branch ASPP sum classifier (rates 6, 12, 18, 24) on fc7.

Choices, documented because sources differ:
  * AdaptSegNet's ``DeeplabVGG`` (the PyTorch port the DA literature reuses)
    instead drops pool4/pool5 altogether, keeps torchvision's 2x2 floor
    pools and makes fc7 a second 3x3 dilation-4 conv. We follow the original
    DeepLab-V2 (Caffe) definition above, whose ceil-mode pools also give the
    ResNet's output sizes.
  * Dropout after fc6/fc7 (Caffe DeepLab) is omitted, as in AdaptSegNet and
    the ResNet reference, which have none.
  * There is no batch normalisation, hence no BN mode, and no auxiliary head:
    the paper's VGG-16 results are single-level.
  * Backbone convs use PyTorch's default init (real training loads
    ImageNet weights over them); the classifier uses N(0, 0.01) weights like
    the ResNet heads.

Layers are named conv1_1 ... conv5_3, pool1 ... pool5, fc6, fc7 and
``classifier_conv2d_list_{0..3}`` (the ASPP sum is ``classifier``).
"""

import keras

from advent_tf.models.layers import (
    CeilMaxPool2D,
    DilatedConv2D,
    aspp_classifier,
    pytorch_default_bias_initializer,
    pytorch_default_kernel_initializer,
)

# (number of convs, channels, dilation, pool stride) per VGG-16 block.
_VGG16_BLOCKS = ((2, 64, 1, 2), (2, 128, 1, 2), (3, 256, 1, 2),
                 (3, 512, 1, 1), (3, 512, 2, 1))
_FC_CHANNELS = 1024


def _conv_relu(x, filters, kernel_size, name, in_channels, dilation_rate=1):
    """Conv (bias, PyTorch default init, 'same' == padding dilation) + ReLU."""
    layer = DilatedConv2D if dilation_rate > 1 else keras.layers.Conv2D
    x = layer(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate,
        use_bias=True,
        kernel_initializer=pytorch_default_kernel_initializer(),
        bias_initializer=pytorch_default_bias_initializer(
            in_channels * kernel_size * kernel_size),
        name=name)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_vgg16(num_classes=19, name=None):
    """Builds single-level DeepLab-V2 VGG-16.

    Args:
      num_classes: Number of segmentation classes.
      name: Model name; defaults to ``"deeplabv2_vgg16"``.

    Returns:
      A functional `keras.Model` on float NHWC input of any size (BGR minus
      the mean) that outputs the stride-8 main logits (not upsampled).
    """
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = inputs
    channels = 3
    for block, (num_convs, filters, dilation, pool_stride) in enumerate(
            _VGG16_BLOCKS, start=1):
        for i in range(1, num_convs + 1):
            x = _conv_relu(x, filters, 3, f"conv{block}_{i}", channels,
                           dilation_rate=dilation)
            channels = filters
        x = CeilMaxPool2D(strides=pool_stride, name=f"pool{block}")(x)
    x = _conv_relu(x, _FC_CHANNELS, 3, "fc6", channels, dilation_rate=4)
    x = _conv_relu(x, _FC_CHANNELS, 1, "fc7", _FC_CHANNELS)
    logits = aspp_classifier(x, num_classes, "classifier", in_channels=_FC_CHANNELS)
    return keras.Model(inputs, logits, name=name or "deeplabv2_vgg16")
