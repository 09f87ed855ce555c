"""Keras callbacks of the training loop: NaN guard, progress log, TensorBoard views."""

import math
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from advent_tf.core import constants
from advent_tf.core import host_memory
from advent_tf.inference import evaluation_protocol
from advent_tf.inference import segment
from advent_tf.core import preprocessing
from advent_tf.inference import visualize


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; training stopped with the last good checkpoint kept."""


def global_step(model):
    """The step of a training method: its segmenter optimizer's applied updates.

    Every poly schedule and checkpoint number derives from it; a batch skipped
    by float16 loss scaling leaves it unchanged.
    """
    return int(model.optimizer.iterations.numpy())


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite logged value, naming it and the step.

    Must come before the checkpoint callback so the diverged state is never saved.
    """

    def __init__(self, checkpoint_dir):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                latest = tf.train.latest_checkpoint(self.checkpoint_dir)
                raise NonFiniteLossError(
                    f"{name} is {float(value)} at step {global_step(self.model)}; "
                    "training stopped. "
                    f"Last good checkpoint kept: {latest or 'none yet'}. Lower the learning "
                    "rate or check the data before resuming.")


class ReleaseFreeHeap(keras.callbacks.Callback):
    """After the first step, gives the free pages of glibc's heaps back to the system.

    The first step traces and instantiates the train function, and what that
    frees would otherwise stay resident for the whole run
    (`host_memory.release_free_heap`). Logs how much the resident set fell.
    """

    def __init__(self):
        super().__init__()
        self._done = False

    def on_train_batch_end(self, batch, logs=None):
        if self._done:
            return
        self._done = True
        before = host_memory.resident_bytes()
        if host_memory.release_free_heap() and before is not None:
            after = host_memory.resident_bytes() or before
            logging.info("Host memory: %d MiB of free heap returned to the system after the "
                         "first step.", max(before - after, 0) >> 20)


class ProgressLogger(keras.callbacks.Callback):
    """Logs the losses with steps/s and ETA every `every` steps."""

    def __init__(self, total_steps, every):
        super().__init__()
        self.total_steps = total_steps
        self.every = every

    def on_train_begin(self, logs=None):
        self._start_step = self._previous_step = global_step(self.model)
        self._start_time = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        # Only float16 dynamic loss scaling leaves the step unchanged; such a
        # batch is always reported, since its losses were computed but unused.
        skipped = step == self._previous_step
        self._previous_step = step
        if not skipped and step % self.every and step != self.total_steps:
            return
        elapsed = time.monotonic() - self._start_time
        rate = (step - self._start_step) / max(elapsed, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        values = "  ".join(f"{k} {float(v):.4g}" for k, v in sorted((logs or {}).items()))
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        note = ("  update skipped: gradients overflowed, float16 loss scale lowered"
                if skipped else "")
        logging.info("step %d/%d  %s  %.3f steps/s  ETA %s%s", step, self.total_steps, values,
                     rate, eta_text, note)


class StopAtStep(keras.callbacks.Callback):
    """Ends `fit` once the optimizer has applied `num_steps` updates.

    The number of batches is not known in advance: under float16 dynamic loss
    scaling a batch whose gradients overflow is skipped (the optimizer's
    iteration count, hence the step and the poly schedule, stays put), so
    `fit` runs over an open-ended epoch and this callback stops it. Put it
    last, so that the other callbacks (checkpoint, logs) see the final step.
    """

    def __init__(self, num_steps):
        super().__init__()
        self.num_steps = num_steps

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.num_steps:
            self.model.stop_training = True


class TensorBoardSummaries(keras.callbacks.Callback):
    """Scalars every `scalar_every` steps, the paper's Figure 1 view every `image_every`.

    Images: source and target inputs, source ground truth, predicted colour
    maps (`visualize.palette`: any class count) and target entropy maps
    (eq. 2) on a fixed sample batch.

    Args:
      writer: the run's `tf.summary` writer.
      sample: one element of the training dataset (dict of tensors) to visualise.
      scalar_every, image_every: periods in steps (image_every 0 = never).
      config_text: the run's settings, written once as text.
      num_classes: classes of the segmenter (for the colours).
    """

    def __init__(self, writer, sample, scalar_every, image_every, config_text, num_classes):
        super().__init__()
        self.writer = writer
        self.sample = sample
        self.scalar_every = scalar_every
        self.image_every = image_every
        self.config_text = config_text
        self.num_classes = num_classes

    def on_train_begin(self, logs=None):
        with self.writer.as_default():
            tf.summary.text("config", self.config_text, step=global_step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        with self.writer.as_default():
            if step % self.scalar_every == 0:
                for name, value in (logs or {}).items():
                    tf.summary.scalar(name, float(value), step=step)
            if self.image_every and step % self.image_every == 0:
                self._write_images(step)
        self.writer.flush()

    def _colour(self, class_maps):
        return np.stack([visualize.colorize(m, self.num_classes) for m in np.asarray(class_maps)])

    def _write_images(self, step):
        for domain in ("source", "target"):
            images = self.sample[constants.DOMAIN_IMAGE[domain]]
            result = segment.segmentation_maps(evaluation_protocol.ensemble_logits(
                [(self.model.segmenter, 1.0)], images, tf.shape(images)[1:3]))
            tf.summary.image(f"{domain}/input", preprocessing.unpreprocess_image(images), step=step)
            tf.summary.image(f"{domain}/prediction", self._colour(result["class_map"]), step=step)
            tf.summary.image(f"{domain}/entropy", result["entropy"][..., None], step=step)
        tf.summary.image("source/ground_truth", self._colour(self.sample[constants.SOURCE_LABEL]),
                         step=step)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Scores the segmenter on a labelled target split every `every` steps.

    Uses the evaluation protocol of `advent_tf.inference.evaluation_protocol` and writes
    `eval/mIoU` and per-class IoU scalars beside the training summaries.

    Args:
      every: period in steps.
      dataset_fn: returns a fresh `make_eval_dataset` dataset.
      class_names: names of the segmenter's classes.
      writer: the run's `tf.summary` writer.
    """

    def __init__(self, every, dataset_fn, class_names, writer):
        super().__init__()
        self.every = every
        self.dataset_fn = dataset_fn
        self.class_names = list(class_names)
        self.writer = writer

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step % self.every:
            return
        hist = evaluation_protocol.evaluate([(self.model.segmenter, 1.0)], self.dataset_fn(),
                                            len(self.class_names))
        summary = evaluation_protocol.summarize(hist, self.class_names)
        evaluation_protocol.write_scalars(self.writer, summary, step)
        logging.info("step %d  target mIoU %.2f", step, summary["miou"])
