"""Our training iterations against the official code's, run side by side in PyTorch.

`pytorch_reference.ReferenceTrainer` restates ``train_minent`` /
``train_advent`` of valeoai/ADVENT (its source half is the source-only
baseline). Both frameworks start from the same random weights (the
segmenter through the checkpoint converter, the discriminators copied by
layer), take two iterations on the same batch, and must agree on every
logged loss of both iterations and on every weight, BN running statistic
and discriminator weight afterwards. The second iteration's losses see the
first's SGD (momentum, coupled weight decay, heads at 10x, poly schedule)
and Adam updates and BN statistics.

Our side is built by `advent_tf.experiment.factory` from an `ExperimentConfig`, as
`train` builds it. Hyper-parameters are the reference's except a larger
learning rate and a short poly horizon, so that the updates are large enough to check and the
schedule moves between the two steps. The backbone is listed once in the
reference's SGD group (`deduplicate`): our default, see the README on the
duplicated-parameter quirk.
"""

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch")
import pytorch_reference  # noqa: E402  (tools/, on sys.path via conftest)

from advent_tf import models  # noqa: E402
from advent_tf.experiment import config  # noqa: E402
from advent_tf import pytorch_interop  # noqa: E402
from advent_tf.experiment import factory  # noqa: E402

NUM_CLASSES = 7
LEARNING_RATE = 2e-2
LEARNING_RATE_D = 1e-3
HORIZON = 10
STEPS = 2
# float32 round-off through the network and its gradients.
RTOL = 2e-4


def _config(method):
    """The experiment `train` would run for these flags (the factory builds it)."""
    return config.from_values(dict(
        method=method, backbone="resnet_mini", num_classes=NUM_CLASSES, multi_level=True,
        bn_mode="reference", learning_rate=LEARNING_RATE,
        learning_rate_d=LEARNING_RATE_D if method == "advent" else 1e-4,
        lr_horizon=HORIZON, power=0.9, momentum=0.9, weight_decay=5e-4,
        head_lr_multiplier=10.0, backbone_update_repeats="1"))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, (1, 48, 64)).astype(np.int32)
    labels[0, :6] = 255  # Ignored pixels.
    return {"source_image": rng.uniform(-120, 135, (1, 48, 64, 3)).astype(np.float32),
            "source_label": labels,
            "target_image": rng.uniform(-120, 135, (1, 40, 56, 3)).astype(np.float32)}


def _nchw(array):
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _copy_discriminator(torch_d, name):
    keras_d = models.build_discriminator(NUM_CLASSES, name=name)
    pytorch_interop.load_pytorch_discriminator_weights(
        keras_d, {f"D.{k}": v.numpy() for k, v in torch_d.state_dict().items()})
    return keras_d


def _build_pair(method):
    """(our compiled method, the reference trainer), from the same random weights."""
    torch.manual_seed(0)
    net = pytorch_reference.randomize_(
        pytorch_reference.build_resnet("resnet_mini", NUM_CLASSES), seed=1)
    discriminators = None
    if method == "advent":
        discriminators = (pytorch_reference.get_fc_discriminator(NUM_CLASSES),
                          pytorch_reference.get_fc_discriminator(NUM_CLASSES))
    cfg = _config(method)
    segmenter = factory.build_segmenter(cfg.model)
    pytorch_interop.load_state_dict_into_model(
        segmenter, {k: v.numpy() for k, v in net.state_dict().items()})
    copies = None
    if method == "advent":
        copies = (_copy_discriminator(discriminators[0], "discriminator_main"),
                  _copy_discriminator(discriminators[1], "discriminator_aux"))
    ours = factory.build_method(cfg, segmenter=segmenter, discriminators=copies)
    theirs = pytorch_reference.ReferenceTrainer(
        method, net, NUM_CLASSES, discriminators=discriminators, deduplicate=True,
        LEARNING_RATE=LEARNING_RATE, LEARNING_RATE_D=LEARNING_RATE_D, MAX_ITERS=HORIZON)
    return ours, theirs


def _their_logs(losses):
    """The reference's loss names as our trackers name them."""
    renamed = {"loss_seg_main": losses["loss_seg_src_main"],
               "loss_seg_aux": losses["loss_seg_src_aux"]}
    for head in ("main", "aux"):
        if f"loss_ent_{head}" in losses:
            renamed[f"loss_ent_{head}"] = losses[f"loss_ent_{head}"]
        if f"loss_adv_trg_{head}" in losses:
            renamed[f"loss_adv_{head}"] = losses[f"loss_adv_trg_{head}"]
            # Ours logs the halved source and target terms as one sum.
            renamed[f"loss_d_{head}"] = (losses[f"loss_d_src_{head}"]
                                         + losses[f"loss_d_trg_{head}"])
    return renamed


def _assert_close(name, actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, name
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= RTOL * scale + 1e-7, (
        name, np.abs(actual - expected).max(), scale)


@pytest.mark.parametrize("method", ["source_only", "minent", "advent"])
def test_iterations_match_the_reference_code(method):
    ours, theirs = _build_pair(method)
    batch = _batch()
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    initial = {v.path: v.numpy() for v in ours.segmenter.trainable_variables}
    for step in range(STEPS):
        logs = {k: float(v) for k, v in ours.train_step(tensors).items()}
        expected = _their_logs(theirs.step(_nchw(batch["source_image"]),
                                           torch.from_numpy(batch["source_label"]),
                                           _nchw(batch["target_image"])))
        assert set(expected) <= set(logs), (sorted(expected), sorted(logs))
        for name, value in expected.items():
            assert logs[name] == pytest.approx(value, rel=RTOL), (step, name)

    state = {k: v.detach().numpy() for k, v in theirs.model.state_dict().items()}
    moved = 0
    for layer in ours.segmenter.layers:
        key = layer.name.replace("_", ".").replace("conv2d.list", "conv2d_list")
        for weight in layer.weights:
            suffix = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                      "moving_mean": "running_mean",
                      "moving_variance": "running_var"}[weight.name]
            expected = state[f"{key}.{suffix}"]
            actual = weight.numpy()
            if actual.ndim == 4:
                expected = expected.transpose(2, 3, 1, 0)
            _assert_close(weight.path, actual, expected)
            if weight.path in initial:
                # The update itself, not just the (much larger) weights.
                _assert_close(weight.path + " update", actual - initial[weight.path],
                              expected - initial[weight.path])
                moved += not np.array_equal(actual, initial[weight.path])
    assert moved == len(initial)  # Every trainable tensor took its SGD steps.

    if method == "advent":
        for keras_d, torch_d in ((ours.discriminator_main, theirs.d_main),
                                 (ours.discriminator_aux, theirs.d_aux)):
            d_state = {k: v.numpy() for k, v in torch_d.state_dict().items()}
            for index in (0, 2, 4, 6, 8):
                kernel, bias = keras_d.get_layer(f"D_{index}").get_weights()
                for name, actual, expected in (
                        ("kernel", kernel, d_state[f"{index}.weight"].transpose(2, 3, 1, 0)),
                        ("bias", bias, d_state[f"{index}.bias"])):
                    _assert_adam_steps_close(f"{keras_d.name} D_{index} {name}", actual,
                                             expected)


def _assert_adam_steps_close(name, actual, expected):
    """Discriminator weights after Adam steps (each step moves a weight by up to ~lr).

    Adam divides each gradient by its own magnitude, so components whose
    gradient is near zero (round-off level, ~1e-4 of a layer's weights here)
    move by float32 noise amplified to a visible fraction of a step (up to
    ~2% of lr observed). A wrong update rule (epsilon placement, bias
    correction, betas, schedule) moves most weights by a sizeable fraction
    of lr.
    """
    error = np.abs(actual - expected) / LEARNING_RATE_D
    assert error.max() <= 0.05, (name, error.max())
    assert np.mean(error > 1e-3) <= 1e-3, (name, np.mean(error > 1e-3))
