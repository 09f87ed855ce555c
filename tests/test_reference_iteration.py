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
from advent_tf.core import losses  # noqa: E402
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


def _config(method, **values):
    """The experiment `train` would run for these flags (the factory builds it)."""
    return config.from_values(dict(dict(
        method=method, backbone="resnet_mini", num_classes=NUM_CLASSES, multi_level=True,
        bn_mode="reference", learning_rate=LEARNING_RATE,
        learning_rate_d=LEARNING_RATE_D if method == "advent" else 1e-4,
        lr_horizon=HORIZON, power=0.9, momentum=0.9, weight_decay=5e-4,
        head_lr_multiplier=10.0, backbone_update_repeats="1"), **values))


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


def _build_pair(method, config_values=None, class_prior=None, torch041_sgd=False,
                **trainer_overrides):
    """(our compiled method, the reference trainer), from the same random weights.

    `config_values` go to our `ExperimentConfig`, `trainer_overrides` to the
    reference trainer's hyper-parameters; `class_prior` to both.
    """
    torch.manual_seed(0)
    net = pytorch_reference.randomize_(
        pytorch_reference.build_resnet("resnet_mini", NUM_CLASSES), seed=1)
    discriminators = None
    if method == "advent":
        discriminators = (pytorch_reference.get_fc_discriminator(NUM_CLASSES),
                          pytorch_reference.get_fc_discriminator(NUM_CLASSES))
    cfg = _config(method, **(config_values or {}))
    segmenter = factory.build_segmenter(cfg.model)
    pytorch_interop.load_state_dict_into_model(
        segmenter, {k: v.numpy() for k, v in net.state_dict().items()})
    copies = None
    if method == "advent":
        copies = (_copy_discriminator(discriminators[0], "discriminator_main"),
                  _copy_discriminator(discriminators[1], "discriminator_aux"))
    ours = factory.build_method(cfg, class_prior=class_prior, segmenter=segmenter,
                                discriminators=copies)
    theirs = pytorch_reference.ReferenceTrainer(
        method, net, NUM_CLASSES, discriminators=discriminators,
        deduplicate=cfg.optim.backbone_update_repeats != "reference",
        torch041_sgd=torch041_sgd, LEARNING_RATE=LEARNING_RATE,
        LEARNING_RATE_D=LEARNING_RATE_D, MAX_ITERS=HORIZON, CLASS_PRIOR=class_prior,
        **trainer_overrides)
    return ours, theirs


def _their_logs(losses):
    """The reference's loss names as our trackers name them."""
    renamed = {"loss_seg_main": losses["loss_seg_src_main"],
               "loss_seg_aux": losses["loss_seg_src_aux"]}
    if "loss_cp" in losses:
        renamed["loss_cp"] = losses["loss_cp"]
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
    _run_and_compare(*_build_pair(method))


# The target-domain terms alone: segmentation weights and weight decay 0, so
# that every update comes from them, and their weights raised so that the
# updates stand well above float32 round-off in the weights; compared to 2e-4
# of their own update. With the paper's optimiser listing
# (--backbone_update_repeats=reference, stepped as torch 0.4.1 did).
# (No weight is 1, so that a weight left out shows.)
TARGET_ONLY = dict(lambda_seg_main=0.0, lambda_seg_aux=0.0, weight_decay=0.0,
                   lambda_ent_main=0.8, lambda_ent_aux=0.2, lambda_adv_main=0.6,
                   lambda_adv_aux=0.15, lambda_cp=0.5, backbone_update_repeats="reference")
TARGET_ONLY_REFERENCE = dict(LAMBDA_SEG_MAIN=0.0, LAMBDA_SEG_AUX=0.0, WEIGHT_DECAY=0.0,
                             LAMBDA_ENT_MAIN=0.8, LAMBDA_ENT_AUX=0.2, LAMBDA_ADV_MAIN=0.6,
                             LAMBDA_ADV_AUX=0.15, LAMBDA_CP=0.5)
PRIOR = np.random.default_rng(4).dirichlet(np.ones(NUM_CLASSES)).astype(np.float32)


@pytest.mark.parametrize("method, extra, prior", [
    ("minent", {}, None),
    ("minent", {"entropy_top_fraction": 0.3}, None),
    ("minent", {}, PRIOR),
    ("advent", {}, None),
    ("advent", {}, PRIOR),
], ids=["minent", "minent_er", "minent_cp", "advent", "advent_cp"])
def test_target_terms_match_the_reference_code(method, extra, prior):
    overrides = dict(TARGET_ONLY_REFERENCE)
    if "entropy_top_fraction" in extra:
        overrides["TOP_FRACTION"] = extra["entropy_top_fraction"]
    ours, theirs = _build_pair(method, dict(TARGET_ONLY, **extra), class_prior=prior,
                               torch041_sgd=True, **overrides)
    _run_and_compare(ours, theirs)


def test_adversarial_gradient_moves_target_maps_to_the_source_side():
    """AdvEnt's generator step alone (D frozen: Adam at lr 0) makes D see target maps as
    more source-like: the mean D logit (> 0 = target) on the batch's target maps drops."""
    cfg = _config("advent", lambda_seg_main=0.0, lambda_seg_aux=0.0, weight_decay=0.0,
                  lambda_adv_main=1.0, lambda_adv_aux=0.2, learning_rate_d=0.0)
    ours = factory.build_method(cfg)
    target = tf.constant(_batch()["target_image"])

    def d_logits():
        probs = ours.target_probabilities(target)
        return [float(tf.reduce_mean(d(losses.self_information_map(p))))
                for d, p in ((ours.discriminator_aux, probs[0]),
                             (ours.discriminator_main, probs[1]))]

    before = [v.numpy().copy() for v in ours.segmenter.trainable_variables]
    logits_before = d_logits()
    ours.train_step({k: tf.constant(v) for k, v in _batch().items()})
    moved = [np.abs(v.numpy() - b).max() for v, b in zip(ours.segmenter.trainable_variables,
                                                         before)]
    assert min(moved) > 0, "a segmenter tensor got no adversarial gradient"
    logits_after = d_logits()
    assert logits_after[0] < logits_before[0] and logits_after[1] < logits_before[1], (
        logits_before, logits_after)


def _run_and_compare(ours, theirs):
    """Two iterations on both sides; every loss, weight, update, BN statistic and D weight."""
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

    if getattr(ours, "discriminator_main", None) is not None:
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
    # A near-zero gradient whose sign is decided by round-off can move one
    # weight of millions by up to the 2 steps (measured: 1 of 2.1M at 0.36).
    assert error.max() <= 2.0 and np.mean(error > 0.05) <= 1e-5, (
        name, error.max(), np.mean(error > 0.05))
    assert np.mean(error > 1e-3) <= 1e-3, (name, np.mean(error > 1e-3))
