"""Run by test_train_distribution.py through two_cpus.run (2 logical CPUs must exist before TF starts).

Trains each method for two steps on one fixed global batch of 2, once on one
device and once under MirroredStrategy over 2 logical CPU devices (one image
per replica), and prints the largest weight differences per method (see `main`).
The loss terms named after ``--gradients`` are also compared by their
gradients, one at a time (see `gradient_differences`).
"""

import json
import sys

import numpy as np
import tensorflow as tf

import two_cpus

MIRRORED = two_cpus.mirrored_strategy()

import keras  # noqa: E402

from advent_tf.experiment import config  # noqa: E402
from advent_tf.experiment import factory  # noqa: E402

D_LEARNING_RATE = 1e-4


def _batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (2, 32, 64)).astype(np.int32)
    labels[0, :20] = 255  # Unequal valid-pixel counts per replica.
    return {"source_image": rng.normal(0, 50, (2, 32, 64, 3)).astype(np.float32),
            "source_label": labels,
            "target_image": rng.normal(0, 50, (2, 32, 64, 3)).astype(np.float32)}


def train(strategy, method_name):
    # Frozen BN: with batch statistics, 2 images on one device and 1 image
    # per replica normalise differently by definition.
    cfg = config.from_values(dict(
        method=method_name, backbone="resnet_mini", num_classes=19, multi_level=True,
        bn_mode="frozen", learning_rate=0.01, lr_horizon=100, seed=0,
        learning_rate_d=D_LEARNING_RATE))
    with strategy.scope():
        method = factory.build_method(cfg)
    dataset = tf.data.Dataset.from_tensors(_batch()).repeat()
    method.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    d_ids = {id(w) for d in (getattr(method, "discriminator_main", None),
                             getattr(method, "discriminator_aux", None)) if d is not None
             for w in d.weights}
    return ([w.numpy() for w in method.weights if id(w) not in d_ids],
            [w.numpy() for w in method.weights if id(w) in d_ids])


# One loss term at a time: (method, config values) whose update comes from that term only.
GRADIENT_TERMS = {
    "seg": ("source_only", {}),
    "ent": ("minent", dict(lambda_seg_main=0.0, lambda_seg_aux=0.0)),
    "adv": ("advent", dict(lambda_seg_main=0.0, lambda_seg_aux=0.0)),
}


def one_step_gradients(strategy, method_name, values):
    """The summed gradients of one step: the weight change under SGD(lr 1, no momentum).

    The factory's method is recompiled with plain SGD at learning rate 1 for F and
    both discriminators, so that the update of every weight is minus the
    gradient the optimizers receive, before any optimizer arithmetic (Adam
    would hide a gradient's scale).
    """
    cfg = config.from_values(dict(
        method=method_name, backbone="resnet_mini", num_classes=19, multi_level=True,
        bn_mode="frozen", seed=0, weight_decay=0.0, **values))
    with strategy.scope():
        method = factory.build_method(cfg)
        sgd = [keras.optimizers.SGD(1.0) for _ in range(3)]
        if method_name == "advent":
            method.compile(*sgd)
        else:
            method.compile(sgd[0])
    groups = {"segmenter": method.segmenter.trainable_variables}
    for name in ("discriminator_main", "discriminator_aux"):
        if getattr(method, name, None) is not None:
            groups[name] = getattr(method, name).trainable_variables
    before = {group: [v.numpy() for v in variables] for group, variables in groups.items()}
    method.fit(tf.data.Dataset.from_tensors(_batch()).repeat(), epochs=1, steps_per_epoch=1,
               verbose=0, shuffle=False)
    return {group: [b - v.numpy() for b, v in zip(before[group], variables)]
            for group, variables in groups.items()}


def gradient_differences(terms):
    """{term: {group: largest |one device - 2 replicas| / largest |one device|}}."""
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    result = {}
    for term in terms:
        method_name, values = GRADIENT_TERMS[term]
        a = one_step_gradients(one, method_name, values)
        b = one_step_gradients(MIRRORED, method_name, values)
        result[term] = {
            group: max(float(np.max(np.abs(x - y))) for x, y in zip(a[group], b[group]))
            / max(float(np.max(np.abs(x))) for x in a[group]) for group in a}
    return result


def main():
    """Prints {"weights": {method: [largest relative difference of the non-discriminator
    weights, largest discriminator weight difference in units of Adam's learning rate]},
    "gradients": `gradient_differences`} for `METHOD... --gradients TERM...`.

    The discriminators are compared in Adam steps: Adam divides each gradient
    by its own magnitude, so near-zero (round-off level) gradient components
    move by float32 noise amplified to a fraction of a step.
    """
    args = sys.argv[1:]
    split = args.index("--gradients") if "--gradients" in args else len(args)
    methods, terms = args[:split], args[split + 1:]
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    result = {}
    for name in methods:
        (a, a_d), (b, b_d) = train(one, name), train(MIRRORED, name)
        assert len(a) == len(b) and len(a_d) == len(b_d)
        relative = max(float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-12))
                       for x, y in zip(a, b))
        in_steps = max((float(np.max(np.abs(x - y))) / D_LEARNING_RATE
                        for x, y in zip(a_d, b_d)), default=0.0)
        result[name] = [relative, in_steps]
    print(json.dumps({"weights": result, "gradients": gradient_differences(terms)}))


if __name__ == "__main__":
    main()
