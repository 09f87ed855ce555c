"""Converts the official PyTorch DeepLab-V2 checkpoints to Keras weights.

Two kinds of checkpoint exist for the reference network (valeoai/ADVENT's
``ResNetMulti``), and the kind is detected from the keys:

  * **Model checkpoints** (the released ADVENT/MinEnt models, e.g.
    ``GTA2Cityscapes_AdvEnt.pth``): a plain state dict with ``conv1``,
    ``bn1``, ``layer1``..``layer4`` (``layerN.M.conv1/bn1/conv2/bn2/conv3/bn3``
    and ``layerN.0.downsample.0/1``), ``layer5`` (auxiliary ASPP,
    ``conv2d_list.0..3``) and ``layer6`` (main ASPP). Every tensor is
    converted, both heads included.
  * **The ImageNet initialisation** (``DeepLab_resnet_pretrained_imagenet.pth``):
    every key prefixed ``Scale.``. As in the reference, which loads it with
    ``if not i_parts[1] == 'layer5': new_params['.'.join(i_parts[1:])] =
    saved[i]``, the prefix is stripped and its own classifier
    (``Scale.layer5.*``) is skipped; the two ASPP heads of the converted model
    therefore keep the fresh initialisation of `build_segmenter`. The
    reference recognises this file by its name (``'DeepLab_resnet_pretrained_imagenet'
    in cfg.TRAIN.RESTORE_FROM``); the converter recognises it by its keys, so
    a renamed copy converts the same way.

Single-level models (``multi_level=False``) have one head, the main head
``layer6`` of the Keras model. The reference's single-level ``ResNetMulti``
names it ``layer6`` too; the older single-level DeepLab of AdaptSegNet
(``DeeplabResnet``), whose checkpoints some ADVENT-derived code reuses, names
its only head ``layer5``. A single-level conversion therefore maps
``layer5.*`` to the main head when, and only when, the checkpoint has no
``layer6.*`` key.

Key ``a.b.c.weight`` belongs to the Keras layer ``a_b_c`` (the builder names
layers after the PyTorch module paths). Conv kernels go from PyTorch's OIHW to
Keras' HWIO; BatchNorm ``weight, bias, running_mean, running_var`` become
``gamma, beta, moving_mean, moving_variance``; ``num_batches_tracked`` is
ignored (the Keras layer uses a fixed momentum). The conversion is strict:
every model tensor must be provided with the right shape and every checkpoint
tensor must be used, otherwise nothing is written and the error lists every
missing, unexpected and mis-shaped key.

**torchvision's ImageNet VGG-16** (``vgg16-397923af.pth``, keys
``features.N.*`` and ``classifier.N.*``) initialises the DeepLab-V2 VGG-16
(``backbone="vgg16"``), as AdaptSegNet's ``DeeplabVGG`` (the VGG-16 of the DA
literature) is initialised: the 13 convolutions ``features.{0, 2, 5, 7, 10,
12, 14, 17, 19, 21, 24, 26, 28}`` become ``conv1_1`` ... ``conv5_3``; the
fully connected ``classifier.*`` (4096-wide, for 224x224 inputs) do not fit
the convolutional fc6/fc7 and are skipped, so fc6, fc7 and the ASPP
classifier keep their fresh initialisation.

Checkpoints are read with ``torch.load(..., weights_only=True)`` only, which
refuses to unpickle anything but tensors and plain containers; torch is the
``convert`` extra and is imported on first use.
"""

import dataclasses
import os
import pathlib
import pickle
import re
import tempfile
from collections.abc import Mapping

import keras
import numpy as np

from advent_tf.experiment.segmenter_weights import WEIGHTS_SUFFIX
from advent_tf.models.batch_norm import BatchNorm
from advent_tf.models.builder import RESNET_BACKBONES, build_segmenter
from advent_tf.models.discriminator import CONV_INDICES

FORMAT_MODEL = "model"
FORMAT_TORCHVISION_VGG16 = "torchvision_vgg16"
# torchvision's vgg16().features indices of the 13 convolutions, in order.
_VGG16_FEATURE_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_CONV_NAMES = tuple(f"conv{block}.{i}" for block, count in
                          ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                          for i in range(1, count + 1))
FORMAT_IMAGENET_INIT = "imagenet_init"

_INIT_PREFIX = "Scale."
_AUX_HEAD = "layer5"
_MAIN_HEAD = "layer6"
_HEAD_MODULES = (_AUX_HEAD, _MAIN_HEAD)
# Keys that wrap a state dict in training-script checkpoints.
_WRAPPER_KEYS = ("state_dict", "model_state_dict")
_IGNORED_SUFFIX = ".num_batches_tracked"

# PyTorch parameter names per Keras layer type, in the order of the Keras
# layer's `weights`.
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
_CONV_PARAMS = ("weight", "bias")
_OIHW_TO_HWIO = (2, 3, 1, 0)


class PyTorchCheckpointError(ValueError):
    """A PyTorch checkpoint cannot be read, or is not an acceptable state dict."""


def _natural_key(key):
    """Sorts ``layer3.2`` before ``layer3.10``, as a reader expects."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


class StateDictMismatchError(ValueError):
    """A state dict does not match the Keras model.

    Attributes:
      missing: Model tensors (PyTorch key names) the state dict lacks.
      unexpected: State-dict keys no model tensor uses.
      mismatched: ``(key, expected_shape, actual_shape)`` triples, shapes in
        PyTorch layout.
    """

    def __init__(self, missing, unexpected, mismatched, context=""):
        self.missing = sorted(missing, key=_natural_key)
        self.unexpected = sorted(unexpected, key=_natural_key)
        self.mismatched = sorted(mismatched, key=lambda m: _natural_key(m[0]))
        lines = [f"The checkpoint does not match the model{context}:"]
        if self.missing:
            lines.append(f"  {len(self.missing)} missing key(s):")
            lines.extend(f"    {k}" for k in self.missing)
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected key(s):")
            lines.extend(f"    {k}" for k in self.unexpected)
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} key(s) with the wrong shape:")
            lines.extend(f"    {k}: model expects {tuple(e)}, checkpoint has {tuple(a)}"
                         for k, e, a in self.mismatched)
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion did.

    Attributes:
      checkpoint_format: `FORMAT_MODEL`, `FORMAT_IMAGENET_INIT` or
        `FORMAT_TORCHVISION_VGG16`.
      num_tensors: Tensors copied into the Keras model.
      skipped_keys: Checkpoint keys deliberately not converted (the
        initialisation's classifier), in checkpoint naming.
      renamed_heads: ``{checkpoint module: model module}`` for heads mapped
        under another name (AdaptSegNet's single-level ``layer5``).
      heads_converted: Whether the ASPP heads came from the checkpoint (False
        for the initialisation, whose heads keep their fresh init).
    """

    checkpoint_format: str
    num_tensors: int
    skipped_keys: tuple
    renamed_heads: dict
    heads_converted: bool


def load_pytorch_state_dict(path):
    """Reads a PyTorch checkpoint without unpickling arbitrary objects.

    Args:
      path: A ``.pth`` file holding a state dict, or a dict wrapping one under
        ``"state_dict"`` or ``"model_state_dict"``.

    Returns:
      ``{key: np.ndarray}`` with floating tensors as float32; integer tensors
      (``num_batches_tracked``) keep their dtype.

    Raises:
      ImportError: If torch (the ``convert`` extra) is not installed.
      PyTorchCheckpointError: If the file cannot be read with ``weights_only=True``
        (e.g. it pickles arbitrary objects) or holds no state dict of tensors.
    """
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(
            "Reading PyTorch checkpoints needs torch: pip install 'advent_tf[convert]'."
        ) from err
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise PyTorchCheckpointError(
            f"Cannot read {path} with torch.load(weights_only=True): {err}\n"
            "Only checkpoints of tensors and plain containers are accepted; "
            "files that pickle arbitrary Python objects are refused because "
            "unpickling them can run code.") from err
    if not isinstance(loaded, Mapping):
        raise PyTorchCheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict.")
    for wrapper in _WRAPPER_KEYS:
        if isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    not_tensors = sorted(str(k) for k, v in loaded.items()
                         if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if not_tensors:
        raise PyTorchCheckpointError(
            f"{path} is not a state dict of tensors; these entries are not "
            f"str -> tensor: {not_tensors}")
    return {
        key: (value.detach().to(torch.float32).numpy() if value.is_floating_point()
              else value.detach().numpy())
        for key, value in loaded.items()
    }


def detect_format(state_dict):
    """The checkpoint's format, from its keys.

    `FORMAT_IMAGENET_INIT` if every key has the ``Scale.`` prefix;
    `FORMAT_TORCHVISION_VGG16` if every key is under ``features.`` or
    ``classifier.``; else `FORMAT_MODEL`. A partly prefixed dict is treated
    as a model checkpoint, so its odd keys are reported as unexpected rather
    than silently dropped.
    """
    if state_dict and all(k.startswith(_INIT_PREFIX) for k in state_dict):
        return FORMAT_IMAGENET_INIT
    if state_dict and all(k.split(".", 1)[0] in ("features", "classifier")
                          for k in state_dict):
        return FORMAT_TORCHVISION_VGG16
    return FORMAT_MODEL


def _head_of(key):
    """``"layer5"`` / ``"layer6"`` for an ASPP head key, else None."""
    top = key.split(".", 1)[0]
    return top if top in _HEAD_MODULES else None


def _normalise(state_dict, multi_level):
    """Maps checkpoint keys to the model's PyTorch key names.

    Returns:
      ``(tensors, original_names, checkpoint_format, skipped, renamed)``:
      ``tensors`` maps model key names to arrays, ``original_names`` maps them
      back to the checkpoint's names for error messages.
    """
    checkpoint_format = detect_format(state_dict)
    tensors, original_names, skipped, renamed = {}, {}, [], {}
    if checkpoint_format == FORMAT_TORCHVISION_VGG16:
        names = {f"features.{index}": name
                 for index, name in zip(_VGG16_FEATURE_CONVS, _VGG16_CONV_NAMES)}
        for key, value in state_dict.items():
            module, _, param = key.rpartition(".")
            if key.startswith("classifier."):
                skipped.append(key)  # Fully connected: no counterpart in DeepLab-V2.
                continue
            name = f"{names[module]}.{param}" if module in names else key
            tensors[name], original_names[name] = value, key
    elif checkpoint_format == FORMAT_IMAGENET_INIT:
        for key, value in state_dict.items():
            name = key[len(_INIT_PREFIX):]
            # The reference drops the initialisation's own classifier.
            if name.split(".", 1)[0] == _AUX_HEAD:
                skipped.append(key)
            else:
                tensors[name], original_names[name] = value, key
    else:
        heads = {_head_of(k) for k in state_dict} - {None}
        legacy_single_level = not multi_level and heads == {_AUX_HEAD}
        if legacy_single_level:
            renamed[_AUX_HEAD] = _MAIN_HEAD
        for key, value in state_dict.items():
            name = key
            if legacy_single_level and _head_of(key) == _AUX_HEAD:
                name = _MAIN_HEAD + key[len(_AUX_HEAD):]
            tensors[name], original_names[name] = value, key
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIX)}
    return tensors, original_names, checkpoint_format, tuple(skipped), renamed


def _torch_module_path(layer_name):
    """Inverts the builder's naming (``layer3_0_downsample_1`` -> ``layer3.0.downsample.1``)."""
    # "conv2d_list" is one PyTorch attribute whose name has an underscore.
    return layer_name.replace("_", ".").replace("conv2d.list", "conv2d_list")


def _expected_tensors(model, include_heads):
    """``{pytorch_key: (keras_variable, to_keras)}`` for every weight of ``model``.

    Without `include_heads`, the layers an initialisation does not provide are
    left out: the ASPP heads, and for VGG-16 also fc6 and fc7.
    """
    fresh = _HEAD_MODULES + ("fc6", "fc7", "classifier")
    expected = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if isinstance(layer, BatchNorm):
            params, transposes = _BN_PARAMS, (None,) * 4
        elif isinstance(layer, keras.layers.Conv2D):
            params, transposes = _CONV_PARAMS, (_OIHW_TO_HWIO, None)
        else:
            raise TypeError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has weights but no "
                "PyTorch counterpart the converter knows.")
        module = _torch_module_path(layer.name)
        if not include_heads and module.split(".", 1)[0] in fresh:
            continue
        for param, transpose, variable in zip(params, transposes, layer.weights):
            expected[f"{module}.{param}"] = (variable, transpose)
    return expected


def _checkpoint_key(key, checkpoint_format):
    """A model key as the checkpoint names it (torchvision's ``features.N`` for VGG-16)."""
    if checkpoint_format != FORMAT_TORCHVISION_VGG16:
        return key
    module, _, param = key.rpartition(".")
    if module not in _VGG16_CONV_NAMES:
        return key
    index = _VGG16_FEATURE_CONVS[_VGG16_CONV_NAMES.index(module)]
    return f"features.{index}.{param} ({module.replace('.', '_')})"


def _to_pytorch_shape(shape, transpose):
    if transpose is None:
        return tuple(shape)
    return tuple(shape[transpose.index(i)] for i in range(len(shape)))


def load_state_dict_into_model(model, state_dict):
    """Copies a reference state dict into a `build_segmenter` network, strictly.

    Nothing is assigned unless the whole state dict matches. Whether the
    model is multi-level (has ``layer5``) selects the head mapping.

    Args:
      model: A ResNet model from `build_segmenter` (any BN mode), or its
        VGG-16 for a torchvision VGG-16 state dict.
      state_dict: ``{key: array}`` in either checkpoint format (see the module
        docstring), e.g. from `load_pytorch_state_dict`.

    Returns:
      A `ConversionSummary`.

    Raises:
      StateDictMismatchError: Listing every missing, unexpected and mis-shaped key.
    """
    multi_level = any(layer.name.startswith(f"{_AUX_HEAD}_") for layer in model.layers)
    tensors, original_names, checkpoint_format, skipped, renamed = _normalise(
        state_dict, multi_level)
    heads_converted = checkpoint_format == FORMAT_MODEL
    expected = _expected_tensors(model, include_heads=heads_converted)
    missing = [_checkpoint_key(k, checkpoint_format) for k in expected if k not in tensors]
    unexpected = [original_names[k] for k in tensors if k not in expected]
    mismatched = []
    for key in expected.keys() & tensors.keys():
        variable, transpose = expected[key]
        want = _to_pytorch_shape(variable.shape, transpose)
        got = tuple(np.shape(tensors[key]))
        if want != got:
            mismatched.append((original_names[key], want, got))
    if missing or unexpected or mismatched:
        context = (f" ({checkpoint_format} checkpoint, {model.name}, "
                   f"{'multi' if multi_level else 'single'}-level)")
        raise StateDictMismatchError(missing, unexpected, mismatched, context)
    for key, (variable, transpose) in expected.items():
        value = np.asarray(tensors[key], dtype=variable.dtype)
        if transpose is not None:
            value = np.transpose(value, transpose)
        variable.assign(value)
    return ConversionSummary(
        checkpoint_format=checkpoint_format, num_tensors=len(expected),
        skipped_keys=skipped, renamed_heads=renamed, heads_converted=heads_converted)


CONVERTIBLE_BACKBONES = RESNET_BACKBONES + ("vgg16",)


def convert_checkpoint(input_path, output_path, backbone="resnet101", num_classes=19,
                       multi_level=True):
    """Converts a reference ``.pth`` checkpoint to a Keras ``.weights.h5`` file.

    The output is order-based (Keras 3 weights format): load it with
    ``build_segmenter(backbone, num_classes, multi_level).load_weights(path)``
    using the same arguments. It is written to a temporary file beside
    ``output_path`` and renamed into place only on success, so a failed
    conversion leaves neither a partial file nor a changed ``output_path``.

    Args:
      input_path: The PyTorch checkpoint.
      output_path: Destination, ending in ``.weights.h5``; replaced if it
        exists and the conversion succeeds.
      backbone: One of `CONVERTIBLE_BACKBONES`: a ResNet for the official
        checkpoints (the reference has no VGG-16), ``"vgg16"`` (single-level)
        for torchvision's ImageNet VGG-16.
      num_classes: Classes of the checkpoint's heads (19 GTA5, 16 SYNTHIA).
      multi_level: Whether the model has the auxiliary ``layer5`` head.

    Returns:
      A `ConversionSummary`.

    Raises:
      ValueError: On a bad ``output_path`` suffix or ``backbone``.
      PyTorchCheckpointError: If the checkpoint cannot be read safely.
      StateDictMismatchError: If it does not match the model.
    """
    output_path = pathlib.Path(output_path)
    if not output_path.name.endswith(WEIGHTS_SUFFIX):
        raise ValueError(
            f"The output must end in {WEIGHTS_SUFFIX} (Keras 3 weights file), "
            f"got {str(output_path)!r}.")
    if backbone not in CONVERTIBLE_BACKBONES:
        raise ValueError(f"backbone must be one of {CONVERTIBLE_BACKBONES}, got {backbone!r}.")
    state_dict = load_pytorch_state_dict(input_path)
    if (backbone == "vgg16") != (detect_format(state_dict) == FORMAT_TORCHVISION_VGG16):
        raise ValueError(
            f"{input_path} is a {detect_format(state_dict)} checkpoint, which does not fit "
            f"backbone {backbone!r} (torchvision's VGG-16 converts to vgg16 only, the "
            "reference's ResNet checkpoints to the resnet backbones)")
    model = build_segmenter(backbone, num_classes=num_classes, multi_level=multi_level)
    summary = load_state_dict_into_model(model, state_dict)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    # A private directory on the same file system makes the final rename
    # atomic, and the file inside it gets the usual umask permissions (a
    # mkstemp file would stay owner-only after the rename).
    with tempfile.TemporaryDirectory(
            dir=output_path.parent, prefix=f".{output_path.name}.") as tmp_dir:
        tmp_path = os.path.join(tmp_dir, output_path.name)
        model.save_weights(tmp_path)
        os.replace(tmp_path, output_path)
    return summary


def load_pytorch_discriminator_weights(model, state_dict):
    """Copies PyTorch discriminator weights into a `build_discriminator` model.

    Args:
      model: A model from `build_discriminator`.
      state_dict: Mapping of ``D.N.weight`` (OIHW) and ``D.N.bias`` arrays for
        N in 0, 2, 4, 6, 8 (numpy arrays or anything `np.asarray` accepts).

    Raises:
      KeyError: If a weight or bias is missing.
      ValueError: If an array's shape does not match the model's layer.
    """
    for index in CONV_INDICES:
        layer = model.get_layer(f"D_{index}")
        weight_key, bias_key = f"D.{index}.weight", f"D.{index}.bias"
        missing = [k for k in (weight_key, bias_key) if k not in state_dict]
        if missing:
            raise KeyError(f"state_dict lacks {missing}.")
        kernel = np.transpose(np.asarray(state_dict[weight_key]), (2, 3, 1, 0))
        bias = np.asarray(state_dict[bias_key])
        expected = tuple(tuple(v.shape) for v in layer.weights)
        if (kernel.shape, bias.shape) != expected:
            raise ValueError(
                f"Layer D_{index} expects kernel/bias shapes {expected}, got "
                f"{(kernel.shape, bias.shape)} (HWIO after transposing OIHW).")
        layer.set_weights([kernel, bias])
