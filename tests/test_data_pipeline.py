"""Training and evaluation pipelines: shapes, dtypes, ranges, determinism, damage."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from advent_tf.core import constants
from advent_tf.data import demo
from advent_tf.data import example as example_lib
from advent_tf.data import image_io
from advent_tf.data import manifest as manifest_lib
from advent_tf.data import pipeline

SPLITS = (("source", "train", 6, True), ("source", "val", 3, True),
          ("target", "train", 6, False), ("target", "val", 3, True))
STORED = (24, 48)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("demo"))
    return demo.make_demo_data(directory, seed=3, image_size=STORED, splits=SPLITS)


def _batches(dataset, n):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(n)]


def test_train_shapes_dtypes_ranges(data):
    dataset = pipeline.make_train_dataset(
        data["source_train"], data["target_train"], (16, 40), (20, 36), batch_size=4, seed=0)
    assert dataset.options().experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.DATA)
    # Autotuning's thread made deleting an iterator wait up to 60 s (pipeline._options).
    assert dataset.options().autotune.enabled is False
    for batch in _batches(dataset, 4):  # 4 x 4 > 6 examples: the streams repeat.
        assert batch["source_image"].shape == (4, 16, 40, 3)
        assert batch["source_label"].shape == (4, 16, 40)
        assert batch["target_image"].shape == (4, 20, 36, 3)
        assert batch["source_image"].dtype == np.float32 and batch["source_label"].dtype == np.int32
        for key in ("source_image", "target_image"):
            rgb = (batch[key] + constants.IMG_MEAN_BGR)[..., ::-1]  # Undo preprocessing.
            assert rgb.min() >= -1e-3 and rgb.max() <= 255 + 1e-3
            np.testing.assert_allclose(rgb, np.round(rgb), atol=1e-3)
        assert set(np.unique(batch["source_label"])) <= set(range(19)) | {255}


def test_seeded_train_stream_is_deterministic(data):
    def make(seed):  # Order, shuffling and augmentation all follow the seed.
        return _batches(pipeline.make_train_dataset(
            data["source_train"], data["target_train"], STORED, STORED, 2, seed=seed,
            augment=True), 2)
    first, again, other = make(7), make(7), make(8)
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["source_image"], c["source_image"])
               for a, c in zip(first, other))


def test_augmentation_keeps_labels_valid(data):
    batch = _batches(pipeline.make_train_dataset(
        data["source_train"], data["target_train"], STORED, STORED, 6, seed=1, augment=True,
        scale_range=(0.5, 0.6)), 1)[0]
    # Scaled down to at most 60 %: the padding is ignored and the image mean.
    assert (batch["source_label"] == 255).any()
    assert set(np.unique(batch["source_label"])) <= set(range(19)) | {255}
    padded = batch["source_label"] == 255
    np.testing.assert_allclose(batch["source_image"][padded], 0.0, atol=1e-4)


def test_eval_keeps_order_and_full_resolution(data):
    dataset = pipeline.make_eval_dataset(data["target_val"], (12, 20), batch_size=2)
    assert dataset.options().autotune.enabled is False  # As in training, see above.
    batches = _batches(dataset, 10)
    assert [b["image"].shape for b in batches] == [(2, 12, 20, 3), (1, 12, 20, 3)]
    assert batches[0]["label"].shape == (2, *STORED) and batches[0]["label"].dtype == np.int32
    names = [n.decode() for b in batches for n in b["filename"]]
    assert names == [f"target_val_{i:05d}.png" for i in range(3)]


def test_unlabelled_split_is_rejected(data):
    with pytest.raises(ValueError, match="no labels"):
        pipeline.make_eval_dataset(data["target_train"], STORED)
    with pytest.raises(ValueError, match="no labels"):
        pipeline.make_train_dataset(data["target_train"], data["target_train"], STORED,
                                    STORED, 1)
    with pytest.raises(FileNotFoundError, match="no TFRecord shards"):
        pipeline.make_eval_dataset(data["target_val"] + ".missing", STORED)


def _copy_split(data, tmp_path):
    for path in glob.glob(data["source_val"]):
        shutil.copy(path, tmp_path)
    return sorted(glob.glob(str(tmp_path / "val-*.tfrecord")))


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated"])
def test_damaged_shard_error_names_the_shard(data, tmp_path, damage):
    shards = _copy_split(data, tmp_path)
    content = bytearray(open(shards[1], "rb").read())
    if damage == "flipped_byte":
        content[len(content) // 2] ^= 0xFF
    else:
        content = content[:len(content) - 100]
    with open(shards[1], "wb") as f:
        f.write(bytes(content))
    dataset = pipeline.make_eval_dataset(str(tmp_path / "val-*.tfrecord"), STORED)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"val-g1-00001-of-00002\.tfrecord"):
        _batches(dataset, 10)
    train = pipeline.make_train_dataset(str(tmp_path / "val-*.tfrecord"), data["target_train"],
                                        STORED, STORED, 1, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Corrupt or truncated TFRecord"):
        _batches(train, 20)


def test_undecodable_image_error_names_the_shard(tmp_path):
    label = image_io.encode_label_png(np.zeros([4, 4], np.uint8))
    bad = image_io.EncodedImage(data=b"GIF89a not an image", format="png", height=4, width=4)
    path = str(tmp_path / "val-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example_lib.encode_example(bad, "x.png", label))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Undecodable image.*val-00000-of-00001\.tfrecord.*x\.png"):
        _batches(pipeline.make_eval_dataset(path, (4, 4)), 1)


def test_class_prior_from_manifest(data):
    shard_dir = os.path.dirname(data["source_train"])
    prior = manifest_lib.class_prior_from_manifest(data["source_train"])
    np.testing.assert_allclose(prior.sum(), 1.0, rtol=1e-6)
    counts = np.asarray(manifest_lib.read_manifest(shard_dir, "train")["class_pixel_counts"])
    np.testing.assert_allclose(prior, counts / counts.sum(), rtol=1e-6)
    assert prior[10] > 0 and prior[3] == 0  # Sky drawn, wall never.
    with pytest.raises(ValueError, match="no labelled pixels"):
        manifest_lib.class_prior_from_manifest(os.path.dirname(data["target_train"]), "train")
    with pytest.raises(ValueError, match="2 manifests"):
        manifest_lib.read_manifest(shard_dir)
    path = os.path.join(shard_dir, "prior.json")
    manifest_lib.save_class_prior(prior, constants.CITYSCAPES_CLASS_NAMES, path)
    np.testing.assert_allclose(manifest_lib.load_class_prior(path), prior)
    assert json.load(open(path))["class_names"][0] == "road"
    np.testing.assert_allclose(
        manifest_lib.load_class_prior(manifest_lib.manifest_path(shard_dir, "train")), prior)
