"""Checkpointing of everything a resumed run needs.

One `tf.train.Checkpoint` holds the segmenter (weights and BN statistics), its
SGD (momentum buffers and iteration count, which drives every poly schedule),
and, for AdvEnt, both discriminators and their Adam states. A checkpoint is
written atomically by TensorFlow (data files first, then the index), so a
process killed mid-save leaves the previous checkpoint as the latest valid one.
"""

import os

import math

import keras
import tensorflow as tf
from absl import logging


class NonFiniteStateError(RuntimeError):
    """The weights diverged; nothing was saved over the last good checkpoint."""


def make_checkpoint(method):
    """The `tf.train.Checkpoint` of a training method (see `advent_tf.methods`)."""
    objects = {"segmenter": method.segmenter, "optimizer": method.optimizer}
    for name in ("discriminator_main", "discriminator_aux", "d_optimizer_main",
                 "d_optimizer_aux"):
        value = getattr(method, name, None)
        if value is not None:
            objects[name] = value
    return tf.train.Checkpoint(**objects)


def is_chief():
    """True on the worker that owns the checkpoints and summaries (always, without TF_CONFIG)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().jobs)


def checkpoint_dir(train_dir):
    """Where this worker writes: the real directory on the chief, a scratch one elsewhere.

    MultiWorkerMirroredStrategy needs every worker to save (the save is a
    collective op), but only the chief's copy is kept.
    """
    if is_chief():
        return os.path.join(train_dir, "checkpoints")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return os.path.join(train_dir, f"worker_tmp_{resolver.task_type}_{resolver.task_id}")


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every` steps and at the end of training, never a non-finite state.

    Args:
      manager: a `tf.train.CheckpointManager`.
      every: save period in steps.
      step_fn: returns the current global step (the optimizer's iteration count).
      watched_variables: variables that must be finite for a state to be saved.
    """

    def __init__(self, manager, every, step_fn, watched_variables):
        super().__init__()
        self.watched_variables = watched_variables
        self.manager = manager
        self.every = every
        self.step_fn = step_fn
        self._healthy = True
        self._last_saved = None

    def on_train_begin(self, logs=None):
        # The restored (or initial) step is already on disk or needs no save.
        self._last_saved = self.step_fn()

    def on_train_batch_end(self, batch, logs=None):
        # The NaN guard raises on a non-finite loss; this check also keeps a
        # diverged state out of the checkpoints if Keras still runs on_train_end.
        self._healthy = all(math.isfinite(float(v)) for v in (logs or {}).values())
        step = self.step_fn()
        # A batch skipped by float16 loss scaling leaves the step unchanged:
        # nothing new to save.
        if self._healthy and step % self.every == 0 and step != self._last_saved:
            self._save(step)

    def _state_is_finite(self):
        # The update of a step with finite losses can still overflow the weights;
        # their losses only show it one step later.
        return all(bool(tf.reduce_all(tf.math.is_finite(v)))
                   for v in self.watched_variables)

    def on_train_end(self, logs=None):
        step = self.step_fn()
        latest = self.manager.latest_checkpoint
        if self._healthy and (latest is None or not latest.endswith(f"-{step}")):
            self._save(step)

    def _save(self, step):
        if not self._state_is_finite():
            self._healthy = False
            raise NonFiniteStateError(
                f"the weights became non-finite at step {step}; training stopped. "
                f"Last good checkpoint kept: {self.manager.latest_checkpoint or 'none yet'}.")
        path = self.manager.save(checkpoint_number=step)
        self._last_saved = step
        logging.info("Saved checkpoint %s", path)


def restore_latest(checkpoint, manager):
    """Restores the newest checkpoint if there is one; returns its path or None."""
    path = manager.latest_checkpoint
    if path is None:
        return None
    checkpoint.restore(path).assert_existing_objects_matched()
    logging.info("Resumed from %s", path)
    return path
