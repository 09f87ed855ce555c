"""Networks: DeepLab-V2 segmenters (ResNet / VGG-16) and the AdvEnt discriminator."""

from advent_tf.models.batch_norm import BatchNorm
from advent_tf.models.builder import (
    BACKBONES,
    RESNET_BACKBONES,
    backbone_variables,
    build_segmenter,
    head_variables,
    reference_update_repeats,
    split_outputs,
)
from advent_tf.models.discriminator import build_discriminator

__all__ = [
    "BACKBONES",
    "RESNET_BACKBONES",
    "BatchNorm",
    "backbone_variables",
    "build_discriminator",
    "build_segmenter",
    "head_variables",
    "reference_update_repeats",
    "split_outputs",
]
