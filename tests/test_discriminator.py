"""Tests for the AdvEnt discriminator against the reference's outputs."""

import numpy as np
import pytest

from advent_tf.pytorch_interop import load_pytorch_discriminator_weights
from advent_tf.models import build_discriminator


def _weighted_self_information(logits_nchw):
    """The reference's prob_2_entropy(softmax(logits)), NCHW -> NHWC, in numpy."""
    logits = logits_nchw.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    num_classes = prob.shape[1]
    info = -prob * np.log2(prob + 1e-30) / np.log2(num_classes)
    return np.transpose(info, (0, 2, 3, 1)).astype(np.float32)


def test_param_count_matches_reference(ref):
    model = build_discriminator(num_classes=19)
    assert model.count_params() == int(ref["d_discriminator_params"]) == 2_781_121


def test_layer_names_mirror_pytorch_keys(ref_discriminator):
    model = build_discriminator()
    conv_names = {f"D_{k.split('.')[1]}" for k in ref_discriminator}
    assert conv_names == {"D_0", "D_2", "D_4", "D_6", "D_8"}
    for name in conv_names:
        assert model.get_layer(name).kernel.shape[:2] == (4, 4)


def test_reproduces_reference_output(ref, ref_discriminator):
    model = build_discriminator(num_classes=19)
    load_pytorch_discriminator_weights(model, ref_discriminator)
    info = _weighted_self_information(ref["a_logits"])
    out = model(info, training=False).numpy()
    expected = ref["b_D_out_on_a"]  # 1x1x2x4 NCHW
    np.testing.assert_allclose(
        np.transpose(out, (0, 3, 1, 2)), expected, rtol=1e-5, atol=1e-6)


def test_output_is_one_32nd_of_input():
    model = build_discriminator(num_classes=3, ndf=4)
    out = model(np.zeros((1, 512, 1024, 3), np.float32))
    assert tuple(out.shape) == (1, 16, 32, 1)


def test_loading_rejects_missing_and_misshaped_weights(ref_discriminator):
    model = build_discriminator(num_classes=19)
    incomplete = dict(ref_discriminator)
    del incomplete["D.4.bias"]
    with pytest.raises(KeyError, match="D.4.bias"):
        load_pytorch_discriminator_weights(model, incomplete)
    with pytest.raises(ValueError, match="D_0"):
        load_pytorch_discriminator_weights(
            build_discriminator(num_classes=16), ref_discriminator)
