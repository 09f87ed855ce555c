"""Restoring the newest readable checkpoint: damaged ones are set aside, mismatches refused."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import optimizers
from advent_tf.training import checkpointing


def _model_and_checkpoint(units=3):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="dense")])
    sgd = optimizers.TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.0)
    return model, sgd, tf.train.Checkpoint(segmenter=model, optimizer=sgd)


def _step(model, sgd):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.ones((2, 4))) ** 2)
    sgd.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                            model.trainable_variables))


def _state(model, sgd):
    return [v.numpy() for v in model.weights + sgd.variables]


@pytest.fixture
def saved(tmp_path):
    """Checkpoints 1 and 2 of two SGD steps; returns their directory and each one's state."""
    model, sgd, checkpoint = _model_and_checkpoint()
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "ckpt"), max_to_keep=None)
    states = {}
    for number in (1, 2):
        _step(model, sgd)
        manager.save(checkpoint_number=number)
        states[number] = _state(model, sgd)
    return str(tmp_path / "ckpt"), states


def _restore(directory, units=3):
    model, sgd, checkpoint = _model_and_checkpoint(units)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=None)
    path = checkpointing.restore_latest(checkpoint, manager)
    sgd.build(model.trainable_variables)  # slots restore when created, as in training
    return path, _state(model, sgd)


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _flip_last_byte(path):
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated data": lambda p: _truncate(p + ".data-00000-of-00001", 100),
    "truncated index": lambda p: _truncate(p + ".index", 0),
    "flipped byte in data": lambda p: _flip_last_byte(p + ".data-00000-of-00001"),
    "missing data file": lambda p: os.remove(p + ".data-00000-of-00001"),
}


def test_newest_is_restored_with_optimizer_slots(saved):
    directory, states = saved
    path, state = _restore(directory)
    assert path.endswith("ckpt-2")
    for restored, expected in zip(state, states[2], strict=True):
        np.testing.assert_array_equal(restored, expected)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_is_set_aside_and_the_older_one_restored(damage, saved):
    directory, states = saved
    newest = os.path.join(directory, "ckpt-2")
    files_before = sorted(os.listdir(directory))
    DAMAGE[damage](newest)
    damaged = {name: open(os.path.join(directory, name), "rb").read()
               for name in os.listdir(directory) if name.startswith("ckpt-2.")}
    path, state = _restore(directory)
    assert path.endswith("ckpt-1")
    for restored, expected in zip(state, states[1], strict=True):
        np.testing.assert_array_equal(restored, expected)
    # The damaged files are kept, byte for byte, out of the checkpoint folder.
    aside = os.path.join(directory, "unreadable")
    assert {n: open(os.path.join(aside, n), "rb").read() for n in os.listdir(aside)} == damaged
    assert not [n for n in os.listdir(directory) if n.startswith("ckpt-2.")]
    assert [n for n in files_before if n.startswith("ckpt-1.")] == sorted(
        n for n in os.listdir(directory) if n.startswith("ckpt-1."))
    # A second resume (killed before the next save) skips the listed ghost quietly.
    path, _ = _restore(directory)
    assert path.endswith("ckpt-1")


def test_set_aside_twice_keeps_both_copies(saved):
    directory, _ = saved
    newest = os.path.join(directory, "ckpt-2")
    _truncate(newest + ".index", 0)
    checkpointing._set_aside(newest)
    open(newest + ".index", "wb").close()
    checkpointing._set_aside(newest)
    assert sorted(os.listdir(os.path.join(directory, "unreadable"))) == [
        "ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-2.index.1"]


def test_no_readable_checkpoint_is_an_error_naming_them(saved):
    directory, _ = saved
    for number in (1, 2):
        _truncate(os.path.join(directory, f"ckpt-{number}.index"), 0)
    with pytest.raises(checkpointing.NoReadableCheckpointError, match=r"ckpt-2, .*ckpt-1"):
        _restore(directory)


def test_checkpoint_of_another_shape_is_refused(saved):
    directory, _ = saved
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=r"ckpt-2 does not fit .*shape \(4, 3\).*\(4, 5\)"):
        _restore(directory, units=5)
    assert not os.path.exists(os.path.join(directory, "unreadable"))


def test_checkpoint_lacking_objects_of_this_run_is_refused(saved):
    directory, _ = saved
    model, sgd, _ = _model_and_checkpoint()
    discriminator = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    checkpoint = tf.train.Checkpoint(segmenter=model, optimizer=sgd,
                                     discriminator_main=discriminator)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=None)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="ckpt-2 does not fit"):
        checkpointing.restore_latest(checkpoint, manager)


def test_empty_directory_restores_nothing(tmp_path):
    assert _restore(str(tmp_path / "none"))[0] is None


@pytest.mark.parametrize("name, backbone, multi_level", [
    ("resnet_mini", "resnet_mini", True), ("resnet_mini_single", "resnet_mini", False),
    ("vgg16", "vgg16", False)])
def test_segmenter_checkpoint_keys_are_those_of_the_first_release(name, backbone, multi_level,
                                                                    tmp_path):
    """A checkpoint from an earlier version still restores into today's networks.

    `tf.train.Checkpoint` keys a functional model's variables by the position
    of their layer in the model's operations (weightless layers included), so
    a change of layer count or order moves every weight after it to another
    key: old checkpoints would then fail to restore, or load into the wrong
    layers if the shapes agree. The keys and shapes were recorded from the
    code at commit 4ac5532 (before the ASPP heads became `ASPPBranch` +
    `ASPPSum` and the dilated convs `DilatedConv2D`).
    """
    from advent_tf.models import build_segmenter

    with open(os.path.join(os.path.dirname(__file__), "data", "checkpoint_keys.json")) as f:
        recorded = json.load(f)[name]
    model = build_segmenter(backbone, num_classes=19, multi_level=multi_level)
    path = tf.train.Checkpoint(segmenter=model).write(str(tmp_path / "ckpt"))
    keys = [[key, shape] for key, shape in tf.train.list_variables(path)
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert keys == recorded
