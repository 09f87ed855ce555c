"""Tests for the DeepLab-V2 segmenters, their BatchNorm and the builder."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf import models as models_lib
from advent_tf.models import (
    BatchNorm,
    backbone_variables,
    build_segmenter,
    head_variables,
    split_outputs,
)

# (height, width) -> stride-8 logits size of the reference (ceil-mode pool).
REFERENCE_OUTPUT_SIZES = {
    (720, 1280): (91, 161),
    (512, 1024): (65, 129),
    (360, 640): (46, 81),
    (256, 512): (33, 65),
}


def _num_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _counted_weights(weights):
    """Weights the reference counts as parameters: everything but BN moving stats."""
    return [w for w in weights if "moving_" not in w.path]


@pytest.fixture(scope="module")
def resnet101():
    # Built once, never run on a real-size input: construction is symbolic.
    return build_segmenter("resnet101", num_classes=19, multi_level=True)


@pytest.fixture(scope="module")
def tiny_image():
    return np.random.default_rng(0).normal(size=(1, 41, 50, 3)).astype(np.float32)


def test_resnet101_param_counts_match_reference(resnet101, ref):
    total = _num_params(_counted_weights(resnet101.weights))
    trainable = _num_params(resnet101.trainable_variables)
    assert total == int(ref["d_segnet_params_total"]) == 44_601_560
    assert trainable == int(ref["d_segnet_params_trainable"]) == 44_496_216
    assert total - trainable == int(ref["d_segnet_params_frozen_bn"]) == 105_344


def test_resnet101_per_module_param_counts(resnet101, ref):
    for module, expected in zip(ref["d_segnet_module_names"],
                                ref["d_segnet_module_params"]):
        layers = [l for l in resnet101.layers
                  if l.name == module or l.name.startswith(f"{module}_")]
        weights = [w for layer in layers for w in layer.weights]
        assert _num_params(_counted_weights(weights)) == expected, module


def test_resnet101_single_level_param_count(ref):
    model = build_segmenter("resnet101", multi_level=False)
    assert _num_params(_counted_weights(model.weights)) == int(
        ref["d_segnet_single_level_params_total"]) == 43_901_068
    assert not any(l.name.startswith("layer5") for l in model.layers)


def test_resnet101_layer_names_follow_pytorch_keys(resnet101):
    names = {l.name for l in resnet101.layers}
    for expected in ("conv1", "bn1", "layer1_0_conv1", "layer1_0_downsample_0",
                     "layer1_0_downsample_1", "layer2_3_bn3", "layer3_22_conv3",
                     "layer4_0_downsample_0", "layer4_2_bn3",
                     "layer5_conv2d_list_3", "layer6_conv2d_list_0"):
        assert expected in names
    assert "layer1_1_downsample_0" not in names
    bn = resnet101.get_layer("layer3_5_bn2")
    assert [w.name for w in bn.weights] == [
        "gamma", "beta", "moving_mean", "moving_variance"]
    assert resnet101.get_layer("layer2_0_conv1").strides == (2, 2)
    assert resnet101.get_layer("layer2_0_conv2").strides == (1, 1)
    assert resnet101.get_layer("layer3_7_conv2").dilation_rate == (2, 2)
    assert resnet101.get_layer("layer4_1_conv2").dilation_rate == (4, 4)


def test_bn_affine_params_are_never_trainable(resnet101):
    trainable_ids = {id(v) for v in resnet101.trainable_variables}
    bn_layers = [l for l in resnet101.layers if isinstance(l, BatchNorm)]
    assert len(bn_layers) == 104  # bn1 + 3 per block x 33 + 4 downsample BNs
    for layer in bn_layers:
        assert not layer.trainable_weights
        assert not any(id(w) in trainable_ids for w in layer.weights)


def test_head_and_backbone_variables_partition_trainables(resnet101, ref):
    head = head_variables(resnet101)
    backbone = backbone_variables(resnet101)
    module_params = dict(zip(ref["d_segnet_module_names"], ref["d_segnet_module_params"]))
    assert _num_params(head) == module_params["layer5"] + module_params["layer6"]
    assert len(head) == 16  # 2 heads x 4 branches x (kernel, bias)
    assert ({id(v) for v in head} | {id(v) for v in backbone}
            == {id(v) for v in resnet101.trainable_variables})
    assert not {id(v) for v in head} & {id(v) for v in backbone}


@pytest.mark.parametrize("size", sorted(REFERENCE_OUTPUT_SIZES))
def test_resnet101_output_sizes_match_reference(resnet101, size):
    # Symbolic call: shapes only, no computation.
    aux, main = split_outputs(resnet101(keras.KerasTensor((1, *size, 3))))
    expected = (1, *REFERENCE_OUTPUT_SIZES[size], 19)
    assert tuple(aux.shape) == tuple(main.shape) == expected


def test_tiny_forward_shapes_dtypes_and_symbolic_agreement(tiny_image):
    model = build_segmenter("resnet_tiny", num_classes=5)
    aux, main = split_outputs(model(tiny_image, training=False))
    # 41x50 -> stem 21x25 -> ceil pool 11x13 -> layer2 6x7.
    assert tuple(aux.shape) == tuple(main.shape) == (1, 6, 7, 5)
    assert aux.dtype == main.dtype == tf.float32
    symbolic = model(keras.KerasTensor(tiny_image.shape))
    assert tuple(symbolic[1].shape) == (1, 6, 7, 5)


def test_single_level_returns_main_logits_only(tiny_image):
    model = build_segmenter("resnet_tiny", num_classes=4, multi_level=False)
    out = model(tiny_image)
    assert tf.is_tensor(out) and tuple(out.shape) == (1, 6, 7, 4)
    aux, main = split_outputs(out)
    assert aux is None and main is out


def test_tiny_forward_under_xla(tiny_image):
    model = build_segmenter("resnet_tiny", num_classes=3)
    # Dynamic spatial dims: the ceil-mode pool pads from tf.shape under XLA too.
    step = tf.function(lambda x: model(x, training=False), jit_compile=True,
                       input_signature=[tf.TensorSpec((1, None, None, 3))])
    xla_aux, xla_main = step(tiny_image)
    aux, main = model(tiny_image, training=False)
    np.testing.assert_allclose(xla_main, main, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xla_aux, aux, rtol=1e-4, atol=1e-5)


def _random_bn(mode, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    layer = BatchNorm(mode)
    layer.build((None, None, None, channels))
    layer.set_weights([rng.uniform(0.5, 2.0, channels), rng.normal(size=channels),
                       rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)])
    x = rng.normal(1.0, 3.0, size=(2, 4, 5, channels)).astype(np.float32)
    return layer, x


def test_bn_reference_training_uses_batch_stats_and_pytorch_update():
    layer, x = _random_bn("reference")
    gamma, beta, mean0, var0 = [w.copy() for w in layer.get_weights()]
    out = layer(x, training=True).numpy()
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))  # biased, for normalising
    n = x.size // x.shape[-1]
    np.testing.assert_allclose(
        out, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-5)
    new = layer.get_weights()
    np.testing.assert_allclose(new[0], gamma)
    np.testing.assert_allclose(new[1], beta)
    np.testing.assert_allclose(new[2], 0.9 * mean0 + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new[3], 0.9 * var0 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_bn_single_value_per_channel_keeps_the_moving_variance_finite():
    layer, _ = _random_bn("reference")
    mean0 = layer.moving_mean.numpy().copy()
    var0 = layer.moving_variance.numpy().copy()
    x = np.random.default_rng(3).normal(size=(1, 1, 1, var0.size)).astype(np.float32)
    out = layer(x, training=True).numpy()
    # One value: batch variance 0, so the output is beta; no unbiased
    # variance exists, and the moving one keeps its value instead of inf.
    np.testing.assert_allclose(out[0, 0, 0], layer.beta.numpy(), atol=1e-2)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var0, rtol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.9 * mean0 + 0.1 * x[0, 0, 0],
                               rtol=1e-5, atol=1e-6)


def test_bn_inference_uses_moving_stats_and_frozen_never_updates():
    for mode, training in (("reference", False), ("frozen", True), ("frozen", False)):
        layer, x = _random_bn(mode)
        gamma, beta, mean, var = [w.copy() for w in layer.get_weights()]
        out = layer(x, training=training).numpy()
        np.testing.assert_allclose(
            out, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-5)
        for before, after in zip((gamma, beta, mean, var), layer.get_weights()):
            np.testing.assert_array_equal(before, after)


def test_bn_computes_in_float32_under_mixed_precision():
    layer = BatchNorm("reference", dtype="mixed_float16")
    # Values whose float16 square sum overflows (> 65504).
    x = np.full((1, 4, 4, 2), 300.0, np.float16)
    x[0, 0, 0] = 200.0
    out = layer(x, training=True)
    assert out.dtype == tf.float16
    assert np.all(np.isfinite(out.numpy()))
    assert layer.moving_variance.dtype == "float32"
    assert np.all(np.isfinite(layer.moving_variance.numpy()))


def test_bn_statistics_accumulate_in_float32_under_bfloat16():
    layer = BatchNorm("reference", dtype="mixed_bfloat16")
    rng = np.random.default_rng(0)
    x = tf.cast(rng.normal(3.0, 2.0, (2, 64, 64, 4)), tf.bfloat16)
    out = layer(x, training=True)
    assert out.dtype == tf.bfloat16
    exact = x.numpy().astype(np.float64).reshape(-1, 4)
    # A bfloat16 running sum over 8192 values would be off by ~1e-2.
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * exact.mean(0), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 + 0.1 * exact.var(0, ddof=1), rtol=1e-5)
    normalised = (exact - exact.mean(0)) / np.sqrt(exact.var(0) + 1e-5)
    np.testing.assert_allclose(out.numpy().astype(np.float64).reshape(-1, 4), normalised,
                               atol=2e-2)


def test_model_bn_modes(tiny_image):
    frozen = build_segmenter("resnet_tiny", num_classes=3, bn_mode="frozen")
    before = [w.numpy().copy() for w in frozen.weights]
    out_train = frozen(tiny_image, training=True)[1]
    out_eval = frozen(tiny_image, training=False)[1]
    np.testing.assert_allclose(out_train, out_eval, rtol=1e-6)
    for b, w in zip(before, frozen.weights):
        np.testing.assert_array_equal(b, w.numpy())

    reference = build_segmenter("resnet_tiny", num_classes=3, bn_mode="reference")
    bn1 = reference.get_layer("bn1")
    reference(tiny_image, training=True)
    assert not np.allclose(bn1.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(bn1.gamma.numpy(), 1.0)


def test_vgg16_is_single_level_with_output_stride_8(ref):
    model = build_segmenter("vgg16", num_classes=19, multi_level=False)
    # conv1_1..conv5_3 14,714,688 + fc6 4,719,616 + fc7 1,049,600
    # + ASPP on 1024 channels (the reference's aux head size) 700,492.
    assert model.count_params() == 21_184_396
    assert _num_params(head_variables(model)) == int(ref["d_segnet_module_params"][6])
    assert model.get_layer("pool4").strides == 1
    assert model.get_layer("conv5_1").dilation_rate == (2, 2)
    for size, expected in REFERENCE_OUTPUT_SIZES.items():
        assert tuple(model(keras.KerasTensor((1, *size, 3))).shape) == (1, *expected, 19)
    out = model(np.zeros((1, 33, 47, 3), np.float32))
    # Each stride-2 pool gives ceil((n - 1) / 2) + 1: 33->17->9->5, 47->24->13->7.
    assert tuple(out.shape) == (1, 5, 7, 19)


def test_builder_argument_errors():
    with pytest.raises(ValueError, match="backbone.*resnet101.*vgg16.*'resnet18'"):
        build_segmenter("resnet18")
    with pytest.raises(ValueError, match="multi_level.*vgg16"):
        build_segmenter("vgg16", multi_level=True)
    with pytest.raises(ValueError, match="bn_mode.*reference.*frozen"):
        build_segmenter("resnet_tiny", bn_mode="sync")
    with pytest.raises(ValueError, match="num_classes"):
        build_segmenter("resnet_tiny", num_classes=0)


def test_resnet_tiny_matches_pytorch_reference_by_layer_name(tiny_image):
    """Copies random weights by state-dict key -> layer name and compares outputs.

    Checks, in one go, the layer naming a checkpoint converter relies on and the
    topology (stride placement, padding, ceil pool, projections, ASPP sum) in
    both BN regimes, including PyTorch's running-statistics update.
    """
    torch = pytest.importorskip("torch")
    import pytorch_reference

    torch.manual_seed(0)
    net = pytorch_reference.build_resnet("resnet_tiny", num_classes=3).double()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
    state = {k: v.numpy() for k, v in net.state_dict().items()}

    model = build_segmenter("resnet_tiny", num_classes=3, bn_mode="reference")
    for layer in model.layers:
        key = layer.name.replace("_", ".").replace("conv2d.list", "conv2d_list")
        if isinstance(layer, BatchNorm):
            layer.set_weights([state[f"{key}.{s}"] for s in (
                "weight", "bias", "running_mean", "running_var")])
        elif isinstance(layer, keras.layers.Conv2D):
            weights = [state[f"{key}.weight"].transpose(2, 3, 1, 0)]
            if layer.use_bias:
                weights.append(state[f"{key}.bias"])
            layer.set_weights(weights)

    x_torch = torch.from_numpy(tiny_image.transpose(0, 3, 1, 2)).double()
    for training in (False, True):
        net.train(training)
        with torch.no_grad():
            expected = [t.numpy().transpose(0, 2, 3, 1) for t in net(x_torch)]
        got = model(tiny_image, training=training)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
    for name in ("bn1", "layer2_0_downsample_1", "layer4_0_bn3"):
        layer = model.get_layer(name)
        key = name.replace("_", ".")
        np.testing.assert_allclose(
            layer.moving_mean.numpy(), net.state_dict()[f"{key}.running_mean"],
            rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), net.state_dict()[f"{key}.running_var"],
            rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet50"])
def test_reference_update_repeats_follow_the_reference_parameter_listing(backbone):
    """Counts each tensor in the restated reference's `get_1x_lr_params_no_scale` listing."""
    pytest.importorskip("torch")
    import collections

    import pytorch_reference

    net = pytorch_reference.build_resnet(backbone, num_classes=3)
    names = {id(p): name for name, p in net.named_parameters()}
    listed = collections.Counter(
        names[id(p)] for p in net.optim_parameters(1.0)[0]["params"])
    model = build_segmenter(backbone, num_classes=3)
    ours = {v.path.split("/")[0].replace("_", ".") + ".weight": count
            for v, count in models_lib.reference_update_repeats(model)}
    assert ours == dict(listed)
    assert set(collections.Counter(listed.values())) == {1, 3, 4}
    assert {v.path for v, _ in models_lib.reference_update_repeats(model)} == {
        v.path for v in backbone_variables(model)}
    with pytest.raises(ValueError, match="ResNet backbones only"):
        models_lib.reference_update_repeats(build_segmenter("vgg16", 3, multi_level=False))


def test_moving_stats_average_across_replicas():
    layer = BatchNorm("reference")
    layer.build((None, None, None, 2))
    # MirroredStrategy would otherwise let each replica keep its own statistics.
    assert layer.moving_mean.aggregation == layer.moving_variance.aggregation == "mean"


def test_mixed_precision_logits_are_float32(tiny_image):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_segmenter("resnet_tiny", num_classes=3)
        aux, main = model(tiny_image, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("layer4_0_conv2").compute_dtype == "float16"
    assert model.get_layer("bn1").moving_mean.dtype == "float32"
    assert aux.dtype == main.dtype == tf.float32
    assert np.all(np.isfinite(main.numpy()))


def test_config_round_trip_rebuilds_the_same_network(tiny_image):
    model = build_segmenter("resnet_tiny", num_classes=3, bn_mode="frozen")
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert clone.get_layer("bn1").mode == "frozen"
    np.testing.assert_allclose(clone(tiny_image)[1], model(tiny_image)[1], rtol=1e-6)


def test_bn_reference_training_moves_the_statistics_in_the_fused_op():
    """Traced at a known shape: the op moves the statistics, no multiply-adds around it.

    Each node of a traced step costs host memory in every copy of the graph
    TensorFlow keeps; ResNet-101's 104 BN layers run twice per adaptation step.
    """
    layer, x = _random_bn("reference")
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.constant(x)).graph
    ops = sorted(op.type for op in graph.get_operations()
                 if op.type not in ("Placeholder", "Identity", "NoOp"))
    assert ops == ["AssignVariableOp"] * 2 + ["FusedBatchNormV3"] + ["ReadVariableOp"] * 4, ops


def test_bn_single_value_per_channel_guard_holds_at_an_unknown_shape():
    layer, _ = _random_bn("reference")
    var0 = layer.moving_variance.numpy().copy()
    step = tf.function(lambda x: layer(x, training=True),
                       input_signature=[tf.TensorSpec([None, None, None, var0.size])])
    step(np.random.default_rng(4).normal(size=(1, 1, 1, var0.size)).astype(np.float32))
    np.testing.assert_allclose(layer.moving_variance.numpy(), var0, rtol=1e-6)
    x = np.random.default_rng(5).normal(size=(2, 3, 1, var0.size)).astype(np.float32)
    step(x)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 * var0 + 0.1 * x.var(axis=(0, 1, 2), ddof=1), rtol=1e-5)
