"""XLA and mixed precision change the numerics, not the gradients: one AdvEnt step compared.

The factory's AdvEnt is recompiled with plain SGD at learning rate 1 for F and
both discriminators (wrapped in dynamic loss scaling under mixed_float16, as
the factory wraps its own), so that each weight's change in one step is
minus its gradient. Each variant's gradients are compared with float32's,
group by group, relative to the largest float32 gradient of the group.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.experiment import config
from advent_tf.experiment import factory


def _batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (1, 32, 64)).astype(np.int32)
    labels[0, :6] = 255
    return {constants.SOURCE_IMAGE: rng.normal(0, 50, (1, 32, 64, 3)).astype(np.float32),
            constants.SOURCE_LABEL: labels,
            constants.TARGET_IMAGE: rng.normal(0, 50, (1, 32, 64, 3)).astype(np.float32)}


def _build(policy, jit_compile=False):
    keras.mixed_precision.set_global_policy(policy)
    cfg = config.from_values(dict(
        method="advent", backbone="resnet_mini", num_classes=19, bn_mode="frozen", seed=0,
        mixed_precision=policy, jit_compile=jit_compile))
    method = factory.build_method(cfg)
    sgd = [keras.optimizers.SGD(1.0) for _ in range(3)]
    if policy == "mixed_float16":
        sgd = [keras.optimizers.LossScaleOptimizer(o) for o in sgd]
    method.compile(*sgd, jit_compile=jit_compile)
    return method


def _groups(method):
    return {"segmenter": method.segmenter.trainable_variables,
            "discriminator_main": method.discriminator_main.trainable_variables,
            "discriminator_aux": method.discriminator_aux.trainable_variables}


def _one_step(method):
    before = {g: [v.numpy() for v in vs] for g, vs in _groups(method).items()}
    history = method.fit(tf.data.Dataset.from_tensors(_batch()).repeat(), epochs=1,
                         steps_per_epoch=1, verbose=0, shuffle=False)
    gradients = {g: [b - v.numpy() for b, v in zip(before[g], vs)]
                 for g, vs in _groups(method).items()}
    return gradients, {k: v[-1] for k, v in history.history.items()}


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def float32_step():
    try:
        return _one_step(_build("float32"))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy, jit_compile, tolerance", [
    ("float32", True, 1e-4),
    ("mixed_bfloat16", False, 6e-2),
    ("mixed_float16", False, 1e-2),
], ids=["xla", "bfloat16", "float16"])
def test_gradients_match_float32(policy, jit_compile, tolerance, float32_step):
    want, want_logs = float32_step
    got, logs = _one_step(_build(policy, jit_compile))
    for group in want:
        scale = max(float(np.max(np.abs(g))) for g in want[group])
        assert scale > 0, group
        error = max(float(np.max(np.abs(a - b))) for a, b in zip(got[group], want[group]))
        assert error <= tolerance * scale, (group, error / scale)
        # And the direction: the gradients as one vector point the same way.
        a = np.concatenate([g.ravel() for g in got[group]])
        b = np.concatenate([g.ravel() for g in want[group]])
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999, group
    for name in ("loss_seg_main", "loss_adv_main", "loss_d_main"):
        assert logs[name] == pytest.approx(want_logs[name], rel=max(tolerance, 1e-5)), name


def test_float16_overflow_skips_the_update_and_lowers_the_scale():
    """A step whose scaled gradients overflow changes no weight and no step, halves the scale."""
    method = _build("mixed_float16")
    optimizer = method.optimizer
    optimizer.dynamic_scale.assign(2.0 ** 60)  # float16 overflows: inf gradients
    before = {g: [v.numpy() for v in vs] for g, vs in _groups(method).items()}
    _one_step(method)
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 59
    for g, vs in _groups(method).items():
        if g == "segmenter":
            for b, v in zip(before[g], vs):
                np.testing.assert_array_equal(v.numpy(), b)
    # The next step, at a sane scale, updates.
    optimizer.dynamic_scale.assign(2.0 ** 10)
    _one_step(method)
    assert int(optimizer.iterations.numpy()) == 1
