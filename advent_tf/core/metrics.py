"""Segmentation metrics as the reference scores them: one confusion matrix, IoU, mIoU.

The reference accumulates a single confusion matrix over the whole validation
set (rows = ground truth, columns = prediction), then takes per-class
IoU = diag / (row + col - diag) and the mean over the classes whose IoU is
defined (a class absent from both ground truth and predictions is skipped).
"""

import numpy as np
import keras
import tensorflow as tf


def per_class_iou(hist):
    """Per-class intersection over union of a confusion matrix.

    Args:
      hist: [C, C] confusion matrix, rows = ground truth.

    Returns:
      [C] float64 IoU, NaN for a class absent from both labels and predictions.
    """
    hist = np.asarray(hist, dtype=np.float64)
    intersection = np.diag(hist)
    union = hist.sum(axis=1) + hist.sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / union


def mean_iou(hist):
    """Mean IoU over the classes whose IoU is defined (NaN entries skipped).

    Args:
      hist: [C, C] confusion matrix, rows = ground truth.

    Returns:
      float mIoU in [0, 1]; NaN when no class is defined.
    """
    iou = per_class_iou(hist)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def format_iou_table(hist, class_names):
    """Renders per-class IoU and mIoU in percent with 2 decimals, as the reference prints.

    Args:
      hist: [C, C] confusion matrix, rows = ground truth.
      class_names: C class names, in train-id order.

    Returns:
      Multi-line string: one "name  IoU" line per class, then the mIoU line.

    Raises:
      ValueError: if the number of names differs from the matrix size.
    """
    iou = per_class_iou(hist)
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for a {len(iou)}-class matrix.")
    width = max(len("mIoU"), *(len(name) for name in class_names))
    lines = [f"{name:<{width}}  {100 * value:6.2f}" for name, value in zip(class_names, iou)]
    lines.append(f"{'mIoU':<{width}}  {100 * mean_iou(hist):6.2f}")
    return "\n".join(lines)


@keras.saving.register_keras_serializable(package="advent_tf")
class ConfusionMatrix(keras.metrics.Metric):
    """Confusion matrix accumulated over a dataset; its result is the mIoU.

    The counts live in a float64 variable (exact up to 2**53 pixels, far more
    than Cityscapes val's 10**9) with SUM aggregation, so that under
    `tf.distribute` each replica counts its own images and reading the metric
    adds them up. Updates are plain tensor ops, usable inside `tf.function`,
    XLA and `tf.data` loops.

    Args:
      num_classes: number of classes C.
      name: metric name.
      **kwargs: passed to `keras.metrics.Metric`.
    """

    def __init__(self, num_classes, name="confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.hist = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float64",
            aggregation="sum", name="hist")

    def update_state(self, labels, predictions, sample_weight=None):
        """Counts (label, prediction) pairs.

        Pixels whose label is outside [0, C) (the ignore label 255 included) are
        skipped, as in the reference's `fast_hist`; predictions outside [0, C)
        are skipped too, which argmax outputs never are.

        Args:
          labels: integer ground truth, any shape.
          predictions: integer predictions, same shape as `labels`.
          sample_weight: unsupported; must be None.

        Raises:
          ValueError: if sample_weight is given.
        """
        if sample_weight is not None:
            raise ValueError("ConfusionMatrix does not support sample_weight.")
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
        num_classes = self.num_classes
        valid = ((labels >= 0) & (labels < num_classes)
                 & (predictions >= 0) & (predictions < num_classes))
        # Masking by weight instead of boolean_mask keeps shapes static for XLA.
        index = tf.where(valid, labels * num_classes + predictions, 0)
        counts = tf.math.unsorted_segment_sum(
            tf.cast(valid, tf.float64), index, num_classes * num_classes)
        self.hist.assign_add(tf.reshape(counts, [num_classes, num_classes]))

    def result(self):
        """mIoU over the classes present in labels or predictions (NaN-skipping mean)."""
        hist = tf.convert_to_tensor(self.hist)
        intersection = tf.linalg.diag_part(hist)
        union = tf.reduce_sum(hist, 0) + tf.reduce_sum(hist, 1) - intersection
        defined = union > 0
        iou = tf.math.divide_no_nan(intersection, union)
        miou = tf.reduce_sum(iou) / tf.reduce_sum(tf.cast(defined, tf.float64))
        return tf.cast(miou, self.dtype)

    def confusion_matrix(self):
        """The accumulated [C, C] matrix (rows = ground truth) as a float64 numpy array."""
        return keras.ops.convert_to_numpy(self.hist)

    def reset_state(self):
        self.hist.assign(tf.zeros_like(self.hist))

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config
