"""The reference evaluation protocol: upsampled main logits, argmax, one confusion matrix.

Images come at the evaluation size (1024x512 for Cityscapes); the main head's
logits are upsampled bilinearly (align_corners=True) to the label resolution
(2048x1024), optionally averaged over an ensemble with weights (the paper's
AdvEnt+MinEnt: 0.5/0.5), and the argmax is accumulated into one confusion
matrix over the whole split (`ensemble_prediction` upsamples and reduces a
block of label rows at a time, with the same values). `summarize` turns the matrix into the figures
the paper reports: per-class IoU and mIoU in %, and for SYNTHIA the 16-class
and 13-class mIoU from the same matrix.
"""

import numpy as np
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.core import metrics
from advent_tf.core import ops
from advent_tf.data import labels as labels_lib
from advent_tf.models import split_outputs


def _main_logits(members, images):
    """(float32 main logits at the network's output size, weight) of each member."""
    for segmenter, weight in members:
        _, main = split_outputs(segmenter(images, training=False))
        yield tf.cast(main, tf.float32), weight


def ensemble_logits(members, images, output_size):
    """Weighted sum of the members' main logits upsampled to `output_size`.

    Args:
      members: list of (segmenter, weight).
      images: preprocessed [B, h, w, 3] batch.
      output_size: (height, width) of the labels.

    Returns:
      float32 [B, H, W, C] logits.
    """
    total = 0.0
    for main, weight in _main_logits(members, images):
        total += weight * ops.resize_bilinear_align_corners(main, output_size)
    return total


# Bytes of upsampled float32 logits per block in `ensemble_maps`. On CPU, small
# enough to fit in what the forward pass has just freed. Where a GPU is visible,
# a whole Cityscapes map (152 MiB) makes one block: memory is not what limits
# there, and every further block is one more trip of the loop, whose ops the
# host dispatches one by one (unmeasured: no GPU here).
BLOCK_BYTES = 2 * 1024 * 1024
GPU_BLOCK_BYTES = 256 * 1024 * 1024


def ensemble_maps(members, images, output_size, pixel_maps, rows=None):
    """Per-pixel maps of `ensemble_logits`, upsampled and reduced a block of label rows at a time.

    The same values (each upsampled logit is the same two-tap lerp of the same
    width-upsampled row), without the whole label-size map: at Cityscapes'
    2048x1024 labels that map is 152 MiB for 19 classes, its height lerp
    makes two gathered copies of it, and a softmax or an entropy more. Blocks
    of `BLOCK_BYTES` (13 rows there) reuse memory the forward pass has freed,
    so the maps add next to nothing to its peak (ResNet-101 at 1024x512,
    2048x1024 output, softmax and entropy: peak resident set 1175-1239 MiB
    with 8-26 rows against 1435-1567 with 128 and 1673 whole, the forward pass
    alone 1175-1211; Zen 4, 2026-12-01).

    Args:
      members: list of (segmenter, weight).
      images: preprocessed [B, h, w, 3] batch.
      output_size: (height, width) of the labels.
      pixel_maps: function of float32 logits [B, r, W, C] (a block of r label
        rows) to a dict of [B, r, W] maps, each pixel's value a function of
        that pixel's logits alone.
      rows: label rows per block; default: `BLOCK_BYTES` of logits
        (`GPU_BLOCK_BYTES` where a GPU is visible).

    Returns:
      The dict of `pixel_maps`, each map [B, H, W].
    """
    widened = [(ops.lerp_along(main, 2, tf.shape(main)[2], output_size[1]), weight)
               for main, weight in _main_logits(members, images)]
    batch, height, width, classes = tf.unstack(tf.shape(widened[0][0]))
    if rows is None:
        block_bytes = GPU_BLOCK_BYTES if tf.config.list_logical_devices("GPU") else BLOCK_BYTES
        # Not more than the output has: padding a short image to a block is waste.
        row_bytes = 4 * tf.maximum(batch * width * classes, 1)
        rows = tf.clip_by_value(block_bytes // row_bytes, 1, output_size[0])
    i0, i1, w1 = ops.linear_taps(height, output_size[0])
    blocks = (output_size[0] + rows - 1) // rows
    # Every block of `rows` rows, the last one padded with the final row: under
    # XLA a TensorArray's elements must all have one shape.
    padded = tf.minimum(tf.range(blocks * rows), output_size[0] - 1)
    i0, i1, w1 = [tf.gather(t, padded) for t in (i0, i1, w1)]

    def maps_of_block(block):
        # tf.slice: a size XLA sees as fixed (a strided slice's end is dynamic).
        taps = [tf.slice(t, [block * rows], [rows]) for t in (i0, i1, w1)]
        total = 0.0
        for rows_of_member, weight in widened:
            total += weight * ops.lerp_taps(rows_of_member, 1, *taps)
        return pixel_maps(total)

    def joined(array):
        """[blocks, B, rows, W] -> [B, H, W], without the padding."""
        stacked = tf.transpose(array.stack(), [1, 0, 2, 3])
        shape = tf.shape(stacked)
        return tf.reshape(stacked, [shape[0], -1, shape[3]])[:, :output_size[0]]

    # The first block outside the loop gives the arrays their dtypes.
    arrays = {name: tf.TensorArray(m.dtype, size=blocks).write(0, m)
              for name, m in maps_of_block(0).items()}
    for block in tf.range(1, blocks):
        maps = maps_of_block(block)
        arrays = {name: array.write(block, maps[name]) for name, array in arrays.items()}
    return {name: joined(array) for name, array in arrays.items()}


def ensemble_prediction(members, images, output_size, rows=None):
    """The argmax of `ensemble_logits`, a block of label rows at a time (`ensemble_maps`).

    Args:
      members: list of (segmenter, weight).
      images: preprocessed [B, h, w, 3] batch.
      output_size: (height, width) of the labels.
      rows: label rows per block; default: that of `ensemble_maps`.

    Returns:
      int32 [B, H, W] class map.
    """
    return ensemble_maps(
        members, images, output_size,
        lambda logits: {"class_map": tf.argmax(logits, axis=-1, output_type=tf.int32)},
        rows)["class_map"]


def label_mapping(label_num_classes, num_classes):
    """The lookup from stored label ids to the model's class ids, if they differ.

    Cityscapes val converted once with 19 classes serves the SYNTHIA (16-class)
    models too: terrain, truck and train become ignored pixels, as they are in
    a split converted with 16 classes.

    Args:
      label_num_classes: classes of the stored labels (from the split's manifest).
      num_classes: classes of the model.

    Returns:
      None when no mapping is needed, else an int32 [256] table.

    Raises:
      ValueError: no mapping between the two settings.
    """
    if label_num_classes == num_classes:
        return None
    if (label_num_classes, num_classes) != (19, 16):
        raise ValueError(f"labels with {label_num_classes} classes cannot score a "
                         f"{num_classes}-class model")
    table = np.full(256, constants.IGNORE_LABEL, np.int32)
    table[list(constants.SYNTHIA_16_FROM_19)] = np.arange(16)
    return table


def evaluate(members, dataset, num_classes, progress=None, label_table=None):
    """Scores an ensemble (or one model) on a labelled evaluation dataset.

    Args:
      members: list of (segmenter, weight); one model is [(model, 1.0)].
      dataset: from `advent_tf.data.pipeline.make_eval_dataset` (dicts with
        "image" and full-resolution "label").
      num_classes: number of classes of the segmenters.
      progress: optional callable(num_images_done) called after each batch.
      label_table: optional int32 [256] lookup applied to the labels (see
        `label_mapping`).

    Returns:
      The confusion matrix as a numpy [C, C] array (rows = ground truth).
    """
    confusion = metrics.ConfusionMatrix(num_classes)
    table = None if label_table is None else tf.constant(label_table, tf.int32)

    @tf.function
    def step(images, labels):
        if table is not None:
            labels = tf.gather(table, labels)
        confusion.update_state(labels, ensemble_prediction(members, images,
                                                           tf.shape(labels)[1:3]))
        return tf.shape(images)[0]

    done = 0
    for batch in dataset:
        done += int(step(batch["image"], batch["label"]))
        if progress is not None:
            progress(done)
    return confusion.confusion_matrix()


def _percent(value):
    """A fraction as a JSON-friendly percentage (NaN, for an absent class, as None)."""
    return None if np.isnan(value) else float(100.0 * value)


def summarize(hist, class_names=None, class_subset=None):
    """The figures the paper reports, from one confusion matrix.

    Args:
      hist: [C, C] confusion matrix (rows = ground truth), any C >= 2.
      class_names: the C class names in id order (a run's or a split's);
        default `labels.default_class_names(C)`.
      class_subset: None, or 13 with a 16-class matrix: also the mIoU over the
        13 classes of the SYNTHIA benchmark (the 16 without wall, fence, pole),
        taken from the same per-class IoUs, as the paper reports it.

    Returns:
      JSON-serialisable dict: "num_classes", "iou" {class name: IoU in %,
      None for a class absent from labels and predictions}, "miou" (%),
      "num_pixels" (labelled pixels scored), "confusion_matrix" (so that
      cached results can be re-read exactly), and with a subset "miou_13".

    Raises:
      ValueError: a subset other than 13 of 16 classes.
    """
    hist = np.asarray(hist, np.float64)
    num_classes = hist.shape[0]
    names = list(class_names or labels_lib.default_class_names(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class matrix")
    iou = metrics.per_class_iou(hist)
    summary = {
        "num_classes": num_classes,
        "iou": {name: _percent(value) for name, value in zip(names, iou)},
        "miou": _percent(metrics.mean_iou(hist)),
        "num_pixels": int(hist.sum()),
        "confusion_matrix": hist.astype(np.int64).tolist(),
    }
    if class_subset is not None:
        if (class_subset, num_classes) != (13, 16):
            raise ValueError(f"class_subset={class_subset} needs the 16-class (SYNTHIA) "
                             f"setting with subset 13, got {num_classes} classes")
        subset = [constants.SYNTHIA_16_FROM_19.index(i) for i in constants.SYNTHIA_13_FROM_19]
        values = iou[subset]
        summary["miou_13"] = None if np.all(np.isnan(values)) else float(
            100.0 * np.nanmean(values))
    return summary


def format_summary(summary):
    """The per-class IoU table of a `summarize` result, as the reference prints it."""
    hist = np.asarray(summary["confusion_matrix"], np.float64)
    names = list(summary["iou"])
    table = metrics.format_iou_table(hist, names)
    if "miou_13" not in summary:
        return table
    # The 16 class names include "traffic light", longer than "mIoU-13": same column.
    width = max(len(name) for name in names)
    value = float("nan") if summary["miou_13"] is None else summary["miou_13"]
    return f"{table}\n{'mIoU-13':<{width}}  {value:6.2f}"


def write_scalars(writer, summary, step, prefix="eval"):
    """mIoU(s) and per-class IoU of a `summarize` result as TensorBoard scalars."""
    scalars = {f"{prefix}/mIoU": summary["miou"], f"{prefix}/mIoU_13": summary.get("miou_13")}
    scalars.update({f"{prefix}/IoU/{name.replace(' ', '_')}": value
                    for name, value in summary["iou"].items()})
    with writer.as_default():
        for tag, value in scalars.items():
            # An undefined IoU is left out rather than drawn as 0.
            if value is not None:
                tf.summary.scalar(tag, value, step=step)
    writer.flush()
