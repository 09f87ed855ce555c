"""Tests for the PyTorch -> Keras checkpoint converter.

Checkpoints are random state dicts of `pytorch_reference.ResNetMulti`, saved with
`torch.save` like the released ones; the converted weights are loaded with
`load_weights` and the Keras model's eval-mode outputs are compared with the
PyTorch network's on the same (preprocessed) input.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch

import pytorch_reference
from advent_tf import pytorch_interop
from advent_tf.models import build_segmenter
from advent_tf.models.resnet import RESNET_BLOCKS
from advent_tf.core.preprocessing import preprocess_image

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = REPO_ROOT / "tools" / "convert_pytorch_checkpoint.py"
NUM_CLASSES = 19
# Relative to the largest output magnitude: float32 round-off through the
# network (observed ~2e-6 at ResNet-101 depth).
RTOL = 1e-5


def _torch_net(backbone="resnet_tiny", num_classes=NUM_CLASSES, seed=0, **kwargs):
    net = pytorch_reference.ResNetMulti(RESNET_BLOCKS[backbone], num_classes, **kwargs)
    return pytorch_reference.randomize_(net, seed).eval()


def _save(state_dict, path):
    torch.save(state_dict, path)
    return path


def _run_torch(fn, image):
    with torch.no_grad():
        out = fn(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy().transpose(0, 2, 3, 1) for o in outs]


def _assert_close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 1.0, "degenerate comparison: outputs are near zero"
    assert np.abs(actual - expected).max() <= RTOL * scale


def _numpy_state_dict(torch_net):
    return {k: v.numpy() for k, v in torch_net.state_dict().items()}


def _assert_outputs_match(weights, torch_net, image, backbone="resnet_tiny",
                          multi_level=True, bn_mode="reference"):
    """Compares eval-mode outputs; ``weights`` is a .weights.h5 path or a state dict.

    The ResNet-101 check passes the state dict, loading it in memory: the
    same key mapping as a conversion, without writing and reading 180 MB
    twice (the file round trip is tested on the tiny network).
    """
    model = build_segmenter(backbone, num_classes=NUM_CLASSES, multi_level=multi_level,
                            bn_mode=bn_mode)
    if isinstance(weights, dict):
        pytorch_interop.load_state_dict_into_model(model, weights)
    else:
        model.load_weights(weights)
    keras_out = model(image, training=False)
    keras_out = keras_out if multi_level else [keras_out]
    torch_out = _run_torch(torch_net, image)
    assert len(keras_out) == len(torch_out) == (2 if multi_level else 1)
    for actual, expected in zip(keras_out, torch_out):
        _assert_close(actual, expected)


def _head_weights(model):
    return [w for layer in model.layers if layer.name.startswith(("layer5_", "layer6_"))
            for w in layer.weights]


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def image():
    # A random RGB image through the project's preprocessing (BGR minus the
    # mean); the odd size exercises the ceil-mode pool.
    rgb = np.random.default_rng(0).integers(0, 256, size=(1, 65, 65, 3), dtype=np.uint8)
    return preprocess_image(rgb).numpy()


@pytest.fixture(scope="module")
def tiny_net():
    return _torch_net()


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_net, tmp_path_factory):
    return _save(tiny_net.state_dict(),
                 tmp_path_factory.mktemp("ckpt") / "tiny_multi_level.pth")


def test_model_checkpoint_matches_pytorch(tiny_net, tiny_checkpoint, image, tmp_path):
    output = tmp_path / "tiny.weights.h5"
    summary = pytorch_interop.convert_checkpoint(
        tiny_checkpoint, output, backbone="resnet_tiny", num_classes=NUM_CLASSES)
    num_tensors = sum(not k.endswith("num_batches_tracked")
                      for k in tiny_net.state_dict())
    assert summary == pytorch_interop.ConversionSummary(
        checkpoint_format=pytorch_interop.FORMAT_MODEL, num_tensors=num_tensors,
        skipped_keys=(), renamed_heads={}, heads_converted=True)
    _assert_outputs_match(output, tiny_net, image)
    assert sorted(os.listdir(tmp_path)) == ["tiny.weights.h5"]


def test_cli_converts(tiny_net, tiny_checkpoint, image, tmp_path):
    output = tmp_path / "sub" / "cli.weights.h5"
    result = _run_cli("--input", tiny_checkpoint, "--output", output,
                      "--backbone", "resnet_tiny", "--num_classes", NUM_CLASSES)
    assert result.returncode == 0, result.stderr
    # Both BN modes hold the same variables, so the file serves either.
    _assert_outputs_match(output, tiny_net, image, bn_mode="frozen")


def test_resnet101_depth_matches_pytorch(image):
    net = _torch_net("resnet101", seed=1)
    _assert_outputs_match(_numpy_state_dict(net), net, image, backbone="resnet101")


@pytest.mark.parametrize("head_name", ["layer6", "layer5"])
def test_single_level(head_name, image):
    # layer6: ADVENT's single-level ResNetMulti; layer5: AdaptSegNet's
    # DeeplabResnet, whose only head maps to the main head.
    net = _torch_net(seed=2, multi_level=False, main_head_name=head_name)
    model = build_segmenter("resnet_tiny", num_classes=NUM_CLASSES, multi_level=False)
    summary = pytorch_interop.load_state_dict_into_model(model, _numpy_state_dict(net))
    assert summary.renamed_heads == ({"layer5": "layer6"} if head_name == "layer5" else {})
    _assert_close(model(image, training=False), _run_torch(net, image)[0])


def test_multi_level_checkpoint_into_single_level_model_is_rejected(tiny_net):
    model = build_segmenter("resnet_tiny", num_classes=NUM_CLASSES, multi_level=False)
    with pytest.raises(pytorch_interop.StateDictMismatchError) as info:
        pytorch_interop.load_state_dict_into_model(model, _numpy_state_dict(tiny_net))
    assert info.value.unexpected == [f"layer5.conv2d_list.{i}.{p}"
                                     for i in range(4) for p in ("bias", "weight")]
    assert not info.value.missing and not info.value.mismatched


def test_imagenet_init_checkpoint(image):
    # The initialisation's own classifier (here 21 classes, named layer5 and
    # sitting on layer4) is skipped; the backbone must match exactly.
    net = _torch_net(num_classes=21, seed=3, multi_level=False, main_head_name="layer5")
    state_dict = {f"Scale.{k}": v for k, v in _numpy_state_dict(net).items()}
    model = build_segmenter("resnet_tiny", num_classes=NUM_CLASSES)
    fresh_heads = [w.numpy() for w in _head_weights(model)]
    summary = pytorch_interop.load_state_dict_into_model(model, state_dict)
    assert summary.checkpoint_format == pytorch_interop.FORMAT_IMAGENET_INIT
    assert not summary.heads_converted
    assert summary.skipped_keys == tuple(
        k for k in state_dict if k.startswith("Scale.layer5."))
    assert all(np.array_equal(w.numpy(), fresh)
               for w, fresh in zip(_head_weights(model), fresh_heads))
    features = [model.get_layer(f"{stage}_0_relu").output for stage in ("layer3", "layer4")]
    backbone = keras.Model(model.input, features)
    for actual, expected in zip(backbone(image, training=False),
                                _run_torch(net.backbone, image)):
        _assert_close(actual, expected)


def _corrupt(state_dict):
    """Two missing, two unexpected and two mis-shaped keys."""
    state_dict = dict(state_dict)
    del state_dict["layer2.0.conv1.weight"], state_dict["layer5.conv2d_list.3.bias"]
    state_dict["layer7.conv1.weight"] = torch.zeros(3)
    state_dict["fc.bias"] = torch.zeros(3)
    state_dict["bn1.running_var"] = torch.ones(63)
    state_dict["layer6.conv2d_list.0.weight"] = torch.zeros(18, 2048, 3, 3)
    return state_dict


_CORRUPT_KEYS = ("layer2.0.conv1.weight", "layer5.conv2d_list.3.bias",
                 "fc.bias", "layer7.conv1.weight",
                 "bn1.running_var", "layer6.conv2d_list.0.weight")


@pytest.fixture(scope="module")
def corrupt_checkpoint(tiny_net, tmp_path_factory):
    return _save(_corrupt(tiny_net.state_dict()),
                 tmp_path_factory.mktemp("corrupt") / "corrupt.pth")


def test_mismatch_lists_every_key_and_keeps_output(corrupt_checkpoint, tmp_path):
    existing = tmp_path / "existing.weights.h5"
    existing.write_bytes(b"previous weights")
    with pytest.raises(pytorch_interop.StateDictMismatchError) as info:
        pytorch_interop.convert_checkpoint(corrupt_checkpoint, existing, backbone="resnet_tiny")
    error = info.value
    assert error.missing == ["layer2.0.conv1.weight", "layer5.conv2d_list.3.bias"]
    assert error.unexpected == ["fc.bias", "layer7.conv1.weight"]
    assert error.mismatched == [("bn1.running_var", (64,), (63,)),
                                ("layer6.conv2d_list.0.weight", (19, 2048, 3, 3),
                                 (18, 2048, 3, 3))]
    assert all(key in str(error) for key in _CORRUPT_KEYS)
    assert existing.read_bytes() == b"previous weights"
    assert sorted(os.listdir(tmp_path)) == ["existing.weights.h5"]
    assert sorted(os.listdir(tmp_path)) == ["existing.weights.h5"]


def test_cli_failure_exits_nonzero_and_writes_nothing(corrupt_checkpoint, tmp_path):
    result = _run_cli("--input", corrupt_checkpoint, "--output",
                      tmp_path / "new.weights.h5", "--backbone", "resnet_tiny")
    assert result.returncode == 1
    assert all(key in result.stderr for key in _CORRUPT_KEYS), result.stderr
    assert not os.listdir(tmp_path)


class _ArbitraryObject:
    """Unpickling it would create ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint = _save({"conv1.weight": torch.zeros(1), "hook": _ArbitraryObject(marker)},
                       tmp_path / "pickle.pth")
    output = tmp_path / "out.weights.h5"
    with pytest.raises(pytorch_interop.PyTorchCheckpointError, match="weights_only"):
        pytorch_interop.convert_checkpoint(checkpoint, output)
    assert not marker.exists()
    assert not output.exists()


@pytest.mark.parametrize("variant", ["wrapped", "legacy_format"])
def test_checkpoint_variants_read_alike(variant, tiny_net, tiny_checkpoint, tmp_path):
    # The released checkpoints date from torch 0.4.1, before the zip format;
    # training scripts often wrap the state dict with bookkeeping.
    path = tmp_path / f"{variant}.pth"
    if variant == "wrapped":
        torch.save({"state_dict": tiny_net.state_dict(), "iteration": 120000}, path)
    else:
        torch.save(tiny_net.state_dict(), path, _use_new_zipfile_serialization=False)
    plain = pytorch_interop.load_pytorch_state_dict(tiny_checkpoint)
    variant_state = pytorch_interop.load_pytorch_state_dict(path)
    assert variant_state.keys() == plain.keys()
    assert all(np.array_equal(variant_state[k], plain[k]) for k in plain)


@pytest.mark.parametrize("content", [{"conv1.weight": torch.zeros(1), "epoch": 3},
                                     [torch.zeros(1)]])
def test_non_state_dicts_are_refused(content, tmp_path):
    with pytest.raises(pytorch_interop.PyTorchCheckpointError):
        pytorch_interop.load_pytorch_state_dict(_save(content, tmp_path / "x.pth"))


def test_output_must_be_a_keras_weights_file(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        pytorch_interop.convert_checkpoint(tiny_checkpoint, tmp_path / "out.h5",
                                           backbone="resnet_tiny")


def test_torchvision_vgg16_initialises_the_deeplab_vgg16(tmp_path):
    """torchvision's vgg16 keys -> conv1_1..conv5_3; pool5 features equal a PyTorch restatement."""
    net = pytorch_reference.randomize_(pytorch_reference.DeepLabVGG16Features(), seed=3).eval()
    state = dict(net.state_dict())
    # torchvision's fully connected classifier: skipped (no counterpart in DeepLab-V2).
    state.update({"classifier.0.weight": torch.zeros(8, 4), "classifier.0.bias": torch.zeros(8)})
    checkpoint, output = tmp_path / "vgg16.pth", tmp_path / "vgg16.weights.h5"
    torch.save(state, checkpoint)
    summary = pytorch_interop.convert_checkpoint(checkpoint, output, backbone="vgg16",
                                                 num_classes=5, multi_level=False)
    assert summary.checkpoint_format == pytorch_interop.FORMAT_TORCHVISION_VGG16
    assert summary.num_tensors == 26 and not summary.heads_converted
    assert summary.skipped_keys == ("classifier.0.weight", "classifier.0.bias")
    model = build_segmenter("vgg16", 5, multi_level=False)
    fresh_fc6 = model.get_layer("fc6").get_weights()[0].copy()
    model.load_weights(output)
    np.testing.assert_array_equal(model.get_layer("fc6").get_weights()[0].shape, fresh_fc6.shape)
    features = keras.Model(model.input, model.get_layer("pool5").output)
    x = np.random.default_rng(0).normal(0, 50, (1, 37, 53, 3)).astype(np.float32)
    ours = features(x).numpy()
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (1, 6, 8, 512)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    # Strict: a missing convolution is named, nothing is written.
    del state["features.28.weight"]
    torch.save(state, checkpoint)
    with pytest.raises(pytorch_interop.StateDictMismatchError, match="features.28.weight"):
        pytorch_interop.convert_checkpoint(checkpoint, tmp_path / "other.weights.h5",
                                           backbone="vgg16", num_classes=5, multi_level=False)
    assert not (tmp_path / "other.weights.h5").exists()
    # A VGG-16 checkpoint is not a ResNet's, and the other way round.
    with pytest.raises(ValueError, match="does not fit backbone 'resnet_tiny'"):
        pytorch_interop.convert_checkpoint(checkpoint, tmp_path / "x.weights.h5",
                                           backbone="resnet_tiny", multi_level=False)
