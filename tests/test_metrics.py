"""Tests for advent_tf.core.metrics against the reference's confusion matrix and IoU."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.core import metrics

import two_cpus


def test_numpy_iou_matches_reference(ref):
    iou = metrics.per_class_iou(ref["c_hist"])
    np.testing.assert_allclose(iou, ref["c_iou"], rtol=1e-12, equal_nan=True)
    assert np.isnan(iou[17])
    np.testing.assert_allclose(metrics.mean_iou(ref["c_hist"]), ref["c_miou"], rtol=1e-12)


def test_confusion_matrix_metric_matches_reference(ref):
    metric = metrics.ConfusionMatrix(19)
    # One image per update, as an evaluation loop feeds it.
    for gt, pred in zip(ref["c_gt"], ref["c_pred"]):
        metric.update_state(gt, pred)
    np.testing.assert_array_equal(metric.confusion_matrix(), ref["c_hist"])
    np.testing.assert_allclose(metric.result().numpy(), ref["c_miou"], rtol=1e-6)
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0


def test_confusion_matrix_metric_in_compiled_loop(ref):
    metric = metrics.ConfusionMatrix(19)
    dataset = tf.data.Dataset.from_tensor_slices((ref["c_gt"], ref["c_pred"]))

    @tf.function(jit_compile=True)
    def update(gt, pred):
        metric.update_state(gt, pred)

    for gt, pred in dataset:
        update(gt, pred)
    np.testing.assert_array_equal(metric.confusion_matrix(), ref["c_hist"])


def test_confusion_matrix_skips_out_of_range():
    metric = metrics.ConfusionMatrix(3)
    labels = np.array([0, 1, 2, constants.IGNORE_LABEL, 3, -1, 1])
    preds = np.array([0, 2, 2, 1, 1, 1, 7])
    metric.update_state(labels, preds)
    expected = np.zeros((3, 3))
    expected[0, 0] = expected[1, 2] = expected[2, 2] = 1
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)
    # IoU: class 0 = 1, class 1 = 0 / 1, class 2 = 1 / 2.
    np.testing.assert_allclose(metric.result().numpy(), 0.5, rtol=1e-6)


def test_format_iou_table(ref):
    table = metrics.format_iou_table(ref["c_hist"], constants.CITYSCAPES_CLASS_NAMES)
    lines = table.splitlines()
    assert len(lines) == 20
    assert lines[0].split()[0] == "road"
    assert lines[0].endswith(f"{100 * ref['c_iou'][0]:6.2f}")
    assert lines[17].endswith("nan")
    assert lines[-1].endswith(f"{100 * ref['c_miou']:.2f}")
    with pytest.raises(ValueError):
        metrics.format_iou_table(ref["c_hist"], constants.CITYSCAPES_CLASS_NAMES[:3])


_MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import two_cpus
    strategy = two_cpus.mirrored_strategy()
    from advent_tf.core import metrics

    data = np.load(sys.argv[1])
    with strategy.scope():
        metric = metrics.ConfusionMatrix(19)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((data["c_gt"], data["c_pred"])).batch(2))

    @tf.function
    def update(gt, pred):
        strategy.run(metric.update_state, args=(gt, pred))

    for gt, pred in dataset:
        update(gt, pred)
    # Each replica counted one image; reading the metric sums the replicas.
    np.testing.assert_array_equal(metric.confusion_matrix(), data["c_hist"])
    np.testing.assert_allclose(float(metric.result()), float(data["c_miou"]), rtol=1e-6)
    print("OK", strategy.num_replicas_in_sync)
""")


def test_confusion_matrix_under_mirrored_strategy(tmp_path, ref):
    data = tmp_path / "hist.npz"
    np.savez(data, **{k: ref[k] for k in ("c_gt", "c_pred", "c_hist", "c_miou")})
    assert "OK 2" in two_cpus.run(_MIRRORED_SCRIPT, data)
