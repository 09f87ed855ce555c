"""One entry point for the segmentation networks, and their variable groups."""

import numbers
import re

from advent_tf.models.batch_norm import BN_MODES
from advent_tf.models.resnet import RESNET_BLOCKS, build_resnet
from advent_tf.models.vgg import build_vgg16

RESNET_BACKBONES = tuple(RESNET_BLOCKS)
BACKBONES = RESNET_BACKBONES + ("vgg16",)

# Layer-name prefixes of the ASPP classifiers: layer5 (aux) / layer6 (main)
# in the ResNet, classifier in VGG-16. They train with a 10x learning rate.
_HEAD_PREFIXES = ("layer5_", "layer6_", "classifier_")


def build_segmenter(backbone="resnet101", num_classes=19, multi_level=True,
                    bn_mode="reference", name=None):
    """Builds a DeepLab-V2 segmentation network.

    Args:
      backbone: One of ``BACKBONES``: ``"resnet101"`` (the paper's main
        network), ``"resnet50"``, ``"resnet_tiny"`` (one block per stage, for
        tests), ``"resnet_mini"`` (resnet_tiny at a quarter of the widths,
        for the demo) or ``"vgg16"``.
      num_classes: Number of segmentation classes (19 for GTA5, 16 for SYNTHIA).
      multi_level: Adds the auxiliary head on layer3 (ResNet only).
      bn_mode: ``"reference"`` (batch statistics when ``training=True``, as the
        reference code trains) or ``"frozen"`` (always moving statistics).
        Ignored by VGG-16, which has no batch normalisation.
      name: Model name; defaults to ``"deeplabv2_{backbone}"``.

    Returns:
      A `keras.Model` on float NHWC images of shape (None, None, 3),
      preprocessed (BGR minus the mean), returning stride-8 logits:
      ``[aux_logits, main_logits]`` when multi-level, else ``main_logits``.
      Use `split_outputs` to handle both uniformly.

    Raises:
      ValueError: On an unknown ``backbone`` or ``bn_mode``, a non-positive
        ``num_classes``, or ``multi_level=True`` with ``"vgg16"``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}.")
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if backbone == "vgg16":
        if multi_level:
            raise ValueError(
                "multi_level=True is not available for backbone 'vgg16' (the "
                "paper's VGG-16 is single-level); pass multi_level=False.")
        return build_vgg16(num_classes=num_classes, name=name)
    return build_resnet(backbone, num_classes=num_classes, multi_level=multi_level,
                        bn_mode=bn_mode, name=name)


def split_outputs(outputs):
    """Returns ``(aux_logits or None, main_logits)`` for either model output."""
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 2:
            raise ValueError(
                f"Expected [aux_logits, main_logits], got {len(outputs)} outputs.")
        return outputs[0], outputs[1]
    return None, outputs


def _is_head_layer(layer):
    return layer.name.startswith(_HEAD_PREFIXES)


def head_variables(model):
    """Trainable variables of the ASPP classifier(s), which get 10x the LR."""
    return [v for layer in model.layers if _is_head_layer(layer)
            for v in layer.trainable_variables]


def backbone_variables(model):
    """Trainable variables outside the classifier(s), at the base LR."""
    head_ids = {id(v) for v in head_variables(model)}
    return [v for v in model.trainable_variables if id(v) not in head_ids]


def reference_update_repeats(model):
    """How often the reference lists each backbone variable in its SGD parameter group.

    The reference's ``get_1x_lr_params_no_scale`` walks ``modules()`` of
    conv1, bn1 and each stage and yields the trainable parameters of every
    module it meets, recursively, so each tensor is listed once per
    enclosing module: the stem conv once, a block's convs 3 times (stage,
    block, conv), a projection conv 4 times (stage, block, downsample
    Sequential, conv). Under torch 0.4.1 every listed copy applied an update
    (`optimizers.TorchSGD.set_update_repeats` emulates that).

    Args:
      model: a ResNet segmenter of `build_segmenter` (the reference has no VGG).

    Returns:
      A list of (variable, count) covering `backbone_variables(model)`.

    Raises:
      ValueError: A backbone layer the reference's ResNet does not have.
    """
    counts = []
    for layer in model.layers:
        if _is_head_layer(layer) or not layer.trainable_variables:
            continue
        if layer.name == "conv1":
            count = 1
        elif re.fullmatch(r"layer[1-4]_\d+_downsample_0", layer.name):
            count = 4
        elif re.fullmatch(r"layer[1-4]_\d+_conv[123]", layer.name):
            count = 3
        else:
            raise ValueError(f"{model.name}: the reference lists no parameters of layer "
                             f"{layer.name!r} (its parameter listing exists for the ResNet "
                             "backbones only)")
        counts += [(variable, count) for variable in layer.trainable_variables]
    return counts
