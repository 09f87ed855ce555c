"""A PyTorch DeepLab-V2 ResNet laid out like the reference's ``ResNetMulti``.

Restates valeoai/ADVENT's ``advent/model/deeplabv2.py`` module for module, so
that its ``state_dict()`` has exactly the keys of the released checkpoints
(``conv1``, ``bn1``, ``layerN.M.{conv,bn}{1,2,3}``, ``layerN.0.downsample.{0,1}``,
``layer5``/``layer6.conv2d_list.{0..3}``) and its eval-mode forward pass is
the reference's. The converter tests save its random state dicts as
checkpoints and compare its outputs with the converted Keras model's.
"""

import torch
from torch import nn

ASPP_RATES = (6, 12, 18, 24)
EXPANSION = 4


class Bottleneck(nn.Module):
    """Caffe-style bottleneck: the stride sits on the first 1x1 conv."""

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ClassifierModule(nn.Module):
    """DeepLab-V2 ASPP: the sum of four biased dilated 3x3 convs."""

    def __init__(self, inplanes, num_classes):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=rate, dilation=rate, bias=True)
            for rate in ASPP_RATES)

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class ResNetMulti(nn.Module):
    """DeepLab-V2 ResNet with an optional auxiliary head on layer3.

    Args:
      blocks: Blocks per stage, e.g. ``(3, 4, 23, 3)`` for ResNet-101.
      num_classes: Output channels of the heads.
      multi_level: Adds the auxiliary head ``layer5`` on layer3.
      main_head_name: Attribute name of the main head: ``"layer6"`` as in
        ADVENT, or ``"layer5"`` for AdaptSegNet's single-level DeeplabResnet.
    """

    def __init__(self, blocks, num_classes, multi_level=True, main_head_name="layer6"):
        super().__init__()
        if multi_level and main_head_name != "layer6":
            raise ValueError("A multi-level network's main head is layer6.")
        self.multi_level = multi_level
        self.main_head_name = main_head_name
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], dilation=2)
        self.layer4 = self._make_layer(512, blocks[3], dilation=4)
        if multi_level:
            self.layer5 = ClassifierModule(1024, num_classes)
        setattr(self, main_head_name, ClassifierModule(2048, num_classes))

    def _make_layer(self, planes, num_blocks, stride=1, dilation=1):
        # The reference's condition (stride != 1, width change, or dilation
        # 2/4) holds for the first block of every stage.
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * EXPANSION))
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation)
                   for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def backbone(self, x):
        """Returns the ``(layer3, layer4)`` features the heads see."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x3 = self.layer3(self.layer2(self.layer1(x)))
        return x3, self.layer4(x3)

    def forward(self, x):
        """Returns ``(aux_logits, main_logits)``, or main logits if single-level."""
        x3, x4 = self.backbone(x)
        main = getattr(self, self.main_head_name)(x4)
        if self.multi_level:
            return self.layer5(x3), main
        return main


def randomize_(model, seed):
    """Gives every tensor of ``model`` a random, scale-preserving value.

    Conv weights get variance 1/fan_in (N(0, 0.01) would make deep features
    vanish, leaving nothing but head biases to compare), and every BatchNorm
    gets non-trivial affine parameters and running statistics, so the
    comparison exercises each mapped tensor.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.5, 0.5))
            elif isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(uniform(shape, 0.5, 1.0))
                module.bias.copy_(uniform(shape, -0.2, 0.2))
                module.running_mean.copy_(uniform(shape, -0.2, 0.2))
                module.running_var.copy_(uniform(shape, 0.5, 2.0))
                module.num_batches_tracked.fill_(1000)
    return model
