"""Checkpointing of everything a resumed run needs.

One `tf.train.Checkpoint` holds the segmenter (weights and BN statistics), its
SGD (momentum buffers and iteration count, which drives every poly schedule),
and, for AdvEnt, both discriminators and their Adam states. A checkpoint is
written atomically by TensorFlow (data files first, then the index), so a
process killed mid-save leaves the previous checkpoint as the latest valid one.
A checkpoint damaged later (a full disk, a copy cut short) is set aside on
resume in favour of the one before it (`restore_latest`).
"""

import os

import math

import keras
import tensorflow as tf
from absl import logging

from advent_tf.experiment import segmenter_weights
from advent_tf.training import callbacks


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
        return chief_checkpoint_dir(train_dir)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return os.path.join(train_dir, f"worker_tmp_{resolver.task_type}_{resolver.task_id}")


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every` steps and at the end of training, never a non-finite state.

    Args:
      manager: a `tf.train.CheckpointManager`.
      every: save period in steps.
      watched_variables: variables that must be finite for a state to be saved.
    """

    def __init__(self, manager, every, watched_variables):
        super().__init__()
        self.watched_variables = watched_variables
        self.manager = manager
        self.every = every
        self._healthy = True
        self._last_saved = None

    def on_train_begin(self, logs=None):
        # The restored (or initial) step is already on disk or needs no save.
        self._last_saved = callbacks.global_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        # The NaN guard raises on a non-finite loss; this check also keeps a
        # diverged state out of the checkpoints if Keras still runs on_train_end.
        self._healthy = all(math.isfinite(float(v)) for v in (logs or {}).values())
        step = callbacks.global_step(self.model)
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
        step = callbacks.global_step(self.model)
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


class CheckpointMismatchError(ValueError):
    """A checkpoint in --train_dir was written by a differently configured run."""


class NoReadableCheckpointError(RuntimeError):
    """Checkpoints exist in --train_dir but none of them can be read."""


def _set_aside(path):
    """Moves the files of checkpoint `path` into `unreadable/` beside it; returns that folder.

    They are kept for inspection, and out of the way so that the step's next
    save cannot mix with them.
    """
    folder = os.path.join(os.path.dirname(path), "unreadable")
    os.makedirs(folder, exist_ok=True)
    for name in tf.io.gfile.glob(path + ".*"):
        target = os.path.join(folder, os.path.basename(name))
        suffix = 1
        while tf.io.gfile.exists(target):
            target = os.path.join(folder, f"{os.path.basename(name)}.{suffix}")
            suffix += 1
        tf.io.gfile.rename(name, target)
    return folder


def chief_checkpoint_dir(train_dir):
    """The run's checkpoints: the chief's directory, which every worker restores from."""
    return os.path.join(train_dir, "checkpoints")


def restore_latest(checkpoint, manager, set_aside=True):
    """Restores the newest readable checkpoint of `manager`; returns its path or None.

    A damaged checkpoint (truncated, checksum mismatch, missing files: a disk
    that filled up, a copy cut short) does not stop a resumed run: its files
    are moved into ``unreadable/`` with a warning (only with `set_aside`: the
    chief; the other workers read the chief's directory and leave it alone)
    and the next older one is tried, so the run loses the steps since that one
    and nothing else.

    Raises:
      CheckpointMismatchError: The newest readable checkpoint holds other
        shapes or lacks objects of this run (another backbone, class count,
        or method): resuming it would be wrong, so nothing is guessed.
      NoReadableCheckpointError: Checkpoints are listed but none can be read.
    """
    candidates = list(reversed(manager.checkpoints))
    if not candidates:
        return None
    for path in candidates:
        try:
            status = checkpoint.restore(path)
        except segmenter_weights.CHECKPOINT_READ_ERRORS as error:
            if not tf.io.gfile.glob(path + ".*"):
                logging.warning("Checkpoint %s is listed but has no files; trying an older one.",
                                path)
                continue
            moved = f"its files were moved to {_set_aside(path)}" if set_aside else "skipped"
            logging.warning("Checkpoint %s cannot be read (%s: %s); %s and an older checkpoint "
                            "is tried.", path, type(error).__name__,
                            str(error).splitlines()[0], moved)
            continue
        except ValueError as error:
            raise CheckpointMismatchError(_mismatch_message(path, error)) from error
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise CheckpointMismatchError(_mismatch_message(path, error)) from error
        logging.info("Resumed from %s", path)
        return path
    raise NoReadableCheckpointError(
        f"none of the checkpoints in {manager.directory} can be read ({', '.join(candidates)}); "
        "see the warnings above. Use a new --train_dir to start over.")


def _mismatch_message(path, error):
    return (f"checkpoint {path} does not fit the model and method of these flags "
            f"({str(error).splitlines()[0]}). It was written by a run with other flags "
            "(backbone, number of classes, multi-level, method): rerun with those, or use a "
            "new --train_dir.")
