"""The official PyTorch ADVENT code's network and iterations, for side-by-side comparison.

Restates, module for module, valeoai/ADVENT's ``advent/model/deeplabv2.py``
(``ResNetMulti``: its ``state_dict()`` has exactly the keys of the released
checkpoints), ``advent/model/discriminator.py`` (``get_fc_discriminator``)
and the training iterations of ``advent/domain_adaptation/train_UDA.py``
(``train_minent``, ``train_advent``; the source-only baseline is their first
half), with the utilities they call (``loss_calc``, ``bce_loss``,
``prob_2_entropy``, ``entropy_loss``).

Two users: tools/benchmark.py times these iterations next to ours in the same
run (``--pytorch``), and the tests compare the network, the converter and
the training iterations with ours number for number (`randomize_` gives
weights worth comparing). Requires torch (the ``convert`` / ``test`` extras).
"""

import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ASPP_RATES = (6, 12, 18, 24)
EXPANSION = 4
# Blocks per stage and stem width of the backbones advent_tf.models builds.
BACKBONES = {
    "resnet101": ((3, 4, 23, 3), 64),
    "resnet50": ((3, 4, 6, 3), 64),
    "resnet_tiny": ((1, 1, 1, 1), 64),
    "resnet_mini": ((1, 1, 1, 1), 16),
}
SOURCE_LABEL = 0
TARGET_LABEL = 1
IGNORE_LABEL = 255


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
        # In place, as the official network: no extra activation per ReLU.
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        for bn in (self.bn1, self.bn2, self.bn3):
            bn.requires_grad_(False)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        out += residual
        return self.relu(out)


class ClassifierModule(nn.Module):
    """DeepLab-V2 ASPP: the sum of four biased dilated 3x3 convs."""

    def __init__(self, inplanes, num_classes):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=rate, dilation=rate, bias=True)
            for rate in ASPP_RATES)
        for conv in self.conv2d_list:
            conv.weight.data.normal_(0, 0.01)

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out += conv(x)
        return out


class ResNetMulti(nn.Module):
    """DeepLab-V2 ResNet with an optional auxiliary head on layer3.

    Args:
      blocks: Blocks per stage, e.g. ``(3, 4, 23, 3)`` for ResNet-101.
      num_classes: Output channels of the heads.
      multi_level: Adds the auxiliary head ``layer5`` on layer3.
      main_head_name: Attribute name of the main head: ``"layer6"`` as in
        ADVENT, or ``"layer5"`` for AdaptSegNet's single-level DeeplabResnet.
      base_width: Stem width (64 in the reference; 16 for resnet_mini).
    """

    def __init__(self, blocks, num_classes, multi_level=True, main_head_name="layer6",
                 base_width=64):
        super().__init__()
        if multi_level and main_head_name != "layer6":
            raise ValueError("A multi-level network's main head is layer6.")
        self.multi_level = multi_level
        self.main_head_name = main_head_name
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.bn1.requires_grad_(False)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(base_width, blocks[0])
        self.layer2 = self._make_layer(2 * base_width, blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * base_width, blocks[2], dilation=2)
        self.layer4 = self._make_layer(8 * base_width, blocks[3], dilation=4)
        if multi_level:
            self.layer5 = ClassifierModule(16 * base_width, num_classes)
        setattr(self, main_head_name, ClassifierModule(32 * base_width, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data.normal_(0, 0.01)

    def _make_layer(self, planes, num_blocks, stride=1, dilation=1):
        # The reference's condition (stride != 1, width change, or dilation
        # 2/4) holds for the first block of every stage.
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * EXPANSION))
        downsample[1].requires_grad_(False)
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

    def optim_parameters(self, lr, deduplicate=False):
        """The reference's two SGD groups, duplicates included unless ``deduplicate``."""
        backbone = self._backbone_parameters_as_listed()
        if deduplicate:
            backbone = list({id(p): p for p in backbone}.values())
        return [{"params": backbone, "lr": lr},
                {"params": self._head_parameters(), "lr": 10 * lr}]

    def _backbone_parameters_as_listed(self):
        # ``get_1x_lr_params_no_scale``: walks ``modules()`` of each stage, so
        # a parameter is yielded once per enclosing module (3-4 times): the
        # reference's duplicated-parameter quirk (see the README).
        for stage in (self.conv1, self.bn1, self.layer1, self.layer2, self.layer3,
                      self.layer4):
            for module in stage.modules():
                for param in module.parameters():
                    if param.requires_grad:
                        yield param

    def _head_parameters(self):
        # ``get_10x_lr_params``: layer5 (aux) first.
        heads = ([self.layer5] if self.multi_level else []) + [self.layer6]
        for head in heads:
            yield from head.parameters()


def build_resnet(backbone="resnet101", num_classes=19, multi_level=True, **kwargs):
    """`ResNetMulti` for a backbone name of `advent_tf.models` (ResNets only)."""
    blocks, base_width = BACKBONES[backbone]
    return ResNetMulti(blocks, num_classes, multi_level, base_width=base_width, **kwargs)


def get_fc_discriminator(num_classes, ndf=64):
    """The reference's discriminator: five 4x4/2 convs, LeakyReLU(0.2) between."""
    return nn.Sequential(
        nn.Conv2d(num_classes, ndf, 4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1),
    )


class DeepLabVGG16Features(nn.Module):
    """DeepLab-V2 VGG-16 up to pool5 (``advent_tf.models.vgg``'s layout), in PyTorch.

    Not in the reference code (it has no VGG); restated so that the VGG-16
    converter can be checked: ``features`` is numbered exactly like
    torchvision's ``vgg16().features`` (convs 0, 2, 5, ..., 28), so
    torchvision's ImageNet state dict loads into it, while the pools are
    DeepLab-V2's (3x3, padding 1, ceil mode; stride 2 for pool1-3, 1 for
    pool4-5) and conv5 is dilated by 2.
    """

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for count, width, dilation, pool_stride in ((2, 64, 1, 2), (2, 128, 1, 2),
                                                    (3, 256, 1, 2), (3, 512, 1, 1),
                                                    (3, 512, 2, 1)):
            for _ in range(count):
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                           nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(3, stride=pool_stride, padding=1, ceil_mode=True))
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


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


# -- advent/utils/func.py ----------------------------------------------------
def loss_calc(pred, label):
    """``cross_entropy_2d``: the mean cross-entropy over the pixels labelled 0..254.

    As the official code computes it: the valid pixels' logits gathered into
    an [N, C] matrix (a copy of the whole prediction on the way), then
    ``F.cross_entropy``.
    """
    label = label.long()
    n, c, h, w = pred.size()
    mask = (label >= 0) * (label != IGNORE_LABEL)
    target = label[mask]
    pred = pred.transpose(1, 2).transpose(2, 3).contiguous()
    pred = pred[mask.view(n, h, w, 1).repeat(1, 1, 1, c)].view(-1, c)
    return F.cross_entropy(pred, target, reduction="mean")


def bce_loss(y_pred, y_label):
    """Mean BCE-with-logits of a map against a constant domain label."""
    y_truth = torch.full(y_pred.shape, float(y_label), dtype=y_pred.dtype)
    return nn.BCEWithLogitsLoss()(y_pred, y_truth)


def prob_2_entropy(prob):
    """Weighted self-information map (paper eq. 7), channel-first."""
    c = prob.size(1)
    return -torch.mul(prob, torch.log2(prob + 1e-30)) / np.log2(c)


def entropy_loss(v):
    """Mean normalised entropy (paper eq. 4)."""
    n, c, h, w = v.size()
    return -torch.sum(torch.mul(v, torch.log2(v + 1e-30))) / (n * h * w * np.log2(c))


def ranked_entropy_loss(v, top_fraction):
    """MinEnt+ER (paper section 4.3; not in the reference code): `entropy_loss` over each
    sample's `top_fraction` highest-entropy pixels, then averaged over the batch."""
    n, c, h, w = v.size()
    entropy_map = -torch.sum(torch.mul(v, torch.log2(v + 1e-30)), dim=1) / np.log2(c)
    k = max(1, int(np.floor(top_fraction * h * w + 0.5)))
    return torch.topk(entropy_map.reshape(n, h * w), k, dim=1).values.mean()


def class_ratio_prior_loss(v, prior, mu):
    """CP (paper eq. 10; not in the reference code): sum_c max(0, mu p_s(c) - p_t(c)) per
    target image, p_t the image's mean class probability; averaged over the batch."""
    target_ratio = v.mean(dim=(2, 3))
    return torch.relu(mu * prior[None] - target_ratio).sum(dim=1).mean()


class Torch041SGD(torch.optim.Optimizer):
    """``torch.optim.SGD.step`` of torch 0.4.1, the version the paper's runs used.

    What differs from current PyTorch is how a tensor listed several times in
    a group (the reference's backbone listing) is updated: 0.4.1 walks the
    list in order, each copy adding the weight decay into the gradient in
    place and updating the tensor's one momentum buffer, then the tensor.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p.add_(p, alpha=group["weight_decay"])  # in place, as 0.4.1
                if group["momentum"]:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = torch.zeros_like(p)
                        buf.mul_(group["momentum"]).add_(d_p)
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(group["momentum"]).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-group["lr"])


def lr_poly(base_lr, i_iter, max_iter, power):
    return base_lr * ((1 - float(i_iter) / max_iter) ** power)


# -- advent/domain_adaptation/train_UDA.py -----------------------------------
class ReferenceTrainer:
    """One reference training iteration per `step` call (``train_minent`` / ``train_advent``).

    The reference's defaults: SGD lr 2.5e-4 (heads 10x), momentum 0.9, weight
    decay 5e-4, Adam 1e-4 (0.9, 0.99) for each discriminator, poly 0.9 over
    250,000 iterations, loss weights seg 1.0/0.1, ent and adv 0.001/0.0002;
    BN in training mode. "source_only" is the source half of either
    iteration followed by the SGD step.

    Args:
      method: "source_only", "minent" or "advent".
      model: `ResNetMulti` (multi-level).
      num_classes: Classes (discriminator input channels).
      autocast_dtype: None, or a torch dtype to run the passes under
        `torch.autocast("cpu", ...)` (the counterpart of a Keras mixed policy).
      discriminators: Optional ``(d_main, d_aux)``; new ones by default.
      deduplicate: List each backbone tensor once in the SGD group. The
        reference lists them 3-4 times, and current PyTorch, like 0.4.1,
        then applies one update per listed copy (each from a fresh momentum
        buffer on the first step): not what our default `TorchSGD` does.
      torch041_sgd: Step with `Torch041SGD` (the paper's PyTorch) instead of
        the installed `torch.optim.SGD`; they differ on duplicated tensors.
      **overrides: New values for the upper-case hyper-parameters below
        (e.g. ``LEARNING_RATE=0.01``), for tests that need larger steps.
    """

    LEARNING_RATE = 2.5e-4
    LEARNING_RATE_D = 1e-4
    MAX_ITERS = 250000
    POWER = 0.9
    LAMBDA_SEG_MAIN, LAMBDA_SEG_AUX = 1.0, 0.1
    LAMBDA_ENT_MAIN, LAMBDA_ENT_AUX = 0.001, 0.0002
    LAMBDA_ADV_MAIN, LAMBDA_ADV_AUX = 0.001, 0.0002
    WEIGHT_DECAY = 5e-4
    # The paper's additions, absent from the reference code: MinEnt+ER keeps
    # each sample's TOP_FRACTION highest-entropy pixels (None: plain MinEnt);
    # CP adds LAMBDA_CP * L_cp(main head) with the source prior CLASS_PRIOR
    # (None: no CP) to the target loss of MinEnt and to AdvEnt's generator loss.
    TOP_FRACTION = None
    CLASS_PRIOR = None
    PRIOR_MU = 0.5
    LAMBDA_CP = 0.001

    def __init__(self, method, model, num_classes, autocast_dtype=None, discriminators=None,
                 deduplicate=False, torch041_sgd=False, **overrides):
        if method not in ("source_only", "minent", "advent"):
            raise ValueError(f"unknown method {method!r}")
        for name, value in overrides.items():
            if not name.isupper() or not hasattr(self, name):
                raise ValueError(f"unknown hyper-parameter {name!r}")
            setattr(self, name, value)
        self.method = method
        self.model = model
        self.autocast_dtype = autocast_dtype
        with warnings.catch_warnings():
            # The duplicated backbone parameters (the reference's quirk).
            warnings.simplefilter("ignore", UserWarning)
            sgd = Torch041SGD if torch041_sgd else torch.optim.SGD
            self.optimizer = sgd(
                model.optim_parameters(self.LEARNING_RATE, deduplicate), lr=self.LEARNING_RATE,
                momentum=0.9, weight_decay=self.WEIGHT_DECAY)
        self.d_main = self.d_aux = None
        if method == "advent":
            self.d_main, self.d_aux = discriminators or (get_fc_discriminator(num_classes),
                                                         get_fc_discriminator(num_classes))
            self.optimizer_d_main = torch.optim.Adam(
                self.d_main.parameters(), lr=self.LEARNING_RATE_D, betas=(0.9, 0.99))
            self.optimizer_d_aux = torch.optim.Adam(
                self.d_aux.parameters(), lr=self.LEARNING_RATE_D, betas=(0.9, 0.99))
        self.i_iter = 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cpu", dtype=self.autocast_dtype)

    def _adjust_learning_rate(self, optimizer, base_lr, head_multiplier):
        lr = lr_poly(base_lr, self.i_iter, self.MAX_ITERS, self.POWER)
        optimizer.param_groups[0]["lr"] = lr
        if len(optimizer.param_groups) > 1:
            optimizer.param_groups[1]["lr"] = lr * head_multiplier

    def step(self, images_source, labels, images_target):
        """One iteration on NCHW float images and NHW integer labels.

        Returns:
          dict of the iteration's losses as Python floats.
        """
        model = self.model
        model.train()
        self.optimizer.zero_grad()
        self._adjust_learning_rate(self.optimizer, self.LEARNING_RATE, 10)
        if self.method == "advent":
            for optimizer in (self.optimizer_d_aux, self.optimizer_d_main):
                optimizer.zero_grad()
                self._adjust_learning_rate(optimizer, self.LEARNING_RATE_D, 1)
            for d in (self.d_aux, self.d_main):
                d.train()
                d.requires_grad_(False)
        interp = nn.Upsample(size=images_source.shape[2:], mode="bilinear", align_corners=True)
        interp_target = nn.Upsample(size=images_target.shape[2:], mode="bilinear",
                                    align_corners=True)
        losses = {}
        with self._autocast():
            pred_src_aux, pred_src_main = model(images_source)
            pred_src_aux = interp(pred_src_aux)
            pred_src_main = interp(pred_src_main)
            loss_seg_src_aux = loss_calc(pred_src_aux, labels)
            loss_seg_src_main = loss_calc(pred_src_main, labels)
            loss = (self.LAMBDA_SEG_MAIN * loss_seg_src_main
                    + self.LAMBDA_SEG_AUX * loss_seg_src_aux)
        loss.backward()
        losses.update(loss_seg_src_main=loss_seg_src_main.item(),
                      loss_seg_src_aux=loss_seg_src_aux.item())
        if self.method == "minent":
            with self._autocast():
                pred_trg_aux, pred_trg_main = model(images_target)
                pred_prob_trg_aux = F.softmax(interp_target(pred_trg_aux), dim=1)
                pred_prob_trg_main = F.softmax(interp_target(pred_trg_main), dim=1)
                entropy = (entropy_loss if self.TOP_FRACTION is None else
                           lambda v: ranked_entropy_loss(v, self.TOP_FRACTION))
                loss_target_entp_aux = entropy(pred_prob_trg_aux)
                loss_target_entp_main = entropy(pred_prob_trg_main)
                loss = (self.LAMBDA_ENT_AUX * loss_target_entp_aux
                        + self.LAMBDA_ENT_MAIN * loss_target_entp_main
                        + self._class_prior_term(pred_prob_trg_main, losses))
            loss.backward()
            losses.update(loss_ent_aux=loss_target_entp_aux.item(),
                          loss_ent_main=loss_target_entp_main.item())
        elif self.method == "advent":
            losses.update(self._adversarial(model, images_target, interp_target,
                                            pred_src_aux, pred_src_main))
        self.optimizer.step()
        if self.method == "advent":
            self.optimizer_d_aux.step()
            self.optimizer_d_main.step()
        self.i_iter += 1
        return losses

    def _class_prior_term(self, prob_main, losses):
        """LAMBDA_CP * L_cp on the main head's target probabilities, or 0 without a prior."""
        if self.CLASS_PRIOR is None:
            return 0.0
        loss_cp = class_ratio_prior_loss(prob_main, torch.as_tensor(self.CLASS_PRIOR),
                                         self.PRIOR_MU)
        losses["loss_cp"] = loss_cp.item()
        return self.LAMBDA_CP * loss_cp

    def _adversarial(self, model, images, interp_target, pred_src_aux, pred_src_main):
        """``train_advent`` after the source pass: generator, then discriminator losses."""
        with self._autocast():
            pred_trg_aux, pred_trg_main = model(images)
            pred_trg_aux = interp_target(pred_trg_aux)
            d_out_aux = self.d_aux(prob_2_entropy(F.softmax(pred_trg_aux, dim=1)))
            loss_adv_trg_aux = bce_loss(d_out_aux, SOURCE_LABEL)
            pred_trg_main = interp_target(pred_trg_main)
            d_out_main = self.d_main(prob_2_entropy(F.softmax(pred_trg_main, dim=1)))
            loss_adv_trg_main = bce_loss(d_out_main, SOURCE_LABEL)
            losses = {}
            loss = (self.LAMBDA_ADV_MAIN * loss_adv_trg_main
                    + self.LAMBDA_ADV_AUX * loss_adv_trg_aux
                    + self._class_prior_term(F.softmax(pred_trg_main, dim=1), losses))
        loss.backward()
        for d in (self.d_aux, self.d_main):
            d.requires_grad_(True)
        losses.update({"loss_adv_trg_aux": loss_adv_trg_aux.item(),
                       "loss_adv_trg_main": loss_adv_trg_main.item()})
        # The reference's order: source aux, source main, target aux, target main.
        for domain, (aux, main), label in (
                ("src", (pred_src_aux, pred_src_main), SOURCE_LABEL),
                ("trg", (pred_trg_aux, pred_trg_main), TARGET_LABEL)):
            for head, d, pred in (("aux", self.d_aux, aux), ("main", self.d_main, main)):
                with self._autocast():
                    d_out = d(prob_2_entropy(F.softmax(pred.detach(), dim=1)))
                    loss_d = bce_loss(d_out, label) / 2
                loss_d.backward()
                losses[f"loss_d_{domain}_{head}"] = loss_d.item()
        return losses


def inference(model, image, autocast_dtype=None):
    """The reference's evaluation of one image: main logits, bilinear upsampling, argmax.

    Returns:
      [N, H, W] int64 class map at the image's size.
    """
    model.eval()
    interp = nn.Upsample(size=image.shape[2:], mode="bilinear", align_corners=True)
    context = (torch.autocast("cpu", enabled=False) if autocast_dtype is None
               else torch.autocast("cpu", dtype=autocast_dtype))
    with torch.no_grad(), context:
        return interp(model(image)[1]).argmax(dim=1)
